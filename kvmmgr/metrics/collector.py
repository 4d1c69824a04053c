"""The sidecar's collector: at each scrape, everything read afresh (the startup record, one QMP
session, /proc, /sys, the image cache), then turned into metric families. One scrape at a time:
QEMU's monitor serves one client, and a second scrape would only wait for it there."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from prometheus_client.core import Metric

from kvmmgr import documents
from kvmmgr.metrics import families, host, monitor, record
from kvmmgr.metrics.monitor import QemuAnswers
from kvmmgr.metrics.record import StartRecord
from kvmmgr.vm.qemu import METRICS_QMP_SOCKET

log = logging.getLogger("kvmmgr")
MAX_SAID = 100  # different warnings kept in mind


class VmCollector:
    """`vm`: the VM's name; `base`: the base image's path in the cache, as kvm-manager
    computes it."""

    def __init__(
        self, vm: str, run_dir: Path, base: Path, *, proc: Path = host.PROC,
        sys_net: Path = host.SYS_NET,
    ) -> None:  # fmt: skip
        self.vm, self.run_dir, self.base = vm, run_dir, base
        self.proc, self.sys_net = proc, sys_net
        self._lock = threading.Lock()
        self._said: set[str] = set()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            return families.build(self.snapshot())

    def snapshot(self) -> families.Snapshot:
        started = self._record()
        qemu = monitor.ask(self.run_dir / METRICS_QMP_SOCKET)
        nics = []
        for nic in started.nics if started else ():
            counters = host.nic_counters(nic.interface, self.sys_net)
            if counters is not None:
                nics.append((nic, counters))
        return families.Snapshot(
            vm=self.vm,
            now=time.time(),
            qemu=qemu,
            record=started,
            vcpu_seconds=self._vcpus(qemu),
            nics=tuple(nics),
            fetch=host.fetch_progress(self.base),
        )

    def _record(self) -> StartRecord | None:
        try:
            found = record.read(self.run_dir)
        except documents.Invalid as exc:
            self._once(f"{self.run_dir / record.FILE_NAME} does not hold up, left out: {exc}")
            return None
        if found is not None and found.vm != self.vm:
            self._once(
                f"{self.run_dir / record.FILE_NAME} is the record of VM {found.vm!r}, not of "
                f"{self.vm!r}: left out"
            )
            return None
        return found

    def _vcpus(self, qemu: QemuAnswers | None) -> dict[int, float]:
        if qemu is None:
            return {}
        try:
            return host.vcpu_seconds(qemu.vcpus, self.proc)
        except host.NotVisible as exc:
            self._once(
                f"no vCPU times: QEMU's threads are not visible from here ({exc}); the "
                "sidecar needs the pod's shared process namespace (shareProcessNamespace)"
            )
            return {}

    def _once(self, message: str) -> None:
        """A warning said once per process, not at every scrape (and the first ones only)."""
        if message not in self._said and len(self._said) < MAX_SAID:
            self._said.add(message)
            log.warning("metrics: %s", message)
