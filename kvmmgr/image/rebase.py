"""`kvm-manager rebase`: move a stopped VM's disk onto the base that IMG_SOURCE/IMG_TARGET
name, the guest seeing the very same disk (overlay.move), so that the old base can be pruned.
What VM_DISK_POLICY=rebase does at a start, as a command of its own: for a disk whose pod is
not running (a debug pod with the VM's volumes and environment).

While it works the VM's record in the cache claims both bases (usage.py): a prune keeps the
old one, which the rebase reads, and the new one, which it may have just fetched.
"""

from __future__ import annotations

from pathlib import Path

from kvmmgr import pod
from kvmmgr.config import Settings
from kvmmgr.errors import EXIT_OK, ConfigError, InUseError, StepError
from kvmmgr.image import cache, headers, overlay, usage
from kvmmgr.image.cachelock import CacheLock
from kvmmgr.image.disks import DiskPlan, build_disks
from kvmmgr.image.records import as_json, base_record, hidden
from kvmmgr.system.files import write_atomic
from kvmmgr.vm.control import vm_status


def main(settings: Settings) -> int:
    name = pod.hostname(settings)
    disks = build_disks(settings.image, name)  # the base IMG_TARGET names, never the kept one
    if not disks.overlay.exists():
        raise ConfigError(
            f"the VM's disk {disks.overlay} does not exist: nothing to rebase (a new disk "
            f"is made on {disks.base.name} at the VM's first start)"
        )
    state = vm_status(settings.run_dir, with_guest=False).state
    if state is not None:
        raise InUseError(f"the VM is {state}: stop it first (`kvm-manager shutdown`)")
    old = _current_base(disks, settings.image.image_dir)
    last = usage.of(old.parent, name)
    started = last.last_started if last else None
    if old == disks.base:
        _settle(disks, name, started)
        print(f"{disks.overlay} is on {old.name} already")
        return EXIT_OK
    both = usage.Usage(name, str(disks.overlay), (old.name, disks.base.name), started)
    _claim(old, both)
    cache.check_available(disks)
    cache.ensure_base(disks, cache.holder(name), both)
    seconds = overlay.move(disks, old)
    _settle(disks, name, started)
    print(
        f"rebased {disks.overlay} from {old.name} onto {disks.base.name} in {seconds:.1f} s: "
        f"the guest sees the same disk; {name} no longer uses {old.name}"
    )
    return EXIT_OK


def _current_base(disks: DiskPlan, image_dir: Path) -> Path:
    """The base in the cache the disk is on now, which a safe rebase reads."""
    old = overlay.made_on(disks, image_dir)
    if old is None:
        what = f"the VM's disk {disks.overlay}"
        backing = headers.backing_of(disks.overlay, what)
        raise StepError(
            f"{what} is backed by {backing or 'nothing'!r}, not by a base in {image_dir}: "
            "expected a disk kvm-manager made"
        )
    return old


def _claim(old: Path, both: usage.Usage) -> None:
    """Both bases claimed under the old one's lock, so that a prune either keeps it or is
    seen to have removed it before the rebase reads it."""
    lock = CacheLock(hidden(old, ".lock"), cache.holder(both.vm))
    lock.acquire()
    try:
        usage.write(old.parent, both)
        if not old.exists():
            raise StepError(
                f"{old}, the base the VM's disk {both.disk} is on, is gone: a safe rebase reads it"
            )
    finally:
        lock.release()


def _settle(disks: DiskPlan, name: str, started: float | None) -> None:
    """The disk's record of its base, and the VM's claim on the cache: the new base alone
    (also after a rebase cut short between qemu-img and its record: a second run mends it)."""
    write_atomic(hidden(disks.overlay, ".json"), as_json(base_record(disks)), mode=0o644)
    claim = usage.Usage(name, str(disks.overlay), (disks.base.name,), started)
    usage.write(disks.base.parent, claim)
