"""Observe the pod: its interface, routes, DNS settings, hostname, limits and devices.

Reads only. Parsers of file contents are separate pure functions so tests can feed them text.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Mapping
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    ip_address,
)
from pathlib import Path
from typing import Any

from kvmmgr.config import NetworkSettings, Settings, VmSettings
from kvmmgr.errors import ConfigError, short
from kvmmgr.facts import KVM, Limits, PodFacts
from kvmmgr.net.model import Attachment, PodDns, PodInterface, Route
from kvmmgr.net.nics import LINK_TYPES
from kvmmgr.net.podmemory import FILE_NAME as FORGOTTEN
from kvmmgr.system import users
from kvmmgr.system.devices import devices, opens
from kvmmgr.system.files import UnfitFile, read_regular
from kvmmgr.system.libload import load_iproute
from kvmmgr.values import hostname as valid_hostname

CGROUP_ROOT = Path("/sys/fs/cgroup")
OUR_PREFIX = "kvm"  # kvmbr0, kvmtap0, kvmvtap1...: links kvm-manager made
RTPROT_KERNEL = 2  # routes the kernel adds for an address's own subnet
UNLIMITED_BYTES = 1 << 60  # cgroup v1 reports "no limit" as a huge page-aligned number
MAX_RESOLV_CONF = 64 << 10  # bytes: kubelet writes a few hundred (32 domains at most)


def observe(settings: Settings, remembered: Mapping[str, PodInterface]) -> PodFacts:
    """Everything the plan needs to know about the pod, read from the kernel and files."""
    interfaces, networks = observe_network(settings.network, remembered)
    return PodFacts(
        hostname=hostname(settings),
        interfaces=interfaces,
        networks=networks,
        dns=read_resolv_conf(settings.network.resolv_conf),
        limits=read_limits(),
        devices=devices(kvm_usable()),
        qemu_user=users.lookup(settings.vm.qemu_user),
    )


def hostname(settings: Settings) -> str:
    return vm_name(settings.vm)


def vm_name(vm: VmSettings) -> str:
    """HOSTNAME (set in every container) names the VM; the kernel's host name otherwise."""
    return vm.hostname or valid_hostname("hostname", socket.gethostname())


def observe_network(
    settings: NetworkSettings, remembered: Mapping[str, PodInterface]
) -> tuple[tuple[PodInterface, ...], tuple[IPv4Network, ...]]:
    """The attached interfaces (remembered ones for bridge and macvtap modes, whose identity
    the VM has taken) and every IPv4 network of the pod."""
    IPRoute, _ = load_iproute()

    with IPRoute() as ipr:
        current, masters = _read_interfaces(ipr)
    ours = {i.index for i in current.values() if i.name.startswith(OUR_PREFIX)}
    attachments = settings.attachments or _every_interface(settings, current, remembered)
    interfaces = []
    for attachment in attachments:
        name = attachment.iface
        variable = "ATTACH_IFACES" if settings.attachments and len(attachments) > 1 else "POD_IFACE"
        if name not in current:
            raise ConfigError.bad_value(variable, name, "an existing network interface")
        memory = remembered.get(name)
        taken = LINK_TYPES[attachment.mode].takes_pod_identity
        if taken and memory and memory.index == current[name].index:
            interfaces.append(memory)
        elif current[name].addresses:
            interfaces.append(current[name])
        elif masters.get(name) in ours:
            raise ConfigError(
                f"{name} was given to the VM by an earlier start, and what it was is lost "
                f"({FORGOTTEN}): expected RUN_DIR to keep {FORGOTTEN} (recreate the pod)"
            )
        else:
            raise ConfigError.bad_value(
                variable, name, "an interface with an IPv4 address (it has none)"
            )
    networks = {a.network for i in current.values() if i.index not in ours for a in i.addresses}
    networks |= {a.network for i in remembered.values() for a in i.addresses}
    for interface in (*current.values(), *remembered.values()):
        if interface.index not in ours:
            networks |= {r.destination for r in interface.routes if not r.is_default}
    return tuple(interfaces), tuple(sorted(networks))


def _every_interface(
    settings: NetworkSettings,
    current: Mapping[str, PodInterface],
    remembered: Mapping[str, PodInterface],
) -> tuple[Attachment, ...]:
    """ATTACH_IFACES=all: the pod interface first, then every other with an IPv4 address (or
    one remembered), in name order."""
    names = {
        name
        for name, interface in current.items()
        if name != "lo"
        and not name.startswith(OUR_PREFIX)
        and (interface.addresses or name in remembered)
    }
    ordered = sorted(names, key=lambda name: (name != settings.pod_iface, name))
    return tuple(Attachment(name, settings.mode) for name in ordered)


