"""The benchmarks still run (each once, small): they are measurements, so nothing here checks a
time, only that each produces its table from real runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from podlab.lab import REPO

SMALL = {
    "startup": ["--runs", "1"],
    "datapath": ["--runs", "1", "--size-mib", "4", "--requests", "4"],
    "boot": ["--runs", "1"],
    "boot-debian": ["--runs", "1", "--guest", "debian"],
    "fetch": ["--runs", "1", "--size-gib", "0.05"],
    "convert": ["--runs", "1", "--size-mib", "16"],
    "metrics": ["--runs", "5"],
    "webconsole": ["--runs", "2"],
}
HEADERS = {
    "startup": "| **`kvm-manager setup`**, new pod |",
    "datapath": "| NAT: node -> pod IP |",
    "boot": "| `kvm-manager run` |",
    "boot-debian": "| `kvm-manager run` |",
    "fetch": "| kvm-manager fetch, IMG_SHA256 |",
    "convert": "| export | qemu-img convert | cp, convert, sync | kvm-manager fetch |",
    "metrics": "| QEMU running | 5 |",
    "webconsole": "| through the web console's server |",
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_benchmark_runs_and_prints_its_table(name: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            f"benchmarks.{name.partition('-')[0]}",
            *SMALL[name],
            "--dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert HEADERS[name] in done.stdout, done.stdout
