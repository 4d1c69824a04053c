"""Datapath: TCP throughput and request latency to the test guest, three ways.

- NAT: from the node namespace through the pod IP (kvm-manager's DNAT/SNAT, bridge, tap);
- direct: from inside the pod to VM_IP (bridge and tap, no NAT);
- user-mode: the same guest under QEMU's user-mode network (`-netdev user` with a host forward
  of port 80, what KubeVirt started with), from the node through the pod IP.
Throughput: curl downloads a file of --size-mib from the guest's busybox httpd. Latency: curl
GETs its small index page, a new connection each time (busybox httpd closes them), and reports
connect-to-last-byte. The guest runs under TCG here, so absolute figures are low: the ratios
are the point. Medians.

    python -m benchmarks.datapath [--runs 5] [--size-mib 32] [--requests 50]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from benchmarks.common import WORKDIR, median, need_root, ratio, say, table
from benchmarks.vms import GuestPods, wait_ready
from podlab.lab import VM_IP
from podlab.netns import Namespace


@dataclass(frozen=True)
class Way:
    """One way to the guest: where the client runs and the address it uses."""

    name: str
    client: Namespace
    host: str


@dataclass(frozen=True)
class Figures:
    mib_per_s: float
    latency_ms: float


def measure(way: Way, runs: int, requests: int) -> Figures:
    base = f"http://{way.host}"
    speeds = [
        float(_curl(way.client, "%{speed_download}", f"{base}/big.bin")[0]) / (1 << 20)
        for _ in range(runs)
    ]
    latencies = [
        float(t) * 1000
        for _ in range(runs)
        for t in _curl(way.client, "%{time_total}\\n", *[f"{base}/"] * (requests // runs))
    ]
    return Figures(median(speeds), median(latencies))


def _curl(ns: Namespace, write_out: str, *urls: str) -> list[str]:
    argv = ["curl", "-sS", "--fail", "--max-time", "120", "-w", write_out]
    for url in urls:
        argv += ["-o", "/dev/null", url]
    return ns.run(*argv, timeout=300).split()


def make_big_file(client: Namespace, host: str, size_mib: int) -> None:
    """A file in the guest's RAM-backed web root, made through its CGI (zeros: nothing on
    the way compresses them, and writing random bytes under TCG takes long)."""
    command = f"dd if=/dev/zero of=/www/big.bin bs=1M count={size_mib} 2>/dev/null && echo done"
    url = f"http://{host}/cgi-bin/sh?{quote(command)}"
    answer = client.run("curl", "-sS", "--fail", "--max-time", "120", url, timeout=150)
    if "done" not in answer:
        raise SystemExit(f"could not make the test file in the guest: {answer!r}")


def run(pods: GuestPods, runs: int, size_mib: int, requests: int) -> str:
    results: dict[str, Figures] = {}
    with pods.pod() as lab:
        say("datapath: the guest under kvm-manager")
        vm = pods.kvm_manager(lab)
        try:
            wait_ready(vm)
            make_big_file(lab.net.pod, VM_IP, size_mib)
            for way in (
                Way("NAT: node -> pod IP", lab.net.node, lab.net.pod_ip),
                Way("direct: pod -> VM_IP", lab.net.pod, VM_IP),
            ):
                say(f"datapath: {way.name}")
                results[way.name] = measure(way, runs, requests)
        finally:
            vm.kill()
    with pods.pod() as lab:
        say("datapath: the guest under QEMU user-mode networking")
        vm = pods.user_mode(lab)
        try:
            wait_ready(vm)
            # Under user-mode networking the guest is reached through the host forward only.
            make_big_file(lab.net.node, lab.net.pod_ip, size_mib)
            way = Way("user-mode: node -> pod IP", lab.net.node, lab.net.pod_ip)
            say(f"datapath: {way.name}")
            results[way.name] = measure(way, runs, requests)
        finally:
            vm.kill()
    nat = results["NAT: node -> pod IP"]
    rows = [
        [
            name,
            f"{figures.mib_per_s:.1f} MiB/s",
            ratio(nat.mib_per_s, figures.mib_per_s),
            f"{figures.latency_ms:.2f} ms",
            ratio(nat.latency_ms, figures.latency_ms),
        ]
        for name, figures in results.items()
    ]
    return (
        f"Datapath to the test guest (TCG), {size_mib} MiB downloads and {requests} requests, "
        f"medians:\n\n"
        + table(["path", "throughput", "NAT / this", "request latency", "NAT / this"], rows)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size-mib", type=int, default=32)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--dir", type=Path, default=WORKDIR / "datapath")
    args = parser.parse_args(argv)
    need_root()
    pods = GuestPods(args.dir.resolve())
    pods.prepare()
    print(run(pods, args.runs, args.size_mib, args.requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
