"""What a scrape of the metrics sidecar costs, against a real VM: the test guest booted by
`kvm-manager run` with METRICS_PORT, and `kvm-manager metrics` beside it in the pod, as the
chart runs them. One process in the node namespace GETs http://POD_IP:PORT/metrics again and
again and times each answer; then the same with QEMU stopped (SIGSTOP), a hung QEMU, which
the scrape waits for no longer than its QMP session's bound. The sidecar's resident memory
is read from /proc after the scrapes. Medians.

    python -m benchmarks.metrics [--runs 200]
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import median, ms1, say, table
from benchmarks.vms import GuestPods, guest_benchmark, wait_ready
from kvmmgr.metrics.monitor import SESSION_SECONDS
from podlab.lab import KvmManager, PodLab

PORT = "9477"
HUNG_RUNS = 3  # each takes the session's bound
READY_TIMEOUT = 30.0
SCRAPER = """
import json, sys, time, urllib.request
url, runs = sys.argv[1], int(sys.argv[2])
times, size = [], 0
for _ in range(runs):
    began = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as answer:
        size = len(answer.read())
    times.append(time.perf_counter() - began)
print(json.dumps({"times": times, "bytes": size}))
"""


def scrapes(lab: PodLab, runs: int) -> tuple[list[float], int]:
    """Each scrape's seconds, from the node; the size of the last answer."""
    url = f"http://{lab.net.pod_ip}:{PORT}/metrics"
    done = json.loads(lab.net.node.run(sys.executable, "-c", SCRAPER, url, str(runs), timeout=600))
    return done["times"], done["bytes"]


def start_sidecar(lab: PodLab, env: dict[str, str]) -> KvmManager:
    sidecar = lab.start("metrics", METRICS_PORT=PORT, **env)
    deadline = time.monotonic() + READY_TIMEOUT
    while lab.from_node.http(f"http://{lab.net.pod_ip}:{PORT}/metrics")["status"] != 200:
        if sidecar.process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the sidecar does not answer: {sidecar.log.text[-2000:]}")
        time.sleep(0.2)
    return sidecar


def memory_mib(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = {k: v.split() for k, _, v in (line.partition(":") for line in status)}
    return {name: int(fields[name][0]) / 1024 for name in ("VmRSS", "VmHWM")}


def measure(pods: GuestPods, runs: int) -> str:
    with pods.pod() as lab:
        env = pods.volumes(lab)
        vm = lab.start(METRICS_PORT=PORT, **env)
        wait_ready(vm)
        sidecar = start_sidecar(lab, env)
        say(f"metrics: {runs} scrapes of a running VM")
        running, size = scrapes(lab, runs)
        memory = memory_mib(sidecar.pid)
        say(f"metrics: {HUNG_RUNS} scrapes with QEMU stopped")
        os.kill(vm.pid, signal.SIGSTOP)
        try:
            hung, _ = scrapes(lab, HUNG_RUNS)
        finally:
            os.kill(vm.pid, signal.SIGCONT)
        sidecar.process.send_signal(signal.SIGTERM)
        sidecar.wait(10)
    rows = [
        ["QEMU running", str(runs), ms1(median(running)), ms1(max(running)), f"{size} B"],
        ["QEMU stopped (SIGSTOP)", str(HUNG_RUNS), ms1(median(hung)), ms1(max(hung)), "-"],
    ]
    return (
        f"One scrape of `kvm-manager metrics` from the node through the pod IP (the test guest, "
        f"TCG; QMP session bound {SESSION_SECONDS:g} s):\n\n"
        + table(["scrape", "runs", "median", "max", "answer"], rows)
        + f"\n\nThe sidecar's memory after the scrapes: {memory['VmRSS']:.0f} MiB resident, "
        f"{memory['VmHWM']:.0f} MiB at its peak."
    )


def main(argv: Sequence[str] | None = None) -> int:
    return guest_benchmark(argv, __doc__, "metrics", 200, measure)


if __name__ == "__main__":
    sys.exit(main())
