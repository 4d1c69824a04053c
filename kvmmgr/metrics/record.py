"""The startup record, RUN_DIR/startup.json: what `kvm-manager run` did, for the metrics sidecar.

kvm-manager writes it when the steps begin (a restart's replaces the last one), again after
each step (atomically: a scrape during a slow download sees the steps done so far), and once
more just before the exec, with the time QEMU started. The sidecar reads it as a file it does
not trust: bounded, every field checked, and one that does not hold up counts as absent.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kvmmgr import documents
from kvmmgr.errors import short
from kvmmgr.net.nics import MacvtapLink
from kvmmgr.system.files import UnfitFile, read_regular, write_atomic
from kvmmgr.vm.buses import drive_ids

if TYPE_CHECKING:
    from kvmmgr.plan import Plan

log = logging.getLogger("kvmmgr")

FILE_NAME = "startup.json"
MAX_SIZE = 64 << 10  # bytes: a record takes a few hundred
MAX_ITEMS = 64  # steps, NICs, disks: more than a VM has
MAX_NAME = 253  # characters of the VM's name (a host name)
_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # a step's name, QEMU's id of a drive or NIC
_IFNAME = re.compile(r"[A-Za-z0-9_@-][A-Za-z0-9_.@-]{0,14}")  # a path element of /sys/class/net
NicKind = Literal["tap", "macvtap"]
NIC_KINDS: tuple[NicKind, ...] = ("tap", "macvtap")
FIELDS: dict[str, type | tuple[type, ...]] = {
    "vm": str, "steps": list, "nics": list, "disks": list,
    "qemu_started": (float, int, type(None)),
}  # fmt: skip
NIC_FIELDS: dict[str, type | tuple[type, ...]] = {"name": str, "interface": str, "kind": str}


@dataclass(frozen=True)
class Nic:
    name: str  # QEMU's netdev id: net0, net1...
    interface: str  # its tap or macvtap in the pod
    kind: NicKind  # a tap counts from the host's side, a macvtap from the guest's


@dataclass(frozen=True)
class StartRecord:
    vm: str  # the host name that names the VM
    steps: tuple[tuple[str, float], ...] = ()  # each step done, in order, with its seconds
    nics: tuple[Nic, ...] = ()
    disks: tuple[str, ...] = ()  # QEMU's drive ids
    qemu_started: float | None = None  # unix time of the exec; None: not (yet) exec'd


def from_plan(plan: Plan, steps: tuple[tuple[str, float], ...]) -> StartRecord:
    nics = tuple(
        Nic(f"net{nic.index}", nic.link.macvtap, "macvtap")
        if isinstance(nic.link, MacvtapLink)
        else Nic(f"net{nic.index}", nic.link.tap, "tap")
        for nic in plan.nics
    )
    disks = drive_ids(1 + len(plan.disks.data), plan.config_drive is not None)
    return StartRecord(plan.vm.hostname, steps, nics, disks)


def write(run_dir: Path, record: StartRecord) -> None:
    """Written whole; a failure is only logged: the VM starts without its record."""
    data = dataclasses.asdict(record)
    try:
        write_atomic(run_dir / FILE_NAME, (json.dumps(data) + "\n").encode(), mode=0o600)
    except OSError as exc:
        log.warning("cannot write %s: %s (metrics lack the startup)", run_dir / FILE_NAME, exc)


def forget(run_dir: Path) -> None:
    """No record: a start under way has done no step yet (and one that fails in its first
    step leaves nothing behind)."""
    (run_dir / FILE_NAME).unlink(missing_ok=True)


def started(run_dir: Path, when: float) -> None:
    """The time QEMU starts, added to the record of this start."""
    try:
        record = read(run_dir)
    except documents.Invalid as exc:
        record = None
        log.warning("%s: %s", run_dir / FILE_NAME, exc)
    if record is not None:
        write(run_dir, dataclasses.replace(record, qemu_started=when))


def read(run_dir: Path) -> StartRecord | None:
    """The record; None when there is none. documents.Invalid when it does not hold up."""
    try:
        return parse(read_regular(run_dir / FILE_NAME, MAX_SIZE))
    except FileNotFoundError:
        return None
    except UnfitFile as exc:
        raise documents.Invalid(str(exc)) from None


def parse(data: bytes) -> StartRecord:
    given = documents.fields(documents.load_json(data), FIELDS)
    vm = given["vm"]
    if not 0 < len(vm) <= MAX_NAME or not vm.isprintable():
        raise documents.Invalid(f"vm is {short(vm)}: expected a host name")
    return StartRecord(
        vm=vm,
        steps=tuple(_step(item) for item in _items("steps", given["steps"])),
        nics=tuple(_nic(item) for item in _items("nics", given["nics"])),
        disks=tuple(_id("disks", item) for item in _items("disks", given["disks"])),
        qemu_started=None if given["qemu_started"] is None else _seconds(given["qemu_started"]),
    )


def _items(name: str, items: list[Any]) -> list[Any]:
    if len(items) > MAX_ITEMS:
        raise documents.Invalid(f"{name} has {len(items)} items: expected at most {MAX_ITEMS}")
    return items


def _step(item: Any) -> tuple[str, float]:
    if not (isinstance(item, list) and len(item) == 2):
        raise documents.Invalid(f"a step is {short(item)}: expected [name, seconds]")
    return _id("a step's name", item[0]), _seconds(item[1])


def _nic(item: Any) -> Nic:
    given = documents.fields(item, NIC_FIELDS)
    interface, kind = given["interface"], given["kind"]
    if not _IFNAME.fullmatch(interface) or kind not in NIC_KINDS:
        raise documents.Invalid(f"a NIC is {short(item)}: expected an interface and its kind")
    return Nic(_id("a NIC's name", given["name"]), interface, kind)


def _id(what: str, value: Any) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise documents.Invalid(f"{what} is {short(value)}: expected a QEMU id")
    return value


def _seconds(value: Any) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        raise documents.Invalid(f"{short(value)} where seconds were expected")
    return float(value)
