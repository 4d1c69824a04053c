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

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface
from typing import ClassVar, Literal, assert_never

from kvmmgr.config import NetworkSettings, VmSettings
from kvmmgr.errors import ConfigError
from kvmmgr.facts import PodFacts
from kvmmgr.net.model import GuestNic, NetMode, PodInterface, Route, derive_mac

# The container's own DHCP server in bridge and macvtap modes: link-local, one per NIC.
SERVER_NETWORK = IPv4Network("169.254.75.0/24")
SERVER_HOST = 10
MACVTAP_FD_BASE = 100  # QEMU gets macvtap NIC i's device as file descriptor 100 + i
NAT_STRIDE = 4  # each NAT NIC's /30 follows the previous one


@dataclass(frozen=True)
class NatLink:
    """The VM behind a bridge of its own: the pod's address reaches it through NAT."""

    kind: ClassVar[Literal["nat"]] = "nat"
    takes_pod_identity: ClassVar[bool] = False
    bridge: str
    tap: str
    gateway: IPv4Interface  # VM_GW/30 on the bridge: the VM's router and DHCP server
    pod_address: IPv4Interface  # what arrives for it goes to the VM
    gateway6: IPv6Interface | None  # ::1/64 on the bridge, on a dual-stack pod
    pod_address6: IPv6Interface | None

    @property
    def dhcp_link(self) -> str:
        return self.bridge

    def guard_inside(self, nic: NicPlan) -> tuple[str, ...] | None:
        """Its DHCP never reaches the pod's link: nothing to guard."""
        return None

    def describe(self, nic: NicPlan) -> str:
        six = f" {self.gateway6}" if self.gateway6 else ""
        return f"bridge {self.bridge} {self.gateway}{six} with tap {self.tap}"


@dataclass(frozen=True)
class BridgeLink:
    """The pod interface and the VM's tap on one bridge: the VM takes the pod's identity."""

    kind: ClassVar[Literal["bridge"]] = "bridge"
    takes_pod_identity: ClassVar[bool] = True
    bridge: str  # holds the pod interface and the tap
    tap: str
    server: IPv4Interface  # link-local, on the bridge: the container's DHCP server

    @property
    def dhcp_link(self) -> str:
        return self.bridge

    def guard_inside(self, nic: NicPlan) -> tuple[str, ...] | None:
        """DHCP may not cross the pod interface at all."""
        return ()

    def describe(self, nic: NicPlan) -> str:
        return f"bridge {self.bridge} {self.server} with {nic.pod.name} and tap {self.tap}"


@dataclass(frozen=True)
class MacvtapLink:
    """A macvtap on the pod interface with the pod's MAC: QEMU opens its device."""

    kind: ClassVar[Literal["macvtap"]] = "macvtap"
    takes_pod_identity: ClassVar[bool] = True
    macvtap: str  # on the pod interface, with the pod's MAC: QEMU's NIC
    server_link: str  # a macvlan beside it for the container's DHCP server
    server_mac: str  # stable, so that the DHCP guard can let its frames to the VM through
    server: IPv4Interface
    fd: int  # the file descriptor QEMU is given for the macvtap's device

    @property
    def dhcp_link(self) -> str:
        return self.server_link

    def guard_inside(self, nic: NicPlan) -> tuple[str, ...] | None:
        """A macvlan hands a sibling's frame (the server's answer to the VM) to the lower
        device's receive path: DHCP from these two MACs may come in."""
        return (nic.guest.mac, self.server_mac)

    def describe(self, nic: NicPlan) -> str:
        return f"macvtap {self.macvtap} on {nic.pod.name}, {self.server_link} {self.server}"


# One type per network mode. Code that treats the modes differently either matches on these
# types (ending in assert_never) or uses what each of them defines: either way mypy names
# every place a new mode must handle.
Link = NatLink | BridgeLink | MacvtapLink
LINK_TYPES: dict[NetMode, type[Link]] = {
    link.kind: link for link in (NatLink, BridgeLink, MacvtapLink)
}


