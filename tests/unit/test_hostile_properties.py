"""Property tests (hypothesis): generated and mutated inputs fed to every parser of what a
pod's owner, or another pod on a shared volume, may write. The only outcomes allowed are a
value (or a plan) and a one-line ConfigError; a parser's own exception type (documents.Invalid)
for the document loaders, which every caller turns into a ConfigError. Seeded from each test's
source (derandomize), so that CI runs the same examples every time."""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmmgr import documents
from kvmmgr.config import load_settings
from kvmmgr.errors import ConfigError
from kvmmgr.guest import cloudconfig
from kvmmgr.guest.drive import DriveInputs, build_config_drive
from kvmmgr.guest.formats import DRIVE_FORMATS, FORMATS
from kvmmgr.guest.inputs import parse_metadata
from kvmmgr.image import transfer
from kvmmgr.image.appliance import Appliance, from_record
from kvmmgr.image.records import BaseRecord, as_json, load_record
from kvmmgr.image.sources import parse_source
from kvmmgr.net import podmemory
from kvmmgr.net.model import GuestNetwork, GuestNic, PodInterface, Route
from kvmmgr.plan import make_plan
from kvmmgr.pod import parse_resolv_conf, read_resolv_conf
from tests.unit import factories

HOSTILE = settings(
    derandomize=True,  # the same examples on every run: CI is reproducible
    deadline=None,  # a shared 2-core machine: no per-example deadline to flake on
    database=None,  # nothing written into the tree
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(HOSTILE, max_examples=100)  # the costlier ones (a plan, a file per example)

# What a hostile author splices in: YAML and JSON syntax, anchors and aliases, tags, bytes that
# are not UTF-8, long numbers, impossible dates, compression and MIME markers.
SNIPPETS = [
    b"[", b"]", b"{", b"}", b"[[[[[[[[", b"&a ", b"*a", b"&b [*a, *a, *a]", b"<<: *a\n", b"? ",
    b"!!python/object/apply:os.system [id]", b"!!binary ", b"!!set ", b"!!timestamp ", b"!x ",
    b"\x00", b"\xff", b"\xc3", b"\xef\xbb\xbf", b"\xfe\xff", b"\r", b"\t", b"\n", b"  ", b"- ",
    b": ", b",", b"'", b'"', b"\\", b"%YAML 1.1\n", b"---\n", b"...\n", b"#", b"9" * 5000,
    b"2024-02-30", b"NaN", b"Infinity", b"-Infinity", b"1e999", b"\\ud800", b"\x1f\x8b",
    b"#cloud-config\n", b"#include\n", b"MIME-Version: 1.0\n", b"multipart/mixed",
    b'boundary="B"', b"\n--B\n", b"\n--B--\n", b"Content-Type: text/cloud-config\n\n",
    b"Content-Transfer-Encoding: base64\n", b"nameserver ", b"search ", b"domain ",
]  # fmt: skip

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=20),
    st.floats(allow_nan=False, allow_infinity=False),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)
mappings = st.dictionaries(st.text(max_size=10), values, max_size=8)


@st.composite
def mutated(draw: st.DrawFn, seeds: st.SearchStrategy[bytes]) -> bytes:
    """A seed, then a few splices: a snippet put in, a slice cut out or repeated, a byte
    changed, the end cut off."""
    data = bytearray(draw(seeds))
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(data)))
        match draw(st.sampled_from(("insert", "delete", "repeat", "flip", "cut"))):
            case "insert":
                data[at:at] = draw(st.sampled_from(SNIPPETS))
            case "delete":
                del data[at : at + draw(st.integers(1, 20))]
            case "repeat":
                data[at:at] = data[at : at + draw(st.integers(1, 40))] * draw(st.integers(2, 50))
            case "flip" if data:
                data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
            case _:
                del data[at:]
    return bytes(data)


yaml_seeds = st.one_of(
    mappings.map(lambda value: yaml.safe_dump(value).encode()),
    values.map(lambda value: yaml.safe_dump(value, default_flow_style=True).encode()),
    st.binary(max_size=200),
)
json_seeds = st.one_of(
    values.map(lambda value: json.dumps(value).encode()), st.binary(max_size=200)
)


@contextmanager
def refused_in_one_line() -> Iterator[None]:
    """A ConfigError is an outcome allowed; its message is one line."""
    try:
        yield
    except ConfigError as exc:
        assert len(str(exc).splitlines()) == 1, str(exc)


@contextmanager
def invalid_in_one_line() -> Iterator[None]:
    try:
        yield
    except documents.Invalid as exc:
        assert len(exc.problem.splitlines()) == 1, exc.problem


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


