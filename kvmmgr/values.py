"""Parsers of single configuration values: each returns the value or raises a ConfigError that
names the variable, quotes the value and says what was expected. Pure."""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import TypeVar
from uuid import UUID

from kvmmgr.errors import ConfigError
from kvmmgr.net.model import PortSpec

TRUE_WORDS = frozenset({"1", "true", "yes"})
FALSE_WORDS = frozenset({"0", "false", "no"})
NAT_PROTOCOLS = ("tcp", "udp", "sctp")
MAX_DISK_BYTES = 64 << 40  # qcow2 itself allows more; no appliance needs it
MAX_MEMORY_MIB = 16 * 1024 * 1024

_Word = TypeVar("_Word", bound=str)
_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")
# ASCII digits, at most 20: str.isdigit() and \d take '²' or '٣', and int() refuses the one
# and 5000 digits of the other; a valid value never needs more.
_DECIMAL_RE = re.compile(r"[0-9]{1,20}")
_MEMORY_RE = re.compile(r"^([0-9]{1,20})\s*(M|Mi|MiB|MB|G|Gi|GiB|GB)?$")
_DISK_SIZE_RE = re.compile(r"^([0-9]{1,20})\s*(?:([KMGT])(?:i|iB|B)?)?$", re.IGNORECASE)
_CPU_MODEL_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")
_HOST_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")  # useradd's default NAME_REGEX
_IDS_RE = re.compile(r"(\d{1,10}):(\d{1,10})")
MAX_ID = (1 << 32) - 2  # (uid_t)-1 means "unchanged" to the kernel


def text(env: Mapping[str, str], name: str) -> str:
    """A variable's value, spaces around it removed; empty when unset."""
    return env.get(name, "").strip()


def boolean(env: Mapping[str, str], name: str) -> bool:
    raw = text(env, name)
    word = raw.lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS or word == "":
        return False
    raise ConfigError.bad_value(name, raw, "one of 1/true/yes or 0/false/no")


def abs_path(env: Mapping[str, str], name: str, default: str) -> Path:
    raw = text(env, name) or default
    if not raw.startswith("/") or "\0" in raw:
        raise ConfigError.bad_value(name, raw, "an absolute path")
    return Path(posixpath.normpath(raw))


def ipv4(name: str, raw: str) -> IPv4Address:
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


def ipv6(name: str, raw: str) -> IPv6Address:
    try:
        address = IPv6Address(raw)
    except ValueError:
        raise ConfigError.bad_value(name, raw, "an IPv6 address such as fd00:6b76:6d::2") from None
    network = IPv6Network(f"{address}/64", strict=False)
    # ::0 is the subnet's own, ::1 the bridge's (the VM's router)
    own = int(address) - int(network.network_address) < 2
    if address.is_link_local or address.is_multicast or own:
        raise ConfigError.bad_value(
            name, raw, "a unicast IPv6 address, not link-local, nor ::0 or ::1 of its /64"
        )
    return address


def network(name: str, raw: str) -> IPv4Network | None:
    if not raw:
        return None
    try:
        return IPv4Network(raw, strict=False)
    except ValueError:
        raise ConfigError.bad_value(name, raw, "an IPv4 network such as 10.244.0.0/16") from None


def mac(name: str, raw: str) -> str | None:
    if not raw:
        return None
    normal = raw.lower().replace("-", ":")
    if not _MAC_RE.match(raw.lower()):
        raise ConfigError.bad_value(name, raw, "a MAC address such as 52:54:00:12:34:56")
    if int(normal[:2], 16) & 1:
        raise ConfigError.bad_value(name, raw, "a unicast MAC (the first octet must be even)")
    if normal == "00:00:00:00:00:00":
        raise ConfigError.bad_value(name, raw, "a MAC address other than all zeros")
    return normal


def memory_mib(name: str, raw: str) -> int | None:
    if not raw:
        return None
    match = _MEMORY_RE.match(raw)
    expected = "a positive size in MiB such as 2048, or with a unit: 2048M, 2G"
    if not match:
        raise ConfigError.bad_value(name, raw, expected)
    mib = int(match.group(1)) * (1024 if (match.group(2) or "M").startswith("G") else 1)
    if not 1 <= mib <= MAX_MEMORY_MIB:
        raise ConfigError.bad_value(name, raw, expected)
    return mib


