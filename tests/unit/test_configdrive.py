"""The config drive: files planned for each format, and the ISO read back with pycdlib under
every naming. What cloud-init itself reads from it: tests/integration/test_cloud_init.py."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import time
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pycdlib
import pytest
import yaml

from kvmmgr.config import InputPaths
from kvmmgr.errors import ConfigError
from kvmmgr.guest.drive import ConfigDrivePlan, DriveInputs, build_config_drive
from kvmmgr.guest.formats import DriveFormat
from kvmmgr.guest.inputs import MAX_INPUT, read_inputs
from kvmmgr.guest.iso import render_iso, write_iso
from kvmmgr.net.model import GuestNetwork, GuestNic, Route

USERDATA = b"#!/bin/sh\necho 'hello \xc3\xa9'\r\nexit 0\n\x00binary-tail"
NIC = GuestNic(
    mac="2a:e8:fb:7c:c9:4f",
    address=IPv4Interface("192.168.254.2/30"),
    router=IPv4Address("192.168.254.1"),
    routes=(),
    mtu=1450,
)
NETWORK = GuestNetwork(
    nics=(NIC,),
    nameservers=(IPv4Address("10.96.0.10"), IPv4Address("10.96.0.11")),
    search=("default.svc.cluster.local", "svc.cluster.local"),
)


def drive(
    tmp_path: Path,
    fmt: DriveFormat = "configdrive",
    userdata: bytes | None = USERDATA,
    metadata: dict[str, Any] | None = None,
    network: GuestNetwork = NETWORK,
    **more: bytes,
) -> ConfigDrivePlan:
    return build_config_drive(
        drive_format=fmt,
        iso=tmp_path / "config-drive.iso",
        hostname="vm-0",
        inputs=DriveInputs(userdata, metadata, **more),
        network=network,
        networkdata_path=tmp_path / "networkdata",
    )


def files(plan: ConfigDrivePlan) -> dict[str, bytes]:
    return {f.path: f.data for f in plan.files}


def read_iso(image: Path, **name: str) -> bytes:
    iso = pycdlib.PyCdlib()
    iso.open(str(image))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, **name)
        return out.getvalue()
    finally:
        iso.close()


def rr_mode(reader: pycdlib.PyCdlib, path: str) -> int:
    record = reader.get_record(rr_path=path)
    rock_ridge = getattr(record, "rock_ridge", None)
    assert rock_ridge is not None, path
    return int(rock_ridge.get_file_mode()) & 0o777


def test_config_2_layout_in_latest_and_a_dated_version(tmp_path: Path) -> None:
    plan = drive(tmp_path, vendordata=b"#cloud-config\npackages: [htop]\n")
    assert plan.label == "config-2"
    for version in ("2015-10-15", "latest"):
        folder = f"openstack/{version}"
        got = files(plan)
        assert got[f"{folder}/user_data"] == USERDATA
        assert json.loads(got[f"{folder}/meta_data.json"])["hostname"] == "vm-0"
        assert json.loads(got[f"{folder}/network_data.json"])["links"][0]["mtu"] == 1450
        vendor = json.loads(got[f"{folder}/vendor_data.json"])
        assert vendor == {"cloud-init": "#cloud-config\npackages: [htop]\n"}


def test_nocloud_layout(tmp_path: Path) -> None:
    plan = drive(tmp_path, "nocloud", userdata=None, vendordata=b"#!/bin/sh\ntrue\n")
    assert plan.label == "cidata"
    got = files(plan)
    assert set(got) == {"meta-data", "user-data", "network-config", "vendor-data"}
    assert got["user-data"] == b""  # NoCloud wants the file even when there is nothing
    assert yaml.safe_load(got["network-config"])["version"] == 2
    assert got["vendor-data"] == b"#!/bin/sh\ntrue\n"


def test_metadata_defaults_and_the_users_keys_win(tmp_path: Path) -> None:
    meta = drive(tmp_path, metadata={"role": "db"}).metadata
    assert meta["hostname"] == meta["name"] == "vm-0" and meta["role"] == "db"
    assert len(meta["uuid"]) == 36
    assert meta["uuid"] == drive(tmp_path).metadata["uuid"]  # stable: derived from the host
    nocloud = drive(tmp_path, "nocloud").metadata
    assert nocloud["instance-id"] == meta["uuid"] and nocloud["local-hostname"] == "vm-0"
    given = {"instance-id": "i-42", "local-hostname": "db", "name": "db-a"}
    # Either datasource's name of a key counts for both formats.
    assert drive(tmp_path, metadata=given).metadata["uuid"] == "i-42"
    assert drive(tmp_path, metadata=given).metadata["hostname"] == "db"
    assert drive(tmp_path, metadata=given).metadata["name"] == "db-a"
    assert drive(tmp_path, "nocloud", metadata={"uuid": "u-1"}).metadata["instance-id"] == "u-1"


@pytest.mark.parametrize(
    "keys",
    [["ssh-ed25519 AAAA a@x", "ssh-rsa BBBB b@y"], "ssh-ed25519 AAAA a@x\nssh-rsa BBBB b@y\n"],
)
def test_public_keys_in_each_format(tmp_path: Path, keys: object) -> None:
    config2 = drive(tmp_path, metadata={"public_keys": keys}).metadata
    assert config2["public_keys"] == {"key-0": "ssh-ed25519 AAAA a@x", "key-1": "ssh-rsa BBBB b@y"}
    nocloud = drive(tmp_path, "nocloud", metadata={"public_keys": keys}).metadata
    assert nocloud["public-keys"] == ["ssh-ed25519 AAAA a@x", "ssh-rsa BBBB b@y"]
    assert "public_keys" not in nocloud


def test_generated_network_config_matches_the_vm(tmp_path: Path) -> None:
    """Without DHCP (NETWORK's default): the whole static picture, the default route as the
    subnet's gateway (what every renderer turns into a default route of its own)."""
    config2 = json.loads(files(drive(tmp_path))["openstack/latest/network_data.json"])
    assert config2["links"] == [
        {"id": "pod0", "type": "phy", "ethernet_mac_address": NIC.mac, "mtu": 1450}
    ]
    network = config2["networks"][0]
    assert (network["ip_address"], network["netmask"]) == ("192.168.254.2", "255.255.255.252")
    assert (network["type"], network["gateway"], network["routes"]) == ("ipv4", "192.168.254.1", [])
    assert network["dns_search"] == ["default.svc.cluster.local", "svc.cluster.local"]
    assert config2["services"] == [
        {"type": "dns", "address": "10.96.0.10"},
        {"type": "dns", "address": "10.96.0.11"},
    ]
    v2 = yaml.safe_load(files(drive(tmp_path, "nocloud"))["network-config"])
    eth0 = v2["ethernets"]["eth0"]
    assert eth0["match"] == {"macaddress": NIC.mac}
    assert eth0["addresses"] == ["192.168.254.2/30"] and eth0["mtu"] == 1450
    assert (eth0["gateway4"], eth0["routes"]) == ("192.168.254.1", [])
    assert eth0["nameservers"]["search"] == ["default.svc.cluster.local", "svc.cluster.local"]


def test_with_dhcp_the_guest_is_told_to_ask_for_its_address(tmp_path: Path) -> None:
    """Its DHCP client then sets the address, routes, resolv.conf and MTU from the lease."""
    served = dataclasses.replace(NETWORK, dhcp=True)
    config2 = json.loads(
        files(drive(tmp_path, network=served))["openstack/latest/network_data.json"]
    )
    (network,) = config2["networks"]
    assert (network["type"], network["link"]) == ("ipv4_dhcp", "pod0")
    assert "ip_address" not in network and "routes" not in network
    assert network["dns_search"] == ["default.svc.cluster.local", "svc.cluster.local"]
    assert config2["links"][0]["mtu"] == 1450 and len(config2["services"]) == 2
    v2 = yaml.safe_load(files(drive(tmp_path, "nocloud", network=served))["network-config"])
    eth0 = v2["ethernets"]["eth0"]
    assert (eth0["dhcp4"], eth0["mtu"], eth0["match"]) == (True, 1450, {"macaddress": NIC.mac})
    assert "addresses" not in eth0 and "routes" not in eth0


def test_routes_the_router_alone_does_not_give_stay_routes(tmp_path: Path) -> None:
    routed = GuestNic(
        mac=NIC.mac,
        address=IPv4Interface("10.244.1.7/32"),
        router=IPv4Address("169.254.1.1"),
        routes=(
            Route(IPv4Network("169.254.1.1/32"), None),
            Route(IPv4Network("0.0.0.0/0"), IPv4Address("169.254.1.1")),
        ),
        mtu=1450,
    )
    net = dataclasses.replace(NETWORK, nics=(routed,))
    network = json.loads(files(drive(tmp_path, network=net))["openstack/latest/network_data.json"])
    assert "gateway" not in network["networks"][0]
    assert len(network["networks"][0]["routes"]) == 2
    eth0 = yaml.safe_load(files(drive(tmp_path, "nocloud", network=net))["network-config"])
    assert "gateway4" not in eth0["ethernets"]["eth0"]
    assert eth0["ethernets"]["eth0"]["routes"][1] == {
        "to": "0.0.0.0/0",
        "via": "169.254.1.1",
        "on-link": True,
    }


def test_the_users_network_config_replaces_ours(tmp_path: Path) -> None:
    theirs = b'{"links": [], "networks": [], "services": []}'
    plan = drive(tmp_path, networkdata=theirs)
    assert files(plan)["openstack/latest/network_data.json"] == theirs
    assert plan.network_config is None
    v1 = b"version: 1\nconfig: []\n"
    assert files(drive(tmp_path, "nocloud", networkdata=v1))["network-config"] == v1
    with pytest.raises(ConfigError, match=r"NETWORKDATA_PATH .*: expected OpenStack network_data"):
        drive(tmp_path, networkdata=v1)  # YAML where config-2 needs JSON


def test_iso_read_back_under_every_naming_with_private_user_data(tmp_path: Path) -> None:
    plan = drive(tmp_path, metadata={"role": "db"})
    write_iso(plan)
    iso = plan.iso
    rr = read_iso(iso, rr_path="/openstack/latest/user_data")
    assert rr == read_iso(iso, joliet_path="/openstack/latest/user_data") == USERDATA
    assert read_iso(iso, iso_path="/OPENSTAC/LATEST/USER_DAT.;1") == USERDATA
    assert read_iso(iso, rr_path="/openstack/2015-10-15/user_data") == USERDATA
    metadata = json.loads(read_iso(iso, rr_path="/openstack/latest/meta_data.json"))
    assert metadata["role"] == "db"
    reader = pycdlib.PyCdlib()
    reader.open(str(iso))
    try:
        assert reader.pvd.volume_identifier.decode().strip() == "config-2"
        # Inside the guest, too, only root reads user-data.
        assert rr_mode(reader, "/openstack/latest/user_data") == 0o400
        assert rr_mode(reader, "/openstack/latest/meta_data.json") == 0o444
    finally:
        reader.close()
    assert iso.stat().st_mode & 0o777 == 0o600


def test_iso_bytes_do_not_depend_on_the_clock_or_time_zone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = drive(tmp_path, metadata={"role": "db"})
    first = render_iso(plan)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 400 * 86400)
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        assert render_iso(plan) == first
    finally:
        monkeypatch.undo()
        time.tzset()
    assert time.time is real_time  # the stopped clock was only pycdlib's, and only meanwhile


