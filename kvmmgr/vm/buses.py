"""Where QEMU puts each disk: on the bus the guest expects (virtio, virtio-scsi, SATA, IDE),
on `pc` or `q35`, with the config drive's CD-ROM where it does not collide. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import assert_never

from kvmmgr.config import DiskBus, Machine
from kvmmgr.errors import ConfigError

AHCI_PORTS = 6  # q35's own AHCI controller, and the one added on pc
CDROM_ID = "cidata"  # the config drive's id in QEMU


@dataclass(frozen=True)
class Drive:
    """One disk for QEMU: its file and format, and for data disks their serial number."""

    path: Path
    format: str
    serial: str | None = None  # None: the boot disk, which gets bootindex 1 instead


def disk_args(
    bus: DiskBus, machine: Machine, drives: Sequence[Drive], cdrom: Path | None
) -> list[str]:
    """`drives`: the boot disk first."""
    argv: list[str] = []
    slots = _slots(bus, machine, len(drives))
    ids = drive_ids(len(drives), cdrom is not None)
    for n, (drive, slot) in enumerate(zip(drives, slots[: len(drives)], strict=True)):
        argv += [
            "-drive",
            f"file={drive.path},if=none,id={ids[n]},format={drive.format},discard=unmap",
        ]
        which = "bootindex=1" if drive.serial is None else f"serial={drive.serial}"
        argv += ["-device", f"{slot},drive={ids[n]},{which}"]
    if cdrom is not None:
        argv += ["-drive", f"file={cdrom},if=none,id={CDROM_ID},media=cdrom,readonly=on,format=raw"]
        argv += ["-device", f"ide-cd,{_cdrom_bus(bus, machine, len(drives))},drive={CDROM_ID}"]
    return _controller(bus, machine) + argv


def drive_ids(disks: int, cdrom: bool) -> tuple[str, ...]:
    """QEMU's ids of the drives (query-blockstats names them so): the disks, boot disk
    first, then the config drive's CD-ROM."""
    return (*(f"disk{n}" for n in range(disks)), *((CDROM_ID,) if cdrom else ()))


def _controller(bus: DiskBus, machine: Machine) -> list[str]:
    if bus == "scsi":
        return ["-device", "virtio-scsi-pci,id=scsi0"]
    if bus == "sata" and machine == "pc":
        return ["-device", "ahci,id=sata"]
    return []


def _slots(bus: DiskBus, machine: Machine, count: int) -> list[str]:
    """The device of each disk, the boot disk first; ConfigError when the bus has no room."""
    match bus:
        case "virtio":
            slots = ["virtio-blk-pci"] * count
        case "scsi":
            slots = ["scsi-hd,bus=scsi0.0"] * count
        case "sata":
            ahci = "sata" if machine == "pc" else "ide"
            slots = [f"ide-hd,bus={ahci}.{port}" for port in range(AHCI_PORTS - 1)]
        case "ide":
            if machine == "q35":
                raise ConfigError.bad_value("VM_DISK_BUS", "ide", "sata on q35 (it has no IDE)")
            # the CD-ROM takes the secondary channel's master: ide.1 unit 0
            slots = [f"ide-hd,bus=ide.{b},unit={u}" for b, u in ((0, 0), (0, 1), (1, 1))]
        case unknown:
            assert_never(unknown)
    if count > len(slots):
        raise ConfigError(
            f"VM_DATA_DISKS: {count - 1} data disks on the {bus} bus: expected at most "
            f"{len(slots) - 1} there (or another VM_DISK_BUS)"
        )
    return slots


def _cdrom_bus(bus: DiskBus, machine: Machine, disks: int) -> str:
    if machine == "pc":
        return "bus=ide.1,unit=0"  # the PIIX's secondary channel, on every pc
    return f"bus=ide.{disks if bus == 'sata' else 0}"  # the next free AHCI port of q35
