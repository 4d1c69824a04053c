"""Image download: `kvm-manager fetch` against `curl -o`, from a loopback HTTP server.

A sparse raw image (default 4 GiB) is served with sendfile(2), so the server costs little.
Each contender downloads it once per round, RUNS rounds, into a fresh folder on the same
filesystem; medians are reported. kvm-manager fsyncs what it writes (a start must not use an
image that a crash could lose), so curl is timed both alone and followed by an fsync of its
file (`sync FILE`). Peak RSS is the process's VmHWM.

    python -m benchmarks.fetch [--size-gib 4] [--runs 3] [--dir build/bench]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GiB = 1 << 30


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_rss_mib: float


def serve(image: Path) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            size = image.stat().st_size
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.send_header("ETag", '"bench"')
            self.end_headers()
            self.wfile.flush()
            with image.open("rb") as handle:
                self.connection.sendfile(handle)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/{image.name}"


def measure(argv: list[str], env: dict[str, str] | None = None) -> Run:
    """Wall time, and peak RSS as VmHWM: ru_maxrss would count the benchmark's own memory,
    which a child keeps as its high-water mark across fork and exec."""
    began = time.monotonic()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_kib = 0
    while process.poll() is None:
        peak_kib = max(peak_kib, _vm_hwm_kib(process.pid))
        time.sleep(0.01)
    seconds = time.monotonic() - began
    if process.returncode != 0:
        stderr = process.stderr.read().decode() if process.stderr else ""
        raise SystemExit(f"{' '.join(argv)} failed: {stderr}")
    return Run(seconds, peak_kib / 1024)


def _vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass  # exited meanwhile
    return 0


def repeat(runs: int, workdir: Path, once: Callable[[Path], Run]) -> list[Run]:
    results = []
    for _ in range(runs):
        target = workdir / "target"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        results.append(once(target))
        shutil.rmtree(target)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--size-gib", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=REPO / "build" / "bench" / "fetch")
    args = parser.parse_args(argv)
    workdir: Path = args.dir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    image = workdir / "sparse.img"
    size = int(args.size_gib * GiB)
    with image.open("wb") as out:
        out.truncate(size)
    print(f"hashing the {args.size_gib:g} GiB image once...", file=sys.stderr)
    digest = hashlib.sha256()
    with image.open("rb") as source:
        while chunk := source.read(1 << 24):
            digest.update(chunk)
    httpd, url = serve(image)
    kvm_manager = str(Path(sys.executable).parent / "kvm-manager")

    def curl(target: Path) -> Run:
        return measure(["curl", "-sS", "-o", str(target / "curl.img"), url])

    def curl_fsync(target: Path) -> Run:
        run = curl(target)
        began = time.monotonic()
        subprocess.run(["sync", str(target / "curl.img")], check=True)
        return Run(run.seconds + time.monotonic() - began, run.peak_rss_mib)

    def fetch(sha256: str | None) -> Callable[[Path], Run]:
        def once(target: Path) -> Run:
            env = {"PATH": os.environ["PATH"], "IMG_SOURCE": url, "IMAGE_DIR": str(target)}
            if sha256:
                env["IMG_SHA256"] = sha256
            return measure([kvm_manager, "fetch"], env)

        return once

    contenders = {
        "curl -o": curl,
        "curl -o, then fsync": curl_fsync,
        "kvm-manager fetch": fetch(None),
        "kvm-manager fetch, IMG_SHA256": fetch(digest.hexdigest()),
    }
    repeat(1, workdir, curl)  # warm-up, not counted: the first read of the image is slower
    # Round after round of every contender, so that each meets the disk in the same moods.
    runs: dict[str, list[Run]] = {name: [] for name in contenders}
    for round_number in range(args.runs):
        print(f"round {round_number + 1} of {args.runs}...", file=sys.stderr)
        for name, once in contenders.items():
            runs[name] += repeat(1, workdir, once)
    medians = {
        name: Run(
            statistics.median(r.seconds for r in done),
            statistics.median(r.peak_rss_mib for r in done),
        )
        for name, done in runs.items()
    }
    httpd.shutdown()
    image.unlink()
    baseline = medians["curl -o, then fsync"].seconds
    print(f"\nA {args.size_gib:g} GiB sparse image over loopback, median of {args.runs} runs:\n")
    print("| command | time | throughput | vs curl + fsync | peak RSS |")
    print("|---|---|---|---|---|")
    for name, run in medians.items():
        rate = size / run.seconds / (1 << 20)
        print(
            f"| {name} | {run.seconds:.2f} s | {rate:.0f} MiB/s | "
            f"{baseline / run.seconds:.2f} | {run.peak_rss_mib:.0f} MiB |"
        )
    plain, hashed = medians["kvm-manager fetch"], medians["kvm-manager fetch, IMG_SHA256"]
    kept = plain.seconds / hashed.seconds
    print(f"\nWith IMG_SHA256, kvm-manager keeps {kept:.2f} of its throughput.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
