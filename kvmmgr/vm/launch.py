"""Handing the container to QEMU: its VNC secret written; its sockets, taps and macvtap
devices opened for it; root given up; then the exec that makes QEMU the container's main
process."""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import struct
import time
from pathlib import Path

from kvmmgr.errors import StepError
from kvmmgr.facts import TUN as TUN_DEVICE
from kvmmgr.metrics import record
from kvmmgr.system import privileges
from kvmmgr.system.files import write_atomic
from kvmmgr.vm.qemu import VNC_PASSWORD_FILE, FirmwarePlan, QemuPlan

TUNSETIFF = 0x400454CA
TUNSETOWNER = 0x400454CC
TUNSETGROUP = 0x400454CE
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000  # as QEMU opens a tap itself: virtio-net's offloads need it


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
    """Replace this process with QEMU, as its unprivileged user: it becomes the container's
    main process. Whatever needs root is opened here first and inherited."""
    for path, fd in plan.sockets:
        listen_on(path, fd)
    for tap, fd in plan.taps:
        open_tap(tap, fd, plan.user.uid, plan.user.gid)
    for macvtap, fd in plan.macvtaps:
        open_macvtap(macvtap, fd, plan.qmp_socket.parent)
    record.started(plan.qmp_socket.parent, time.time())  # while RUN_DIR is still writable
    privileges.drop(plan.user, plan.groups)
    try:
        os.execvp(plan.argv[0], list(plan.argv))
    except OSError as exc:
        raise StepError(f"could not start {plan.argv[0]}: {exc.strerror}") from exc


def listen_on(path: Path, target_fd: int) -> None:
    """A Unix socket listening at `path` (root's, 0600: the CLI connects, QEMU only accepts),
    on `target_fd`. One left by a previous QEMU is replaced."""
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            listener.bind(str(path))
        finally:
            os.umask(old)
        listener.listen(8)
        _place(listener.detach(), target_fd)
    except OSError as exc:
        listener.close()
        raise StepError(f"cannot listen on {path}: {exc.strerror}") from exc


def open_tap(name: str, target_fd: int, uid: int, gid: int) -> None:
    """Attach to the tap (needs NET_ADMIN, which QEMU will not have) on `target_fd`, and
    make QEMU's user and group its owners: nobody else without NET_ADMIN may attach."""
    try:
        fd = os.open(TUN_DEVICE, os.O_RDWR)
    except OSError as exc:
        raise StepError(f"cannot open {TUN_DEVICE} for tap {name!r}: {exc.strerror}") from exc
    try:
        request = struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, request)
        fcntl.ioctl(fd, TUNSETOWNER, uid)
        fcntl.ioctl(fd, TUNSETGROUP, gid)
    except OSError as exc:
        os.close(fd)
        raise StepError(f"cannot attach to tap {name!r}: {exc.strerror}") from exc
    _place(fd, target_fd)


def _place(fd: int, target_fd: int) -> None:
    """`fd` moved to `target_fd`, inheritable across the exec."""
    if fd != target_fd:
        os.dup2(fd, target_fd)  # inheritable by default
        os.close(fd)
    else:
        os.set_inheritable(fd, True)


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
    _place(fd, target_fd)