def read_or_refused(path: Path, data: bytes, read: Callable[[Path], object]) -> None:
    """`data` written at `path`, then read there: a value, or one ConfigError line."""
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    with refused_in_one_line():
        read(path)


# --- the document loaders ----------------------------------------------------------------------


@HOSTILE
@given(mutated(yaml_seeds))
def test_yaml_loads_or_says_what_is_wrong(data: bytes) -> None:
    with invalid_in_one_line():
        documents.load_yaml(data)


@HOSTILE
@given(mutated(json_seeds))
def test_json_loads_or_says_what_is_wrong(data: bytes) -> None:
    with invalid_in_one_line():
        value = documents.load_json(data)
        assert json.loads(json.dumps(value)) == value  # what was read can be written again


@HOSTILE
@given(values)
def test_json_that_holds_up_is_read_as_written(value: Any) -> None:
    assert documents.load_json(json.dumps(value).encode()) == value


# --- the config drive's inputs -----------------------------------------------------------------

cloud_configs = mutated(yaml_seeds.map(lambda body: b"#cloud-config\n" + body))


def _mime(parts: list[bytes]) -> bytes:
    head = b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="B"\n\n'
    body = b"".join(b"--B\nContent-Type: text/cloud-config\n\n" + part + b"\n" for part in parts)
    return head + body + b"--B--\n"


user_data = st.one_of(
    cloud_configs,
    cloud_configs.map(gzip.compress),
    mutated(cloud_configs.map(gzip.compress)),
    mutated(st.lists(mutated(yaml_seeds), max_size=4).map(_mime)),
    mutated(st.sampled_from([b"#!/bin/sh\necho hi\n", b"#include\nhttp://192.0.2.1/x\n"])),
)


@HOSTILE
@given(user_data)
def test_user_data_and_vendor_data_pass_or_are_refused(data: bytes) -> None:
    for name in ("USERDATA_PATH", "VENDORDATA_PATH"):
        with refused_in_one_line():
            cloudconfig.check_cloud_config(name, "/userdata", data)


@HOSTILE
@given(st.one_of(mutated(json_seeds), user_data))
def test_vendor_data_json_is_always_json(data: bytes) -> None:
    json.loads(cloudconfig.vendor_data_json(data))


NETWORK = GuestNetwork(
    nics=(
        GuestNic(
            "2a:e8:fb:7c:c9:4f", IPv4Interface("192.168.254.2/30"), IPv4Address("192.168.254.1"),
            (), 1450,
        ),
    ),
    nameservers=(IPv4Address("10.96.0.10"),),
    search=("svc.cluster.local",),
)  # fmt: skip


@FEW
@given(st.one_of(mutated(yaml_seeds), mutated(json_seeds)))
def test_metadata_is_refused_or_makes_a_drive_in_each_format(raw: bytes) -> None:
    with refused_in_one_line():
        metadata = parse_metadata(Path("/metadata"), raw)
        for drive_format in DRIVE_FORMATS:
            inputs = DriveInputs(b"#cloud-config\n", metadata, None, b"{}")
            drive = build_config_drive(
                drive_format=drive_format, iso=Path("/run/drive.iso"), hostname="vm-0",
                inputs=inputs, network=NETWORK, networkdata_path=Path("/networkdata"),
            )  # fmt: skip
            assert drive.files


@HOSTILE
@given(st.one_of(mutated(yaml_seeds), mutated(json_seeds)))
def test_network_data_passes_or_is_refused_in_each_format(raw: bytes) -> None:
    for layout in FORMATS.values():
        with refused_in_one_line():
            layout.check_network(Path("/networkdata"), raw)


# --- resolv.conf ---------------------------------------------------------------------------------

resolv_words = st.one_of(
    st.sampled_from(
        ["nameserver", "search", "domain", "options", "#", ";", "10.96.0.10", "fd00::10",
         "fe80::1%eth0", "a.example", "svc.cluster.local.", ".", "ndots:5", "x" * 300, "a,b",
         "-", "_x.example", "256.1.1.1", "::ffff:1.2.3.4", "\t", "\x00", "\u2028", "é.example"]
    ),
    st.text(max_size=12),
)  # fmt: skip
resolv_lines = st.lists(st.lists(resolv_words, max_size=6).map(" ".join), max_size=12)


@HOSTILE
@given(resolv_lines.map("\n".join))
def test_resolv_conf_text_is_read_or_refused(text: str) -> None:
    with refused_in_one_line():
        parse_resolv_conf(text)


