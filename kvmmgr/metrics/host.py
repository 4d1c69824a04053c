"""What the sidecar reads of the pod's kernel and volumes: the CPU time of QEMU's vCPU threads
(/proc), the counters of the VM's taps (/sys/class/net), and a download under way in the
image cache. Files only, no subprocess; each small and read within a bound."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kvmmgr import documents
from kvmmgr.image.records import hidden
from kvmmgr.image.transfer import STATE_FIELDS, STATE_MAX
from kvmmgr.system.files import UnfitFile, read_regular
from kvmmgr.vm.qemu import QEMU

PROC = Path("/proc")
SYS_NET = Path("/sys/class/net")
STAT_MAX = 4096  # bytes of /proc/TID/stat: about 300
COUNTER_MAX = 32  # bytes of a sysfs counter
NIC_COUNTERS = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_dropped", "tx_dropped")
TICKS = os.sysconf("SC_CLK_TCK")  # the unit of utime and stime
# A thread's name, as QEMU names its vCPU threads (-name debug-threads=on): "CPU 0/KVM",
# "CPU 1/TCG"; without it, every thread has the program's name, cut to 15 characters.
QEMU_COMM = QEMU[:15]


class NotVisible(Exception):
    """Why QEMU's threads cannot be seen from here, in a few words."""


def vcpu_seconds(threads: Sequence[tuple[int, int]], proc: Path = PROC) -> dict[int, float]:
    """CPU time (user and system) of each vCPU, by index, from its thread's /proc entry.
    `threads`: (vCPU index, thread id), as QEMU reports them. NotVisible when this process
    does not share QEMU's PID namespace (no such entry, or another process's)."""
    seconds: dict[int, float] = {}
    counted: set[int] = set()
    for index, tid in threads:
        if tid in counted:
            continue  # vCPUs sharing a thread (single-threaded TCG): counted once
        try:
            data = read_regular(proc / str(tid) / "stat", STAT_MAX)
        except (FileNotFoundError, UnfitFile) as exc:
            raise NotVisible(f"no {proc}/{tid}, the thread of vCPU {index} ({exc})") from None
        comm, times = parse_stat(data)
        if not (comm.startswith(f"CPU {index}/") or comm == QEMU_COMM) or times is None:
            raise NotVisible(f"{proc}/{tid} is {comm!r}, not the thread of vCPU {index}")
        seconds[index] = times / TICKS
        counted.add(tid)
    return seconds


def parse_stat(data: bytes) -> tuple[str, int | None]:
    """The thread's name and its utime + stime in clock ticks, from /proc/TID/stat. The name
    is in parentheses and may hold any character, parentheses too: it ends at the last ')'."""
    head, _, tail = data.decode(errors="replace").rpartition(")")
    comm = head.partition("(")[2]
    fields = tail.split()  # from the 3rd field, the state; utime and stime are the 14th, 15th
    try:
        return comm, int(fields[11]) + int(fields[12])
    except (IndexError, ValueError):
        return comm, None


def nic_counters(interface: str, sys_net: Path = SYS_NET) -> dict[str, int] | None:
    """The link's NIC_COUNTERS as the kernel counts them; None when the link is not there."""
    counters = {}
    for name in NIC_COUNTERS:
        try:
            raw = read_regular(sys_net / interface / "statistics" / name, COUNTER_MAX)
            counters[name] = int(raw)
        except (FileNotFoundError, UnfitFile, ValueError):
            return None
    return counters


@dataclass(frozen=True)
class FetchProgress:
    image: str  # the base's file name
    received: int  # bytes in the part so far
    size: int | None  # bytes the server announced; None: not said


def fetch_progress(base: Path) -> FetchProgress | None:
    """A download of `base` under way: its work files beside it (transfer.py), the one all
    pods share, or this pod's own when the cache has no locks (named by the kernel's host
    name, as cache.py names it). None when the base is there, or no part is."""
    if base.exists():
        return None
    for tag in ("", f".{socket.gethostname()}"):
        part = hidden(base, f"{tag}.part")
        try:
            received = part.stat().st_size
        except OSError:
            continue
        return FetchProgress(base.name, received, _announced(hidden(base, f"{tag}.part.json")))
    return None


def _announced(state: Path) -> int | None:
    """The total in the part's state; None when it says none or does not hold up (the
    cache is a volume other pods write too)."""
    try:
        total = documents.fields(documents.load_json(read_regular(state, STATE_MAX)), STATE_FIELDS)[
            "total"
        ]
    except (OSError, UnfitFile, documents.Invalid):
        return None
    return total if isinstance(total, int) and total >= 0 else None
