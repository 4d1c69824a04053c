"""Appliance import: `kvm-manager fetch` of a VMDK, VHDX or VDI against a bare `qemu-img convert`
of the same file to qcow2, in the same run.

The disk (default 1 GiB) holds a quarter of random data, a quarter of a repeated pattern and
the rest zeros, as a used appliance might; it is exported once per format. kvm-manager's
figure is the whole import: the copy into the cache, its header checks, the conversion and
the check of the result. It is compared with the bare conversion, and with the same work done
by hand: `cp` into the cache, `qemu-img convert`, `sync` of the result. Medians of RUNS
rounds; peak RSS is kvm-manager's own VmHWM.

    python -m benchmarks.convert [--size-mib 1024] [--runs 3] [--dir build/bench/convert]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.common import WORKDIR, table
from benchmarks.fetch import Run, measure

MiB = 1 << 20
KVM_MANAGER = str(Path(sys.executable).parent / "kvm-manager")
# (name, qemu-img format and options): what each hypervisor exports
EXPORTS = {
    "VMDK stream-optimized": ("vmdk", ["-o", "subformat=streamOptimized"]),
    "VHDX": ("vhdx", []),
    "VDI": ("vdi", []),
}


def make_disk(path: Path, size_mib: int) -> None:
    rand = random.Random(15)
    quarter = size_mib // 4
    with path.open("wb") as out:
        for _ in range(quarter):
            out.write(rand.randbytes(MiB))
        pattern = (b"kvm-manager appliance " * 48000)[:MiB]
        for _ in range(quarter):
            out.write(pattern)
        out.truncate(size_mib * MiB)


def bare_convert(export: Path, target: Path) -> Run:
    return measure(["qemu-img", "convert", "-O", "qcow2", str(export), str(target / "b.qcow2")])


def kvm_manager_fetch(export: Path, target: Path) -> Run:
    env = {"PATH": os.environ["PATH"], "IMG_SOURCE": str(export), "IMAGE_DIR": str(target)}
    return measure([KVM_MANAGER, "fetch"], {**env, "IMG_TARGET": "base"})


def copy_convert_sync(export: Path, target: Path) -> Run:
    """What kvm-manager does, by hand: the export copied into the cache (as a download would
    put it there), converted, and the result made durable."""
    part, base = target / "h.part", target / "h.qcow2"
    runs = [
        measure(["cp", str(export), str(part)]),
        measure(["qemu-img", "convert", "-O", "qcow2", str(part), str(base)]),
        measure(["sync", str(base)]),
    ]
    return Run(sum(r.seconds for r in runs), max(r.peak_rss_mib for r in runs))


CONTENDERS: dict[str, Callable[[Path, Path], Run]] = {
    "bare": bare_convert,
    "by hand": copy_convert_sync,
    "ours": kvm_manager_fetch,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=WORKDIR / "convert")
    args = parser.parse_args(argv)
    workdir: Path = args.dir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    raw = workdir / "disk.raw"
    make_disk(raw, args.size_mib)
    rows = []
    for name, (fmt, options) in EXPORTS.items():
        export = workdir / f"appliance.{fmt}"
        subprocess.run(
            ["qemu-img", "convert", "-O", fmt, *options, str(raw), str(export)], check=True
        )
        mib = export.stat().st_size / MiB
        print(f"{name} ({mib:.0f} MiB): {args.runs} rounds...", file=sys.stderr)
        runs: dict[str, list[Run]] = {key: [] for key in CONTENDERS}
        for _ in range(args.runs):  # round after round, as in benchmarks.fetch
            for key, once in CONTENDERS.items():
                target = workdir / "target"
                shutil.rmtree(target, ignore_errors=True)
                target.mkdir()
                runs[key].append(once(export, target))
                shutil.rmtree(target)
        export.unlink()
        bare, by_hand, ours = (statistics.median(r.seconds for r in runs[k]) for k in CONTENDERS)
        peak = statistics.median(r.peak_rss_mib for r in runs["ours"])
        rows.append([
            f"{name}, {mib:.0f} MiB", f"{bare:.2f} s", f"{by_hand:.2f} s", f"{ours:.2f} s",
            f"{ours / by_hand:.2f}", f"{peak:.0f} MiB",
        ])  # fmt: skip
    raw.unlink()
    print(f"\nImporting a {args.size_mib} MiB appliance disk, median of {args.runs} rounds:\n")
    headers = [
        "export", "qemu-img convert", "cp, convert, sync", "kvm-manager fetch",
        "vs cp, convert, sync", "kvm-manager peak RSS",
    ]  # fmt: skip
    print(table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
