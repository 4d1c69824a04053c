"""Our config drives, read by the datasource code of the cloud-init Debian ships (unpacked by
podlab.cloud_init; imported here), and our network config parsed and rendered by it."""

from __future__ import annotations

import dataclasses
import gzip
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pycdlib
import pytest
import yaml

from kvmmgr.guest.drive import ConfigDrivePlan
from kvmmgr.guest.iso import write_iso
from podlab import cloud_init
from tests.unit.test_configdrive import NETWORK, NIC, drive

USERDATA = b"#cloud-config\nhostname: from-user-data\npackages: [htop]\n"
VENDORDATA = b"#cloud-config\nruncmd: [[touch, /vendor-was-here]]\n"
METADATA = {"role": "db", "public_keys": ["ssh-ed25519 AAAAC3Nza test@lab"]}


@pytest.fixture(scope="module", autouse=True)
def _cloud_init() -> Iterator[None]:
    cloud_init.ensure()
    yield


def extract(plan: ConfigDrivePlan, into: Path) -> Path:
    """The ISO's files under their Rock Ridge names, as the guest sees them when mounted."""
    write_iso(plan)
    iso = pycdlib.PyCdlib()
    iso.open(str(plan.iso))
    try:
        for drive_file in plan.files:
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path="/" + drive_file.path)
            target = into / drive_file.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(out.getvalue())
    finally:
        iso.close()
    return into


def read_nocloud(mnt: Path) -> dict[str, Any]:
    """What DataSourceNoCloud makes of a mounted cidata drive (its own two steps)."""
    from cloudinit import util
    from cloudinit.sources import DataSourceNoCloud

    seeded = util.pathprefix2dict(
        str(mnt), required=["user-data", "meta-data"], optional=["vendor-data", "network-config"]
    )
    empty: dict[str, Any] = {"meta-data": {}, "user-data": "", "vendor-data": ""}
    empty["network-config"] = None
    found: dict[str, Any] = DataSourceNoCloud._merge_new_seed(empty, seeded)
    return found


def rendered(network_config: dict[str, Any]) -> dict[str, str]:
    """The configuration cloud-init writes for Debian's ifupdown (eni) and for netplan."""
    from cloudinit.net import eni, netplan, network_state

    state = network_state.parse_net_config_data(network_config)
    return {
        "eni": eni.Renderer()._render_interfaces(state),
        "netplan": netplan.Renderer()._render_content(state),
    }


def assert_renders_the_vm_network(network_config: dict[str, Any], nic: str) -> None:
    out = rendered(network_config)
    eni = out["eni"]
    assert f"iface {nic} inet static" in eni
    assert "address 192.168.254.2/30" in eni
    # The default route as the subnet's gateway: `route add` would need net-tools, which
    # minimal guests lack (Debian 12's has none).
    assert "gateway 192.168.254.1" in eni and "route add" not in eni
    assert "mtu 1450" in eni
    assert "dns-nameservers 10.96.0.10 10.96.0.11" in eni
    assert "dns-search default.svc.cluster.local svc.cluster.local" in eni
    plan = yaml.safe_load(out["netplan"])["network"]["ethernets"][nic]
    assert plan["addresses"] == ["192.168.254.2/30"]
    assert plan["mtu"] == 1450
    assert plan["nameservers"] == {
        "addresses": ["10.96.0.10", "10.96.0.11"],
        "search": ["default.svc.cluster.local", "svc.cluster.local"],
    }
    gateways = [plan.get("gateway4")] + [r.get("via") for r in plan.get("routes", [])]
    assert "192.168.254.1" in gateways


