"""The value types the network side shares: the pod's interfaces and DNS as observed, the
guest's NICs as planned, kept ports, and the MAC arithmetic. Pure data."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface
from typing import Literal

NetMode = Literal["nat", "bridge", "macvtap"]
NET_MODES: tuple[NetMode, ...] = ("nat", "bridge", "macvtap")
VNC_PORT = 5900  # QEMU's display 0, kept by the container while VNC is on


@dataclass(frozen=True, order=True)
class Route:
    """An IPv4 route through a pod interface; gateway None: on-link (scope link)."""

    destination: IPv4Network
    gateway: IPv4Address | None

    @property
    def is_default(self) -> bool:
        return self.destination.prefixlen == 0


@dataclass(frozen=True)
class PodInterface:
    name: str
    index: int
    addresses: tuple[IPv4Interface, ...]
    addresses6: tuple[IPv6Interface, ...]  # global scope only
    mac: str
    mtu: int
    routes: tuple[Route, ...]  # through this interface, but the kernel's connected ones
    gateway6: IPv6Address | None  # the IPv6 default route's, when it goes through here
    remembered: bool = False  # as found before kvm-manager took it over (net/podmemory.py)

    @property
    def gateway(self) -> IPv4Address | None:
        return next((r.gateway for r in self.routes if r.is_default), None)


@dataclass(frozen=True)
class PodDns:
    nameservers: tuple[IPv4Address, ...]
    search: tuple[str, ...]
    nameservers6: tuple[IPv6Address, ...]  # given to the VM over DHCPv6 only


@dataclass(frozen=True)
class Attachment:
    """A pod interface given to the VM as a NIC, and how."""

    iface: str
    mode: NetMode


@dataclass(frozen=True, order=True)
class PortSpec:
    """One `proto/port` or `proto/first-last` item kept by the container (not forwarded)."""

    protocol: str
    first: int
    last: int

    def __str__(self) -> str:
        ports = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        return f"{self.protocol}/{ports}"


@dataclass(frozen=True)
class GuestNic:
    """One NIC as the VM sees it: what DHCP hands it, and its static configuration."""

    mac: str
    address: IPv4Interface
    router: IPv4Address | None  # the default route's, on the NIC that has it
    routes: tuple[Route, ...]  # classless static routes (option 121); empty: router alone
    mtu: int
    address6: IPv6Interface | None = None  # NAT mode on a dual-stack pod


@dataclass(frozen=True)
class GuestNetwork:
    nics: tuple[GuestNic, ...]
    nameservers: tuple[IPv4Address, ...]
    search: tuple[str, ...]
    # DHCP serves the NICs: the guest is told to ask it, so that its DHCP client (which also
    # writes resolv.conf and sets the MTU) configures them. Else the whole static picture.
    dhcp: bool = False


def local_mac(octets: bytes) -> str:
    """Six bytes as a locally administered (bit 1 set), unicast (bit 0 clear) MAC: it never
    collides with a vendor's address."""
    first = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{octet:02x}" for octet in (first, *octets[1:6]))


def derive_mac(seed: str) -> str:
    """A stable MAC for a VM NIC, the same on every start."""
    return local_mac(hashlib.sha256(b"kvm-manager:" + seed.encode()).digest())