@dataclass(frozen=True)
class NicPlan:
    index: int
    pod: PodInterface  # the pod interface, as it was before the VM took it (bridge, macvtap)
    guest: GuestNic
    link: Link

    @property
    def mode(self) -> NetMode:
        return self.link.kind

    @property
    def dhcp_link(self) -> str:
        """Where the DHCP server listens for this NIC."""
        return self.link.dhcp_link


@dataclass(frozen=True)
class Sysctl:
    """`value` in the first of `names` (under /proc/sys), unless one of them has it already:
    an unprivileged container cannot write /proc/sys, but the pod's securityContext.sysctls
    can set the `all` variant before kvm-manager starts."""

    names: tuple[str, ...]
    value: str


@dataclass(frozen=True)
class _Slot:
    """Where a NIC goes: its number, the pod interface it takes, and what of it."""

    number: int
    interface: PodInterface
    address: IPv4Interface  # the pod interface's, that the NIC answers for
    routed: bool  # it has the pod's default route
    hostname: str


def build_nics(
    network: NetworkSettings, vm: VmSettings, pod: PodFacts, notes: list[str]
) -> tuple[NicPlan, ...]:
    modes = {a.iface: a.mode for a in network.attachments or ()}
    default_route = next((n for n, i in enumerate(pod.interfaces) if i.gateway), 0)
    _check_pod_ip(network, pod.interfaces)
    nics: list[NicPlan] = []
    for number, interface in enumerate(pod.interfaces):
        mode = modes.get(interface.name, network.mode)
        address = _address(network, interface, notes)
        slot = _Slot(number, interface, address, number == default_route, pod.hostname)
        match mode:
            case "nat":
                nat_number = sum(1 for nic in nics if isinstance(nic.link, NatLink))
                nics.append(_nat_nic(network, vm.mac if number == 0 else None, nat_number, slot))
            case "bridge" | "macvtap":
                nics.append(_identity_nic(mode, slot))
                if number == 0 and vm.mac:
                    notes.append(
                        f"VM_MAC is not used: in {mode} mode the VM takes {interface.name}'s"
                    )
            case unknown:
                assert_never(unknown)
    _check_no_overlap(network, nics, pod)
    return tuple(nics)


def build_sysctls(nics: Sequence[NicPlan]) -> tuple[Sysctl, ...]:
    sysctls = []
    nat = [nic.link for nic in nics if isinstance(nic.link, NatLink)]
    if nat:
        sysctls.append(Sysctl(("net/ipv4/ip_forward",), "1"))
        # Lets the OUTPUT DNAT send 127.0.0.1-sourced packets (kubectl port-forward) to the
        # first NAT NIC; the firewall then drops what the VM sends to 127.0.0.0/8. The kernel
        # honours the bridge's own setting or the `all` one.
        bridge, every = f"net/ipv4/conf/{nat[0].bridge}", "net/ipv4/conf/all"
        sysctls.append(Sysctl((f"{bridge}/route_localnet", f"{every}/route_localnet"), "1"))
        if any(link.gateway6 for link in nat):
            sysctls.append(Sysctl(("net/ipv6/conf/all/forwarding",), "1"))
    return tuple(sysctls)


