"""What a pod interface looked like before kvm-manager gave its identity to the VM.

In bridge and macvtap modes the interface loses its IPv4 addresses and its MAC to the VM, so a
later start in the same pod (a container restart) can no longer observe them. They are kept in
RUN_DIR (an emptyDir in Kubernetes: it lives as long as the pod), written once, before the
interface is touched, and trusted while the interface keeps its index.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface
from pathlib import Path
from typing import Any

from kvmmgr.net.model import PodInterface, Route
from kvmmgr.system.files import write_atomic

FILE_NAME = "pod-interfaces.json"


def load(run_dir: Path) -> dict[str, PodInterface]:
    try:
        raw = json.loads((run_dir / FILE_NAME).read_text())
        return {name: _interface(value) for name, value in raw.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # nothing remembered (or unreadable: the interfaces are observed afresh)


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


def _interface(value: Mapping[str, Any]) -> PodInterface:
    return PodInterface(
        name=value["name"],
        index=int(value["index"]),
        addresses=tuple(IPv4Interface(a) for a in value["addresses"]),
        addresses6=tuple(IPv6Interface(a) for a in value["addresses6"]),
        mac=value["mac"],
        mtu=int(value["mtu"]),
        routes=tuple(
            Route(IPv4Network(dst), IPv4Address(gw) if gw else None) for dst, gw in value["routes"]
        ),
        gateway6=IPv6Address(value["gateway6"]) if value["gateway6"] else None,
        remembered=True,
    )
