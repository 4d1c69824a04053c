"""QEMU's command line, built as data from the plan. Pure; launch.py hands the container to it.

An argv of strings, never a shell string; each part of the machine from its own function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, assert_never
from uuid import UUID

from kvmmgr.config import DiskBus, Firmware, Machine, NicModel
from kvmmgr.facts import Identity
from kvmmgr.image.disks import DiskPlan
from kvmmgr.net.nics import BridgeLink, MacvtapLink, NatLink, NicPlan
from kvmmgr.vm.buses import Drive, disk_args

QEMU = "qemu-system-x86_64"
QMP_SOCKET = "qmp.sock"  # in RUN_DIR
# A second monitor, the metrics sidecar's: QEMU serves one client at a time on a socket
# chardev, so a scrape never makes a probe (`status`, on qmp.sock) wait.
METRICS_QMP_SOCKET = "qmp-metrics.sock"  # in RUN_DIR
AGENT_CHANNEL = "org.qemu.guest_agent.0"  # the port name the guest's agent looks for
AGENT_CHARDEV = "qga0"
AGENT_SOCKET = "qga.sock"  # in RUN_DIR
VNC_SECRET_ID = "vncpass"
VNC_PASSWORD_FILE = "vnc-password"  # in RUN_DIR, beside the QMP socket
OVMF = Path("/usr/share/OVMF")  # Debian's ovmf package
# QEMU opens nothing of the pod's by itself but its files (QemuPlan.files): kvm-manager hands
# it its listening sockets and its taps already open, on these file descriptors.
QMP_FD = 90
AGENT_FD = 91
METRICS_QMP_FD = 92
TAP_FD_BASE = 200  # tap NIC i on 200 + i (macvtaps: nics.MACVTAP_FD_BASE)
# QEMU's own seccomp filter: no obsolete system calls, no change of user or capabilities, no
# fork or exec, no scheduler or resource calls.
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
NIC_DEVICES: dict[NicModel, str] = {
    "virtio": "virtio-net-pci", "e1000": "e1000", "e1000e": "e1000e",
    "rtl8139": "rtl8139", "vmxnet3": "vmxnet3",
}  # fmt: skip
BALLOON_ID = "balloon0"
BALLOON_STATS_SECONDS = 10  # how often the guest's driver is asked for its memory figures


@dataclass(frozen=True)
class FirmwarePlan:
    """UEFI: OVMF's code (read-only, the package's), and the VM's own variables, kept on its
    volume beside its disk (boot entries, Secure Boot keys), made once from a template."""

    code: Path
    vars_template: Path
    vars: Path


@dataclass(frozen=True)
class HardwarePlan:
    machine: Machine
    firmware: Firmware
    secure_boot: bool
    disk_bus: DiskBus
    nic_model: NicModel
    cpu_model: str
    serial: str  # SMBIOS system serial
    uuid: UUID  # SMBIOS system UUID
    balloon: bool = False  # a virtio balloon device (VM_BALLOON)

    def firmware_files(self, vm_dir: Path, hostname: str) -> FirmwarePlan | None:
        if self.firmware == "bios":
            return None
        if self.secure_boot:  # with Microsoft's keys enrolled, as on most PCs
            code, template = "OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd"
        else:
            code, template = "OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"
        return FirmwarePlan(OVMF / code, OVMF / template, vm_dir / f"{hostname}.efivars.fd")


@dataclass(frozen=True)
class VmPlan:
    hostname: str
    memory_mib: int
    cpus: int
    accel: Literal["kvm", "tcg"]


@dataclass(frozen=True)
class QemuFile:
    """A file QEMU opens by its path: made usable by QEMU's group, and by nobody else."""

    path: Path
    writable: bool