def _nat_nic(network: NetworkSettings, mac: str | None, nat_number: int, slot: _Slot) -> NicPlan:
    """`mac`: VM_MAC for NIC 0; derived from the host name (and the interface) otherwise."""
    number, interface = slot.number, slot.interface
    offset = NAT_STRIDE * nat_number
    vm = IPv4Interface(f"{network.vm_ip + offset}/30")
    gateway = IPv4Interface(f"{network.vm_gw + offset}/30")
    seed = slot.hostname if number == 0 else f"{slot.hostname}/{interface.name}"
    # The NIC with the pod's default route gets the VM's; another reaches what its pod
    # interface reaches (its routes, now via this NIC's gateway).
    routes = tuple(
        Route(r.destination, gateway.ip)
        for r in interface.routes
        if not slot.routed and not r.is_default
    )
    dual_stack = nat_number == 0 and bool(interface.addresses6)
    address6 = IPv6Interface(f"{network.vm_ip6}/64") if dual_stack else None
    gateway6 = IPv6Interface(f"{address6.network.network_address + 1}/64") if address6 else None
    router = gateway.ip if slot.routed else None
    guest = GuestNic(mac or derive_mac(seed), vm, router, routes, interface.mtu, address6)
    link = NatLink(
        bridge=f"kvmbr{number}",
        tap=f"kvmtap{number}",
        gateway=gateway,
        pod_address=slot.address,
        gateway6=gateway6,
        pod_address6=interface.addresses6[0] if dual_stack else None,
    )
    return NicPlan(number, interface, guest, link)


def _identity_nic(mode: Literal["bridge", "macvtap"], slot: _Slot) -> NicPlan:
    """bridge or macvtap: the VM gets what the pod interface had."""
    number, interface = slot.number, slot.interface
    routes = [r for r in interface.routes if slot.routed or not r.is_default]
    # Option 121 when the router alone would not do: on-link routes, a gateway outside the
    # subnet (routed CNIs: a /32 with 169.254.1.1), or routes besides the default.
    simple = all(
        r.is_default and r.gateway is not None and r.gateway in slot.address.network for r in routes
    )
    guest = GuestNic(
        mac=interface.mac,
        address=slot.address,
        router=interface.gateway if slot.routed else None,
        routes=() if simple else tuple(routes),
        mtu=interface.mtu,
    )
    server = IPv4Interface(f"{SERVER_NETWORK.network_address + SERVER_HOST + number}/32")
    link: Link
    match mode:
        case "bridge":
            link = BridgeLink(f"kvmbr{number}", f"kvmtap{number}", server)
        case "macvtap":
            server_mac = derive_mac(f"{slot.hostname}/{interface.name}/dhcp")
            fd = MACVTAP_FD_BASE + number
            link = MacvtapLink(f"kvmvtap{number}", f"kvmdhcp{number}", server_mac, server, fd)
        case unknown:
            assert_never(unknown)
    return NicPlan(number, interface, guest, link)


def _address(network: NetworkSettings, interface: PodInterface, notes: list[str]) -> IPv4Interface:
    """POD_IP when it is on this interface, else the first address in SELECTED_NETWORK, else
    the first address."""
    for address in interface.addresses:
        if address.ip == network.pod_ip:
            return address
    if network.selected_network is not None:
        for address in interface.addresses:
            if address.ip in network.selected_network:
                return address
        if len(interface.addresses) > 1:
            notes.append(
                f"SELECTED_NETWORK {network.selected_network} holds no address of "
                f"{interface.name}: using its first, {interface.addresses[0]}"
            )
    return interface.addresses[0]


def _check_pod_ip(network: NetworkSettings, interfaces: Sequence[PodInterface]) -> None:
    if network.pod_ip is None:
        return
    listed = [str(a.ip) for i in interfaces for a in i.addresses]
    if str(network.pod_ip) not in listed:
        names = ", ".join(i.name for i in interfaces)
        raise ConfigError.bad_value(
            "POD_IP", str(network.pod_ip), f"one of the addresses of {names}: {', '.join(listed)}"
        )


def _check_no_overlap(network: NetworkSettings, nics: Sequence[NicPlan], pod: PodFacts) -> None:
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
        for other, what in taken:
            if vm_net.overlaps(other):
                raise ConfigError.bad_value(
                    "VM_IP",
                    str(network.vm_ip),
                    f"a /30 outside the pod's networks, but {vm_net} overlaps {what} {other}",
                )
