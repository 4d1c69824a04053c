"""What an appliance (an OVA) declares of its hardware, as data: read from its OVF when it is
imported (ova.py) and kept in the base's record, from which every start takes it (so it is
checked again here: a record on a volume is not trusted). Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_NAME_RE = re.compile(r"[A-Za-z0-9._+-]{1,255}")
BUSES = ("ide", "sata", "scsi")
NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139", "vmxnet3")
MAX_MEMORY_MIB = 16 << 20
MAX_CPUS = 255


@dataclass(frozen=True)
class Appliance:
    """What an OVF declares; None where it says nothing (or nothing that can be used)."""

    name: str
    disks: tuple[str, ...]  # the disks' member names in the OVA, the boot disk first
    memory_mib: int | None = None
    cpus: int | None = None
    nic_models: tuple[str, ...] = ()  # one per NIC, in order
    disk_bus: str | None = None  # the boot disk's controller: ide, sata, scsi
    firmware: str | None = None  # "uefi" when it asks for EFI


def from_record(data: Any) -> Appliance | None:
    """The appliance of a base's record; None when there is none or it does not hold up."""
    if not isinstance(data, Mapping):
        return None
    name, disks = data.get("name"), data.get("disks")
    if not isinstance(name, str) or not isinstance(disks, list):
        return None
    return Appliance(
        name=name[:255],
        disks=tuple(d for d in disks if isinstance(d, str) and _NAME_RE.fullmatch(d)),
        memory_mib=_number(data.get("memory_mib"), MAX_MEMORY_MIB),
        cpus=_number(data.get("cpus"), MAX_CPUS),
        nic_models=tuple(m for m in _list(data.get("nic_models")) if m in NIC_MODELS),
        disk_bus=data.get("disk_bus") if data.get("disk_bus") in BUSES else None,
        firmware="uefi" if data.get("firmware") == "uefi" else None,
    )


def plain_name(name: object) -> bool:
    """A file name with no directory in it: what a record may name beside the base."""
    return isinstance(name, str) and bool(_NAME_RE.fullmatch(name)) and name not in {".", ".."}


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _number(value: object, maximum: int) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= maximum:
        return value
    return None


@dataclass(frozen=True)
class BaseFacts:
    """What the cache's record says of the base image, when it is there: the appliance an
    OVA declared, and its further disks beside the base. Empty before the first fetch."""

    appliance: Appliance | None = None
    data_disks: tuple[str, ...] = ()
    made_on: Path | None = None  # the base the VM's existing disk was made on, if in the cache
