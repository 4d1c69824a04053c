"""Every benchmark, one after the other, each printing its tables (Markdown) on stdout.

    python -m benchmarks [--quick]      # as root; `make bench`

--quick runs each with fewer repetitions (a smoke test of the benchmarks themselves).
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import boot, convert, datapath, fetch, metrics, startup, webconsole


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    quick = parser.parse_args().quick
    suites = [
        ("Startup", startup.main, ["--runs", "3" if quick else "9"]),
        ("Datapath", datapath.main, ["--runs", "2" if quick else "5"]),
        ("Boot to reachable", boot.main, ["--runs", "2" if quick else "7"]),
        ("Boot to reachable: the Debian guest", boot.main,
         ["--guest", "debian", "--runs", "1" if quick else "5"]),
        ("Image download", fetch.main, ["--runs", "1" if quick else "3"]
         + (["--size-gib", "0.5"] if quick else [])),
        ("Appliance import", convert.main, ["--runs", "1" if quick else "3"]
         + (["--size-mib", "256"] if quick else [])),
        ("Metrics scrape", metrics.main, ["--runs", "20" if quick else "200"]),
        ("Web console", webconsole.main, ["--runs", "3" if quick else "20"]),
    ]  # fmt: skip
    for title, run, args in suites:
        print(f"\n## {title}\n", flush=True)
        status = run(args)
        sys.stdout.flush()
        if status:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
