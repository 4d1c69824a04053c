"""Settings from the environment: parsed and validated before anything is touched."""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from kvmmgr import unpack
from kvmmgr.errors import ConfigError

Accel = Literal["auto", "kvm", "tcg"]
DriveFormat = Literal["configdrive", "nocloud"]
NetMode = Literal["nat", "bridge", "macvtap"]
NET_MODES: tuple[NetMode, ...] = ("nat", "bridge", "macvtap")
# The VM's IPv6 side in NAT mode, on a dual-stack pod: a unique local /64 ("kvm" in hex),
# the VM on ::2, the bridge (its router) on ::1.
DEFAULT_VM_IP6 = "fd00:6b76:6d::2"
DEFAULT_VM_IP = "192.168.254.2"

TRUE_WORDS = frozenset({"1", "true", "yes"})
FALSE_WORDS = frozenset({"0", "false", "no"})
NAT_PROTOCOLS = ("tcp", "udp", "sctp")
MAX_CPUS = 255  # QEMU's limit for the pc machine
MAX_MEMORY_MIB = 16 * 1024 * 1024
MAX_RETRIES = 100

_Word = TypeVar("_Word", bound=str)
_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MEMORY_RE = re.compile(r"^(\d+)\s*(M|Mi|MiB|MB|G|Gi|GiB|GB)?$")
_DISK_SIZE_RE = re.compile(r"^(\d+)\s*(?:([KMGT])(?:i|iB|B)?)?$", re.IGNORECASE)
MAX_DISK_BYTES = 64 << 40  # qcow2 itself allows more; no appliance needs it


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
class Readiness:
    """When the VM counts as ready (READINESS): QEMU runs; the guest agent answers; or the VM
    accepts a TCP connection on `port` at `address` (its first NAT NIC's, VM_IP)."""

    check: Literal["qemu", "agent", "tcp"]
    port: int | None = None
    address: IPv4Address | None = None

    def __str__(self) -> str:
        return f"tcp:{self.port}" if self.check == "tcp" else self.check


@dataclass(frozen=True)
class Attachment:
    """A pod interface given to the VM as a NIC, and how."""

    iface: str
    mode: NetMode


@dataclass(frozen=True)
class InputPaths:
    """Where the config drive's inputs are mounted (ConfigMaps, Secrets)."""

    userdata: Path
    metadata: Path
    networkdata: Path
    vendordata: Path


@dataclass(frozen=True)
class Settings:
    img_source: str | None
    img_target: str
    img_sha256: str | None
    img_retries: int
    img_ca_bundle: Path | None
    image_dir: Path
    vm_dir: Path
    run_dir: Path
    vm_ip: IPv4Address
    vm_gw: IPv4Address
    vm_ip6: IPv6Address
    vm_mac: str | None
    vm_memory_mib: int | None
    vm_cpus: int | None
    vm_disk_size: int | None  # bytes; None: the base image's size
    vm_accel: Accel
    pod_iface: str
    pod_ip: IPv4Address | None
    net_mode: NetMode
    # The NICs, in order; None: every pod interface with an IPv4 address (ATTACH_IFACES=all).
    attachments: tuple[Attachment, ...] | None
    selected_network: IPv4Network | None
    resolv_conf: Path
    drive_inputs: InputPaths
    config_drive_format: DriveFormat | None  # None: no config drive at all
    vnc: bool
    vnc_password: str | None = field(repr=False)
    nat_exclude: tuple[PortSpec, ...]
    dhcp: bool
    dnsmasq_opts: tuple[str, ...]
    hostname: str | None
    readiness: Readiness
    debug: bool

    @property
    def vm_network(self) -> IPv4Network:
        return IPv4Network(f"{self.vm_ip}/30", strict=False)


