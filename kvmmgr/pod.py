"""Observe the pod: its interface, routes, DNS settings, hostname, limits and devices.

Reads only. Parsers of file contents are separate pure functions so tests can feed them text.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, ip_address
from pathlib import Path

from kvmmgr.config import Settings, check_hostname
from kvmmgr.errors import ConfigError

CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED_BYTES = 1 << 60  # cgroup v1 reports "no limit" as a huge page-aligned number


@dataclass(frozen=True)
class PodInterface:
    name: str
    addresses: tuple[IPv4Interface, ...]
    mac: str
    mtu: int


@dataclass(frozen=True)
class PodRoutes:
    gateway: IPv4Address | None
    # Destinations of every other IPv4 route (not the default, not via our bridge): a VM /30
    # that overlaps one of them would shadow part of the pod's network.
    destinations: tuple[IPv4Network, ...]


@dataclass(frozen=True)
class PodDns:
    nameservers: tuple[IPv4Address, ...]
    search: tuple[str, ...]
    ignored: tuple[str, ...]  # nameservers DHCPv4 cannot carry (IPv6)


@dataclass(frozen=True)
class Limits:
    memory_mib: int | None
    cpus: int | None


@dataclass(frozen=True)
class Devices:
    kvm: bool  # /dev/kvm opens and the CPU advertises vmx/svm
    vhost_net: bool  # /dev/vhost-net opens; QEMU 7.2 crashes when asked for vhost without it


@dataclass(frozen=True)
class PodFacts:
    hostname: str
    interface: PodInterface
    routes: PodRoutes
    dns: PodDns
    limits: Limits
    devices: Devices


def observe(settings: Settings, bridge: str) -> PodFacts:
    """Everything the plan needs to know about the pod, read from the kernel and files."""
    interface, routes = observe_network(settings.pod_iface, bridge)
    return PodFacts(
        hostname=hostname(settings),
        interface=interface,
        routes=routes,
        dns=parse_resolv_conf(_read_text("RESOLV_CONF", settings.resolv_conf)),
        limits=read_limits(),
        devices=Devices(kvm=kvm_usable(), vhost_net=_opens("/dev/vhost-net")),
    )


def hostname(settings: Settings) -> str:
    """HOSTNAME (set in every container) names the VM; the kernel's host name otherwise."""
    return settings.hostname or check_hostname("hostname", socket.gethostname())


def observe_network(iface: str, bridge: str) -> tuple[PodInterface, PodRoutes]:
    from pyroute2 import IPRoute  # imported here: it costs ~0.2 s, and only kernel steps need it

    with IPRoute() as ipr:
        links = ipr.link_lookup(ifname=iface)
        if not links:
            raise ConfigError.bad_value("POD_IFACE", iface, "an existing network interface")
        index = links[0]
        link = ipr.get_links(index)[0]
        addresses = tuple(
            IPv4Interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
            for msg in ipr.get_addr(family=socket.AF_INET, index=index)
        )
        bridge_index = (ipr.link_lookup(ifname=bridge) or [None])[0]
        gateway = None
        destinations = []
        for route in ipr.get_routes(family=socket.AF_INET, table=254):
            if route.get_attr("RTA_OIF") == bridge_index:
                continue
            if route["dst_len"] == 0:
                gateway = gateway or _address(route.get_attr("RTA_GATEWAY"))
                continue
            dst = route.get_attr("RTA_DST")
            destinations.append(IPv4Network(f"{dst}/{route['dst_len']}", strict=False))
    interface = PodInterface(
        name=iface,
        addresses=addresses,
        mac=str(link.get_attr("IFLA_ADDRESS")),
        mtu=int(link.get_attr("IFLA_MTU")),
    )
    return interface, PodRoutes(gateway=gateway, destinations=tuple(sorted(set(destinations))))


def parse_resolv_conf(text: str) -> PodDns:
    """Every nameserver, and the search list (the last `search` or `domain` line wins, as in
    glibc). Extra nameservers beyond glibc's three are kept: the guest's resolver may use them."""
    nameservers: list[IPv4Address] = []
    ignored: list[str] = []
    search: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) < 2:
            continue
        keyword, values = words[0], words[1:]
        if keyword == "nameserver":
            try:
                address = ip_address(values[0].split("%", 1)[0])
            except ValueError:
                raise ConfigError(
                    f"RESOLV_CONF line {number}: nameserver {values[0]!r} is not an IP address"
                ) from None
            if isinstance(address, IPv4Address):
                nameservers.append(address)
            else:
                ignored.append(values[0])
        elif keyword in {"search", "domain"}:
            search = [value.rstrip(".") for value in values if value != "."]
    return PodDns(tuple(dict.fromkeys(nameservers)), tuple(dict.fromkeys(search)), tuple(ignored))


def read_limits(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = CGROUP_ROOT) -> Limits:
    """The container's memory and CPU limits, cgroup v2 or v1; None where there is no limit."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return Limits(None, None)
    paths: dict[str, str] = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path.lstrip("/")
    if "" in paths and (root / paths[""] / "cgroup.controllers").exists():
        return _limits_v2(root / paths[""])
    return _limits_v1(root, paths)


def _limits_v2(group: Path) -> Limits:
    memory = _read_word(group / "memory.max")
    cpu = (_read_word(group / "cpu.max") or "max").split()
    memory_mib = int(memory) // (1 << 20) if memory and memory.isdigit() else None
    cpus = math.ceil(int(cpu[0]) / int(cpu[1])) if cpu[0].isdigit() and len(cpu) == 2 else None
    return Limits(memory_mib, cpus)


def _limits_v1(root: Path, paths: dict[str, str]) -> Limits:
    memory_dir = root / "memory" / paths.get("memory", "")
    cpu_dir = root / "cpu" / paths.get("cpu", paths.get("cpuacct", ""))
    memory = _read_word(memory_dir / "memory.limit_in_bytes")
    memory_mib = (
        int(memory) // (1 << 20)
        if memory and memory.isdigit() and int(memory) < UNLIMITED_BYTES
        else None
    )
    quota = _read_word(cpu_dir / "cpu.cfs_quota_us")
    period = _read_word(cpu_dir / "cpu.cfs_period_us")
    cpus = (
        math.ceil(int(quota) / int(period))
        if quota and quota.isdigit() and period and period.isdigit() and int(period) > 0
        else None
    )
    return Limits(memory_mib, cpus)


def kvm_usable(cpuinfo: Path = Path("/proc/cpuinfo"), device: str = "/dev/kvm") -> bool:
    """KVM works for a stock guest only with hardware virtualisation: some hosts expose a
    /dev/kvm (e.g. PVM) that opens but cannot run an ordinary kernel."""
    if not _opens(device):
        return False
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = line.partition(":")[2].split()
            return "vmx" in flags or "svm" in flags
    return False


def _opens(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))
    except OSError:
        return False
    return True


def _read_word(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _read_text(name: str, path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{name}={str(path)!r}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{name}={str(path)!r}: cannot read: {exc.strerror}") from None


def _address(value: object) -> IPv4Address | None:
    return IPv4Address(str(value)) if value else None