def test_unchanged_iso_is_not_rewritten(tmp_path: Path) -> None:
    plan = drive(tmp_path)
    assert write_iso(plan) is True
    inode = plan.iso.stat().st_ino
    assert write_iso(plan) is False
    assert plan.iso.stat().st_ino == inode
    assert write_iso(drive(tmp_path, userdata=USERDATA + b"\n")) is True
    assert plan.iso.stat().st_ino != inode


def inputs_at(tmp_path: Path) -> InputPaths:
    return InputPaths(
        tmp_path / "userdata", tmp_path / "metadata", tmp_path / "networkdata", tmp_path / "vd"
    )


def test_absent_inputs_are_none(tmp_path: Path) -> None:
    assert read_inputs(inputs_at(tmp_path)) == DriveInputs(None, None, None, None)


def test_metadata_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "metadata").write_text("role: db\nzone: [a, b]\n")
    assert read_inputs(inputs_at(tmp_path)).metadata == {"role": "db", "zone": ["a", "b"]}
    (tmp_path / "metadata").write_text('{"role": "web"}')
    assert read_inputs(inputs_at(tmp_path)).metadata == {"role": "web"}


def test_invalid_metadata_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "metadata"
    path.write_text("role: db\nname: a: b\n")
    with pytest.raises(ConfigError, match=rf"METADATA_PATH {path} line 2: invalid YAML"):
        read_inputs(inputs_at(tmp_path))
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_inputs(inputs_at(tmp_path))


