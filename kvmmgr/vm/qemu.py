"""QEMU's command line, built as data from the plan. Pure; launch.py hands the container to it.

An argv of strings, never a shell string; each part of the machine from its own function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, assert_never

from kvmmgr.net.nics import BridgeLink, MacvtapLink, NatLink, NicPlan

QEMU = "qemu-system-x86_64"
QMP_SOCKET = "qmp.sock"  # in RUN_DIR
AGENT_CHANNEL = "org.qemu.guest_agent.0"  # the port name the guest's agent looks for
AGENT_CHARDEV = "qga0"
AGENT_SOCKET = "qga.sock"  # in RUN_DIR
VNC_SECRET_ID = "vncpass"
VNC_PASSWORD_FILE = "vnc-password"  # in RUN_DIR, beside the QMP socket


@dataclass(frozen=True)
class VmPlan:
    hostname: str
    memory_mib: int
    cpus: int
    accel: Literal["kvm", "tcg"]


@dataclass(frozen=True)
class QemuPlan:
    argv: tuple[str, ...]
    qmp_socket: Path
    agent_socket: Path  # the guest agent's channel, whether or not the guest runs one
    vnc_password_file: Path | None  # written at start from VNC_PASSWORD, never in argv
    macvtaps: tuple[tuple[str, int], ...]  # (macvtap, the fd QEMU expects its device on)


def build_qemu(
    vm: VmPlan,
    *,
    overlay: Path,
    config_drive: Path | None,
    nics: Sequence[NicPlan],
    vhost: bool,
    vnc: bool,
    vnc_password: bool,
    run_dir: Path,
    extra_args: Sequence[str],
) -> QemuPlan:
    password_file = run_dir / VNC_PASSWORD_FILE if vnc and vnc_password else None
    argv = [
        *_machine(vm),
        *_control(run_dir),
        *_disks(overlay, config_drive),
        *_nics(nics, vhost),
        "-device",
        "virtio-rng-pci",
        *_display(vnc, password_file),
        *extra_args,
    ]
    macvtaps = tuple(
        (nic.link.macvtap, nic.link.fd) for nic in nics if isinstance(nic.link, MacvtapLink)
    )
    return QemuPlan(
        tuple(argv), run_dir / QMP_SOCKET, run_dir / AGENT_SOCKET, password_file, macvtaps
    )


def _machine(vm: VmPlan) -> list[str]:
    return [
        QEMU,
        "-name", f"guest={vm.hostname},debug-threads=on",
        "-machine", "pc",
        "-accel", vm.accel,
        # TCG emulates `host` poorly; qemu64 is what every legacy guest knows.
        "-cpu", "host" if vm.accel == "kvm" else "qemu64",
        "-m", str(vm.memory_mib),
        "-smp", str(vm.cpus),
        "-nodefaults",
        "-no-user-config",
        "-rtc", "base=utc",
    ]  # fmt: skip


def _control(run_dir: Path) -> list[str]:
    """The console, QMP, and the guest agent's channel (always there, used when the guest
    runs an agent). The serial console is the container's stdout (`kubectl logs`) and its
    stdin (`kubectl attach`): Ctrl-C there goes to the guest, not to QEMU."""
    agent = f"socket,id={AGENT_CHARDEV},path={run_dir / AGENT_SOCKET},server=on,wait=off"
    port = f"virtserialport,bus=vserial0.0,chardev={AGENT_CHARDEV},name={AGENT_CHANNEL}"
    return [
        "-chardev", "stdio,id=console,signal=off",
        "-serial", "chardev:console",
        "-qmp", f"unix:{run_dir / QMP_SOCKET},server=on,wait=off",
        "-chardev", agent,
        "-device", "virtio-serial-pci,id=vserial0",
        "-device", port,
    ]  # fmt: skip


def _disks(overlay: Path, config_drive: Path | None) -> list[str]:
    argv = [
        "-drive", f"file={overlay},if=none,id=disk0,format=qcow2,discard=unmap",
        "-device", "virtio-blk-pci,drive=disk0,bootindex=1",
    ]  # fmt: skip
    if config_drive is not None:
        drive = f"file={config_drive},if=none,id=cidata,media=cdrom,readonly=on,format=raw"
        argv += ["-drive", drive, "-device", "ide-cd,drive=cidata"]
    return argv


def _nics(nics: Sequence[NicPlan], vhost: bool) -> list[str]:
    # vhost only when /dev/vhost-net opens: QEMU 7.2 aborts if asked for it without.
    vhost_option = f"vhost={'on' if vhost else 'off'}"
    argv = []
    for nic in nics:
        netdev = f"net{nic.index}"
        match nic.link:
            case NatLink(tap=tap) | BridgeLink(tap=tap):
                backend = f"tap,id={netdev},ifname={tap},script=no,downscript=no"
            case MacvtapLink(fd=fd):  # its device, opened by launch.exec_qemu
                backend = f"tap,id={netdev},fd={fd}"
            case unknown:
                assert_never(unknown)
        argv += ["-netdev", f"{backend},{vhost_option}"]
        argv += ["-device", f"virtio-net-pci,netdev={netdev},mac={nic.guest.mac}"]
    return argv


def _display(vnc: bool, password_file: Path | None) -> list[str]:
    if not vnc:
        return ["-vga", "none", "-display", "none"]
    argv, option = [], "0.0.0.0:0"
    if password_file is not None:
        argv += ["-object", f"secret,id={VNC_SECRET_ID},file={password_file},format=raw"]
        option += f",password-secret={VNC_SECRET_ID}"
    # An absolute pointer (USB tablet): a VNC viewer's mouse then matches the guest's.
    return [*argv, "-vga", "std", "-usb", "-device", "usb-tablet", "-vnc", option]
