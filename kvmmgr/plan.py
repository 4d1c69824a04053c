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
from kvmmgr.errors import ConfigError
from kvmmgr.firewall import FirewallPlan, build_firewall
from kvmmgr.image import DiskPlan, build_disks
from kvmmgr.network import NetworkPlan, build_network
from kvmmgr.pod import PodFacts
from kvmmgr.qemu import QemuPlan, build_qemu

BRIDGE = "kvmbr0"
TAP = "kvmtap0"
DEFAULT_MEMORY_MIB = 1024
DEFAULT_CPUS = 1
QEMU_OVERHEAD_MIB = 256  # left to QEMU itself when the VM's size follows the memory limit
MIN_MEMORY_MIB = 64


@dataclass(frozen=True)
class VmPlan:
    hostname: str
    ip: IPv4Address
    gateway: IPv4Address
    netmask: IPv4Address
    mac: str
    memory_mib: int
    cpus: int
    accel: Literal["kvm", "tcg"]


@dataclass(frozen=True)
class Plan:
    pod: PodFacts
    pod_ip: IPv4Interface
    vm: VmPlan
    disks: DiskPlan
    network: NetworkPlan
    firewall: FirewallPlan
    dhcp: DhcpPlan | None
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
    pod_ip = _pod_address(settings, pod)
    _check_no_overlap(settings, pod)
    vm = VmPlan(
        hostname=pod.hostname,
        ip=settings.vm_ip,
        gateway=settings.vm_gw,
        netmask=settings.vm_network.netmask,
        mac=settings.vm_mac or derive_mac(pod.hostname),
        memory_mib=_memory(settings, pod, notes),
        cpus=settings.vm_cpus or pod.limits.cpus or DEFAULT_CPUS,
        accel=_accel(settings, pod, notes),
    )
    if pod.dns.ignored:
        notes.append(f"IPv6 nameservers not offered over DHCPv4: {', '.join(pod.dns.ignored)}")
    disks = disks_of(settings, pod.hostname)
    network = build_network(
        bridge=BRIDGE,
        tap=TAP,
        gateway=IPv4Interface(f"{settings.vm_gw}/{settings.vm_network.prefixlen}"),
        mtu=pod.interface.mtu,
    )
    firewall = build_firewall(
        pod_iface=pod.interface.name,
        pod_ip=pod_ip.ip,
        vm_ip=vm.ip,
        vm_gw=vm.gateway,
        bridge=BRIDGE,
        keep_vnc=settings.vnc,
        exclude=settings.nat_exclude,
    )
    dhcp = None
    if settings.dhcp:
        dhcp = build_dhcp(
            run_dir=settings.run_dir,
            bridge=BRIDGE,
            vm_ip=vm.ip,
            vm_gw=vm.gateway,
            netmask=vm.netmask,
            mac=vm.mac,
            hostname=vm.hostname,
            nameservers=pod.dns.nameservers,
            search=pod.dns.search,
            mtu=pod.interface.mtu,
            verbose=settings.debug,
            log_to_file=not exec_qemu,
            extra_args=settings.dnsmasq_opts,
        )
    config_drive = None
    if settings.config_drive_format is not None:
        guest_network = GuestNetwork(
            mac=vm.mac,
            address=IPv4Interface(f"{vm.ip}/{settings.vm_network.prefixlen}"),
            gateway=vm.gateway,
            nameservers=pod.dns.nameservers,
            search=pod.dns.search,
            mtu=pod.interface.mtu,
        )
        config_drive = build_config_drive(
            drive_format=settings.config_drive_format,
            iso=settings.run_dir / "config-drive.iso",
            hostname=pod.hostname,
            inputs=inputs,
            network=guest_network,
            networkdata_path=settings.drive_inputs.networkdata,
        )
    qemu = build_qemu(
        hostname=vm.hostname,
        accel=vm.accel,
        memory_mib=vm.memory_mib,
        cpus=vm.cpus,
        overlay=disks.overlay,
        config_drive=config_drive.iso if config_drive else None,
        tap=TAP,
        mac=vm.mac,
        vhost=pod.devices.vhost_net,
        vnc=settings.vnc,
        vnc_password=settings.vnc_password is not None,
        run_dir=settings.run_dir,
        extra_args=extra_qemu_args,
    )
    return Plan(pod, pod_ip, vm, disks, network, firewall, dhcp, config_drive, qemu, tuple(notes))


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
    )


def derive_mac(hostname: str) -> str:
    """A stable MAC for the hostname: locally administered (bit 1 set), unicast (bit 0 clear),
    so it never collides with a vendor's address and survives every restart."""
    octets = bytearray(hashlib.sha256(b"kvm-manager:" + hostname.encode()).digest()[:6])
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{octet:02x}" for octet in octets)


def _pod_address(settings: Settings, pod: PodFacts) -> IPv4Interface:
    addresses = pod.interface.addresses
    if not addresses:
        raise ConfigError.bad_value(
            "POD_IFACE", pod.interface.name, "an interface with an IPv4 address (it has none)"
        )
    if settings.pod_ip is None:
        return addresses[0]
    for address in addresses:
        if address.ip == settings.pod_ip:
            return address
    listed = ", ".join(str(a.ip) for a in addresses)
    raise ConfigError.bad_value(
        "POD_IP", str(settings.pod_ip), f"one of the addresses of {pod.interface.name}: {listed}"
    )


def _check_no_overlap(settings: Settings, pod: PodFacts) -> None:
    vm_net = settings.vm_network
    taken: list[tuple[IPv4Network, str]] = [
        (address.network, f"the pod's network on {pod.interface.name}")
        for address in pod.interface.addresses
    ]
    taken += [(route, "a route of the pod") for route in pod.routes.destinations]
    for network, what in taken:
        if vm_net.overlaps(network):
            raise ConfigError.bad_value(
                "VM_IP",
                str(settings.vm_ip),
                f"a /30 outside the pod's networks, but {vm_net} overlaps {what} {network}",
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