def test_the_configdrive_reader_returns_what_we_wrote(tmp_path: Path) -> None:
    from cloudinit.sources import DataSourceConfigDrive, convert_vendordata
    from cloudinit.sources.helpers import openstack

    plan = drive(tmp_path, "configdrive", USERDATA, METADATA, vendordata=VENDORDATA)
    found = DataSourceConfigDrive.read_config_drive(str(extract(plan, tmp_path / "mnt")))
    metadata = found["metadata"]
    assert metadata["hostname"] == "vm-0" and metadata["role"] == "db"
    assert metadata["uuid"] == plan.metadata["uuid"]
    assert metadata["public_keys"] == {"key-0": "ssh-ed25519 AAAAC3Nza test@lab"}
    assert found["userdata"] == USERDATA
    assert convert_vendordata(found["vendordata"]) == VENDORDATA.decode()
    # cloud-init names the link after the guest's NIC that has the VM's MAC.
    v1 = openstack.convert_net_json(found["networkdata"], known_macs={NIC.mac: "ens3"})
    assert_renders_the_vm_network(v1, "ens3")


def test_the_nocloud_reader_returns_what_we_wrote(tmp_path: Path) -> None:
    plan = drive(tmp_path, "nocloud", USERDATA, METADATA, vendordata=VENDORDATA)
    found = read_nocloud(extract(plan, tmp_path / "mnt"))
    metadata = found["meta-data"]
    assert metadata["local-hostname"] == "vm-0" and metadata["role"] == "db"
    assert metadata["instance-id"] == plan.metadata["instance-id"]
    assert metadata["public-keys"] == ["ssh-ed25519 AAAAC3Nza test@lab"]
    assert found["user-data"] == USERDATA
    assert found["vendor-data"] == VENDORDATA
    assert_renders_the_vm_network(found["network-config"], "eth0")


def test_the_v2_network_config_gives_cloud_init_a_default_route(tmp_path: Path) -> None:
    from cloudinit.net import network_state

    v2 = yaml.safe_load(drive(tmp_path, "nocloud").files[2].data)
    state = network_state.parse_net_config_data(v2)
    subnets = [subnet for iface in state.iter_interfaces() for subnet in iface["subnets"]]
    assert [subnet.get("gateway") for subnet in subnets] == ["192.168.254.1"]


@pytest.mark.parametrize("fmt", ["configdrive", "nocloud"])
def test_with_dhcp_cloud_init_renders_a_dhcp_client_on_the_vm_s_nic(
    tmp_path: Path, fmt: str
) -> None:
    from cloudinit.sources.helpers import openstack

    served = dataclasses.replace(NETWORK, dhcp=True)
    plan = drive(tmp_path, fmt, network=served)  # type: ignore[arg-type]
    mnt = extract(plan, tmp_path / "mnt")
    if fmt == "configdrive":
        from cloudinit.sources import DataSourceConfigDrive

        data = DataSourceConfigDrive.read_config_drive(str(mnt))["networkdata"]
        config = openstack.convert_net_json(data, known_macs={NIC.mac: "ens3"})
        nic = "ens3"
    else:
        config, nic = read_nocloud(mnt)["network-config"], "eth0"
    out = rendered(config)
    assert f"iface {nic} inet dhcp" in out["eni"] and "mtu 1450" in out["eni"]
    netplan = yaml.safe_load(out["netplan"])["network"]["ethernets"][nic]
    assert (netplan["dhcp4"], netplan["mtu"]) == (True, 1450)


def test_a_users_network_config_reaches_cloud_init_instead(tmp_path: Path) -> None:
    theirs = (
        b"version: 1\nconfig:\n  - type: physical\n    name: eth0\n    subnets: [{type: dhcp}]\n"
    )
    plan = drive(tmp_path, "nocloud", networkdata=theirs)
    found = read_nocloud(extract(plan, tmp_path / "mnt"))
    assert found["network-config"] == yaml.safe_load(theirs)
    assert "inet dhcp" in rendered(found["network-config"])["eni"]


def test_user_data_of_every_kind_survives_byte_for_byte(tmp_path: Path) -> None:
    from cloudinit.sources import DataSourceConfigDrive

    for userdata in (USERDATA, b"#!/bin/sh\necho hi\n", gzip.compress(USERDATA)):
        plan = drive(tmp_path, "configdrive", userdata, None)
        mnt = extract(plan, tmp_path / f"mnt-{len(userdata)}")
        assert DataSourceConfigDrive.read_config_drive(str(mnt))["userdata"] == userdata


def test_cloud_init_version() -> None:
    assert cloud_init.version().startswith("22.")  # Debian 12's; another is worth a look
