"""The VM's side of the pod network: a bridge holding the gateway address and a tap for QEMU.

Ensure-style: objects that exist with the right kind are reused and corrected, objects of the
wrong kind under our names are an error (never silently replaced), missing ones are created.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

from kvmmgr.errors import StepError

TUN_TYPE_TAP = 2  # IFLA_TUN_TYPE of a tap (layer 2) device, as opposed to tun (1)


@dataclass(frozen=True)
class Sysctl:
    """`value` in the first of `names` (under /proc/sys), unless one of them has it already:
    an unprivileged container cannot write /proc/sys, but the pod's securityContext.sysctls
    can set the `all` variant before kvm-manager starts."""

    names: tuple[str, ...]
    value: str


@dataclass(frozen=True)
class NetworkPlan:
    bridge: str
    tap: str
    gateway: IPv4Interface  # VM_GW/30, on the bridge
    mtu: int
    sysctls: tuple[Sysctl, ...]


def build_network(*, bridge: str, tap: str, gateway: IPv4Interface, mtu: int) -> NetworkPlan:
    return NetworkPlan(
        bridge=bridge,
        tap=tap,
        gateway=gateway,
        mtu=mtu,
        sysctls=(
            Sysctl(("net/ipv4/ip_forward",), "1"),
            # Lets the OUTPUT DNAT send 127.0.0.1-sourced packets (kubectl port-forward) to the
            # VM; the firewall then drops what the VM sends to 127.0.0.0/8. The kernel honours
            # the bridge's own setting or the `all` one.
            Sysctl(
                (f"net/ipv4/conf/{bridge}/route_localnet", "net/ipv4/conf/all/route_localnet"),
                "1",
            ),
        ),
    )


def apply_network(plan: NetworkPlan) -> None:
    from pyroute2 import IPRoute  # imported here: a fraction of a second, only needed now
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            bridge = _ensure_link(ipr, plan.bridge, "bridge", {})
            tap = _ensure_link(ipr, plan.tap, "tun", {"mode": "tap"})
            ipr.link("set", index=tap, mtu=plan.mtu)
            ipr.link("set", index=tap, master=bridge, state="up")
            ipr.link("set", index=bridge, mtu=plan.mtu, state="up")
            _ensure_only_address(ipr, bridge, plan.bridge, plan.gateway)
    except NetlinkError as exc:
        raise StepError(f"network setup failed: {exc.args[-1]} (errno {exc.code})") from exc
    for sysctl in plan.sysctls:
        _ensure_sysctl(sysctl)


def _ensure_link(ipr: Any, name: str, kind: str, options: dict[str, str]) -> int:
    from pyroute2.netlink.exceptions import NetlinkError

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
        try:
            ipr.addr("add", index=index, address=str(wanted.ip), prefixlen=wanted.network.prefixlen)
        except Exception as exc:
            raise StepError(f"could not add address {wanted} to {name!r}: {exc}") from exc


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