@FEW
@given(st.one_of(resolv_lines.map(lambda lines: "\n".join(lines).encode()), st.binary()))
def test_resolv_conf_files_are_read_or_refused(scratch: Path, data: bytes) -> None:
    read_or_refused(scratch / "resolv.conf", data, read_resolv_conf)


@FEW
@given(resolv_lines.map("\n".join))
def test_what_resolv_conf_gives_makes_a_plan_with_one_line_options(text: str) -> None:
    try:
        dns = parse_resolv_conf(text)
    except ConfigError:
        return
    plan = make_plan(
        factories.settings(), factories.pod_facts(dns=dns), DriveInputs(None, {"role": "db"})
    )
    assert plan.dhcp is not None
    assert all("\n" not in line and "\r" not in line for line in plan.dhcp.config)


# --- kvm-manager's own files on volumes ----------------------------------------------------------

interfaces = st.builds(
    PodInterface,
    name=st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True),
    index=st.integers(1, 1 << 20),
    addresses=st.lists(
        st.builds(lambda a, p: IPv4Interface((a, p)), st.ip_addresses(v=4), st.integers(0, 32)),
        max_size=3,
    ).map(tuple),
    addresses6=st.lists(
        st.builds(lambda a, p: IPv6Interface((a, p)), st.ip_addresses(v=6), st.integers(0, 128)),
        max_size=2,
    ).map(tuple),
    mac=st.from_regex(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", fullmatch=True),
    mtu=st.integers(68, 65535),
    routes=st.lists(
        st.builds(
            Route,
            st.builds(
                lambda a, p: IPv4Network((a, p), strict=False),
                st.ip_addresses(v=4),
                st.integers(0, 32),
            ),
            st.none() | st.ip_addresses(v=4),
        ),
        max_size=3,
    ).map(tuple),
    gateway6=st.none() | st.ip_addresses(v=6).map(lambda a: IPv6Address(int(a))),
    remembered=st.just(True),
)


@FEW
@given(st.lists(interfaces, max_size=3, unique_by=lambda i: i.name))
def test_remembered_interfaces_are_read_back_as_written(
    scratch: Path, remembered: list[PodInterface]
) -> None:
    folder = scratch / "memory"
    folder.mkdir(exist_ok=True)
    (folder / podmemory.FILE_NAME).unlink(missing_ok=True)
    podmemory.remember(folder, remembered)
    assert podmemory.load(folder) == {i.name: i for i in remembered}


memory_seeds = st.lists(interfaces, min_size=1, max_size=2).map(
    lambda found: json.dumps({i.name: podmemory._plain(i) for i in found}).encode()
)


@FEW
@given(mutated(st.one_of(memory_seeds, json_seeds)))
def test_remembered_interfaces_are_read_or_refused(scratch: Path, data: bytes) -> None:
    path = scratch / "mutated" / podmemory.FILE_NAME
    read_or_refused(path, data, lambda path: podmemory.load(path.parent))


records = st.builds(
    BaseRecord,
    source=st.none() | st.text(max_size=30),
    size=st.integers(0, 1 << 40),
    mtime_ns=st.integers(0, 1 << 62),
    sha256=st.none() | st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
    format=st.sampled_from(["qcow2", "raw"]),
    converted_from=st.none() | st.sampled_from(["vmdk", "vhdx", "ova"]),
    appliance=st.none() | mappings,
    data_disks=st.lists(st.text(max_size=10), max_size=3).map(tuple),
)


@FEW
@given(records)
def test_records_are_read_back_as_written(scratch: Path, record: BaseRecord) -> None:
    path = scratch / ".base.json"
    path.write_bytes(as_json(record))
    assert load_record(path) == record


@FEW
@given(mutated(st.one_of(records.map(as_json), json_seeds)))
def test_records_are_read_or_refused(scratch: Path, data: bytes) -> None:
    read_or_refused(scratch / ".base.json", data, load_record)


@HOSTILE
@given(
    st.one_of(
        values,
        mappings,
        st.builds(
            dataclasses.asdict, st.builds(Appliance, st.text(), st.lists(st.text()).map(tuple))
        ),
    )
)
def test_an_appliance_from_a_record_holds_up_or_is_none(data: Any) -> None:
    appliance = from_record(data)
    assert appliance is None or isinstance(appliance, Appliance)


part_states = st.builds(
    transfer.PartState,
    url=st.text(max_size=30),
    etag=st.none() | st.text(max_size=10),
    last_modified=st.none() | st.text(max_size=10),
    total=st.none() | st.integers(0, 1 << 40),
    synced=st.integers(0, 1 << 40),
).map(lambda state: json.dumps(dataclasses.asdict(state)).encode())


