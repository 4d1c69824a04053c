"""QEMU: its command line built as data (pure), and the exec that hands the container to it."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kvmmgr.errors import StepError
from kvmmgr.files import write_atomic
from kvmmgr.guestagent import AGENT_CHANNEL, AGENT_CHARDEV, AGENT_SOCKET
from kvmmgr.nics import MacvtapLink, NicPlan
from kvmmgr.qmp import QMP_SOCKET

QEMU = "qemu-system-x86_64"
VNC_SECRET_ID = "vncpass"
VNC_PASSWORD_FILE = "vnc-password"  # in RUN_DIR, beside the QMP socket


@dataclass(frozen=True)
class QemuPlan:
    argv: tuple[str, ...]
    qmp_socket: Path
    agent_socket: Path  # the guest agent's channel, whether or not the guest runs one
    vnc_password_file: Path | None  # written at start from VNC_PASSWORD, never in argv
    macvtaps: tuple[tuple[str, int], ...]  # (macvtap, the fd QEMU expects its device on)


def build_qemu(
    *,
    hostname: str,
    accel: Literal["kvm", "tcg"],
    memory_mib: int,
    cpus: int,
    overlay: Path,
    config_drive: Path | None,
    nics: Sequence[NicPlan],
    vhost: bool,
    vnc: bool,
    vnc_password: bool,
    run_dir: Path,
    extra_args: Sequence[str],
) -> QemuPlan:
    qmp_socket = run_dir / QMP_SOCKET
    agent_socket = run_dir / AGENT_SOCKET
    password_file = run_dir / VNC_PASSWORD_FILE if vnc and vnc_password else None
    argv = [
        QEMU,
        "-name",
        f"guest={hostname},debug-threads=on",
        "-machine",
        "pc",
        "-accel",
        accel,
        # TCG emulates `host` poorly; qemu64 is what every legacy guest knows.
        "-cpu",
        "host" if accel == "kvm" else "qemu64",
        "-m",
        str(memory_mib),
        "-smp",
        str(cpus),
        "-nodefaults",
        "-no-user-config",
        "-rtc",
        "base=utc",
        # The serial console is the container's stdout (`kubectl logs`), and its stdin
        # (`kubectl attach`): Ctrl-C there goes to the guest, not to QEMU.
        "-chardev",
        "stdio,id=console,signal=off",
        "-serial",
        "chardev:console",
        "-qmp",
        f"unix:{qmp_socket},server=on,wait=off",
        # The guest agent's channel: always there, used when the guest runs an agent.
        "-chardev",
        f"socket,id={AGENT_CHARDEV},path={agent_socket},server=on,wait=off",
        "-device",
        "virtio-serial-pci,id=vserial0",
        "-device",
        f"virtserialport,bus=vserial0.0,chardev={AGENT_CHARDEV},name={AGENT_CHANNEL}",
        "-drive",
        f"file={overlay},if=none,id=disk0,format=qcow2,discard=unmap",
        "-device",
        "virtio-blk-pci,drive=disk0,bootindex=1",
    ]
    if config_drive is not None:
        argv += [
            "-drive",
            f"file={config_drive},if=none,id=cidata,media=cdrom,readonly=on,format=raw",
            "-device",
            "ide-cd,drive=cidata",
        ]
    # vhost only when /dev/vhost-net opens: QEMU 7.2 aborts if asked for it without.
    vhost_option = f"vhost={'on' if vhost else 'off'}"
    for nic in nics:
        netdev = f"net{nic.index}"
        if isinstance(nic.link, MacvtapLink):  # its device, opened by exec_qemu
            argv += ["-netdev", f"tap,id={netdev},fd={nic.link.fd},{vhost_option}"]
        else:
            tap = nic.link.tap
            argv += [
                "-netdev",
                f"tap,id={netdev},ifname={tap},script=no,downscript=no,{vhost_option}",
            ]
        argv += ["-device", f"virtio-net-pci,netdev={netdev},mac={nic.guest.mac}"]
    argv += ["-device", "virtio-rng-pci"]
    if vnc:
        vnc_option = "0.0.0.0:0"
        if password_file is not None:
            argv += ["-object", f"secret,id={VNC_SECRET_ID},file={password_file},format=raw"]
            vnc_option += f",password-secret={VNC_SECRET_ID}"
        # An absolute pointer (USB tablet): a VNC viewer's mouse then matches the guest's.
        argv += ["-vga", "std", "-usb", "-device", "usb-tablet", "-vnc", vnc_option]
    else:
        argv += ["-vga", "none", "-display", "none"]
    argv += list(extra_args)
    macvtaps = tuple(
        (nic.link.macvtap, nic.link.fd) for nic in nics if isinstance(nic.link, MacvtapLink)
    )
    return QemuPlan(tuple(argv), qmp_socket, agent_socket, password_file, macvtaps)


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
