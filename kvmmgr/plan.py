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

from kvmmgr.cloudconfig import GuestNetwork
from kvmmgr.config import Settings
from kvmmgr.configdrive import ConfigDrivePlan, DriveInputs, build_config_drive
from kvmmgr.dhcp import DhcpPlan, build_dhcp
from kvmmgr.dhcpguard import GuardedInterface, GuardPlan, build_guard
from kvmmgr.errors import ConfigError
from kvmmgr.firewall import FirewallPlan, build_firewall
from kvmmgr.image import DiskPlan, build_disks
from kvmmgr.network import NetworkPlan, build_network
from kvmmgr.nics import MacvtapLink, NicPlan, build_nics
from kvmmgr.pod import PodFacts
from kvmmgr.qemu import QemuPlan, build_qemu

DEFAULT_MEMORY_MIB = 1024
DEFAULT_CPUS = 1
QEMU_OVERHEAD_MIB = 256  # left to QEMU itself when the VM's size follows the memory limit
MIN_MEMORY_MIB = 64


@dataclass(frozen=True)
class VmPlan:
    hostname: str
    memory_mib: int
    cpus: int
    accel: Literal["kvm", "tcg"]


@dataclass(frozen=True)
class Plan:
    pod: PodFacts
    vm: VmPlan
    nics: tuple[NicPlan, ...]
    disks: DiskPlan
    network: NetworkPlan
    firewall: FirewallPlan
    dhcp: DhcpPlan | None
    dhcp_guard: GuardPlan | None  # bridge and macvtap NICs with DHCP on
    config_drive: ConfigDrivePlan | None
    qemu: QemuPlan
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
    *,
    exec_qemu: bool = True,
) -> Plan:
    """`exec_qemu` False: this process ends after setup instead of becoming QEMU."""
    notes: list[str] = []
    nics = build_nics(settings, pod, pod.hostname, notes)
    vm = VmPlan(
        hostname=pod.hostname,
        memory_mib=_memory(settings, pod, notes),
        cpus=settings.vm_cpus or pod.limits.cpus or DEFAULT_CPUS,
        accel=_accel(settings, pod, notes),
    )
    disks = disks_of(settings, pod.hostname)
    firewall = build_firewall(nics=nics, keep_vnc=settings.vnc, exclude=settings.nat_exclude)
    dhcp = guard = None
    if settings.dhcp:
        dhcp = build_dhcp(
            run_dir=settings.run_dir,
            nics=nics,
            hostname=vm.hostname,
            dns=pod.dns,
            verbose=settings.debug,
            log_to_file=not exec_qemu,
            extra_args=settings.dnsmasq_opts,
        )
        carried, searched = len(dhcp.search), len(pod.dns.search)
        if carried < searched:
            notes.append(
                f"DHCP carries the first {carried} of the pod's {searched} search domains "
                "(those that are DNS names and fit in option 119); the config drive has all"
            )
        shared = [_guarded(nic) for nic in nics if nic.mode != "nat"]
        guard = build_guard(shared) if shared else None
    config_drive = None
    if settings.config_drive_format is not None:
        guest = GuestNetwork(
            tuple(nic.guest for nic in nics),
            pod.dns.nameservers,
            pod.dns.search,
            dhcp=settings.dhcp,
        )
        config_drive = build_config_drive(
            drive_format=settings.config_drive_format,
            iso=settings.run_dir / "config-drive.iso",
            hostname=pod.hostname,
            inputs=inputs,
            network=guest,
            networkdata_path=settings.drive_inputs.networkdata,
        )
    qemu = build_qemu(
        hostname=vm.hostname,
        accel=vm.accel,
        memory_mib=vm.memory_mib,
        cpus=vm.cpus,
        overlay=disks.overlay,
        config_drive=config_drive.iso if config_drive else None,
        nics=nics,
        vhost=pod.devices.vhost_net,
        vnc=settings.vnc,
        vnc_password=settings.vnc_password is not None,
        run_dir=settings.run_dir,
        extra_args=extra_qemu_args,
    )
    return Plan(
        pod=pod,
        vm=vm,
        nics=nics,
        disks=disks,
        network=build_network(nics),
        firewall=firewall,
        dhcp=dhcp,
        dhcp_guard=guard,
        config_drive=config_drive,
        qemu=qemu,
        notes=tuple(notes),
    )


def _guarded(nic: NicPlan) -> GuardedInterface:
    if isinstance(nic.link, MacvtapLink):
        return GuardedInterface(nic.pod.name, (nic.guest.mac, nic.link.server_mac))
    return GuardedInterface(nic.pod.name)


def disks_of(settings: Settings, hostname: str) -> DiskPlan:
    return build_disks(
        source=settings.img_source,
        image_dir=settings.image_dir,
        target=settings.img_target,
        sha256=settings.img_sha256,
        vm_dir=settings.vm_dir,
        hostname=hostname,
        retries=settings.img_retries,
        ca_bundle=settings.img_ca_bundle,
        size=settings.vm_disk_size,
    )


def _memory(settings: Settings, pod: PodFacts, notes: list[str]) -> int:
    if settings.vm_memory_mib is not None:
        limit = pod.limits.memory_mib
        if limit is not None and settings.vm_memory_mib + QEMU_OVERHEAD_MIB > limit:
            notes.append(
                f"VM_MEMORY={settings.vm_memory_mib} MiB leaves less than {QEMU_OVERHEAD_MIB} "
                f"MiB for QEMU under the container's {limit} MiB limit"
            )
        return settings.vm_memory_mib
    if pod.limits.memory_mib is None:
        return DEFAULT_MEMORY_MIB
    memory = pod.limits.memory_mib - QEMU_OVERHEAD_MIB
    if memory < MIN_MEMORY_MIB:
        raise ConfigError(
            f"the container's memory limit of {pod.limits.memory_mib} MiB leaves {memory} MiB "
            f"for the VM after {QEMU_OVERHEAD_MIB} MiB for QEMU: expected a limit of at least "
            f"{MIN_MEMORY_MIB + QEMU_OVERHEAD_MIB} MiB, or VM_MEMORY"
        )
    return memory


def _accel(settings: Settings, pod: PodFacts, notes: list[str]) -> Literal["kvm", "tcg"]:
    if settings.vm_accel == "tcg":
        return "tcg"
    if pod.devices.kvm:
        return "kvm"
    if settings.vm_accel == "kvm":
        raise ConfigError.bad_value(
            "VM_ACCEL", "kvm", "auto or tcg: /dev/kvm is missing or the CPU lacks vmx/svm"
        )
    notes.append("VM_ACCEL=auto: KVM is not usable here (no /dev/kvm or no vmx/svm): using TCG")
    return "tcg"


def _plain(value: Any) -> Any:
    """The plan as JSON-able data. Contents of files are summarised (size and sha256):
    user-data can hold secrets and the plan is printed."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes):
        return {"size": len(value), "sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, IPv4Address | IPv4Interface | IPv4Network | Path):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