@FEW
@given(mutated(st.one_of(part_states, json_seeds)))
def test_a_part_state_is_read_or_the_download_starts_over(scratch: Path, data: bytes) -> None:
    files = transfer.WorkFiles(scratch / ".x.part", scratch / ".x.part.json", scratch / ".x.un")
    files.part.write_bytes(b"")
    files.state.write_bytes(data)
    state = transfer.read_state(files, "http://x/y")
    assert state is None or isinstance(state.synced, int)


# --- the environment ----------------------------------------------------------------------------

VARIABLES = [
    "IMG_SOURCE", "IMG_TARGET", "IMG_SHA256", "IMG_RETRIES", "IMG_CA_BUNDLE", "IMAGE_DIR",
    "VM_DIR", "RUN_DIR", "VM_IP", "VM_GW", "VM_MAC", "VM_MEMORY", "VM_DISK_SIZE",
    "VM_DATA_DISKS", "VM_CPUS", "VM_MACHINE", "VM_FIRMWARE", "VM_SECURE_BOOT", "VM_DISK_BUS",
    "VM_NIC_MODEL", "VM_CPU_MODEL", "VM_SERIAL", "VM_UUID", "VM_ACCEL", "POD_IFACE", "POD_IP",
    "NET_MODE", "ATTACH_IFACES", "SELECTED_NETWORK", "VM_IP6", "RESOLV_CONF", "USERDATA_PATH",
    "METADATA_PATH", "NETWORKDATA_PATH", "VENDORDATA_PATH", "CONFIG_DRIVE_FORMAT", "NO_VNC",
    "VNC_PASSWORD", "NAT_EXCLUDE", "NO_DHCP", "DNSMASQ_OPTS", "READINESS", "HOSTNAME", "DEBUG",
]  # fmt: skip
# Words each variable's parser knows, and what lies just beside them.
WORDS = [
    "0", "1", "yes", "no", "true", "all", "none", "nat", "bridge", "macvtap", "eth0", "net1",
    "eth0:nat", "net1:bridge", "kvm0", "tcp", "udp", "sctp", "tcp/22", "udp/1-65535",
    "tcp/0", "tcp/2-1", "qemu", "agent", "tcp:22", "tcp:65536", "10G", "1T", "64T", "65T",
    "2048M", "2G", "0M", "/dev/xvdb", "/data/disk.img", "data.img", "q35", "pc", "uefi", "bios",
    "ide", "sata", "scsi", "virtio", "e1000", "host", "192.168.254.2", "192.168.254.1",
    "10.244.0.0/16", "fd00:6b76:6d::2", "fe80::1", "52:54:00:12:34:56", "03:00:00:00:00:01",
    "http://images.example/base.qcow2", "https://x/y.img.xz", "file:///image/base.qcow2",
    "/image/base.qcow2", "configdrive", "nocloud", "--log-dhcp", "'open", '"', "\\", "a b",
    "4c4c4544-0042-3610-8030-b8c04f4d4b31", "²", "٣", "9" * 30, "9" * 5000, "-1", "+1", " ",
    ",", ":", "/", "\x00", "\n", "\udcff", "é", "vm-0", "-vm", "a" * 300,
]  # fmt: skip
env_values = st.one_of(
    st.sampled_from(WORDS),
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=4).map(" ".join),
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=4).map(",".join),
    st.text(max_size=20),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=8),  # surrogates too
)
environments = st.dictionaries(st.sampled_from(VARIABLES), env_values, max_size=8)


@HOSTILE
@given(environments)
def test_load_settings_gives_settings_or_one_configuration_error(env: dict[str, str]) -> None:
    with refused_in_one_line():
        load_settings({**factories.BASE_ENV, **env})


LISTS = ["VM_DATA_DISKS", "ATTACH_IFACES", "READINESS", "NAT_EXCLUDE", "DNSMASQ_OPTS"]


@HOSTILE
@given(st.sampled_from(VARIABLES + LISTS * 4), env_values)
def test_each_variable_gives_settings_or_one_configuration_error(name: str, value: str) -> None:
    with refused_in_one_line():
        load_settings({**factories.BASE_ENV, name: value})


@FEW
@given(environments)
def test_settings_that_load_make_a_plan_or_one_configuration_error(env: dict[str, str]) -> None:
    with refused_in_one_line():
        settings_ = load_settings({**factories.BASE_ENV, **env})
        make_plan(settings_, factories.pod_facts(), DriveInputs(None, {"role": "db"}))


@HOSTILE
@given(env_values)
def test_an_image_source_is_parsed_or_refused(raw: str) -> None:
    with refused_in_one_line():
        parse_source(raw)