def disk_size(name: str, raw: str) -> int | None:
    """Bytes, or with a binary unit (K, M, G, T; also Ki, GiB...), rounded up to whole MiB
    (qcow2 wants sector multiples; MiB keeps partitioning tools happy)."""
    if not raw:
        return None
    match = _DISK_SIZE_RE.match(raw)
    unit = (match.group(2) or "").upper() if match else ""
    size = int(match.group(1)) << (10 * " KMGT".index(unit or " ")) if match else 0
    if not 1 <= size <= MAX_DISK_BYTES:
        raise ConfigError.bad_value(
            name, raw, "a disk size such as 20G, 20Gi or 10240M (at most 64 TiB)"
        )
    return -(-size // (1 << 20)) << 20


def run_as(name: str, raw: str) -> str:
    """A user name, or UID:GID; never root, whose capabilities would survive the change."""
    ids = _IDS_RE.fullmatch(raw)
    expected = "a user name such as kvmmgr-qemu, or UID:GID, other than root (uid or gid 0)"
    if ids and all(1 <= int(n) <= MAX_ID for n in ids.groups()):
        return raw
    if ids or not _USER_RE.fullmatch(raw) or raw == "root":
        raise ConfigError.bad_value(name, raw, expected)
    return raw


def optional_number(name: str, raw: str, maximum: int) -> int | None:
    return number(name, raw, 1, maximum) if raw else None


def decimal(raw: str) -> bool:
    """A whole number written in ASCII digits, short enough to be read."""
    return _DECIMAL_RE.fullmatch(raw) is not None


def number(name: str, raw: str, minimum: int, maximum: int) -> int:
    if not decimal(raw) or not minimum <= int(raw) <= maximum:
        raise ConfigError.bad_value(name, raw, f"a whole number from {minimum} to {maximum}")
    return int(raw)


def choice(name: str, raw: str, choices: tuple[_Word, ...]) -> _Word:
    for option in choices:
        if raw.lower() == option:
            return option
    raise ConfigError.bad_value(name, raw, "one of " + ", ".join(choices))


def ifname(name: str, raw: str) -> str:
    if not _IFNAME_RE.match(raw) or raw.startswith("kvm"):
        raise ConfigError.bad_value(
            name, raw, "a network interface name such as eth0 (kvm* names are kvm-manager's)"
        )
    return raw


def hostname(name: str, value: str) -> str:
    """An RFC 1123 host name: it names the VM's disk file and goes out in DHCP."""
    labels = value.split(".")
    if len(value) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        raise ConfigError.bad_value(
            name, value, "an RFC 1123 host name (lower-case letters, digits, '-', '.')"
        )
    return value


def cpu_model(name: str, raw: str) -> str | None:
    """A QEMU CPU model name, e.g. Skylake-Server or host (whether QEMU has it, preflight
    asks QEMU)."""
    if not raw:
        return None
    if not _CPU_MODEL_RE.fullmatch(raw):
        raise ConfigError.bad_value(name, raw, "a QEMU CPU model such as Westmere, EPYC or host")
    return raw


def serial(name: str, raw: str) -> str | None:
    """An SMBIOS serial number: printable ASCII, what BIOSes hold (64 characters at most)."""
    if not raw:
        return None
    if len(raw) > 64 or not all(" " <= c <= "~" for c in raw):
        raise ConfigError.bad_value(name, raw, "1 to 64 printable ASCII characters")
    return raw


def uuid_of(name: str, raw: str) -> UUID | None:
    if not raw:
        return None
    try:
        return UUID(raw)
    except ValueError:
        raise ConfigError.bad_value(
            name, raw, "a UUID such as 4c4c4544-0042-3610-8030-b8c04f4d4b31"
        ) from None


def words(name: str, raw: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(raw))
    except ValueError as exc:
        raise ConfigError.bad_value(name, raw, f"shell words ({exc})") from None


def port_specs(name: str, raw: str) -> tuple[PortSpec, ...]:
    """`tcp/9100 udp/5353,tcp/8000-8010` -> PortSpecs, duplicates dropped, order kept."""
    return tuple(dict.fromkeys(_port_spec(name, item) for item in raw.replace(",", " ").split()))


def _port_spec(name: str, item: str) -> PortSpec:
    expected = "items like tcp/9100, udp/5353 or tcp/8000-8010 (tcp, udp or sctp; ports 1-65535)"
    protocol, _, ports = item.lower().partition("/")
    first, _, last = ports.partition("-")
    last = last or first
    valid = (
        protocol in NAT_PROTOCOLS
        and decimal(first)
        and decimal(last)
        and 1 <= int(first) <= int(last) <= 65535
    )
    if not valid:
        raise ConfigError.bad_value(name, item, expected)
    return PortSpec(protocol, int(first), int(last))
