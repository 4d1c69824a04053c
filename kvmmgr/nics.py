"""The VM's NICs: one per attached pod interface, each in its mode. Pure.

- nat: the VM sits behind its own /30 (VM_IP/VM_GW, the k-th NAT NIC on the k-th /30 after
  it) and answers on the pod interface's address through DNAT/SNAT; on a dual-stack pod the
  first NAT NIC also gets VM_IP6 on a /64.
- bridge: the VM takes the pod interface's IPv4 address and MAC; a bridge joins the pod
  interface and the VM's tap, and the container keeps only a link-local address on it.
- macvtap: the same identity, through a macvtap on the pod interface instead of a bridge;
  the container's DHCP server sits on a macvlan beside it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Interface
from typing import Literal

from kvmmgr.cloudconfig import GuestNic
from kvmmgr.config import NetMode, Settings
from kvmmgr.errors import ConfigError
from kvmmgr.pod import PodFacts, PodInterface, Route

# The container's own DHCP server in bridge and macvtap modes: link-local, one per NIC.
SERVER_NETWORK = IPv4Network("169.254.75.0/24")
SERVER_HOST = 10
MACVTAP_FD_BASE = 100  # QEMU gets macvtap NIC i's device as file descriptor 100 + i
NAT_STRIDE = 4  # each NAT NIC's /30 follows the previous one


@dataclass(frozen=True)
class NatLink:
    kind: Literal["nat"]
    bridge: str
    tap: str
    gateway: IPv4Interface  # VM_GW/30 on the bridge: the VM's router and DHCP server
    pod_address: IPv4Interface  # what arrives for it goes to the VM
    gateway6: IPv6Interface | None  # ::1/64 on the bridge, on a dual-stack pod
    pod_address6: IPv6Interface | None


@dataclass(frozen=True)
class BridgeLink:
    kind: Literal["bridge"]
    bridge: str  # holds the pod interface and the tap
    tap: str
    server: IPv4Interface  # link-local, on the bridge: the container's DHCP server


@dataclass(frozen=True)
class MacvtapLink:
    kind: Literal["macvtap"]
    macvtap: str  # on the pod interface, with the pod's MAC: QEMU's NIC
    server_link: str  # a macvlan beside it for the container's DHCP server
    server_mac: str  # stable, so that the DHCP guard can let its frames to the VM through
    server: IPv4Interface
    fd: int  # the file descriptor QEMU is given for the macvtap's device


Link = NatLink | BridgeLink | MacvtapLink


@dataclass(frozen=True)
class NicPlan:
    index: int
    mode: NetMode
    pod: PodInterface  # the pod interface, as it was before the VM took it (bridge, macvtap)
    guest: GuestNic
    link: Link

    @property
    def dhcp_link(self) -> str:
        """Where the DHCP server listens for this NIC."""
        return self.link.server_link if isinstance(self.link, MacvtapLink) else self.link.bridge

    @property
    def dhcp_server(self) -> IPv4Address:
        return self.link.gateway.ip if isinstance(self.link, NatLink) else self.link.server.ip


def build_nics(
    settings: Settings, pod: PodFacts, hostname: str, notes: list[str]
) -> tuple[NicPlan, ...]:
    modes = {a.iface: a.mode for a in settings.attachments or ()}
    default_route = next((n for n, i in enumerate(pod.interfaces) if i.gateway), 0)
    _check_pod_ip(settings, pod.interfaces)
    nics: list[NicPlan] = []
    for number, interface in enumerate(pod.interfaces):
        mode = modes.get(interface.name, settings.net_mode)
        address = _address(settings, interface, notes)
        routed = number == default_route
        if mode == "nat":
            nat_number = sum(1 for nic in nics if nic.mode == "nat")
            nic = _nat_nic(
                settings,
                number=number,
                nat_number=nat_number,
                interface=interface,
                address=address,
                routed=routed,
                hostname=hostname,
            )
        else:
            nic = _identity_nic(
                mode,
                number=number,
                interface=interface,
                address=address,
                routed=routed,
                hostname=hostname,
            )
            if number == 0 and settings.vm_mac:
                notes.append(f"VM_MAC is not used: in {mode} mode the VM takes {interface.name}'s")
        nics.append(nic)
    _check_no_overlap(settings, nics, pod)
    return tuple(nics)


def derive_mac(seed: str) -> str:
    """A stable MAC for a VM NIC: locally administered (bit 1 set), unicast (bit 0 clear),
    so it never collides with a vendor's address and survives every restart."""
    octets = bytearray(hashlib.sha256(b"kvm-manager:" + seed.encode()).digest()[:6])
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{octet:02x}" for octet in octets)