def load_settings(env: Mapping[str, str]) -> Settings:
    """Parse every variable of the contract; the first bad one raises ConfigError."""

    def get(name: str) -> str:
        return env.get(name, "").strip()

    image_dir = _abs_path(env, "IMAGE_DIR", "/image")
    img_source = get("IMG_SOURCE") or None
    if img_source is not None:
        _check_source(img_source)
    img_target = get("IMG_TARGET") or (
        unpack.strip_suffix(_source_basename(img_source)) if img_source else ""
    )
    if not img_target:
        raise ConfigError("IMG_SOURCE is not set: expected the URL or path of the base image")
    if "/" in img_target or img_target in {".", ".."}:
        raise ConfigError.bad_value("IMG_TARGET", img_target, "a plain file name")
    img_sha256 = get("IMG_SHA256").lower() or None
    if img_sha256 is not None and not _SHA256_RE.match(img_sha256):
        raise ConfigError.bad_value("IMG_SHA256", img_sha256, "64 hexadecimal digits")
    img_retries = _whole_number("IMG_RETRIES", get("IMG_RETRIES") or "5", 0, MAX_RETRIES)
    img_ca_bundle = _abs_path(env, "IMG_CA_BUNDLE", "") if get("IMG_CA_BUNDLE") else None

    vm_ip = _ipv4("VM_IP", get("VM_IP") or DEFAULT_VM_IP)
    vm_gw = _ipv4("VM_GW", get("VM_GW") or "192.168.254.1")
    _check_pair(vm_ip, vm_gw)

    nat_exclude = _port_specs(get("NAT_EXCLUDE"))
    dnsmasq_opts = get("DNSMASQ_OPTS")
    try:
        dnsmasq_args = tuple(shlex.split(dnsmasq_opts))
    except ValueError as exc:
        raise ConfigError.bad_value("DNSMASQ_OPTS", dnsmasq_opts, f"shell words ({exc})") from None

    no_vnc = _boolean(env, "NO_VNC")
    vnc_password = env.get("VNC_PASSWORD") or None
    if vnc_password is not None and not 1 <= len(vnc_password.encode()) <= 8:
        # The VNC protocol's authentication uses only the first 8 bytes: refuse rather than
        # silently accept a password that is not what the user thinks it is.
        raise ConfigError(
            f"VNC_PASSWORD has {len(vnc_password.encode())} bytes: expected 1 to 8 "
            "(VNC authentication uses at most 8); the value is not shown"
        )

    pod_iface = _ifname("POD_IFACE", get("POD_IFACE") or "eth0")
    net_mode = _choice("NET_MODE", get("NET_MODE") or "nat", NET_MODES)

    hostname = get("HOSTNAME") or None
    if hostname is not None:
        check_hostname("HOSTNAME", hostname)
    attachments = _attachments(get("ATTACH_IFACES"), pod_iface, net_mode)
    readiness = load_readiness(env)
    modes = {a.mode for a in attachments} if attachments else {net_mode}
    if readiness.check == "tcp" and "nat" not in modes:
        raise ConfigError.bad_value(
            "READINESS",
            str(readiness),
            "qemu or agent when no NIC is in nat mode (tcp:PORT connects to VM_IP)",
        )

    return Settings(
        img_source=img_source,
        img_target=img_target,
        img_sha256=img_sha256,
        img_retries=img_retries,
        img_ca_bundle=img_ca_bundle,
        image_dir=image_dir,
        vm_dir=_abs_path(env, "VM_DIR", str(image_dir)),
        run_dir=_abs_path(env, "RUN_DIR", "/run/kvmmgr"),
        vm_ip=vm_ip,
        vm_gw=vm_gw,
        vm_ip6=_ipv6("VM_IP6", get("VM_IP6") or DEFAULT_VM_IP6),
        vm_mac=_mac(get("VM_MAC")),
        vm_memory_mib=_memory(get("VM_MEMORY")),
        vm_cpus=_positive_int("VM_CPUS", get("VM_CPUS"), MAX_CPUS),
        vm_disk_size=_disk_size(get("VM_DISK_SIZE")),
        vm_accel=_choice("VM_ACCEL", get("VM_ACCEL") or "auto", ("auto", "kvm", "tcg")),
        pod_iface=pod_iface,
        pod_ip=_ipv4("POD_IP", get("POD_IP")) if get("POD_IP") else None,
        net_mode=net_mode,
        attachments=attachments,
        selected_network=_network("SELECTED_NETWORK", get("SELECTED_NETWORK")),
        resolv_conf=_abs_path(env, "RESOLV_CONF", "/etc/resolv.conf"),
        drive_inputs=InputPaths(
            userdata=_abs_path(env, "USERDATA_PATH", "/userdata"),
            metadata=_abs_path(env, "METADATA_PATH", "/metadata"),
            networkdata=_abs_path(env, "NETWORKDATA_PATH", "/networkdata"),
            vendordata=_abs_path(env, "VENDORDATA_PATH", "/vendordata"),
        ),
        config_drive_format=_drive_format(get("CONFIG_DRIVE_FORMAT") or "configdrive"),
        vnc=not no_vnc,
        vnc_password=None if no_vnc else vnc_password,
        nat_exclude=nat_exclude,
        dhcp=not _boolean(env, "NO_DHCP"),
        dnsmasq_opts=dnsmasq_args,
        hostname=hostname,
        readiness=readiness,
        debug=_boolean(env, "DEBUG"),
    )


