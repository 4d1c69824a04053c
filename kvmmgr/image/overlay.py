"""The VM's own disk: a qcow2 overlay on the base image, created once and never recreated,
overwritten or rebased; it only grows, to VM_DISK_SIZE when that is raised."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from kvmmgr.errors import ConfigError, StepError
from kvmmgr.image import diskformat, headers
from kvmmgr.image.disks import DiskPlan
from kvmmgr.image.progress import size
from kvmmgr.image.records import BaseRecord, as_json, base_record, hidden, load_record
from kvmmgr.system import proc
from kvmmgr.system.files import write_atomic

log = logging.getLogger("kvmmgr")


@dataclass(frozen=True)
class Disk:
    """What the disk step did."""

    path: Path
    created: bool  # else reused
    base: Path
    base_format: str
    size: int | None = None  # VM_DISK_SIZE, when it was made or grown to it
    grown_from: int | None = None
    meanwhile: bool = False  # made by another start while this one was at it

    def __str__(self) -> str:
        if self.meanwhile:
            return f"reusing {self.path} (created meanwhile by another start)"
        if not self.created and self.grown_from is not None:
            grown = f"grown from {size(self.grown_from)} to {size(self.size or 0)}"
            return f"reusing {self.path} ({grown})"
        if not self.created:
            return f"reusing {self.path}"
        of = f", {size(self.size)}" if self.size is not None else ""
        return f"created {self.path} (qcow2 on {self.base_format} base {self.base}{of})"


def ensure_overlay(plan: DiskPlan) -> Disk:
    """Create the VM's own disk on top of the base image, only if it does not exist yet."""
    overlay_record = hidden(plan.overlay, ".json")
    base = base_record(plan)
    if plan.overlay.exists():
        headers.check_overlay(plan.overlay, f"the VM's disk {plan.overlay}", plan.base)
        _check_same_base(plan, overlay_record, base)
        grown_from = _grow(plan)
        return Disk(plan.overlay, False, plan.base, base.format, plan.size, grown_from)
    sized: list[str] = []  # qemu-img's size argument; none: the base's size
    if plan.size is not None:
        check_size_fits_base(plan)
        _check_room(plan, plan.size)
        sized = [str(plan.size)]
    plan.overlay.parent.mkdir(parents=True, exist_ok=True)
    temp = plan.overlay.with_name(f".{plan.overlay.name}.{os.getpid()}.tmp")
    try:
        proc.run(
            [
                "qemu-img", "create", "-q", "-f", "qcow2", "-F", base.format,
                "-b", str(plan.base.absolute()), str(temp), *sized,
            ]
        )  # fmt: skip
        os.chmod(temp, 0o600)
        write_atomic(overlay_record, as_json(base), mode=0o644)
        try:
            os.link(temp, plan.overlay)  # unlike rename, never replaces an existing file
        except FileExistsError:
            return Disk(plan.overlay, False, plan.base, base.format, meanwhile=True)
    finally:
        temp.unlink(missing_ok=True)
    return Disk(plan.overlay, True, plan.base, base.format, plan.size)


def ensure_data_disks(plan: DiskPlan) -> tuple[str, ...]:
    """Each data disk: a new one made once and kept, an overlay on an OVA's disk made once,
    the pod's own used as it is. What each is, for the log."""
    said = []
    for disk in plan.data:
        what = f"the data disk {disk.path}"
        if disk.kind == "pod":
            said.append(f"{disk.path} (the pod's)")
        elif disk.path.exists():  # ours, from an earlier start: checked, never remade
            if disk.backing is not None:
                headers.check_overlay(disk.path, what, disk.backing)
            elif headers.sniff(disk.path, what).format != "qcow2":
                raise StepError(f"{what} is not a qcow2: expected the one made for it")
            said.append(f"{disk.path} (kept)")
        elif disk.backing is not None:
            _create(disk.path, ["-F", "qcow2", "-b", str(disk.backing.absolute())])
            said.append(f"{disk.path} (made on {disk.backing.name})")
        else:
            _create(disk.path, [], str(disk.size))
            said.append(f"{disk.path} (made, {size(disk.size or 0)})")
    return tuple(said)


def _create(path: Path, options: list[str], disk_size: str = "") -> None:
    """A qcow2 made under a temporary name, then linked into place: never over a disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        sized = [disk_size] if disk_size else []
        proc.run(["qemu-img", "create", "-q", "-f", "qcow2", *options, str(temp), *sized])
        os.chmod(temp, 0o600)
        with contextlib.suppress(FileExistsError):  # made meanwhile by another start: it is
            os.link(temp, path)  # the disk; unlike rename, link never replaces one
    finally:
        temp.unlink(missing_ok=True)


def _grow(plan: DiskPlan) -> int | None:
    """Grow the overlay to VM_DISK_SIZE when that is more than it has (never shrink it);
    the size it had, when it grew."""
    if plan.size is None:
        return None
    now = diskformat.virtual_size(plan.overlay)
    if plan.size < now:
        log.warning(
            "disk: VM_DISK_SIZE %s is less than the disk's %s: a disk never shrinks",
            size(plan.size),
            size(now),
        )
        return None
    if plan.size == now:
        return None
    _check_room(plan, plan.size - plan.overlay.stat().st_blocks * 512)
    proc.run(["qemu-img", "resize", "-q", "-f", "qcow2", str(plan.overlay), str(plan.size)])
    return now


def check_size_fits_base(plan: DiskPlan) -> None:
    """VM_DISK_SIZE may not cut the base image short: the guest's data would be lost."""
    assert plan.size is not None
    base = diskformat.identify(plan.base, str(plan.base)).virtual_size
    if plan.size < base:
        raise ConfigError.bad_value(
            "VM_DISK_SIZE",
            size(plan.size),
            f"at least the base image's virtual size, {size(base)} ({plan.base})",
        )


def _check_room(plan: DiskPlan, growth: int) -> None:
    """The disk may come to hold `growth` more bytes: the volume must have them."""
    folder = plan.overlay.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    fs = os.statvfs(folder)
    free = fs.f_bavail * fs.f_frsize
    if growth > free:
        raise ConfigError.bad_value(
            "VM_DISK_SIZE",
            size(plan.size or 0),
            f"a size the volume of {plan.overlay} can hold: it has {size(free)} free",
        )


def _check_same_base(plan: DiskPlan, overlay_record: Path, now: BaseRecord) -> None:
    """An overlay on a base that changed would show the VM a disk of mixed contents."""
    then = load_record(overlay_record)
    if then is None:
        return  # made before records existed, or by hand: nothing to compare with
    changes = []
    if then.size != now.size:
        changes.append(f"size {then.size} -> {now.size}")
    if then.sha256 and now.sha256 and then.sha256 != now.sha256:
        changes.append(f"sha256 {then.sha256[:12]}... -> {now.sha256[:12]}...")
    if changes:
        raise StepError(
            f"the base image {plan.base} changed since the VM's disk {plan.overlay} was made "
            f"on it ({', '.join(changes)}): the VM would see a corrupt disk, so it is not "
            "started; restore the original base (or point IMG_TARGET at it), or remove the "
            "disk to start afresh"
        )