def _nat_nic(
    settings: Settings,
    *,
    number: int,
    nat_number: int,
    interface: PodInterface,
    address: IPv4Interface,
    routed: bool,
    hostname: str,
) -> NicPlan:
    offset = NAT_STRIDE * nat_number
    vm = IPv4Interface(f"{settings.vm_ip + offset}/30")
    gateway = IPv4Interface(f"{settings.vm_gw + offset}/30")
    if number == 0:
        mac = settings.vm_mac or derive_mac(hostname)
    else:
        mac = derive_mac(f"{hostname}/{interface.name}")
    # The NIC with the pod's default route gets the VM's; another reaches what its pod
    # interface reaches (its routes, now via this NIC's gateway).
    routes = (
        ()
        if routed
        else tuple(Route(r.destination, gateway.ip) for r in interface.routes if not r.is_default)
    )
    dual_stack = nat_number == 0 and bool(interface.addresses6)
    address6 = IPv6Interface(f"{settings.vm_ip6}/64") if dual_stack else None
    gateway6 = IPv6Interface(f"{address6.network.network_address + 1}/64") if address6 else None
    guest = GuestNic(mac, vm, gateway.ip if routed else None, routes, interface.mtu, address6)
    link = NatLink(
        kind="nat",
        bridge=f"kvmbr{number}",
        tap=f"kvmtap{number}",
        gateway=gateway,
        pod_address=address,
        gateway6=gateway6,
        pod_address6=interface.addresses6[0] if dual_stack else None,
    )
    return NicPlan(number, "nat", interface, guest, link)


def _identity_nic(
    mode: NetMode,
    *,
    number: int,
    interface: PodInterface,
    address: IPv4Interface,
    routed: bool,
    hostname: str,
) -> NicPlan:
    """bridge or macvtap: the VM gets what the pod interface had."""
    routes = [r for r in interface.routes if routed or not r.is_default]
    # Option 121 when the router alone would not do: on-link routes, a gateway outside the
    # subnet (routed CNIs: a /32 with 169.254.1.1), or routes besides the default.
    simple = all(
        r.is_default and r.gateway is not None and r.gateway in address.network for r in routes
    )
    guest = GuestNic(
        mac=interface.mac,
        address=address,
        router=interface.gateway if routed else None,
        routes=() if simple else tuple(routes),
        mtu=interface.mtu,
    )
    server = IPv4Interface(f"{SERVER_NETWORK.network_address + SERVER_HOST + number}/32")
    link: Link
    if mode == "bridge":
        link = BridgeLink("bridge", f"kvmbr{number}", f"kvmtap{number}", server)
    else:
        server_mac = derive_mac(f"{hostname}/{interface.name}/dhcp")
        link = MacvtapLink(
            "macvtap", f"kvmvtap{number}", f"kvmdhcp{number}", server_mac, server,
            MACVTAP_FD_BASE + number,
        )  # fmt: skip
    return NicPlan(number, mode, interface, guest, link)


def _address(settings: Settings, interface: PodInterface, notes: list[str]) -> IPv4Interface:
    """POD_IP when it is on this interface, else the first address in SELECTED_NETWORK, else
    the first address."""
    for address in interface.addresses:
        if address.ip == settings.pod_ip:
            return address
    if settings.selected_network is not None:
        for address in interface.addresses:
            if address.ip in settings.selected_network:
                return address
        if len(interface.addresses) > 1:
            notes.append(
                f"SELECTED_NETWORK {settings.selected_network} holds no address of "
                f"{interface.name}: using its first, {interface.addresses[0]}"
            )
    return interface.addresses[0]


def _check_pod_ip(settings: Settings, interfaces: Sequence[PodInterface]) -> None:
    if settings.pod_ip is None:
        return
    listed = [str(a.ip) for i in interfaces for a in i.addresses]
    if str(settings.pod_ip) not in listed:
        names = ", ".join(i.name for i in interfaces)
        raise ConfigError.bad_value(
            "POD_IP", str(settings.pod_ip), f"one of the addresses of {names}: {', '.join(listed)}"
        )


def _check_no_overlap(settings: Settings, nics: Sequence[NicPlan], pod: PodFacts) -> None:
    """A VM /30 inside one of the pod's networks would hide part of it. The pod's own subnets
    are named first: they are what a user most likely collided with."""
    taken = [
        (address.network, f"the pod's network on {interface.name}")
        for interface in pod.interfaces
        for address in interface.addresses
    ]
    taken += [(network, "a route of the pod") for network in pod.networks]
    for nic in nics:
        if not isinstance(nic.link, NatLink):
            continue
        vm_net = nic.guest.address.network
        for network, what in taken:
            if vm_net.overlaps(network):
                raise ConfigError.bad_value(
                    "VM_IP",
                    str(settings.vm_ip),
                    f"a /30 outside the pod's networks, but {vm_net} overlaps {what} {network}",
                )