def _cloud_config_error(tmp_path: Path, data: bytes) -> str:
    (tmp_path / "userdata").write_bytes(data)
    with pytest.raises(ConfigError) as caught:
        read_inputs(inputs_at(tmp_path))
    return str(caught.value)


def test_invalid_cloud_config_names_the_file_and_line(tmp_path: Path) -> None:
    bad = b"#cloud-config\npackages:\n  - htop\n users: [a]\n"
    message = _cloud_config_error(tmp_path, bad)
    assert message.startswith(f"USERDATA_PATH {tmp_path / 'userdata'} line 4: invalid #cloud")
    assert "line 4" in _cloud_config_error(tmp_path, gzip.compress(bad))
    multipart = MIMEMultipart()
    multipart.attach(MIMEText("#!/bin/sh\necho fine\n", "x-shellscript"))
    multipart.attach(MIMEText(bad.decode(), "cloud-config"))
    assert "(MIME part 3) line 4" in _cloud_config_error(tmp_path, multipart.as_bytes())


@pytest.mark.parametrize(
    "data",
    [
        b"#cloud-config\npackages: [htop]\n",
        b"#!/bin/sh\n: { not yaml\n",  # a script: not checked as YAML
        gzip.compress(b"#cloud-config\nruncmd: [[echo, hi]]\n"),
        b"#include\nhttp://example.invalid/cfg\n",
        (
            b'Content-Type: multipart/mixed; boundary="==XX=="\nMIME-Version: 1.0\n\n'
            b'--==XX==\nContent-Type: text/cloud-config; charset="us-ascii"\n\n'
            b"packages: [htop]\n"
            b'--==XX==\nContent-Type: text/x-shellscript; charset="us-ascii"\n\n'
            b"#!/bin/sh\necho hi\n--==XX==--\n"
        ),
    ],
)
def test_valid_user_data_of_every_kind_passes_byte_for_byte(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "userdata").write_bytes(data)
    assert read_inputs(inputs_at(tmp_path)).userdata == data


def test_an_oversized_input_is_refused(tmp_path: Path) -> None:
    with (tmp_path / "networkdata").open("wb") as out:
        out.truncate(MAX_INPUT + 1)
    with pytest.raises(ConfigError, match=r"NETWORKDATA_PATH=.*larger than 16 MiB"):
        read_inputs(inputs_at(tmp_path))


def test_a_directory_instead_of_a_file(tmp_path: Path) -> None:
    (tmp_path / "userdata").mkdir()
    with pytest.raises(ConfigError, match=r"USERDATA_PATH=.*is a directory"):
        read_inputs(inputs_at(tmp_path))
