"""What the guest's cloud-init is told, as data: metadata with the keys each datasource needs,
the network configuration, vendor data, and a check of user-data that claims to be
#cloud-config. Pure: bytes and mappings in, bytes and mappings out."""

from __future__ import annotations

import itertools
import json
import re
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from email.feedparser import BytesFeedParser
from email.message import Message
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from kvmmgr import documents
from kvmmgr.errors import ConfigError
from kvmmgr.net.model import GuestNetwork, GuestNic, Route

# Instance ids derive from the hostname, so they survive restarts (cloud-init reruns its
# first-boot modules when the id changes) and differ between VMs.
UUID_NAMESPACE = uuid.UUID("6f1b0e52-41c4-4c8e-9a57-6b7a0e5f2c11")
MAX_UNPACKED = 16 << 20  # bytes a gzip'd user-data may unpack to: what a file may hold
# A MIME user-data is read with the email parser, which keeps an object per line and recurses
# into nested multiparts: these bound its time and memory (cloud-init's own tools make a few
# parts of a few lines).
MAX_MIME_LINES = 200_000
MAX_MIME_PARTS = 1000
MAX_MULTIPARTS = 32  # the parser and walk() recurse into each one nested in another
_MULTIPART = re.compile(rb"multipart/", re.IGNORECASE)


def identity(metadata: Mapping[str, Any], hostname: str) -> tuple[str, str]:
    """(instance id, host name): the user's, under either datasource's name, or derived."""
    instance_id = metadata.get("uuid") or metadata.get("instance-id")
    name = metadata.get("hostname") or metadata.get("local-hostname")
    return str(instance_id or uuid.uuid5(UUID_NAMESPACE, hostname)), str(name or hostname)


def public_keys(metadata: Mapping[str, Any]) -> list[str]:
    """SSH keys given as `public_keys` (or `public-keys`): a string, a list or a mapping."""
    given = metadata.get("public_keys", metadata.get("public-keys"))
    if given is None:
        return []
    if isinstance(given, str):
        return [line for line in given.splitlines() if line.strip()]
    if isinstance(given, Mapping):
        return [str(key) for key in given.values()]
    if isinstance(given, Sequence):
        return [str(key) for key in given]
    raise ConfigError(
        f"METADATA_PATH public_keys is a {type(given).__name__}: expected a list of SSH keys"
    )


def configdrive_metadata(metadata: Mapping[str, Any], hostname: str) -> dict[str, Any]:
    """meta_data.json: OpenStack's keys filled in; every key the user gave is kept."""
    instance_id, name = identity(metadata, hostname)
    result = dict(metadata)
    result.setdefault("uuid", instance_id)
    result.setdefault("hostname", name)
    result.setdefault("name", name)
    keys = public_keys(metadata)
    if keys:
        result.pop("public-keys", None)
        result["public_keys"] = {f"key-{n}": key for n, key in enumerate(keys)}
    return result


def nocloud_metadata(metadata: Mapping[str, Any], hostname: str) -> dict[str, Any]:
    """meta-data: NoCloud's keys filled in; every key the user gave is kept."""
    instance_id, name = identity(metadata, hostname)
    result = dict(metadata)
    result.setdefault("instance-id", instance_id)
    result.setdefault("local-hostname", name)
    keys = public_keys(metadata)
    if keys:
        result.pop("public_keys", None)
        result["public-keys"] = keys
    return result


def routes_of(nic: GuestNic) -> tuple[Route, ...]:
    """Every route the NIC should have: its classless routes, or the default via its router."""
    if nic.routes:
        return nic.routes
    return (Route(IPv4Network("0.0.0.0/0"), nic.router),) if nic.router else ()


def gateway_of(nic: GuestNic) -> IPv4Address | None:
    """The router, when the default route via it is all the NIC needs: given as the subnet's
    gateway, which every renderer turns into a default route of its own kind. (As a route,
    cloud-init's ifupdown renderer writes `route add`, of net-tools, which minimal guests
    lack.)"""
    if nic.routes or nic.router is None or nic.router not in nic.address.network:
        return None
    return nic.router