def load_readiness(env: Mapping[str, str]) -> Readiness:
    """READINESS (and VM_IP, for tcp:PORT): all that `status --ready` needs to know."""
    raw = env.get("READINESS", "").strip() or "qemu"
    word, colon, port = raw.lower().partition(":")
    if word in {"qemu", "agent"} and not colon:
        return Readiness("qemu" if word == "qemu" else "agent")
    if word == "tcp" and port.isdigit() and 1 <= int(port) <= 65535:
        address = _ipv4("VM_IP", env.get("VM_IP", "").strip() or DEFAULT_VM_IP)
        return Readiness("tcp", int(port), address)
    raise ConfigError.bad_value("READINESS", raw, "qemu, agent or tcp:PORT (PORT 1-65535)")


def check_hostname(name: str, value: str) -> str:
    """An RFC 1123 host name: it names the VM's disk file and goes out in DHCP."""
    labels = value.split(".")
    ok = len(value) <= 253 and all(
        re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", label) for label in labels
    )
    if not ok:
        raise ConfigError.bad_value(
            name, value, "an RFC 1123 host name (lower-case letters, digits, '-', '.')"
        )
    return value


def _boolean(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip()
    word = raw.lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS or word == "":
        return False
    raise ConfigError.bad_value(name, raw, "one of 1/true/yes or 0/false/no")


def _abs_path(env: Mapping[str, str], name: str, default: str) -> Path:
    raw = env.get(name, "").strip() or default
    if not raw.startswith("/") or "\0" in raw:
        raise ConfigError.bad_value(name, raw, "an absolute path")
    return Path(posixpath.normpath(raw))


def _ipv4(name: str, raw: str) -> IPv4Address:
    try:
        address = IPv4Address(raw)
    except ValueError:
        raise ConfigError.bad_value(name, raw, "an IPv4 address such as 192.168.254.2") from None
    special = (
        address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
    )
    if special:
        raise ConfigError.bad_value(
            name, raw, "a unicast IPv4 address (not loopback, link-local, multicast or reserved)"
        )
    return address


def _check_pair(vm_ip: IPv4Address, vm_gw: IPv4Address) -> None:
    net = IPv4Network(f"{vm_ip}/30", strict=False)
    usable = (net.network_address + 1, net.network_address + 2)
    if vm_ip not in usable:
        raise ConfigError.bad_value(
            "VM_IP",
            str(vm_ip),
            f"a usable host of its /30 ({usable[0]} or {usable[1]}), "
            "not the network or broadcast address",
        )
    if vm_gw not in usable or vm_gw == vm_ip:
        other = usable[1] if vm_ip == usable[0] else usable[0]
        raise ConfigError.bad_value(
            "VM_GW", str(vm_gw), f"the other usable host of VM_IP's /30 {net}, i.e. {other}"
        )


def _check_source(source: str) -> None:
    scheme = urlsplit(source).scheme
    if source.startswith("/") or (scheme in {"http", "https"} and urlsplit(source).netloc):
        return
    if scheme == "file" and urlsplit(source).path.startswith("/"):
        return
    raise ConfigError.bad_value(
        "IMG_SOURCE", source, "an http(s):// URL, a file:// URL or an absolute path"
    )


def _source_basename(source: str) -> str:
    path = source if source.startswith("/") else urlsplit(source).path
    return posixpath.basename(path.rstrip("/"))


def _mac(raw: str) -> str | None:
    if not raw:
        return None
    mac = raw.lower().replace("-", ":")
    if not _MAC_RE.match(raw.lower()):
        raise ConfigError.bad_value("VM_MAC", raw, "a MAC address such as 52:54:00:12:34:56")
    first = int(mac[:2], 16)
    if first & 1:
        raise ConfigError.bad_value("VM_MAC", raw, "a unicast MAC (the first octet must be even)")
    if mac == "00:00:00:00:00:00":
        raise ConfigError.bad_value("VM_MAC", raw, "a MAC address other than all zeros")
    return mac


def _memory(raw: str) -> int | None:
    if not raw:
        return None
    match = _MEMORY_RE.match(raw)
    expected = "a positive size in MiB such as 2048, or with a unit: 2048M, 2G"
    if not match:
        raise ConfigError.bad_value("VM_MEMORY", raw, expected)
    mib = int(match.group(1)) * (1024 if (match.group(2) or "M").startswith("G") else 1)
    if not 1 <= mib <= MAX_MEMORY_MIB:
        raise ConfigError.bad_value("VM_MEMORY", raw, expected)
    return mib


def _disk_size(raw: str) -> int | None:
    """VM_DISK_SIZE: bytes, or with a binary unit (K, M, G, T; also Ki, GiB...), rounded up to
    whole MiB (qcow2 wants sector multiples; MiB keeps partitioning tools happy)."""
    if not raw:
        return None
    match = _DISK_SIZE_RE.match(raw)
    unit = (match.group(2) or "").upper() if match else ""
    size = int(match.group(1)) << (10 * " KMGT".index(unit or " ")) if match else 0
    if not 1 <= size <= MAX_DISK_BYTES:
        raise ConfigError.bad_value(
            "VM_DISK_SIZE", raw, "a disk size such as 20G, 20Gi or 10240M (at most 64 TiB)"
        )
    return -(-size // (1 << 20)) << 20


def _positive_int(name: str, raw: str, maximum: int) -> int | None:
    return _whole_number(name, raw, 1, maximum) if raw else None


def _whole_number(name: str, raw: str, minimum: int, maximum: int) -> int:
    if not raw.isdigit() or not minimum <= int(raw) <= maximum:
        raise ConfigError.bad_value(name, raw, f"a whole number from {minimum} to {maximum}")
    return int(raw)


def _choice(name: str, raw: str, choices: tuple[_Word, ...]) -> _Word:
    for choice in choices:
        if raw.lower() == choice:
            return choice
    raise ConfigError.bad_value(name, raw, "one of " + ", ".join(choices))


def _drive_format(raw: str) -> DriveFormat | None:
    formats: tuple[DriveFormat, ...] = ("configdrive", "nocloud")
    for choice in formats:
        if raw.lower() == choice:
            return choice
    if raw.lower() == "none":
        return None
    raise ConfigError.bad_value("CONFIG_DRIVE_FORMAT", raw, "one of configdrive, nocloud, none")


def _ifname(name: str, raw: str) -> str:
    if not _IFNAME_RE.match(raw) or raw.startswith("kvm"):
        raise ConfigError.bad_value(
            name, raw, "a network interface name such as eth0 (kvm* names are kvm-manager's)"
        )
    return raw


def _attachments(raw: str, pod_iface: str, mode: NetMode) -> tuple[Attachment, ...] | None:
    """`eth0:nat net1:bridge`, `eth0 net1` (NET_MODE for each), or `all`."""
    if raw.lower() == "all":
        return None
    if not raw:
        return (Attachment(pod_iface, mode),)
    found: dict[str, Attachment] = {}
    for item in raw.replace(",", " ").split():
        name, _, given = item.partition(":")
        iface = _ifname("ATTACH_IFACES", name)
        if iface in found:
            raise ConfigError.bad_value(
                "ATTACH_IFACES", raw, f"each interface once ({iface} twice)"
            )
        found[iface] = Attachment(
            iface, _choice("ATTACH_IFACES", given, NET_MODES) if given else mode
        )
    return tuple(found.values())


def _network(name: str, raw: str) -> IPv4Network | None:
    if not raw:
        return None
    try:
        return IPv4Network(raw, strict=False)
    except ValueError:
        raise ConfigError.bad_value(name, raw, "an IPv4 network such as 10.244.0.0/16") from None


def _ipv6(name: str, raw: str) -> IPv6Address:
    try:
        address = IPv6Address(raw)
    except ValueError:
        raise ConfigError.bad_value(name, raw, "an IPv6 address such as fd00:6b76:6d::2") from None
    network = IPv6Network(f"{address}/64", strict=False)
    if (
        address.is_link_local
        or address.is_multicast
        or address
        in (
            network.network_address,
            network.network_address + 1,  # the bridge's, the VM's router
        )
    ):
        raise ConfigError.bad_value(
            name, raw, "a unicast IPv6 address, not link-local, nor ::0 or ::1 of its /64"
        )
    return address


def _port_specs(raw: str) -> tuple[PortSpec, ...]:
    """`tcp/9100 udp/5353,tcp/8000-8010` -> PortSpecs, duplicates dropped, order kept."""
    specs: dict[PortSpec, None] = {}
    for item in raw.replace(",", " ").split():
        spec = _port_spec(item)
        specs.setdefault(spec, None)
    return tuple(specs)


def _port_spec(item: str) -> PortSpec:
    expected = "items like tcp/9100, udp/5353 or tcp/8000-8010 (tcp, udp or sctp; ports 1-65535)"
    protocol, _, ports = item.lower().partition("/")
    first, _, last = ports.partition("-")
    last = last or first
    valid = (
        protocol in NAT_PROTOCOLS
        and first.isdigit()
        and last.isdigit()
        and 1 <= int(first) <= int(last) <= 65535
    )
    if not valid:
        raise ConfigError.bad_value("NAT_EXCLUDE", item, expected)
    return PortSpec(protocol, int(first), int(last))
