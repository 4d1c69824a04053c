"""What QEMU says of the VM on the sidecar's own monitor (RUN_DIR/qmp-metrics.sock): one short
QMP session a scrape, bounded in time as a whole, so that a hung QEMU never hangs a scrape.

QEMU faces the guest and may be subverted by it: its answers are checked like a file's, and
what is not of the expected shape is left out (parse_* below, pure)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmmgr.vm.jsonlines import CommandFailed, ProtocolError
from kvmmgr.vm.qemu import AGENT_CHARDEV, BALLOON_ID
from kvmmgr.vm.qmp import Qmp

SESSION_SECONDS = 3.0  # the whole session: connect, greeting and every command
MAX_COUNT = (1 << 63) - 1  # a guest's "no figure" is 2^64 - 1: above this, nothing is said
BALLOON_PATH = f"/machine/peripheral/{BALLOON_ID}"
COMMANDS = (
    "query-status", "query-memory-size-summary", "query-cpus-fast", "query-blockstats",
    "query-chardev", "query-balloon",
)  # fmt: skip
# query-blockstats' figures, by what families.py calls them.
DISK_FIELDS = {
    "read_bytes": "rd_bytes", "written_bytes": "wr_bytes",
    "reads": "rd_operations", "writes": "wr_operations", "flushes": "flush_operations",
    "read_ns": "rd_total_time_ns", "write_ns": "wr_total_time_ns",
    "flush_ns": "flush_total_time_ns",
}  # fmt: skip


@dataclass(frozen=True)
class QemuAnswers:
    """What a session learnt; None (or empty): QEMU did not say, or not in the expected shape."""

    state: str | None = None  # QEMU's run state: running, paused, shutdown...
    memory_bytes: int | None = None  # the VM's RAM, base and hot-plugged
    vcpus: tuple[tuple[int, int], ...] = ()  # (vCPU index, its thread's id in QEMU's view)
    disks: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # id -> DISK_FIELDS
    agent_connected: bool | None = None  # a program in the guest holds the agent's port
    balloon_bytes: int | None = None  # None: no balloon device
    guest_memory: Mapping[str, int] = field(default_factory=dict)  # the balloon's stat-* figures


def ask(socket: Path, timeout: float = SESSION_SECONDS) -> QemuAnswers | None:
    """None when QEMU does not answer in time (not running, hung, or not speaking QMP). A
    command QEMU refuses (query-balloon without a balloon) is only left out."""
    deadline = time.monotonic() + timeout
    answers: dict[str, Any] = {}
    try:
        with Qmp(socket, timeout) as qmp:

            def run(command: str, **arguments: Any) -> Any:
                qmp.settimeout(max(deadline - time.monotonic(), 0.001))
                try:
                    return qmp.execute(command, **arguments)
                except CommandFailed:
                    return None

            for command in COMMANDS:
                answers[command] = run(command)
            if answers["query-balloon"] is not None:
                answers["guest-stats"] = run("qom-get", path=BALLOON_PATH, property="guest-stats")
    except (OSError, EOFError, ProtocolError):
        return None
    return parse(answers)


def parse(answers: Mapping[str, Any]) -> QemuAnswers:
    """The answers of a session, by command ("guest-stats": the balloon's qom-get)."""
    state = _dict(answers.get("query-status")).get("status")
    memory = _dict(answers.get("query-memory-size-summary"))
    base, plugged = _count(memory.get("base-memory")), _count(memory.get("plugged-memory"))
    balloon = _dict(answers.get("query-balloon"))
    return QemuAnswers(
        state=state if isinstance(state, str) and state.isprintable() and len(state) < 64 else None,
        memory_bytes=None if base is None else base + (plugged or 0),
        vcpus=parse_vcpus(answers.get("query-cpus-fast")),
        disks=parse_disks(answers.get("query-blockstats")),
        agent_connected=parse_frontend_open(answers.get("query-chardev"), AGENT_CHARDEV),
        balloon_bytes=_count(balloon.get("actual")),
        guest_memory=parse_guest_stats(answers.get("guest-stats")),
    )


def parse_vcpus(cpus: Any) -> tuple[tuple[int, int], ...]:
    found = []
    for cpu in _list(cpus):
        index, thread = _count(_dict(cpu).get("cpu-index")), _count(_dict(cpu).get("thread-id"))
        if index is not None and thread:
            found.append((index, thread))
    return tuple(found)


def parse_disks(stats: Any) -> dict[str, dict[str, int]]:
    """Each drive with a name (the backend: kvm-manager's ids) and every figure as a count."""
    disks = {}
    for entry in _list(stats):
        name, figures = _dict(entry).get("device"), _dict(_dict(entry).get("stats"))
        counts = {ours: _count(figures.get(theirs)) for ours, theirs in DISK_FIELDS.items()}
        known = {ours: v for ours, v in counts.items() if v is not None}
        if isinstance(name, str) and name and len(known) == len(DISK_FIELDS):
            disks[name] = known
    return disks


def parse_frontend_open(chardevs: Any, label: str) -> bool | None:
    for device in _list(chardevs):
        if _dict(device).get("label") == label:
            opened = _dict(device).get("frontend-open")
            return opened if isinstance(opened, bool) else None
    return None


def parse_guest_stats(value: Any) -> dict[str, int]:
    """The figures the guest reported (none before its first report, and a figure the guest
    does not give is 2^64 - 1)."""
    stats = _dict(value)
    if not _count(stats.get("last-update")):
        return {}
    figures = {name: _count(v) for name, v in _dict(stats.get("stats")).items()}
    return {name: v for name, v in figures.items() if isinstance(name, str) and v is not None}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _count(value: Any) -> int | None:
    return value if type(value) is int and 0 <= value <= MAX_COUNT else None
