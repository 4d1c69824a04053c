"""The VM's side of the pod network made real, one NIC at a time (nics.py plans each one).

Ensure-style: objects that exist with the right kind are reused and corrected, objects of the
wrong kind under our names are an error (never silently replaced), missing ones are created.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Sequence
from ipaddress import IPv4Interface, IPv6Interface
from pathlib import Path
from typing import Any, assert_never

from kvmmgr.errors import StepError
from kvmmgr.net.model import local_mac
from kvmmgr.net.nics import BridgeLink, MacvtapLink, NatLink, NicPlan, Sysctl
from kvmmgr.system.libload import load_iproute

TUN_TYPE_TAP = 2  # IFLA_TUN_TYPE of a tap (layer 2) device, as opposed to tun (1)
IFA_F_NODAD = 0x02


def apply_network(nics: Sequence[NicPlan], sysctls: Sequence[Sysctl]) -> None:
    IPRoute, NetlinkError = load_iproute()
    try:
        with IPRoute() as ipr:
            for nic in nics:
                match nic.link:
                    case NatLink() as link:
                        _nat(ipr, nic, link)
                    case BridgeLink() as link:
                        _bridge(ipr, nic, link)
                    case MacvtapLink() as link:
                        _macvtap(ipr, nic, link)
                    case unknown:
                        assert_never(unknown)
    except NetlinkError as exc:
        raise StepError(f"network setup failed: {exc.args[-1]} (errno {exc.code})") from exc
    for sysctl in sysctls:
        _ensure_sysctl(sysctl)


def _nat(ipr: Any, nic: NicPlan, link: NatLink) -> None:
    """A bridge holding the VM's gateway address(es), and the VM's tap on it."""
    bridge = _ensure_bridge_with_tap(ipr, link.bridge, link.tap, nic.guest.mtu)
    _ensure_only_address(ipr, bridge, link.bridge, link.gateway)
    if link.gateway6 is not None:
        _ensure_address6(ipr, bridge, link.bridge, link.gateway6)


def _bridge(ipr: Any, nic: NicPlan, link: BridgeLink) -> None:
    """The pod interface and the VM's tap on one bridge; the container keeps a link-local
    address on it, for its DHCP server."""
    pod = _take_identity(ipr, nic)
    bridge = _ensure_bridge_with_tap(ipr, link.bridge, link.tap, nic.guest.mtu)
    ipr.link("set", index=pod, master=bridge, state="up")
    _ensure_only_address(ipr, bridge, link.bridge, link.server)


def _macvtap(ipr: Any, nic: NicPlan, link: MacvtapLink) -> None:
    """A macvtap on the pod interface with the pod's MAC (QEMU opens its device), and a
    macvlan beside it for the container's DHCP server: macvlan siblings in bridge mode reach
    each other, not the lower device itself."""
    pod = _take_identity(ipr, nic)
    options = {"link": pod, "macvtap_mode": "bridge"}
    vtap = _ensure_link(ipr, link.macvtap, "macvtap", options)
    ipr.link("set", index=vtap, address=nic.guest.mac, mtu=nic.guest.mtu, state="up")
    server = _ensure_link(ipr, link.server_link, "macvlan", {"link": pod, "macvlan_mode": "bridge"})
    ipr.link("set", index=server, address=link.server_mac, mtu=nic.guest.mtu, state="up")
    _ensure_only_address(ipr, server, link.server_link, link.server)


def _take_identity(ipr: Any, nic: NicPlan) -> int:
    """The pod interface gives its IPv4 addresses and its MAC to the VM: it keeps no address
    and gets a new random MAC (only once: while it still has the original one)."""
    index = _lookup(ipr, nic.pod.name)
    if index is None:
        raise StepError(f"the pod interface {nic.pod.name!r} is gone")
    for msg in ipr.get_addr(family=socket.AF_INET, index=index):
        ipr.addr(
            "del", index=index, address=msg.get_attr("IFA_ADDRESS"), prefixlen=msg["prefixlen"]
        )
    current = str(ipr.get_links(index)[0].get_attr("IFLA_ADDRESS"))
    if current.lower() == nic.pod.mac.lower():
        ipr.link("set", index=index, state="down")  # not every driver changes it live
        ipr.link("set", index=index, address=random_mac())
    ipr.link("set", index=index, state="up")
    return index


def random_mac() -> str:
    return local_mac(os.urandom(6))


def _ensure_bridge_with_tap(ipr: Any, bridge_name: str, tap_name: str, mtu: int) -> int:
    bridge = _ensure_link(ipr, bridge_name, "bridge", {})
    tap = _ensure_link(ipr, tap_name, "tun", {"mode": "tap"})
    ipr.link("set", index=tap, mtu=mtu)
    ipr.link("set", index=tap, master=bridge, state="up")
    ipr.link("set", index=bridge, mtu=mtu, state="up")
    return bridge


def _ensure_link(ipr: Any, name: str, kind: str, options: dict[str, object]) -> int:
    _, NetlinkError = load_iproute()
    index = _lookup(ipr, name)
    if index is None:
        create_kind = "tuntap" if kind == "tun" else kind
        try:
            ipr.link("add", ifname=name, kind=create_kind, **options)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:  # someone made it meanwhile: check it below
                raise StepError(f"could not create {kind} {name!r}: {exc.args[-1]}") from exc
        except OSError as exc:  # tuntap creation opens /dev/net/tun
            raise StepError(f"could not create tap {name!r}: {exc}") from exc
        index = _lookup(ipr, name)
        if index is None:
            raise StepError(f"{name!r} vanished right after it was created")
    link = ipr.get_links(index)[0]
    info = link.get_attr("IFLA_LINKINFO")
    actual = info.get_attr("IFLA_INFO_KIND") if info else None
    if actual != kind or (kind == "tun" and _tun_type(info) != TUN_TYPE_TAP):
        raise StepError(
            f"{name!r} exists but is a {actual or 'device of another kind'}, not a "
            f"{'tap' if kind == 'tun' else kind}: remove it or free the name"
        )
    return int(index)


def _tun_type(info: Any) -> int | None:
    data = info.get_attr("IFLA_INFO_DATA")
    return data.get_attr("IFLA_TUN_TYPE") if data else None


def _ensure_only_address(ipr: Any, index: int, name: str, wanted: IPv4Interface) -> None:
    present = {
        IPv4Interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
        for msg in ipr.get_addr(family=socket.AF_INET, index=index)
    }
    for stale in present - {wanted}:  # e.g. a VM_GW of an earlier configuration
        ipr.addr("del", index=index, address=str(stale.ip), prefixlen=stale.network.prefixlen)
    if wanted not in present:
        _add_address(ipr, index, name, wanted)


def _ensure_address6(ipr: Any, index: int, name: str, wanted: IPv6Interface) -> None:
    present = {
        IPv6Interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
        for msg in ipr.get_addr(family=socket.AF_INET6, index=index)
    }
    if wanted not in present:  # no duplicate address detection: the /64 is ours and the VM's
        _add_address(ipr, index, name, wanted, flags=IFA_F_NODAD)


def _add_address(
    ipr: Any, index: int, name: str, wanted: IPv4Interface | IPv6Interface, **flags: int
) -> None:
    _, NetlinkError = load_iproute()
    prefix = wanted.network.prefixlen
    try:
        ipr.addr("add", index=index, address=str(wanted.ip), prefixlen=prefix, **flags)
    except NetlinkError as exc:
        raise StepError(f"could not add address {wanted} to {name!r}: {exc.args[-1]}") from exc


def _lookup(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def _ensure_sysctl(sysctl: Sysctl) -> None:
    for name in sysctl.names:
        try:
            if (Path("/proc/sys") / name).read_text().strip() == sysctl.value:
                return
        except OSError:
            continue  # e.g. no such device yet: the others may do
    name, value = sysctl.names[0], sysctl.value
    try:
        (Path("/proc/sys") / name).write_text(value + "\n")
    except OSError as exc:
        settable = sysctl.names[-1].replace("/", ".")  # the name a pod spec can carry
        raise StepError(
            f"could not set {name.replace('/', '.')}={value}: {exc.strerror}: expected "
            f"{settable}={value} in the pod's securityContext.sysctls, or a privileged container"
        ) from exc
