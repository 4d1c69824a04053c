"""Startup overhead: `kvm-manager setup` in a fresh pod, step by step, against baselines
measured in the same run, and how it scales.

Every run gets fresh node and pod namespaces and its own RUN_DIR and VM_DIR, as a new pod of
a StatefulSet would (so its disk, a qcow2 overlay, is made), and shares an image cache that
already holds the verified base image. In the same pod namespace, interleaved with those runs:
- `python -c pass`: the interpreter alone;
- Python importing pyroute2, python-iptables, pycdlib and PyYAML, plainly;
- the floor: Python importing the same libraries the way kvm-manager does
  (kvmmgr/system/libload.py);
- the original kvm-manager's setup, in bash (benchmarks/original_setup.sh; in its own fresh pod,
  since it cannot run twice).
A second `setup` in the same pod is a container restart. Every figure is a median.

    python -m benchmarks.startup [--runs 9]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import (
    PYTHON,
    REPO,
    WORKDIR,
    median,
    ms,
    ms1,
    need_root,
    ratio,
    say,
    table,
    timed,
)
from kvmmgr.startup import STEP_NAMES
from podlab.lab import KVM_MANAGER, PodLab

STEPS = ("observe", "plan", "preflight", *STEP_NAMES)
IMPORTS = "import pyroute2, iptc, pycdlib, yaml"
FLOOR = (
    "from kvmmgr.system.libload import load_iproute, load_iptc; load_iproute(); load_iptc(); "
    "import pycdlib, yaml"
)
PEAK = "; print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))"
ORIGINAL = REPO / "benchmarks" / "original_setup.sh"
_TIMING = re.compile(r"timing: (\S+) ([0-9.]+) ms")
_MEMORY = re.compile(r"memory: peak RSS ([0-9.]+) MiB")


@dataclass
class Setup:
    """One `kvm-manager setup`: wall time, the time of each step, peak memory (MiB)."""

    seconds: float
    steps: dict[str, float]
    peak_mib: float

    @classmethod
    def parse(cls, seconds: float, stderr: str) -> Setup:
        steps = {name: float(value) / 1000 for name, value in _TIMING.findall(stderr)}
        memory = _MEMORY.search(stderr)
        return cls(seconds, steps, float(memory.group(1)) if memory else 0.0)


@dataclass
class Samples:
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        return median(self.values.get(name, []))


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.cache = workdir / "image-cache"
        self.source = workdir / "source" / "base.qcow2"
        self.runs = 0

    def prepare(self) -> None:
        """The image cache as a first start leaves it: the base fetched, verified, recorded."""
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.cache.mkdir(parents=True)
        self.source.parent.mkdir()
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(self.source), "1G"], check=True
        )
        with self.pod() as lab:
            timed(lab.net.pod.argv(KVM_MANAGER, "fetch"), self.env(lab))

    def pod(self) -> PodLab:
        self.runs += 1
        return PodLab(self.workdir / f"pod-{self.runs}")

    def env(self, lab: PodLab, **overrides: str) -> dict[str, str]:
        (lab.volumes / "vm").mkdir(exist_ok=True)
        return lab.env(
            IMAGE_DIR=str(self.cache),
            IMG_SOURCE=str(self.source),
            VM_DIR=str(lab.volumes / "vm"),
            DEBUG="1",
            **overrides,
        )

    def setup(self, lab: PodLab, env: Mapping[str, str]) -> Setup:
        run = timed(lab.net.pod.argv(KVM_MANAGER, "setup"), env)
        return Setup.parse(run.seconds, run.stderr)

    def fresh_setup(
        self, resolv: str | None = None, *, restart: bool = True, **overrides: str
    ) -> list[Setup]:
        """`setup` in a new pod, then (`restart`) again in the same pod: a container restart."""
        with self.pod() as lab:
            if resolv is not None:
                (lab.volumes / "resolv.conf").write_text(resolv)
            env = self.env(lab, **overrides)
            return [self.setup(lab, env) for _ in range(2 if restart else 1)]

    def python(self, code: str) -> tuple[float, float]:
        """Wall time of `python -c CODE` in a pod, and its peak memory (MiB)."""
        with self.pod() as lab:
            run = timed(lab.net.pod.argv(PYTHON, "-c", code + PEAK), {"PYTHONPATH": str(REPO)})
        return run.seconds, int(run.stdout.split()[-1]) / 1024

    def original(self) -> float:
        with self.pod() as lab:
            env = self.env(lab, IMG_TARGET="base.qcow2")
            return timed(lab.net.pod.argv("bash", str(ORIGINAL)), env).seconds


def overhead(bench: Bench, runs: int) -> str:
    samples = Samples()
    steps = Samples()
    for n in range(runs):
        say(f"startup: run {n + 1} of {runs}")
        first, again = bench.fresh_setup()
        samples.add("setup", first.seconds)
        samples.add("restart", again.seconds)
        samples.add("memory", first.peak_mib)
        for name in STEPS:
            steps.add(name, first.steps.get(name, 0.0))
            steps.add(f"again {name}", again.steps.get(name, 0.0))
        steps.add("start", first.seconds - sum(first.steps.get(name, 0.0) for name in STEPS))
        steps.add("again start", again.seconds - sum(again.steps.get(s, 0.0) for s in STEPS))
        for name, code in (("python", "pass"), ("imports", IMPORTS), ("floor", FLOOR)):
            seconds, peak = bench.python(code)
            samples.add(name, seconds)
            samples.add(f"{name} memory", peak)
        samples.add("original", bench.original())

    floor = samples.median("floor")
    setup = samples.median("setup")
    rows = [
        ("`python -c pass`", "python"),
        ("Python + `import pyroute2, iptc, pycdlib, yaml`", "imports"),
        ("**floor**: Python + the same libraries, imported as kvm-manager does", "floor"),
        ("the original kvm-manager's setup, in bash", "original"),
        ("**`kvm-manager setup`**, new pod", "setup"),
        ("`kvm-manager setup` again in the same pod (container restart)", "restart"),
    ]
    memory = {"python": "python memory", "imports": "imports memory", "floor": "floor memory"}
    memory["setup"] = "memory"
    overview = table(
        ["what runs in the pod namespace", "time", "vs floor", "setup minus it", "peak RSS"],
        [
            [
                label,
                ms(samples.median(key)),
                ratio(samples.median(key), floor),
                ms(setup - samples.median(key)),
                f"{samples.median(memory[key]):.0f} MiB" if key in memory else "-",
            ]
            for label, key in rows
        ],
    )
    breakdown = table(
        ["step", "new pod", "container restart"],
        [
            [name, ms1(steps.median(name)), ms1(steps.median(f"again {name}"))]
            for name in ("start", *STEPS)
        ]
        + [["total", ms1(setup), ms1(samples.median("restart"))]],
    )
    return (
        f"Startup, median of {runs} runs (`start`: interpreter, imports and configuration, "
        "up to the first step):\n\n" + overview + "\n\nPer step:\n\n" + breakdown
    )


def scale(bench: Bench, runs: int) -> str:
    def kept(count: int) -> dict[str, str]:
        return {"NAT_EXCLUDE": " ".join(f"tcp/{10000 + 2 * n}" for n in range(count))}

    def search(count: int) -> str:
        domains = " ".join(f"team{n}.svc.cluster.local" for n in range(count))
        return f"nameserver 10.96.0.10\nsearch {domains}\n"

    cases: list[tuple[str, str, Callable[[], Setup]]] = []
    for count in (1, 50, 500):
        cases.append((f"NAT_EXCLUDE: {count} port(s)", "firewall", _first(bench, kept(count))))
    for count in (3, 32, 500):
        cases.append(
            (f"resolv.conf: {count} search domains", "dhcp", _first(bench, {}, search(count)))
        )
    measured: dict[str, list[Setup]] = {label: [] for label, _, _ in cases}
    for n in range(runs):  # interleaved, so that the machine's drift hits every case alike
        say(f"scale: run {n + 1} of {runs}")
        for label, _, run in cases:
            measured[label].append(run())
    rows = []
    for label, step, _ in cases:
        results = measured[label]
        rows.append(
            [
                label,
                ms(median([r.seconds for r in results])),
                f"{step} {ms1(median([r.steps.get(step, 0.0) for r in results]))}",
                f"{median([r.peak_mib for r in results]):.0f} MiB",
            ]
        )
    return f"Scale, median of {runs} runs each:\n\n" + table(
        ["pod", "setup", "the step it touches", "peak RSS"], rows
    )


def _first(bench: Bench, env: dict[str, str], resolv: str | None = None) -> Callable[[], Setup]:
    return lambda: bench.fresh_setup(resolv, restart=False, **env)[0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--dir", type=Path, default=WORKDIR / "startup")
    args = parser.parse_args(argv)
    need_root()
    bench = Bench(args.dir.resolve())
    bench.prepare()
    print(overhead(bench, args.runs) + "\n\n" + scale(bench, args.runs))
    shutil.rmtree(bench.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
