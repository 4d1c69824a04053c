"""Checks of what the pod must provide, made before anything is changed.

Without them a missing device or capability would surface halfway through the startup path,
after a bridge or a rule already exists; here it is one line and exit status 2, like a bad
variable.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
from collections.abc import Sequence
from pathlib import Path

from kvmmgr.errors import PreconditionError, StepError
from kvmmgr.facts import KVM
from kvmmgr.facts import TUN as TUN_DEVICE
from kvmmgr.net.dhcp import DNSMASQ_USER
from kvmmgr.net.nics import MacvtapLink
from kvmmgr.plan import Plan
from kvmmgr.system import proc
from kvmmgr.system.access import closed_directory
from kvmmgr.system.devices import opens
from kvmmgr.webconsole import daemon
from kvmmgr.webconsole.plan import PAGE, WebConsolePlan

# Capability bits (linux/capability.h), and what each is needed for.
CAPABILITIES = {
    "NET_ADMIN": (12, "bridge, tap, addresses and rules"),
    "NET_RAW": (13, "the raw socket iptables rules are written through"),
    "NET_BIND_SERVICE": (10, "dnsmasq's DHCP port 67"),
    "MKNOD": (27, "the device node QEMU opens for a macvtap"),
    "CHOWN": (0, "the VM's files given to QEMU's group"),
    "KILL": (5, "replacing a dnsmasq that runs as its own user"),
    "SETGID": (6, "QEMU's and dnsmasq's change of group"),
    "SETUID": (7, "QEMU's and dnsmasq's change of user"),
    "SETPCAP": (8, "emptying QEMU's bounding set of capabilities"),
}
# Each is there once the node has loaded the module; a container cannot load it.
IPTABLES_MODULES = {4: ("ip_tables_names", "ip_tables"), 6: ("ip6_tables_names", "ip6_tables")}


def check(
    plan: Plan,
    volumes: Sequence[Path],
    status_file: Path = Path("/proc/self/status"),
    proc_net: Path = Path("/proc/net"),
) -> None:
    """Raise PreconditionError for the first thing the startup path would miss."""
    needed = ["NET_ADMIN", "NET_RAW", "CHOWN", "SETGID", "SETUID", "SETPCAP"]
    needed += ["NET_BIND_SERVICE", "KILL"] if plan.dhcp else []
    if plan.qemu.macvtaps:
        needed.append("MKNOD")
    _check_capabilities(status_file, needed)
    for family in sorted({chain.family for chain in plan.firewall.chains}):
        name, module = IPTABLES_MODULES[family]
        if not (proc_net / name).exists():
            raise PreconditionError(
                f"{proc_net / name}: missing: expected the node to have loaded the {module} "
                "kernel module (the firewall is legacy iptables; modprobe it on the node)"
            )
    if any(not isinstance(nic.link, MacvtapLink) for nic in plan.nics):  # they have taps
        _check_tun()
    programs = [plan.qemu.argv[0], "qemu-img"]
    if plan.dhcp is not None:
        programs.append(plan.dhcp.argv[0])
    if plan.dhcp_guard is not None:
        programs.append("nft")
    for program in programs:
        if shutil.which(program) is None:
            raise PreconditionError(f"{program}: not found on PATH: expected it installed")
    _check_hardware(plan)
    _check_qemu_user(plan, volumes)
    if plan.web_console is not None:
        _check_web_console(plan.web_console)
    writable = [plan.qemu.qmp_socket.parent]
    if not plan.disks.overlay.exists():
        writable.append(plan.disks.overlay.parent)
    if not plan.disks.base.exists():
        writable.append(plan.disks.base.parent)
    for directory in writable:
        _check_writable(directory)


def _check_web_console(console: WebConsolePlan) -> None:
    """noVNC's page is there, and WEB_CONSOLE_PORT is free, or this VM's server holds it
    (an earlier start's, which the step replaces)."""
    page = console.files / PAGE
    if not page.is_file():
        raise PreconditionError(
            f"{page}: missing: expected noVNC's page (Debian's novnc package) for WEB_CONSOLE_PORT"
        )
    if daemon.running(console):
        return
    try:
        socket.create_server(("0.0.0.0", console.port)).close()
    except OSError as exc:
        raise PreconditionError(
            f"WEB_CONSOLE_PORT={console.port}: cannot listen on it in the pod ({exc.strerror}): "
            "expected a port that nothing else of the pod's uses"
        ) from None


def _check_hardware(plan: Plan) -> None:
    firmware = plan.qemu.firmware
    if firmware is not None:
        for path in (firmware.code, firmware.vars_template):
            if not path.is_file():
                raise PreconditionError(
                    f"{path}: missing: expected OVMF (Debian's ovmf package) for VM_FIRMWARE=uefi"
                )
    for disk in plan.disks.data:
        if disk.kind == "pod" and not (disk.path.is_block_device() or disk.path.is_file()):
            raise PreconditionError(
                f"VM_DATA_DISKS {disk.path}: expected a block device or a file in the pod "
                "(a PVC in block or filesystem mode)"
            )
    model = plan.hardware.cpu_model
    if model not in {"host", "qemu64"} and model not in _cpu_models(plan.qemu.argv[0]):
        raise PreconditionError(
            f"VM_CPU_MODEL={model!r}: not a CPU model of this QEMU (`{plan.qemu.argv[0]} -cpu "
            "help` lists them)"
        )


def _check_qemu_user(plan: Plan, volumes: Sequence[Path]) -> None:
    """QEMU, not root, must reach its files and open /dev/kvm; dnsmasq's user must exist."""
    qemu = plan.qemu
    for file in qemu.files:
        closed = closed_directory(file.path, qemu.user, qemu.groups, volumes)
        if closed is not None:
            mode = stat.filemode(closed.stat().st_mode)
            raise PreconditionError(
                f"{closed}: QEMU runs as {qemu.user.name} and cannot pass this directory "
                f"({mode}) to reach {file.path}: expected it searchable by all (o+x)"
            )
    if plan.vm.accel == "kvm" and KVM in plan.pod.devices.root_only:
        raise PreconditionError(
            f"{KVM}: only root may open it, and QEMU runs as {qemu.user.name}: expected the "
            "device readable and writable by its group or by all (as the KVM device plugin "
            "gives it), or VM_ACCEL=tcg"
        )
    if plan.dhcp is not None:
        try:
            pwd.getpwnam(DNSMASQ_USER)
        except KeyError:
            raise PreconditionError(
                f"user {DNSMASQ_USER!r}: missing from /etc/passwd: expected the user dnsmasq "
                "runs as (Debian's dnsmasq-base package creates it)"
            ) from None


def _cpu_models(qemu: str) -> set[str]:
    try:
        listing = proc.run([qemu, "-cpu", "help"], timeout=30)
    except StepError:
        return set()
    return {line.split()[1] for line in listing.splitlines() if line.startswith("x86 ")}


def effective_capabilities(status_text: str) -> int:
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def _check_capabilities(status_file: Path, needed: list[str]) -> None:
    try:
        caps = effective_capabilities(status_file.read_text())
    except OSError:
        return  # no /proc: nothing to tell; the kernel will say it
    for name in needed:
        bit, purpose = CAPABILITIES[name]
        if not caps & (1 << bit):
            raise PreconditionError(
                f"the {name} capability is missing: expected it in the container's "
                f"securityContext.capabilities.add ({purpose})"
            )


def _check_tun() -> None:
    failed = opens(TUN_DEVICE)
    if failed is not None:
        raise PreconditionError(
            f"{TUN_DEVICE}: cannot open ({failed.strerror}): expected the TUN/TAP device "
            "(in Kubernetes: a device-plugin resource or a hostPath device)"
        )


def _check_writable(directory: Path) -> None:
    """The directory, or the nearest parent that exists (the step will create the rest)."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PreconditionError(f"{existing}: not a directory: expected one to hold {directory}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PreconditionError(
            f"{existing}: not writable: expected a writable directory for {directory}"
        )