@dataclass(frozen=True)
class QemuPlan:
    argv: tuple[str, ...]
    qmp_socket: Path
    agent_socket: Path  # the guest agent's channel, whether or not the guest runs one
    vnc_password_file: Path | None  # written at start from VNC_PASSWORD, never in argv
    macvtaps: tuple[tuple[str, int], ...]  # (macvtap, the fd QEMU expects its device on)
    firmware: FirmwarePlan | None  # UEFI's files; None: BIOS
    user: Identity  # QEMU runs as this user, never root, with
    groups: tuple[int, ...]  # these groups only (its own, and those of devices it opens)
    taps: tuple[tuple[str, int], ...]  # (tap, the fd QEMU expects it on)
    files: tuple[QemuFile, ...]  # every file of the pod's that QEMU opens by its path

    @property
    def sockets(self) -> tuple[tuple[Path, int], ...]:
        """The listening sockets kvm-manager binds for QEMU (it could not: RUN_DIR is root's)."""
        return (
            (self.qmp_socket, QMP_FD),
            (self.agent_socket, AGENT_FD),
            (self.metrics_socket, METRICS_QMP_FD),
        )

    @property
    def metrics_socket(self) -> Path:
        return self.qmp_socket.parent / METRICS_QMP_SOCKET


def build_qemu(
    vm: VmPlan,
    hardware: HardwarePlan,
    *,
    disks: DiskPlan,
    config_drive: Path | None,
    nics: Sequence[NicPlan],
    vhost: bool,
    vnc: bool,
    vnc_password: bool,
    run_dir: Path,
    websocket: tuple[str, int] | None = None,
    extra_args: Sequence[str],
    user: Identity,
    groups: Sequence[int] = (),
) -> QemuPlan:
    password_file = run_dir / VNC_PASSWORD_FILE if vnc and vnc_password else None
    firmware = hardware.firmware_files(disks.overlay.parent, vm.hostname)
    drives = [Drive(disks.overlay, "qcow2")]
    drives += [Drive(d.path, d.format, d.serial) for d in disks.data]
    argv = [
        *_machine(vm, hardware, firmware),
        "-sandbox",
        SANDBOX,
        *_control(),
        *disk_args(hardware.disk_bus, hardware.machine, drives, config_drive),
        *_nics(nics, vhost, NIC_DEVICES[hardware.nic_model]),
        "-device",
        "virtio-rng-pci",
        *_display(vnc, password_file, websocket),
        *_balloon(hardware.balloon),
        *extra_args,
    ]
    macvtaps = tuple(
        (nic.link.macvtap, nic.link.fd) for nic in nics if isinstance(nic.link, MacvtapLink)
    )
    taps = tuple(
        (nic.link.tap, TAP_FD_BASE + nic.index)
        for nic in nics
        if isinstance(nic.link, NatLink | BridgeLink)
    )
    return QemuPlan(
        tuple(argv), run_dir / QMP_SOCKET, run_dir / AGENT_SOCKET, password_file, macvtaps,
        firmware, user, tuple(dict.fromkeys((user.gid, *groups))), taps,
        _files(disks, config_drive, firmware, password_file),
    )  # fmt: skip


def _files(
    disks: DiskPlan,
    config_drive: Path | None,
    firmware: FirmwarePlan | None,
    password_file: Path | None,
) -> tuple[QemuFile, ...]:
    """The VM's disks (the base and an OVA's disks only read), its UEFI variables, and what
    QEMU reads once at start. OVMF's code is the package's, readable by all."""
    files = [QemuFile(disks.overlay, True), QemuFile(disks.base, False)]
    for disk in disks.data:
        files.append(QemuFile(disk.path, True))
        if disk.backing is not None:
            files.append(QemuFile(disk.backing, False))
    if firmware is not None:
        files.append(QemuFile(firmware.vars, True))
    files += [QemuFile(path, False) for path in (config_drive, password_file) if path]
    return tuple(files)