def static_routes_of(nic: GuestNic) -> tuple[Route, ...]:
    """The routes the subnet's gateway does not already give."""
    return () if gateway_of(nic) else routes_of(nic)


def network_data_json(net: GuestNetwork) -> dict[str, Any]:
    """OpenStack's network_data.json. cloud-init names each link after the NIC that has its
    MAC; DNS goes both on the networks and as services (where other agents, cloudbase-init
    say, look for it). An on-link route has the gateway 0.0.0.0."""
    links, networks = [], []
    for number, nic in enumerate(net.nics):
        link = f"pod{number}"
        links.append({"id": link, "type": "phy", "ethernet_mac_address": nic.mac, "mtu": nic.mtu})
        network: dict[str, Any] = {"id": f"{link}-ipv4", "link": link, "network_id": "kvm-manager"}
        # DNS on each network too: where cloud-init reads the search domains. DHCP may
        # carry fewer of them (option 119's 255 bytes): the drive has them all.
        dns = {
            "dns_nameservers": [str(ns) for ns in net.nameservers],
            "dns_search": list(net.search),
        }
        if net.dhcp:
            networks.append({**network, "type": "ipv4_dhcp", **dns})
            continue
        routes = [
            {
                "network": str(r.destination.network_address),
                "netmask": str(r.destination.netmask),
                "gateway": str(r.gateway or "0.0.0.0"),
            }
            for r in static_routes_of(nic)
        ]
        gateway = gateway_of(nic)
        networks.append(
            {
                **network,
                "type": "ipv4",
                "ip_address": str(nic.address.ip),
                "netmask": str(nic.address.netmask),
                **({"gateway": str(gateway)} if gateway else {}),
                "routes": routes,
                **dns,
            }
        )
    services = [{"type": "dns", "address": str(ns)} for ns in net.nameservers]
    return {"links": links, "networks": networks, "services": services}


def network_config_v2(net: GuestNetwork) -> dict[str, Any]:
    """NoCloud's network-config, version 2, each NIC matched on its MAC. Renderers other than
    netplan name the NICs after the keys: eth0, eth1..., what legacy guests expect."""
    nameservers: dict[str, Any] = {"addresses": [str(ns) for ns in net.nameservers]}
    if net.search:
        nameservers["search"] = list(net.search)
    ethernets = {}
    for number, nic in enumerate(net.nics):
        ethernet: dict[str, Any] = {"match": {"macaddress": nic.mac}, "mtu": nic.mtu}
        ethernet["nameservers"] = nameservers
        if net.dhcp:
            ethernet["dhcp4"] = True
            if nic.address6:
                ethernet["dhcp6"] = True
            ethernets[f"eth{number}"] = ethernet
            continue
        routes: list[dict[str, Any]] = []
        for route in static_routes_of(nic):
            if route.gateway is None:
                routes.append({"to": str(route.destination), "scope": "link"})
            elif route.gateway in nic.address.network:
                routes.append({"to": str(route.destination), "via": str(route.gateway)})
            else:  # a gateway outside the subnet, as routed CNIs have (169.254.1.1)
                routes.append(
                    {"to": str(route.destination), "via": str(route.gateway), "on-link": True}
                )
        ethernet["addresses"] = [str(nic.address)] + ([str(nic.address6)] if nic.address6 else [])
        gateway = gateway_of(nic)
        if gateway:
            ethernet["gateway4"] = str(gateway)
        ethernet["routes"] = routes
        ethernets[f"eth{number}"] = ethernet
    return {"version": 2, "ethernets": ethernets}


def vendor_data_json(vendordata: bytes) -> bytes:
    """vendor_data.json carries vendor data as JSON: JSON as it is, anything else (a
    #cloud-config, a script, JSON beyond documents' bounds) as the string under "cloud-init"."""
    try:
        documents.load_json(vendordata)
    except documents.Invalid:
        text = vendordata.decode("utf-8", "replace")
        return (json.dumps({"cloud-init": text}, sort_keys=True) + "\n").encode()
    return vendordata


