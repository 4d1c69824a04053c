"""`kvm-manager resize`: grow the running VM's boot disk without a restart. QEMU grows its
qcow2 itself (QMP block_resize) and tells the guest's device; a disk never shrinks. A later
start with VM_DISK_SIZE at the new size finds the disk so and leaves it as it is."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kvmmgr import values
from kvmmgr.config import run_dir_of
from kvmmgr.errors import EXIT_NOT_RUNNING, EXIT_OK, ConfigError, KvmManagerError, StepError
from kvmmgr.image.overlay import check_room_to_grow
from kvmmgr.image.progress import size
from kvmmgr.vm.jsonlines import ProtocolError
from kvmmgr.vm.qemu import QMP_SOCKET
from kvmmgr.vm.qmp import Qmp

BOOT_DRIVE = "disk0"  # buses.disk_args: the boot disk is drive disk0
SIZE_OPTION = "--size"


class NotRunning(KvmManagerError):
    exit_status = EXIT_NOT_RUNNING


@dataclass(frozen=True)
class Wanted:
    size: int  # bytes, whole MiB (values.disk_size): qcow2 wants multiples of 512
    name: str  # what an error blames: --size or VM_DISK_SIZE


@dataclass(frozen=True)
class BlockDisk:
    """The boot disk as QEMU has it open."""

    node: str  # its node-name, what block_resize takes
    path: Path
    virtual_size: int
    device: str  # the guest's device type: virtio-blk-device, scsi-hd, ide-hd...

    def __str__(self) -> str:
        return f"{BOOT_DRIVE} ({self.path})"


def main(env: Mapping[str, str], option: str | None) -> int:
    wanted = wanted_size(env, option)
    socket = run_dir_of(env) / QMP_SOCKET
    try:
        qmp = Qmp(socket)
    except (OSError, EOFError, ProtocolError) as exc:
        raise NotRunning(
            f"QEMU is not running (nothing answers on {socket}): nothing to grow now; a "
            f"start grows the disk: VM_DISK_SIZE={size_text(wanted.size)} at the next start"
        ) from exc
    with qmp:
        disk = boot_disk(qmp)
        if not must_grow(disk, wanted):
            print(f"{disk}: already {size(wanted.size)}: nothing to do")
            return EXIT_OK
        if not disk.path.is_file():  # e.g. a relative name: QEMU's, not kvm-manager's
            raise StepError(f"{disk}: no such file here, to check its volume's free space")
        check_room_to_grow(disk.path, wanted.size, wanted.name)
        qmp.execute("block_resize", **{"node-name": disk.node, "size": wanted.size})
        after = boot_disk(qmp)
    if after.virtual_size != wanted.size:
        raise StepError(
            f"{disk}: QEMU took block_resize to {wanted.size} bytes, but the disk now has "
            f"{after.virtual_size}"
        )
    print(grown(disk, after))
    hint = env_hint(env, wanted)
    if hint:
        print(hint)
    return EXIT_OK


def wanted_size(env: Mapping[str, str], option: str | None) -> Wanted:
    """--size when given (even empty: then it is wrong), else VM_DISK_SIZE."""
    if option is not None:
        parsed = values.disk_size(SIZE_OPTION, option.strip())
        if parsed is None:  # empty: disk_size's "unset", but an option given must say a size
            raise ConfigError.bad_value(SIZE_OPTION, option, "a disk size such as 20G")
        return Wanted(parsed, SIZE_OPTION)
    raw = values.text(env, "VM_DISK_SIZE")
    parsed = values.disk_size("VM_DISK_SIZE", raw)
    if parsed is None:
        raise ConfigError(
            f"no size to grow the disk to: expected {SIZE_OPTION} SIZE or VM_DISK_SIZE "
            "(a disk size such as 20G)"
        )
    return Wanted(parsed, "VM_DISK_SIZE")


def boot_disk(qmp: Qmp) -> BlockDisk:
    for block in qmp.execute("query-block"):
        if isinstance(block, dict) and block.get("device") == BOOT_DRIVE:
            return _block_disk(qmp, block)
    raise StepError(f"QEMU has no drive {BOOT_DRIVE}: not a VM that kvm-manager started")


def _block_disk(qmp: Qmp, block: dict[str, object]) -> BlockDisk:
    inserted = block.get("inserted")
    image = inserted.get("image") if isinstance(inserted, dict) else None
    if not isinstance(inserted, dict) or not isinstance(image, dict):
        raise StepError(f"QEMU's drive {BOOT_DRIVE} has no medium")
    qdev = block.get("qdev")
    device = str(qmp.execute("qom-get", path=qdev, property="type")) if qdev else "unknown"
    return BlockDisk(
        str(inserted["node-name"]), Path(str(image["filename"])), int(image["virtual-size"]), device
    )


def must_grow(disk: BlockDisk, wanted: Wanted) -> bool:
    """True when the disk is smaller than wanted; False when it has that size; a
    ConfigError when it is larger (QEMU would shrink it, cutting the guest's data off)."""
    if wanted.size < disk.virtual_size:
        raise ConfigError.bad_value(
            wanted.name,
            size(wanted.size),
            f"at least the disk's size, {size(disk.virtual_size)} ({disk.path}): "
            "a disk never shrinks",
        )
    return wanted.size > disk.virtual_size


def grown(before: BlockDisk, after: BlockDisk) -> str:
    what = f"{before}: grown from {size(before.virtual_size)} to {size(after.virtual_size)}"
    return f"{what}; {guest_sees(after.device)}"


def guest_sees(device: str) -> str:
    """What the guest knows of it: virtio-blk tells the guest at once; SCSI reports a
    capacity change that Linux acts on at a rescan; IDE and SATA tell nothing."""
    then = "grow its partition and filesystem (cloud-init's growpart does at the next boot)"
    if device.startswith("virtio-blk"):
        return f"the guest sees it now: {then}"
    if device == "scsi-hd":
        return (
            "the guest sees it after a rescan (Linux: echo 1 > "
            f"/sys/class/block/sdX/device/rescan) or a reboot; then {then}"
        )
    return f"the guest ({device} disk) sees it after a reboot; then {then}"


def env_hint(env: Mapping[str, str], wanted: Wanted) -> str | None:
    """A size given with --size outlives this VM only when VM_DISK_SIZE says it too (a start
    with a smaller one warns, and keeps the disk as it is)."""
    if wanted.name != SIZE_OPTION:
        return None
    try:
        configured = values.disk_size("VM_DISK_SIZE", values.text(env, "VM_DISK_SIZE"))
    except ConfigError:
        configured = None
    if configured == wanted.size:
        return None
    return (
        f"set VM_DISK_SIZE (the chart's vm.diskSize) to {size_text(wanted.size)} too, so that "
        "later starts agree"
    )


def size_text(count: int) -> str:
    """A VM_DISK_SIZE value for `count` bytes (whole MiB)."""
    return f"{count >> 30}G" if count % (1 << 30) == 0 else f"{count >> 20}M"
