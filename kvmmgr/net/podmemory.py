"""What a pod interface looked like before kvm-manager gave its identity to the VM.

In bridge and macvtap modes the interface loses its IPv4 addresses and its MAC to the VM, so a
later start in the same pod (a container restart) can no longer observe them. They are kept in
RUN_DIR (an emptyDir in Kubernetes: it lives as long as the pod), written once, before the
interface is touched, and trusted while the interface keeps its index.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface
from pathlib import Path
from typing import Any

from kvmmgr import documents
from kvmmgr.errors import ConfigError, short
from kvmmgr.net.model import PodInterface, Route
from kvmmgr.system.files import UnfitFile, read_regular, write_atomic

FILE_NAME = "pod-interfaces.json"
MAX_SIZE = 1 << 20  # bytes: each interface takes a few hundred
MIN_MTU, MAX_MTU = 68, 65535
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str, "index": int, "addresses": list, "addresses6": list, "mac": str, "mtu": int,
    "routes": list, "gateway6": documents.TEXT_OR_NULL,
}  # fmt: skip


def load(run_dir: Path) -> dict[str, PodInterface]:
    """What is remembered: nothing before the first start. A file that does not hold up is an
    error naming it: what the VM took cannot be observed again."""
    path = run_dir / FILE_NAME
    try:
        raw = documents.load_json(read_regular(path, MAX_SIZE))
        if not isinstance(raw, dict):
            raise documents.Invalid(f"{short(raw)} where an object was expected")
        return {name: _interface(name, value) for name, value in raw.items()}
    except FileNotFoundError:
        return {}
    except (UnfitFile, documents.Invalid, ValueError) as exc:  # ValueError: an address's
        raise ConfigError(
            f"{path}: not the pod's interfaces as kvm-manager wrote them: {exc} (recreate the pod)"
        ) from None


def remember(run_dir: Path, interfaces: Iterable[PodInterface]) -> None:
    """Add these interfaces to what is remembered; what is there already stays as it was."""
    known = load(run_dir)
    new = {i.name: i for i in interfaces if i.name not in known}
    if new:
        every = {**known, **new}
        data = {name: _plain(interface) for name, interface in sorted(every.items())}
        write_atomic(run_dir / FILE_NAME, (json.dumps(data, indent=2) + "\n").encode())


def _plain(interface: PodInterface) -> dict[str, Any]:
    return {
        "name": interface.name,
        "index": interface.index,
        "addresses": [str(a) for a in interface.addresses],
        "addresses6": [str(a) for a in interface.addresses6],
        "mac": interface.mac,
        "mtu": interface.mtu,
        "routes": [
            [str(r.destination), str(r.gateway) if r.gateway else None] for r in interface.routes
        ],
        "gateway6": str(interface.gateway6) if interface.gateway6 else None,
    }


def _interface(name: str, value: Any) -> PodInterface:
    """An interface as _plain wrote it, each field checked: its MAC and MTU go into dnsmasq's
    configuration and the VM's NIC."""
    given = documents.fields(value, FIELDS)
    if given["name"] != name or not _MAC.fullmatch(given["mac"]):
        raise documents.Invalid(f"{short(name)}: its name or MAC is not one")
    if not 0 < given["index"] < 1 << 31 or not MIN_MTU <= given["mtu"] <= MAX_MTU:
        raise documents.Invalid(f"{name}: index {given['index']} or MTU {given['mtu']}")
    routes = given["routes"]
    for route in routes:  # [destination, gateway or null]
        shaped = isinstance(route, list) and len(route) == 2 and isinstance(route[0], str)
        if not shaped or not isinstance(route[1], documents.TEXT_OR_NULL):
            raise documents.Invalid(f"{name}: the route {short(route)}")
    return PodInterface(
        name=name,
        index=given["index"],
        addresses=tuple(IPv4Interface(a) for a in _addresses(given["addresses"])),
        addresses6=tuple(IPv6Interface(a) for a in _addresses(given["addresses6"])),
        mac=given["mac"],
        mtu=given["mtu"],
        routes=tuple(
            Route(IPv4Network(dst), IPv4Address(gw) if gw is not None else None)
            for dst, gw in routes
        ),
        gateway6=IPv6Address(given["gateway6"]) if given["gateway6"] is not None else None,
        remembered=True,
    )


def _addresses(items: list[Any]) -> list[str]:
    """Addresses are written as text (an int would be one too, to ipaddress)."""
    if not all(isinstance(item, str) for item in items):
        raise documents.Invalid(f"{short(items)}: expected addresses")
    return items
