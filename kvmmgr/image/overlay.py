"""The VM's own disk: a qcow2 overlay on the base image, created once and never recreated,
overwritten or rebased; it only grows, to VM_DISK_SIZE when that is raised."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from kvmmgr.errors import CommandError, ConfigError, InUseError, StepError
from kvmmgr.image import diskformat, headers
from kvmmgr.image.appliance import plain_name
from kvmmgr.image.disks import DataDisk, DiskPlan
from kvmmgr.image.progress import size
from kvmmgr.image.records import (
    BaseRecord,
    as_json,
    base_record,
    hidden,
    load_record,
    read_record,
)
from kvmmgr.system import proc
from kvmmgr.system.files import write_atomic

log = logging.getLogger("kvmmgr")

REBASE_TIMEOUT = 24 * 3600.0  # seconds: a rebase reads both bases whole; big disks take hours


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
    reimaged: str | None = None  # why the disk it replaced was not kept (VM_DISK_POLICY)
    rebased_from: Path | None = None  # the base it was moved off at this start
    seconds: float = 0.0  # the rebase's

    def __str__(self) -> str:
        if self.rebased_from is not None:
            return (
                f"rebased {self.path} from {self.rebased_from.name} onto {self.base.name} in "
                f"{self.seconds:.1f} s, the guest seeing the same disk (VM_DISK_POLICY=rebase)"
            )
        if self.reimaged is not None:
            return (
                f"re-imaged {self.path} on {self.base_format} base {self.base} "
                f"({self.reimaged}; VM_DISK_POLICY=reimage)"
            )
        if self.meanwhile:
            return f"reusing {self.path} (created meanwhile by another start)"
        if not self.created and self.grown_from is not None:
            grown = f"grown from {size(self.grown_from)} to {size(self.size or 0)}"
            return f"reusing {self.path} ({grown})"
        if not self.created:
            return f"reusing {self.path}"
        of = f", {size(self.size)}" if self.size is not None else ""
        return f"created {self.path} (qcow2 on {self.base_format} base {self.base}{of})"


def made_on(plan: DiskPlan, image_dir: Path) -> Path | None:
    """The base in the cache that the VM's existing disk was made on, read from its header;
    None for a new disk, or one backed by anything but a base (which check_overlay refuses)."""
    if not plan.overlay.is_file():
        return None  # none yet; anything but a file is refused by the disk step
    try:
        backing = Path(headers.backing_of(plan.overlay, f"the VM's disk {plan.overlay}"))
    except StepError:
        return None  # not a qcow2: the disk step refuses it, after the checks that come first
    if backing.parent == image_dir.absolute() and plain_name(backing.name):
        return backing
    return None


def ensure_overlay(plan: DiskPlan) -> Disk:
    """Create the VM's own disk on top of the base image, only if it does not exist yet
    (or, with VM_DISK_POLICY=reimage, anew when it was made on another base)."""
    overlay_record = hidden(plan.overlay, ".json")
    base = base_record(plan)
    replaced = None
    if plan.overlay.exists():
        replaced = _reimaged_because(plan, overlay_record, base) if plan.reimage else None
        if replaced is None:
            moved = _rebase_if_moving(plan)
            headers.check_overlay(plan.overlay, f"the VM's disk {plan.overlay}", plan.base)
            _check_same_base(plan, overlay_record, base)
            grown_from = _grow(plan)
            disk = Disk(plan.overlay, False, plan.base, base.format, plan.size, grown_from)
            if moved is None:
                return disk
            return dataclasses.replace(disk, rebased_from=plan.rebase_from, seconds=moved)
    sized: list[str] = []  # qemu-img's size argument; none: the base's size
    if plan.size is not None:
        check_size_fits_base(plan)
        check_room(plan.overlay, plan.size, "VM_DISK_SIZE", plan.size)
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
        if replaced is not None:
            os.replace(temp, plan.overlay)  # the VM keeps nothing on it (its policy says)
        else:
            try:
                os.link(temp, plan.overlay)  # unlike rename, never replaces an existing file
            except FileExistsError:
                return Disk(plan.overlay, False, plan.base, base.format, meanwhile=True)
    finally:
        temp.unlink(missing_ok=True)
    return Disk(plan.overlay, True, plan.base, base.format, plan.size, reimaged=replaced)


def _rebase_if_moving(plan: DiskPlan) -> float | None:
    """VM_DISK_POLICY=rebase: a disk still on the base it is to move off is moved; the
    seconds it took. (Nothing the disk's header does not say: check_overlay comes next.)"""
    old = plan.rebase_from
    if old is None:
        return None
    if headers.backing_of(plan.overlay, f"the VM's disk {plan.overlay}") != str(old.absolute()):
        return None
    return move(plan, old)


def move(plan: DiskPlan, old: Path) -> float:
    """Move the stopped VM's disk from the base `old` onto `plan.base`, both in the cache:
    qemu-img's safe rebase copies into the disk every cluster in which the two differ, so
    the guest reads the very same disk. The disk's record then names the new base (a rebase
    cut short before that is finished by running it again). Its seconds."""
    for base in (old, plan.base):
        record = read_record(hidden(base, ".json"), base)
        if record is not None and record.data_disks:
            raise ConfigError(
                f"{base.name} is an appliance with further disks: a rebase moves a boot disk "
                f"alone, so {plan.overlay} is not moved (VM_DISK_POLICY=reimage makes it afresh)"
            )
    began = time.monotonic()
    argv = [
        "qemu-img", "rebase", "-f", "qcow2", "-F", base_record(plan).format,
        "-b", str(plan.base.absolute()), str(plan.overlay),
    ]  # fmt: skip
    log.info("disk: %s", " ".join(argv))
    try:
        proc.run(argv, timeout=REBASE_TIMEOUT)
    except CommandError as exc:
        if "lock" in exc.stderr:  # a QEMU somewhere holds the disk open
            last = exc.stderr.splitlines()[-1]
            raise InUseError(f"{plan.overlay} is in use: {last}") from None
        raise
    write_atomic(hidden(plan.overlay, ".json"), as_json(base_record(plan)), mode=0o644)
    return time.monotonic() - began


def ensure_data_disks(plan: DiskPlan) -> tuple[str, ...]:
    """Each data disk: a new one made once and kept, an overlay on an OVA's disk made once,
    the pod's own used as it is. What each is, for the log."""
    said = []
    for disk in plan.data:
        what = f"the data disk {disk.path}"
        if disk.kind == "pod":
            said.append(f"{disk.path} (the pod's)")
        elif disk.backing is not None and disk.path.exists() and _other_backing(plan, disk):
            _create(disk.path, ["-F", "qcow2", "-b", str(disk.backing.absolute())], replace=True)
            said.append(f"{disk.path} (re-imaged on {disk.backing.name})")
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


def _other_backing(plan: DiskPlan, disk: DataDisk) -> bool:
    """An OVA's data disk made on another base's disk: remade under VM_DISK_POLICY=reimage."""
    assert disk.backing is not None
    backing = headers.backing_of(disk.path, f"the data disk {disk.path}")
    return plan.reimage and backing != str(disk.backing.absolute())


def _create(path: Path, options: list[str], disk_size: str = "", *, replace: bool = False) -> None:
    """A qcow2 made under a temporary name, then linked into place: never over a disk (but
    over one to re-image)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        sized = [disk_size] if disk_size else []
        proc.run(["qemu-img", "create", "-q", "-f", "qcow2", *options, str(temp), *sized])
        os.chmod(temp, 0o600)
        if replace:
            os.replace(temp, path)
            return
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
    check_room_to_grow(plan.overlay, plan.size, "VM_DISK_SIZE")
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


def check_room_to_grow(disk: Path, wanted: int, name: str) -> None:
    """An existing disk grown to `wanted` bytes may come to hold them all, less what it
    holds already: its volume must have the rest (`kvm-manager resize` checks this too)."""
    check_room(disk, wanted - disk.stat().st_blocks * 512, name, wanted)


def check_room(disk: Path, growth: int, name: str, wanted: int) -> None:
    """The disk may come to hold `growth` more bytes: the volume must have them. The error
    blames `name` (VM_DISK_SIZE, or resize's --size) for the size `wanted`."""
    folder = disk.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    fs = os.statvfs(folder)
    free = fs.f_bavail * fs.f_frsize
    if growth > free:
        raise ConfigError.bad_value(
            name,
            size(wanted),
            f"a size the volume of {disk} can hold: it has {size(free)} free",
        )


def _reimaged_because(plan: DiskPlan, overlay_record: Path, now: BaseRecord) -> str | None:
    """Why the disk is not the one to keep under VM_DISK_POLICY=reimage: made on another
    base, or on one that changed since; None: it is kept."""
    backing = headers.backing_of(plan.overlay, f"the VM's disk {plan.overlay}")
    if backing != str(plan.base.absolute()):
        return f"it was made on {backing or 'nothing'}"
    changes = _changes(load_record(overlay_record), now)
    return f"its base changed: {', '.join(changes)}" if changes else None


def _changes(then: BaseRecord | None, now: BaseRecord) -> list[str]:
    if then is None:
        return []  # made before records existed, or by hand: nothing to compare with
    changes = []
    if then.size != now.size:
        changes.append(f"size {then.size} -> {now.size}")
    if then.sha256 and now.sha256 and then.sha256 != now.sha256:
        changes.append(f"sha256 {then.sha256[:12]}... -> {now.sha256[:12]}...")
    return changes


def _check_same_base(plan: DiskPlan, overlay_record: Path, now: BaseRecord) -> None:
    """An overlay on a base that changed would show the VM a disk of mixed contents."""
    changes = _changes(load_record(overlay_record), now)
    if changes:
        raise StepError(
            f"the base image {plan.base} changed since the VM's disk {plan.overlay} was made "
            f"on it ({', '.join(changes)}): the VM would see a corrupt disk, so it is not "
            "started; restore the original base (or point IMG_TARGET at it), or remove the "
            "disk (or set VM_DISK_POLICY=reimage) to start afresh"
        )