def _read_interfaces(ipr: Any) -> tuple[dict[str, PodInterface], dict[str, int | None]]:
    """Every link as a PodInterface, and each one's master (the bridge it is a port of)."""
    addresses: dict[int, list[IPv4Interface]] = {}
    addresses6: dict[int, list[IPv6Interface]] = {}
    for msg in ipr.get_addr(family=socket.AF_INET):
        addresses.setdefault(msg["index"], []).append(
            IPv4Interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
        )
    for msg in ipr.get_addr(family=socket.AF_INET6):
        if msg["scope"] == 0:  # global: not link-local, not host
            addresses6.setdefault(msg["index"], []).append(
                IPv6Interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
            )
    routes: dict[int, list[Route]] = {}
    for msg in ipr.get_routes(family=socket.AF_INET, table=254):
        if msg["proto"] == RTPROT_KERNEL or msg.get_attr("RTA_OIF") is None:
            continue  # the connected routes of the addresses themselves
        dst = msg.get_attr("RTA_DST") or "0.0.0.0"
        gateway = msg.get_attr("RTA_GATEWAY")
        routes.setdefault(msg.get_attr("RTA_OIF"), []).append(
            Route(
                IPv4Network(f"{dst}/{msg['dst_len']}", strict=False),
                IPv4Address(gateway) if gateway else None,
            )
        )
    gateways6: dict[int, IPv6Address] = {}
    for msg in ipr.get_routes(family=socket.AF_INET6, table=254):
        if msg["dst_len"] == 0 and msg.get_attr("RTA_GATEWAY"):
            gateways6.setdefault(msg.get_attr("RTA_OIF"), IPv6Address(msg.get_attr("RTA_GATEWAY")))
    found = {}
    masters = {}
    for link in ipr.get_links():
        index = int(link["index"])
        name = link.get_attr("IFLA_IFNAME")
        masters[name] = link.get_attr("IFLA_MASTER")
        found[name] = PodInterface(
            name=name,
            index=index,
            addresses=tuple(addresses.get(index, [])),
            addresses6=tuple(addresses6.get(index, [])),
            mac=str(link.get_attr("IFLA_ADDRESS")),
            mtu=int(link.get_attr("IFLA_MTU")),
            routes=tuple(sorted(routes.get(index, []), key=_route_order)),
            gateway6=gateways6.get(index),
        )
    return found, masters


def _route_order(route: Route) -> tuple[int, str]:
    """Most specific first (as a DHCP client should install them), the default last."""
    return (-route.destination.prefixlen, str(route.destination))


def parse_resolv_conf(text: str, source: str = "RESOLV_CONF") -> PodDns:
    """Every nameserver, and the search list (the last `search` or `domain` line wins, as in
    glibc). Extra nameservers beyond glibc's three are kept: the guest's resolver may use them.
    An error names `source` and the line."""
    nameservers: list[IPv4Address] = []
    nameservers6: list[IPv6Address] = []
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
                    f"{source} line {number}: nameserver {short(values[0])} is not an IP address"
                ) from None
            if isinstance(address, IPv4Address):
                nameservers.append(address)
            else:
                nameservers6.append(address)
        elif keyword in {"search", "domain"}:
            search = [value.rstrip(".") for value in values if value != "."]
    return PodDns(
        tuple(dict.fromkeys(nameservers)),
        tuple(dict.fromkeys(search)),
        tuple(dict.fromkeys(nameservers6)),
    )


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


def kvm_usable(cpuinfo: Path = Path("/proc/cpuinfo"), device: str = KVM) -> bool:
    """KVM works for a stock guest only with hardware virtualisation: some hosts expose a
    /dev/kvm (e.g. PVM) that opens but cannot run an ordinary kernel."""
    if opens(device) is not None:
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


def _read_word(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def read_resolv_conf(path: Path) -> PodDns:
    """RESOLV_CONF, whatever is at the path: anything but a small text file is one line that
    names it and says what is wrong."""
    source = f"RESOLV_CONF={str(path)!r}"
    try:
        data = read_regular(path, MAX_RESOLV_CONF)
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except UnfitFile as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{source} line {line}: not UTF-8: expected text") from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise ConfigError(f"{source} line {line}: a NUL byte: expected text")
    return parse_resolv_conf(text, source)
