"""Every variable of the contract: defaults, accepted forms, and one clear error per bad value."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from kvmmgr.config import InputPaths, Readiness, load_settings
from kvmmgr.errors import EXIT_CONFIG, ConfigError
from kvmmgr.net.model import PortSpec
from tests.unit.factories import BASE_ENV, settings


def test_defaults_follow_the_contract() -> None:
    s = load_settings({"IMG_SOURCE": "https://images.example/dir/focal.qcow2?sig=1"})
    assert s.image.target == "focal.qcow2"
    assert s.image.image_dir == Path("/image")
    assert s.image.vm_dir == Path("/image")
    assert s.run_dir == Path("/run/kvmmgr")
    assert (s.network.vm_ip, s.network.vm_gw) == (
        IPv4Address("192.168.254.2"),
        IPv4Address("192.168.254.1"),
    )
    assert s.vm.mac is None
    assert (s.vm.memory_mib, s.vm.cpus) == (None, None)
    assert s.vm.accel == "auto"
    assert s.network.pod_iface == "eth0"
    assert s.network.resolv_conf == Path("/etc/resolv.conf")
    assert s.guest.inputs == InputPaths(
        Path("/userdata"), Path("/metadata"), Path("/networkdata"), Path("/vendordata")
    )
    assert s.guest.drive_format == "configdrive"
    assert s.vm.vnc and s.vm.vnc_password is None and s.network.dhcp and not s.debug
    assert s.network.nat_exclude == () and s.network.dnsmasq_opts == ()


def test_vm_dir_defaults_to_image_dir() -> None:
    assert settings(IMAGE_DIR="/cache/").image.vm_dir == Path("/cache")
    assert settings(IMAGE_DIR="/cache", VM_DIR="/disks").image.vm_dir == Path("/disks")


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("/srv/images/base.img", "base.img"),
        ("file:///srv/images/my%20disk.qcow2", "my%20disk.qcow2"),
        ("http://10.0.0.1:8080/a/b/c.raw", "c.raw"),
    ],
)
def test_img_target_is_the_source_basename(source: str, target: str) -> None:
    assert settings(IMG_SOURCE=source).image.target == target


def test_image_source_may_be_omitted_when_a_target_is_named() -> None:
    s = load_settings({"IMG_TARGET": "base.qcow2"})
    assert s.image.source is None and s.image.target == "base.qcow2"


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("https://x/focal.qcow2.xz", "focal.qcow2"),
        ("/a/b.img.gz", "b.img"),
        ("/c.raw.zst", "c.raw"),
    ],
)
def test_img_target_drops_a_compression_suffix(source: str, target: str) -> None:
    assert settings(IMG_SOURCE=source).image.target == target


def test_image_download_settings() -> None:
    s = settings(IMG_RETRIES="0", IMG_CA_BUNDLE="/etc/ssl/private-ca.pem")
    assert (s.image.retries, s.image.ca_bundle) == (0, Path("/etc/ssl/private-ca.pem"))
    assert (settings().image.retries, settings().image.ca_bundle) == (5, None)


@pytest.mark.parametrize("word", ["1", "true", "YES", " True "])
def test_booleans_true(word: str) -> None:
    s = settings(NO_VNC=word, NO_DHCP=word, DEBUG=word)
    assert not s.vm.vnc and not s.network.dhcp and s.debug


@pytest.mark.parametrize("word", ["0", "false", "No", ""])
def test_booleans_false(word: str) -> None:
    s = settings(NO_VNC=word, NO_DHCP=word, DEBUG=word)
    assert s.vm.vnc and s.network.dhcp and not s.debug


def test_nat_exclude_items_ranges_and_duplicates() -> None:
    s = settings(NAT_EXCLUDE="tcp/9100 udp/5353,TCP/8000-8010  tcp/9100")
    assert s.network.nat_exclude == (
        PortSpec("tcp", 9100, 9100),
        PortSpec("udp", 5353, 5353),
        PortSpec("tcp", 8000, 8010),
    )
    assert [str(p) for p in s.network.nat_exclude] == ["tcp/9100", "udp/5353", "tcp/8000-8010"]


@pytest.mark.parametrize(
    ("raw", "mib"), [("2048", 2048), ("512M", 512), ("512MiB", 512), ("2G", 2048), ("3Gi", 3072)]
)
def test_memory_units(raw: str, mib: int) -> None:
    assert settings(VM_MEMORY=raw).vm.memory_mib == mib


def test_mac_is_normalised() -> None:
    assert settings(VM_MAC="52-54-00-AB-CD-EF").vm.mac == "52:54:00:ab:cd:ef"


def test_dnsmasq_opts_are_shell_words() -> None:
    s = settings(DNSMASQ_OPTS="--log-dhcp --dhcp-option='option:ntp-server,10.0.0.5'")
    assert s.network.dnsmasq_opts == ("--log-dhcp", "--dhcp-option=option:ntp-server,10.0.0.5")


def test_vnc_password_is_dropped_with_no_vnc_and_never_shown() -> None:
    assert settings(NO_VNC="1", VNC_PASSWORD="secret").vm.vnc_password is None
    s = settings(VNC_PASSWORD="s3cret")
    assert s.vm.vnc_password == "s3cret"
    assert "s3cret" not in repr(s)


# (variable, bad value, a fragment of what the message says is expected)
BAD_VALUES = [
    ("VM_IP", "192.168.254.300", "an IPv4 address"),
    ("VM_IP", "not-an-ip", "an IPv4 address"),
    ("VM_IP", "127.0.0.2", "unicast IPv4 address"),
    ("VM_IP", "224.0.0.5", "unicast IPv4 address"),
    ("VM_IP", "192.168.254.3", "usable host of its /30"),
    ("VM_IP", "192.168.254.0", "usable host of its /30"),
    ("VM_GW", "192.168.254.5", "the other usable host"),
    ("VM_GW", "192.168.254.2", "the other usable host"),
    ("VM_GW", "", None),  # empty means the default: accepted
    ("VM_MAC", "52:54:00:12:34", "a MAC address"),
    ("VM_MAC", "zz:54:00:12:34:56", "a MAC address"),
    ("VM_MAC", "01:00:5e:00:00:01", "unicast MAC"),
    ("VM_MAC", "00:00:00:00:00:00", "other than all zeros"),
    ("VM_MEMORY", "0", "a positive size"),
    ("VM_MEMORY", "-512", "a positive size"),
    ("VM_MEMORY", "lots", "a positive size"),
    ("VM_MEMORY", "1.5G", "a positive size"),
    ("VM_CPUS", "0", "a whole number from 1"),
    ("VM_CPUS", "-1", "a whole number from 1"),
    ("VM_CPUS", "two", "a whole number from 1"),
    ("VM_CPUS", "256", "a whole number from 1 to 255"),
    ("VM_ACCEL", "xen", "one of auto, kvm, tcg"),
    ("CONFIG_DRIVE_FORMAT", "iso", "one of configdrive, nocloud, none"),
    ("NETWORKDATA_PATH", "networkdata", "an absolute path"),
    ("VENDORDATA_PATH", "vd", "an absolute path"),
    ("NAT_EXCLUDE", "tcp/99999", "items like tcp/9100"),
    ("NAT_EXCLUDE", "icmp/8", "items like tcp/9100"),
    ("NAT_EXCLUDE", "9100", "items like tcp/9100"),
    ("NAT_EXCLUDE", "tcp/9000-8000", "items like tcp/9100"),
    ("NAT_EXCLUDE", "tcp/0", "items like tcp/9100"),
    ("NO_VNC", "maybe", "one of 1/true/yes or 0/false/no"),
    ("NO_DHCP", "2", "one of 1/true/yes or 0/false/no"),
    ("DEBUG", "on", "one of 1/true/yes or 0/false/no"),
    ("POD_IFACE", "eth0; rm -rf /", "a network interface name"),
    ("POD_IFACE", "averyveryverylongname", "a network interface name"),
    ("POD_IP", "10.244.1", "an IPv4 address"),
    ("IMG_SOURCE", "ftp://images.example/a.qcow2", "an http(s):// URL"),
    ("IMG_SOURCE", "relative/path.qcow2", "an http(s):// URL"),
    ("IMG_TARGET", "../escape.qcow2", "a plain file name"),
    ("IMG_SHA256", "abc123", "64 hexadecimal digits"),
    ("IMG_RETRIES", "-1", "a whole number from 0 to 100"),
    ("IMG_RETRIES", "many", "a whole number from 0 to 100"),
    ("IMG_CA_BUNDLE", "ca.pem", "an absolute path"),
    ("IMAGE_DIR", "image", "an absolute path"),
    ("VM_DIR", "./disks", "an absolute path"),
    ("RUN_DIR", "run", "an absolute path"),
    ("RESOLV_CONF", "resolv.conf", "an absolute path"),
    ("USERDATA_PATH", "userdata", "an absolute path"),
    ("METADATA_PATH", "~/metadata", "an absolute path"),
    ("DNSMASQ_OPTS", "--dhcp-option='unclosed", "shell words"),
    ("HOSTNAME", "Bad_Host", "an RFC 1123 host name"),
    ("NET_MODE", "tunnel", "one of nat, bridge, macvtap"),
    ("SELECTED_NETWORK", "10.0.0.0/33", "an IPv4 network"),
    ("VM_IP6", "fd00::zz", "an IPv6 address"),
    ("VM_IP6", "10.0.0.1", "an IPv6 address"),
    ("CONFIG_DRIVE_FORMAT", "iso", "one of configdrive, nocloud, none"),
    ("VM_DISK_SIZE", "20 gigs", "a disk size such as 20G"),
    ("VM_DISK_SIZE", "0", "a disk size such as 20G"),
    ("VM_DISK_SIZE", "65T", "at most 64 TiB"),
    ("VM_DISK_SIZE", "1.5G", "a disk size such as 20G"),
    ("READINESS", "ssh", "qemu, agent or tcp:PORT"),
    ("READINESS", "tcp:0", "qemu, agent or tcp:PORT"),
    ("READINESS", "tcp:65536", "qemu, agent or tcp:PORT"),
    ("READINESS", "agent:22", "qemu, agent or tcp:PORT"),
    ("METRICS_PORT", "0", "a whole number from 1 to 65535"),
    ("METRICS_PORT", "65536", "a whole number from 1 to 65535"),
    ("METRICS_PORT", "http", "a whole number from 1 to 65535"),
    ("METRICS_PORT", "5900", "another port than 5900 (QEMU's VNC), the container's own"),
    ("WEB_CONSOLE_PORT", "0", "a whole number from 1 to 65535"),
    ("WEB_CONSOLE_PORT", "novnc", "a whole number from 1 to 65535"),
    ("WEB_CONSOLE_PORT", "5900", "another port than 5900, QEMU's VNC"),
    ("VM_BALLOON", "maybe", "one of 1/true/yes or 0/false/no"),
]


@pytest.mark.parametrize(("name", "value", "expected"), BAD_VALUES)
def test_bad_value_names_variable_value_and_expectation(
    name: str, value: str, expected: str | None
) -> None:
    env = {**BASE_ENV, name: value}
    if expected is None:
        load_settings(env)
        return
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    message = str(caught.value)
    assert message.startswith(f"{name}={value.strip()!r}: expected ")
    assert expected in message
    assert "\n" not in message
    assert caught.value.exit_status == EXIT_CONFIG


@pytest.mark.parametrize(
    ("raw", "size"),
    [("20G", 20 << 30), ("20Gi", 20 << 30), ("20GiB", 20 << 30), ("10240m", 10 << 30),
     ("1T", 1 << 40), ("4096K", 4 << 20), ("1000000", 1 << 20), ("", None)],
)  # fmt: skip
def test_disk_size_units_rounded_up_to_whole_mib(raw: str, size: int | None) -> None:
    assert settings(VM_DISK_SIZE=raw).image.disk_size == size


def test_readiness() -> None:
    assert settings().vm.readiness == Readiness("qemu")
    assert settings(READINESS="Agent").vm.readiness == Readiness("agent")
    tcp = settings(READINESS="tcp:22", VM_IP="10.99.0.2", VM_GW="10.99.0.1").vm.readiness
    assert tcp == Readiness("tcp", 22, IPv4Address("10.99.0.2")) and str(tcp) == "tcp:22"
    # tcp:PORT connects to VM_IP: a NIC in nat mode must have it.
    assert (
        settings(READINESS="tcp:22", ATTACH_IFACES="eth0:bridge net1:nat").vm.readiness.port == 22
    )
    with pytest.raises(ConfigError, match=r"READINESS='tcp:22': expected qemu or agent when no"):
        settings(READINESS="tcp:22", NET_MODE="bridge")


def test_missing_image_source_and_target() -> None:
    with pytest.raises(ConfigError, match="IMG_SOURCE is not set"):
        load_settings({})


@pytest.mark.parametrize("password", ["123456789", "é" * 5])
def test_vnc_password_longer_than_vnc_allows_is_refused_without_showing_it(password: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(VNC_PASSWORD=password)
    assert "VNC_PASSWORD" in str(caught.value)
    assert password not in str(caught.value)


def test_the_web_console_needs_vnc_and_a_port_of_its_own() -> None:
    settings = load_settings({**BASE_ENV, "WEB_CONSOLE_PORT": "6080"})
    assert settings.vm.web_console_port == 6080 and settings.vm.private_ports == (5900, 6080)
    with pytest.raises(ConfigError, match=r"^WEB_CONSOLE_PORT='6080': expected unset with NO_VNC"):
        load_settings({**BASE_ENV, "WEB_CONSOLE_PORT": "6080", "NO_VNC": "1"})
    with pytest.raises(ConfigError, match=r"^METRICS_PORT='6080': expected another port than "):
        load_settings({**BASE_ENV, "WEB_CONSOLE_PORT": "6080", "METRICS_PORT": "6080"})
    assert load_settings({**BASE_ENV, "NO_VNC": "1", "METRICS_PORT": "5900"}).vm.private_ports == ()