def check_cloud_config(name: str, path: str, data: bytes) -> None:
    """A #cloud-config document must be YAML cloud-init can read; the error names the file
    and line. Gzip'd user-data and MIME multipart parts of type text/cloud-config are looked
    into; anything else (scripts, include files, boothooks) is passed on unchecked."""
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(name, path, data)
    stripped = data.lstrip()
    if stripped.startswith(b"#cloud-config"):
        _check_yaml(name, path, data, "")
    elif stripped[:64].lower().startswith((b"content-type: multipart", b"mime-version:")):
        for number, part in enumerate(_mime_parts(name, path, data), start=1):
            if part.get_content_type() == "text/cloud-config":
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes):
                    _check_yaml(name, path, payload, f" (MIME part {number})")


def _mime_parts(name: str, path: str, data: bytes) -> list[Message]:
    """Every part of a MIME message, the message first, read within MAX_MIME_* bounds."""
    if data.count(b"\n") > MAX_MIME_LINES:
        raise ConfigError(
            f"{name} {path}: a MIME message of more than {MAX_MIME_LINES} lines: expected fewer"
        )
    # Each multipart names its type: counting the names bounds how deep they nest.
    multiparts = itertools.islice(_MULTIPART.finditer(data), MAX_MULTIPARTS + 1)
    if sum(1 for _ in multiparts) > MAX_MULTIPARTS:
        raise ConfigError(f"{name} {path}: more than {MAX_MULTIPARTS} multiparts: expected fewer")
    parser = BytesFeedParser(_factory=_part_factory(name, path))
    parser.feed(data)
    return list(parser.close().walk())


def _part_factory(name: str, path: str) -> Callable[..., Message]:
    """Message, as the parser makes one per part, refusing beyond MAX_MIME_PARTS."""
    made = itertools.count()

    def part(*args: Any, **kwargs: Any) -> Message:
        if next(made) > MAX_MIME_PARTS:
            raise ConfigError(
                f"{name} {path}: more than {MAX_MIME_PARTS} MIME parts: expected fewer"
            )
        return Message(*args, **kwargs)

    return part


def _check_yaml(name: str, path: str, data: bytes, where: str) -> None:
    value = load_yaml(name, path, data, "#cloud-config YAML", where)
    if value is not None and not isinstance(value, dict):
        raise ConfigError(
            f"{name} {path}{where}: #cloud-config must be a mapping, not {type(value).__name__}"
        )


def load_yaml(name: str, path: object, data: bytes, kind: str = "YAML", where: str = "") -> Any:
    """The document, or one line naming the input, the file, the line and the problem."""
    try:
        return documents.load_yaml(data)
    except documents.Invalid as exc:
        raise ConfigError(f"{name} {path}{where}{exc.at}: invalid {kind}: {exc.problem}") from None


def _gunzip(name: str, path: str, data: bytes) -> bytes:
    """What cloud-init unpacks: every member, whole (a bomb is refused past MAX_UNPACKED)."""
    members: list[bytes] = []
    size = 0
    while data:
        unpacker = zlib.decompressobj(wbits=31)
        try:
            members.append(unpacker.decompress(data, MAX_UNPACKED + 1 - size))
        except zlib.error as exc:
            raise ConfigError(f"{name} {path}: gzip'd user-data is damaged: {exc}") from None
        size += len(members[-1])
        if size > MAX_UNPACKED:
            raise ConfigError(
                f"{name} {path}: gzip'd user-data unpacks to more than "
                f"{MAX_UNPACKED >> 20} MiB: expected at most that"
            )
        if not unpacker.eof:
            raise ConfigError(f"{name} {path}: gzip'd user-data is cut short: expected all of it")
        data = unpacker.unused_data.lstrip(b"\0")  # zeros may pad members, as gzip allows
    return b"".join(members)  # one member: that very object, not a copy
