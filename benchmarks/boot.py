"""Boot to reachable: from the container's start to the first HTTP answer through the pod IP.

`kvm-manager run` in a fresh pod (image cached, its own new disk), against the same guest
started by a bare QEMU command in a fresh pod whose network, firewall, DHCP server, disk and
config drive were prepared in advance (by `kvm-manager setup`, not timed). A poller in the
node namespace GETs http://POD_IP/ every 20 ms. The difference is what kvm-manager adds to
a start. Under TCG the guest's boot dominates both. Medians.

With `--guest debian` (the real guest, podlab/debian) it also times cloud-init's end (its
"finished" console line); for the bare QEMU, whose start is the container's, that is QEMU's
start to cloud-init's end.

    python -m benchmarks.boot [--runs 7] [--guest busybox|debian]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import WORKDIR, median, need_root, say, table
from benchmarks.vms import GuestPods, first_answer, now, seconds_until_answer
from podlab import debian
from podlab.lab import KvmManager, PodLab

BARE = "bare QEMU, network prepared in advance"


@dataclass(frozen=True)
class Boot:
    reachable: float  # s from the container's start to the first HTTP answer
    cloud_init: float | None  # ... to cloud-init's end (the Debian guest only)


def boot(pods: GuestPods, start: Callable[[PodLab], Callable[[], KvmManager]]) -> Boot:
    with pods.pod() as lab:
        launch = start(lab)  # whatever is prepared in advance happens here, untimed
        timeout = pods.boot_timeout()
        poller = first_answer(lab.net.node, f"http://{lab.net.pod_ip}/", timeout)
        started = now()
        vm = launch()
        try:
            reachable = seconds_until_answer(poller, started, timeout)
            done = None
            if pods.debian:
                vm.console.wait_for(debian.CLOUD_INIT_DONE, timeout)
                done = now() - started  # the console is read as it comes: late by < 1 ms
            return Boot(reachable, done)
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
    contenders = {BARE: bare_qemu(pods), "`kvm-manager run`": with_kvm_manager(pods)}
    results: dict[str, list[Boot]] = {name: [] for name in contenders}
    for n in range(runs):
        for name, start in contenders.items():  # interleaved: drift hits both alike
            say(f"boot: run {n + 1} of {runs}: {name}")
            results[name].append(boot(pods, start))
    baseline = median([b.reachable for b in results[BARE]])
    headers = ["started by", "median", "range", "vs bare QEMU"]
    rows = []
    for name, boots in results.items():
        times = [b.reachable for b in boots]
        row = [
            name, f"{median(times):.2f} s", f"{min(times):.2f}-{max(times):.2f} s",
            f"{(median(times) - baseline) * 1000:+.0f} ms ({median(times) / baseline - 1:+.1%})",
        ]  # fmt: skip
        if pods.debian:
            row.append(f"{median([b.cloud_init or 0.0 for b in boots]):.2f} s")
        rows.append(row)
    if pods.debian:
        headers.append("cloud-init's end")
    guest = "the Debian guest" if pods.debian else "the test guest"
    return (
        f"Boot of {guest} to the first HTTP answer through the pod IP (TCG), median of "
        f"{runs}:\n\n" + table(headers, rows)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--guest", choices=("busybox", "debian"), default="busybox")
    parser.add_argument("--dir", type=Path, default=WORKDIR / "boot")
    args = parser.parse_args(argv)
    need_root()
    pods = GuestPods(args.dir.resolve(), args.guest)
    pods.prepare()
    print(measure(pods, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
