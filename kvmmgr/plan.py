"""Every decision of the startup path as plain data: Settings + PodFacts -> Plan. Pure."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from kvmmgr.config import Settings
from kvmmgr.errors import ConfigError
from kvmmgr.facts import KVM, VHOST_NET, PodFacts
from kvmmgr.guest.drive import ConfigDrivePlan, DriveInputs, build_config_drive
from kvmmgr.image.appliance import Appliance, BaseFacts
from kvmmgr.image.disks import DiskPlan, build_disks
from kvmmgr.image.sources import HttpSource, LocalSource
from kvmmgr.net.dhcp import DhcpPlan, build_dhcp
from kvmmgr.net.dhcpguard import GuardedInterface, GuardPlan, build_guard
from kvmmgr.net.firewall import FirewallPlan, build_firewall
from kvmmgr.net.model import GuestNetwork
from kvmmgr.net.nics import NicPlan, Sysctl, build_nics, build_sysctls
from kvmmgr.vm.hardware import build_hardware
from kvmmgr.vm.qemu import HardwarePlan, QemuPlan, VmPlan, build_qemu
from kvmmgr.webconsole.plan import QEMU_WEBSOCKET, WebConsolePlan, build_web_console

DEFAULT_MEMORY_MIB = 1024
DEFAULT_CPUS = 1
QEMU_OVERHEAD_MIB = 256  # left to QEMU itself when the VM's size follows the memory limit
MIN_MEMORY_MIB = 64
NO_BASE = BaseFacts()  # not fetched yet: nothing known of it


@dataclass(frozen=True)
class Plan:
    pod: PodFacts
    vm: VmPlan
    hardware: HardwarePlan
    nics: tuple[NicPlan, ...]
    sysctls: tuple[Sysctl, ...]
    disks: DiskPlan
    firewall: FirewallPlan
    dhcp: DhcpPlan | None
    dhcp_guard: GuardPlan | None  # bridge and macvtap NICs with DHCP on
    config_drive: ConfigDrivePlan | None
    qemu: QemuPlan
    web_console: WebConsolePlan | None  # WEB_CONSOLE_PORT
    base: BaseFacts  # what was known of the base image (an OVA's hardware) when planned
    notes: tuple[str, ...]  # decisions worth a warning in the log

    def as_data(self) -> Any:
        """Plain JSON-able data (file contents summarised, secrets left out)."""
        return _plain(self)

    def to_json(self) -> str:
        """Deterministic JSON: the same pod and settings give the same bytes."""
        return json.dumps(self.as_data(), indent=2, sort_keys=True) + "\n"


def make_plan(
    settings: Settings,
    pod: PodFacts,
    inputs: DriveInputs,
    extra_qemu_args: Sequence[str] = (),
    base: BaseFacts = NO_BASE,
) -> Plan:
    """`base`: what the cache says of the base image, when it is there (an OVA's hardware)."""
    notes: list[str] = []
    nics = build_nics(settings.network, settings.vm, pod, notes)
    appliance = base.appliance
    vm = VmPlan(
        hostname=pod.hostname,
        memory_mib=_memory(settings, pod, notes, appliance),
        cpus=settings.vm.cpus or _from_ovf(appliance, "cpus") or pod.limits.cpus or DEFAULT_CPUS,
        accel=_accel(settings, pod, notes),
    )
    hardware = build_hardware(settings.vm, appliance, vm, len(nics), notes)
    disks = build_disks(settings.image, pod.hostname, base.data_disks, base.made_on)
    if disks.wanted is not None:
        notes.append(
            f"disk: {disks.overlay} was made on {disks.base.name}, not on IMG_TARGET's "
            f"{disks.wanted.name}: it keeps its base (VM_DISK_POLICY=keep); `kvm-manager "
            "rebase` moves it, VM_DISK_POLICY=reimage makes it afresh"
        )
    dhcp = _dhcp(settings, pod, nics, notes)
    config_drive = _config_drive(settings, pod, nics, inputs)
    qemu = build_qemu(
        vm,
        hardware,
        disks=disks,
        config_drive=config_drive.iso if config_drive else None,
        nics=nics,
        vhost=_vhost(pod, notes),
        vnc=settings.vm.vnc,
        vnc_password=settings.vm.vnc_password is not None,
        websocket=QEMU_WEBSOCKET if settings.vm.web_console_port else None,
        run_dir=settings.run_dir,
        extra_args=extra_qemu_args,
        user=pod.qemu_user,
        groups=_device_groups(pod, vm.accel),
    )
    network = settings.network
    return Plan(
        pod=pod,
        vm=vm,
        hardware=hardware,
        nics=nics,
        sysctls=build_sysctls(nics),
        disks=disks,
        firewall=build_firewall(
            nics=nics,
            private=settings.vm.private_ports + _given(network.metrics_port),
            exclude=network.nat_exclude,
        ),
        dhcp=dhcp,
        dhcp_guard=_guard(nics) if dhcp else None,
        config_drive=config_drive,
        qemu=qemu,
        web_console=build_web_console(
            settings.vm.web_console_port, settings.run_dir, pod.qemu_user
        ),
        base=base,
        notes=tuple(notes),
    )


def _given(port: int | None) -> tuple[int, ...]:
    return (port,) if port else ()


def _dhcp(
    settings: Settings, pod: PodFacts, nics: tuple[NicPlan, ...], notes: list[str]
) -> DhcpPlan | None:
    if not settings.network.dhcp:
        return None
    dhcp = build_dhcp(
        run_dir=settings.run_dir,
        nics=nics,
        hostname=pod.hostname,
        dns=pod.dns,
        verbose=settings.debug,
        extra_args=settings.network.dnsmasq_opts,
    )
    carried, searched = len(dhcp.search), len(pod.dns.search)
    if carried < searched:
        notes.append(
            f"DHCP carries the first {carried} of the pod's {searched} search domains "
            "(those that are DNS names and fit in option 119); the config drive has all"
        )
    return dhcp


def _guard(nics: tuple[NicPlan, ...]) -> GuardPlan | None:
    """The NICs on the pod's own link keep DHCP from crossing it."""
    guarded = []
    for nic in nics:
        inside = nic.link.guard_inside(nic)
        if inside is not None:
            guarded.append(GuardedInterface(nic.pod.name, inside))
    return build_guard(guarded) if guarded else None


def _config_drive(
    settings: Settings, pod: PodFacts, nics: tuple[NicPlan, ...], inputs: DriveInputs
) -> ConfigDrivePlan | None:
    guest = settings.guest
    if guest.drive_format is None:
        return None
    network = GuestNetwork(
        tuple(nic.guest for nic in nics),
        pod.dns.nameservers,
        pod.dns.search,
        dhcp=settings.network.dhcp,
    )
    return build_config_drive(
        drive_format=guest.drive_format,
        iso=settings.run_dir / "config-drive.iso",
        hostname=pod.hostname,
        inputs=inputs,
        network=network,
        networkdata_path=guest.inputs.networkdata,
    )


def _from_ovf(appliance: Appliance | None, what: str) -> int | None:
    return getattr(appliance, what) if appliance is not None else None


def _memory(
    settings: Settings, pod: PodFacts, notes: list[str], appliance: Appliance | None
) -> int:
    wanted, limit = settings.vm.memory_mib, pod.limits.memory_mib
    declared = _from_ovf(appliance, "memory_mib")
    if wanted is None and declared is not None:  # the OVF's, within the container's limit
        if limit is not None and declared + QEMU_OVERHEAD_MIB > limit:
            notes.append(
                f"the OVF asks for {declared} MiB: the container's {limit} MiB limit "
                f"leaves the VM {limit - QEMU_OVERHEAD_MIB} MiB"
            )
        else:
            wanted = declared
    if wanted is not None:
        if limit is not None and wanted + QEMU_OVERHEAD_MIB > limit:
            notes.append(
                f"VM_MEMORY={wanted} MiB leaves less than {QEMU_OVERHEAD_MIB} "
                f"MiB for QEMU under the container's {limit} MiB limit"
            )
        return wanted
    if limit is None:
        return DEFAULT_MEMORY_MIB
    memory = limit - QEMU_OVERHEAD_MIB
    if memory < MIN_MEMORY_MIB:
        raise ConfigError(
            f"the container's memory limit of {limit} MiB leaves {memory} MiB "
            f"for the VM after {QEMU_OVERHEAD_MIB} MiB for QEMU: expected a limit of at least "
            f"{MIN_MEMORY_MIB + QEMU_OVERHEAD_MIB} MiB, or VM_MEMORY"
        )
    return memory


def _accel(settings: Settings, pod: PodFacts, notes: list[str]) -> Literal["kvm", "tcg"]:
    if settings.vm.accel == "tcg":
        return "tcg"
    if pod.devices.kvm:
        return "kvm"
    if settings.vm.accel == "kvm":
        raise ConfigError.bad_value(
            "VM_ACCEL", "kvm", "auto or tcg: /dev/kvm is missing or the CPU lacks vmx/svm"
        )
    notes.append("VM_ACCEL=auto: KVM is not usable here (no /dev/kvm or no vmx/svm): using TCG")
    return "tcg"


def _vhost(pod: PodFacts, notes: list[str]) -> bool:
    """vhost-net when QEMU, not root, may open it; it is only faster."""
    devices = pod.devices
    if devices.vhost_net and VHOST_NET in devices.root_only:
        notes.append(
            f"{VHOST_NET} opens only for root, and QEMU runs as {pod.qemu_user.name}: "
            "vhost-net is off (give the device group or world read-write access for it)"
        )
        return False
    return devices.vhost_net


def _device_groups(pod: PodFacts, accel: str) -> tuple[int, ...]:
    """The groups QEMU joins to open its devices (a world-usable device needs none)."""
    used = [KVM] if accel == "kvm" else []
    used += [VHOST_NET] if pod.devices.vhost_net else []
    return tuple(g for g in map(pod.devices.group_of, used) if g is not None)


def _plain(value: Any) -> Any:
    """The plan as JSON-able data. Contents of files are summarised (size and sha256):
    user-data can hold secrets and the plan is printed."""
    if isinstance(value, HttpSource | LocalSource):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, NicPlan):
            data["mode"] = value.mode  # said by its link's type: shown once, here
        return data
    if isinstance(value, bytes):
        return {"size": len(value), "sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, IPv4Address | IPv4Interface | IPv4Network | Path | UUID):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
