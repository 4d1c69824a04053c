"""What the benchmarks share: timing a command, medians, and Markdown tables."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKDIR = REPO / "build" / "bench"
PYTHON = sys.executable


@dataclass(frozen=True)
class Timed:
    seconds: float
    stdout: str
    stderr: str


def timed(argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 120) -> Timed:
    """Run a command to completion; its wall time. A failure stops the benchmark."""
    began = time.perf_counter()
    done = subprocess.run(
        list(argv),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return Timed(seconds, done.stdout, done.stderr)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def ms1(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}" if baseline else "-"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def need_root() -> None:
    if os.geteuid() != 0:
        raise SystemExit("this benchmark makes network namespaces: run it as root")
