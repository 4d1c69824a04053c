"""What `status` found of the VM's parts in the pod, as plain data (observe.py reads it,
check.py compares it with the plan). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv6Interface

from kvmmgr.net.firewall import Family

ANY_DEVICE = 0  # a socket bound to no device in particular


@dataclass(frozen=True)
class LinkSeen:
    index: int
    kind: str | None  # the kernel's name for it: bridge, tun (a tap too), macvtap, veth...
    master: str | None  # the bridge it is a port of
    up: bool  # administratively
    carrier: bool  # a tap has carrier while a process (QEMU) holds it
    addresses: frozenset[IPv4Interface | IPv6Interface]


@dataclass(frozen=True)
class Seen:
    links: Mapping[str, LinkSeen]
    sysctls: Mapping[str, str | None]  # each planned name under /proc/sys: its value, or None
    dnsmasq: tuple[int, ...]  # live processes serving our configuration file
    dhcp_devices: frozenset[int]  # where UDP port 67 is bound: device indexes, or ANY_DEVICE
    firewall: Mapping[Family, str]  # ip(6)tables-save's output, for each planned family
    guard: str | None  # `nft -j list ruleset netdev`; None: no guard planned
    web_console: tuple[int, ...] = ()  # live console servers of this VM
