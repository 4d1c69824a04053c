"""Handing the container to QEMU: its VNC secret written, its macvtap devices opened, then
the exec that makes QEMU the container's main process."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kvmmgr.errors import StepError
from kvmmgr.system.files import write_atomic
from kvmmgr.vm.qemu import VNC_PASSWORD_FILE, FirmwarePlan, QemuPlan


def ensure_efi_vars(firmware: FirmwarePlan | None) -> str:
    """The VM's UEFI variables: made once from OVMF's template, kept on its volume after
    (boot entries, Secure Boot state). What was done, for the log."""
    if firmware is None:
        return ""
    if firmware.vars.exists():
        return f"UEFI variables {firmware.vars} (kept)"
    try:
        data = firmware.vars_template.read_bytes()
    except OSError as exc:
        raise StepError(f"cannot read OVMF's {firmware.vars_template}: {exc.strerror}") from exc
    write_atomic(firmware.vars, data, mode=0o600)
    return f"UEFI variables {firmware.vars} (made from {firmware.vars_template.name})"


def write_vnc_password(plan: QemuPlan, password: str | None) -> None:
    """The secret QEMU reads at start; one left by an earlier start with a password goes."""
    if plan.vnc_password_file is not None and password is not None:
        write_atomic(plan.vnc_password_file, password.encode(), mode=0o600)
    else:
        (plan.qmp_socket.parent / VNC_PASSWORD_FILE).unlink(missing_ok=True)


def exec_qemu(plan: QemuPlan) -> None:
    """Replace this process with QEMU: it becomes the container's main process."""
    for stale in (plan.qmp_socket, plan.agent_socket):  # sockets of a previous QEMU
        stale.unlink(missing_ok=True)
    for macvtap, fd in plan.macvtaps:
        open_macvtap(macvtap, fd, plan.qmp_socket.parent)
    try:
        os.execvp(plan.argv[0], list(plan.argv))
    except OSError as exc:
        raise StepError(f"could not start {plan.argv[0]}: {exc.strerror}") from exc


def open_macvtap(name: str, target_fd: int, scratch: Path) -> None:
    """Open the macvtap's character device on `target_fd`, kept across the exec. A container
    has no udev to make /dev/tapN: the node is made (mknod) in `scratch` and removed."""
    sysfs = Path("/sys/class/net") / name
    try:
        index = (sysfs / "ifindex").read_text().strip()
        major, minor = (sysfs / "macvtap" / f"tap{index}" / "dev").read_text().strip().split(":")
    except OSError as exc:
        raise StepError(f"cannot find the device of macvtap {name!r}: {exc.strerror}") from exc
    node = scratch / f".tap{index}"
    node.unlink(missing_ok=True)
    try:
        os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(int(major), int(minor)))
        fd = os.open(node, os.O_RDWR)
    except OSError as exc:
        raise StepError(
            f"cannot open the device of macvtap {name!r}: {exc.strerror} "
            "(macvtap mode needs the MKNOD capability and access to the device)"
        ) from exc
    finally:
        node.unlink(missing_ok=True)
    if fd != target_fd:
        os.dup2(fd, target_fd)  # inheritable by default
        os.close(fd)
    else:
        os.set_inheritable(fd, True)