def _machine(vm: VmPlan, hardware: HardwarePlan, firmware: FirmwarePlan | None) -> list[str]:
    machine = hardware.machine + (",smm=on" if hardware.secure_boot else "")
    serial = hardware.serial.replace(",", ",,")  # QEMU's option syntax doubles a comma
    argv = [
        QEMU,
        "-name", f"guest={vm.hostname},debug-threads=on",
        "-machine", machine,
        "-accel", vm.accel,
        "-cpu", hardware.cpu_model,
        "-m", str(vm.memory_mib),
        "-smp", str(vm.cpus),
        "-nodefaults",
        "-no-user-config",
        "-rtc", "base=utc",
        "-uuid", str(hardware.uuid),
        "-smbios", f"type=1,serial={serial},uuid={hardware.uuid}",
    ]  # fmt: skip
    if firmware is not None:
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={firmware.code}"]
        argv += ["-drive", f"if=pflash,format=raw,unit=1,file={firmware.vars}"]
    if hardware.secure_boot:  # the variables may be written only from SMM
        argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    return argv


def _control() -> list[str]:
    """The console, QMP, and the guest agent's channel (always there, used when the guest
    runs an agent). The serial console is the container's stdout (`kubectl logs`) and its
    stdin (`kubectl attach`): Ctrl-C there goes to the guest, not to QEMU. QMP and the agent
    listen on sockets kvm-manager made (RUN_DIR/qmp.sock, RUN_DIR/qga.sock), and so does
    the metrics sidecar's monitor (RUN_DIR/qmp-metrics.sock)."""
    agent = f"socket,id={AGENT_CHARDEV},fd={AGENT_FD},server=on,wait=off"
    port = f"virtserialport,bus=vserial0.0,chardev={AGENT_CHARDEV},name={AGENT_CHANNEL}"
    return [
        "-chardev", "stdio,id=console,signal=off",
        "-serial", "chardev:console",
        "-chardev", f"socket,id=qmp,fd={QMP_FD},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-chardev", f"socket,id=qmp-metrics,fd={METRICS_QMP_FD},server=on,wait=off",
        "-mon", "chardev=qmp-metrics,mode=control",
        "-chardev", agent,
        "-device", "virtio-serial-pci,id=vserial0",
        "-device", port,
    ]  # fmt: skip


def _nics(nics: Sequence[NicPlan], vhost: bool, device: str) -> list[str]:
    # vhost only when /dev/vhost-net opens (QEMU 7.2 aborts if asked for it without), and
    # for virtio NICs: the other models are emulated by QEMU itself.
    vhost_option = f"vhost={'on' if vhost and device == 'virtio-net-pci' else 'off'}"
    argv = []
    for nic in nics:
        netdev = f"net{nic.index}"
        match nic.link:
            case NatLink() | BridgeLink():  # its tap, opened by launch.exec_qemu
                backend = f"tap,id={netdev},fd={TAP_FD_BASE + nic.index}"
            case MacvtapLink(fd=fd):  # its device, opened by launch.exec_qemu
                backend = f"tap,id={netdev},fd={fd}"
            case unknown:
                assert_never(unknown)
        argv += ["-netdev", f"{backend},{vhost_option}"]
        argv += ["-device", f"{device},netdev={netdev},mac={nic.guest.mac}"]
    return argv


def _balloon(balloon: bool) -> list[str]:
    """Last of the devices, so that none of the others moves to another PCI slot when it is
    turned on. The guest's driver reports its memory figures every BALLOON_STATS_SECONDS."""
    if not balloon:
        return []
    polling = f"guest-stats-polling-interval={BALLOON_STATS_SECONDS}"
    return ["-device", f"virtio-balloon-pci,id={BALLOON_ID},{polling}"]


def _display(vnc: bool, password_file: Path | None, websocket: tuple[str, int] | None) -> list[str]:
    """`websocket`: where the same display is also served over WebSocket (the web console),
    behind the same password."""
    if not vnc:
        return ["-vga", "none", "-display", "none"]
    argv, option = [], "0.0.0.0:0"
    if websocket is not None:
        option += f",websocket={websocket[0]}:{websocket[1]}"
    if password_file is not None:
        argv += ["-object", f"secret,id={VNC_SECRET_ID},file={password_file},format=raw"]
        option += f",password-secret={VNC_SECRET_ID}"
    # An absolute pointer (USB tablet): a VNC viewer's mouse then matches the guest's.
    return [*argv, "-vga", "std", "-usb", "-device", "usb-tablet", "-vnc", option]
