"""Boot to reachable: from the container's start to the first HTTP answer through the pod IP.

`kvm-manager run` in a fresh pod (image cached, its own new disk), against the same guest
started by a bare QEMU command in a fresh pod whose network, firewall, DHCP server, disk and
config drive were prepared in advance (by `kvm-manager setup`, not timed). A poller in the
node namespace GETs http://POD_IP/ every 20 ms. The difference is what kvm-manager adds to
a start. Under TCG the guest's boot dominates both. Medians.

    python -m benchmarks.boot [--runs 7]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.common import WORKDIR, median, need_root, say, table
from benchmarks.vms import GuestPods, first_answer, now, seconds_until_answer
from podlab.lab import KvmManager, PodLab


def boot_seconds(pods: GuestPods, start: Callable[[PodLab], Callable[[], KvmManager]]) -> float:
    with pods.pod() as lab:
        launch = start(lab)  # whatever is prepared in advance happens here, untimed
        poller = first_answer(lab.net.node, f"http://{lab.net.pod_ip}/")
        started = now()
        vm = launch()
        try:
            return seconds_until_answer(poller, started)
        finally:
            vm.kill()


def with_kvm_manager(pods: GuestPods) -> Callable[[PodLab], Callable[[], KvmManager]]:
    return lambda lab: lambda: pods.kvm_manager(lab)


def bare_qemu(pods: GuestPods) -> Callable[[PodLab], Callable[[], KvmManager]]:
    def prepare(lab: PodLab) -> Callable[[], KvmManager]:
        argv = pods.prepared_argv(lab)
        return lambda: pods.bare(lab, argv)

    return prepare


def measure(pods: GuestPods, runs: int) -> str:
    contenders = {
        "bare QEMU, network prepared in advance": bare_qemu(pods),
        "`kvm-manager run`": with_kvm_manager(pods),
    }
    results: dict[str, list[float]] = {name: [] for name in contenders}
    for n in range(runs):
        for name, start in contenders.items():  # interleaved: drift hits both alike
            say(f"boot: run {n + 1} of {runs}: {name}")
            results[name].append(boot_seconds(pods, start))
    baseline = median(results["bare QEMU, network prepared in advance"])
    rows = [
        [name, f"{median(times):.2f} s", f"{min(times):.2f}-{max(times):.2f} s",
         f"{(median(times) - baseline) * 1000:+.0f} ms"]
        for name, times in results.items()
    ]  # fmt: skip
    return f"Boot to the first HTTP answer through the pod IP (TCG), median of {runs}:\n\n" + table(
        ["started by", "median", "range", "vs bare QEMU"], rows
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=WORKDIR / "boot")
    args = parser.parse_args(argv)
    need_root()
    pods = GuestPods(args.dir.resolve())
    pods.prepare()
    print(measure(pods, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
