"""What is there of the VM's parts in the pod, read without changing anything: links and
their addresses (netlink), the planned sysctls, the dnsmasq processes serving our
configuration and where UDP port 67 is bound (/proc, sock_diag), the firewall as
ip(6)tables-save prints it, and the DHCP guard as nft lists it. Whatever user dnsmasq runs
as: its command line and the sockets of the namespace are readable by the container's root
without CAP_SYS_PTRACE, its file descriptors are not."""

from __future__ import annotations

import socket
from ipaddress import ip_interface
from pathlib import Path
from typing import Any

from kvmmgr.health.seen import LinkSeen, Seen
from kvmmgr.net import dnsmasq
from kvmmgr.net.firewall import Family
from kvmmgr.plan import Plan
from kvmmgr.system import proc
from kvmmgr.system.libload import load_iproute
from kvmmgr.webconsole import daemon

IFF_UP = 0x1
DHCP_PORT = 67
SAVE = {4: "iptables-legacy-save", 6: "ip6tables-legacy-save"}  # python-iptables' backend


def observe(plan: Plan) -> Seen:
    families: set[Family] = {chain.family for chain in plan.firewall.chains}
    return Seen(
        links=links(),
        sysctls={name: _sysctl(name) for sysctl in plan.sysctls for name in sysctl.names},
        # One that died unreaped (QEMU, the container's PID 1, leaves it a zombie) is none.
        dnsmasq=tuple(dnsmasq.running(plan.dhcp)) if plan.dhcp else (),
        dhcp_devices=frozenset(_udp_devices(DHCP_PORT)) if plan.dhcp else frozenset(),
        firewall={family: proc.run([SAVE[family]]) for family in sorted(families)},
        guard=proc.run(["nft", "-j", "list", "ruleset", "netdev"]) if plan.dhcp_guard else None,
        web_console=tuple(daemon.running(plan.web_console)) if plan.web_console else (),
    )


def links() -> dict[str, LinkSeen]:
    IPRoute, _ = load_iproute()
    with IPRoute() as ipr:
        messages = ipr.get_links()
        addresses: dict[int, set[Any]] = {}
        for msg in ipr.get_addr():
            address = ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
            addresses.setdefault(msg["index"], set()).add(address)
    names = {msg["index"]: msg.get_attr("IFLA_IFNAME") for msg in messages}
    found = {}
    for msg in messages:
        info = msg.get_attr("IFLA_LINKINFO")
        found[msg.get_attr("IFLA_IFNAME")] = LinkSeen(
            index=int(msg["index"]),
            kind=info.get_attr("IFLA_INFO_KIND") if info else None,
            master=names.get(msg.get_attr("IFLA_MASTER")),
            up=bool(msg["flags"] & IFF_UP),
            carrier=bool(msg.get_attr("IFLA_CARRIER")),
            addresses=frozenset(addresses.get(msg["index"], ())),
        )
    return found


def _sysctl(name: str) -> str | None:
    try:
        return (Path("/proc/sys") / name).read_text().strip()
    except OSError:
        return None


def _udp_devices(port: int) -> set[int]:
    """The devices that IPv4 UDP sockets on `port` are bound to (0: none in particular), as
    `ss -uln` shows them (sock_diag: the kernel's own table for this namespace)."""
    load_iproute()  # pyroute2, without its package's every module
    from pyroute2.netlink.diag import DiagSocket

    with DiagSocket() as diag:
        diag.bind()
        found = diag.get_sock_stats(
            family=socket.AF_INET, protocol=socket.IPPROTO_UDP, states=0xFFFFFFFF, sport=port
        )
    return {int(msg["idiag_if"]) for msg in found if msg["idiag_sport"] == port}
