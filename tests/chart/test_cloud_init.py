"""Cloud-init inputs: inline values into the chart's ConfigMap (user-data into a Secret when
asked), or existing objects by name; each key one file under /cloud-init; the checksum
annotation follows the data."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.chart.render import (
    DEFAULT_VM,
    VALUE_SETS,
    Manifest,
    Values,
    merged,
    mounted_volume,
    mounts,
    render,
    with_source,
)

OWN = f"{DEFAULT_VM}-cloud-init"
USERDATA = "#cloud-config\nruncmd:\n  - [touch, /tmp/ok]\n"
KEYS = ["userdata", "metadata", "networkdata", "vendordata"]


def sources(statefulset: Manifest) -> dict[str, dict[str, Any]]:
    """The cloud-init projected volume's sources by kind (configMap, secret)."""
    assert mounts(statefulset)["/cloud-init"]["readOnly"] is True
    projected = mounted_volume(statefulset, "/cloud-init")["projected"]["sources"]
    return {kind: source for entry in projected for kind, source in entry.items()}


def projected_keys(source: dict[str, Any]) -> list[str]:
    items = source["items"]
    assert all(item["key"] == item["path"] for item in items)  # the file is named as its key
    return [item["key"] for item in items]


def checksum(values: Values) -> str:
    annotations = render(values).statefulset()["spec"]["template"]["metadata"]["annotations"]
    value: str = annotations["checksum/cloud-init"]
    return value


def test_inline_inputs_go_into_the_chart_config_map() -> None:
    values = with_source(
        {
            "cloudInit": {
                "userdata": USERDATA,
                "metadata": {"role": "web", "public_keys": ["ssh-ed25519 AAAA a@b"]},
                "networkdata": "version: 1\nconfig: []\n",
                "vendordata": "#cloud-config\n{}\n",
            }
        }
    )
    rendered = render(values)
    data = rendered.get("ConfigMap", OWN)["data"]
    assert data["userdata"] == USERDATA  # byte for byte
    assert yaml.safe_load(data["metadata"]) == {
        "role": "web",
        "public_keys": ["ssh-ed25519 AAAA a@b"],
    }
    assert data["networkdata"] == "version: 1\nconfig: []\n"
    assert data["vendordata"] == "#cloud-config\n{}\n"
    assert rendered.all("Secret") == []
    source = sources(rendered.statefulset())
    assert set(source) == {"configMap"}
    assert source["configMap"]["name"] == OWN
    assert source["configMap"]["optional"] is True
    assert projected_keys(source["configMap"]) == KEYS


def test_user_data_in_a_secret_when_asked() -> None:
    rendered = render(VALUE_SETS["userdata-secret"])
    secret = rendered.get("Secret", OWN)
    assert secret["stringData"]["userdata"].startswith("#cloud-config\npassword: s3cret")
    config_map = rendered.get("ConfigMap", OWN)
    assert "userdata" not in config_map["data"]
    assert not any("s3cret" in value for value in config_map["data"].values())
    source = sources(rendered.statefulset())
    assert projected_keys(source["secret"]) == ["userdata"]
    assert source["secret"]["name"] == OWN
    # One file per path: the ConfigMap no longer projects a userdata.
    assert projected_keys(source["configMap"]) == ["metadata", "networkdata", "vendordata"]


def test_existing_objects_by_name_replace_the_inline_values() -> None:
    values = VALUE_SETS["existing-objects"]
    values = with_source({**values, "cloudInit": {**values["cloudInit"], "userdata": USERDATA}})
    rendered = render(values)
    assert rendered.all("ConfigMap") == [] and rendered.all("Secret") == []
    source = sources(rendered.statefulset())
    assert (source["configMap"]["name"], source["secret"]["name"]) == (
        "my-cloud-init",
        "my-userdata",
    )
    # Every key is optional: whatever the objects lack is simply absent.
    assert source["configMap"]["optional"] is True and source["secret"]["optional"] is True
    assert projected_keys(source["configMap"]) == KEYS[1:]
    assert projected_keys(source["secret"]) == ["userdata"]


def test_an_existing_config_map_alone_provides_all_four_keys() -> None:
    rendered = render(with_source({"cloudInit": {"existingConfigMap": "mine"}}))
    source = sources(rendered.statefulset())
    assert set(source) == {"configMap"}
    assert projected_keys(source["configMap"]) == KEYS


def test_no_cloud_init_volume_without_inputs() -> None:
    statefulset = render(VALUE_SETS["defaults"]).statefulset()
    assert "/cloud-init" not in mounts(statefulset)
    assert render(VALUE_SETS["defaults"]).all("ConfigMap") == []


@pytest.mark.parametrize(
    ("drive_format", "parse"), [("configdrive", json.loads), ("nocloud", yaml.safe_load)]
)
def test_network_data_as_a_mapping_is_rendered_for_the_format(
    drive_format: str, parse: Any
) -> None:
    network = {"version": 2, "ethernets": {"eth0": {"dhcp4": True}}}
    values = with_source({"cloudInit": {"format": drive_format, "networkdata": network}})
    text = render(values).get("ConfigMap", OWN)["data"]["networkdata"]
    assert parse(text) == network
    assert text.lstrip().startswith("{") == (drive_format == "configdrive")


def test_checksum_changes_with_the_cloud_init_data_only() -> None:
    base = with_source({"cloudInit": {"userdata": USERDATA, "metadata": {"role": "a"}}})
    reference = checksum(base)
    assert len(reference) == 64 and int(reference, 16) >= 0
    assert checksum(base) == reference  # stable
    assert checksum(merged(base, {"replicas": 3, "vm": {"cpus": 2}})) == reference
    changed: list[Values] = [
        {"cloudInit": {"userdata": USERDATA + "# more\n"}},
        {"cloudInit": {"metadata": {"role": "b"}}},
        {"cloudInit": {"vendordata": "x"}},
        {"cloudInit": {"userdataSecret": True}},
        {"cloudInit": {"existingConfigMap": "other"}},
    ]
    sums = {checksum(merged(base, change)) for change in changed}
    assert reference not in sums and len(sums) == len(changed)


def test_each_vm_has_its_own_cloud_init() -> None:
    rendered = render(VALUE_SETS["two-vms"])
    web = rendered.get("ConfigMap", f"{DEFAULT_VM}-web-cloud-init")["data"]
    db = rendered.get("ConfigMap", f"{DEFAULT_VM}-db-cloud-init")["data"]
    assert web == {"userdata": "#cloud-config\npackages: [nginx]\n"}
    assert yaml.safe_load(db["metadata"]) == {"role": "db"}
    assert DEFAULT_VM + "-cloud-init" not in rendered.names("ConfigMap")
    annotations = {
        s["metadata"]["name"]: s["spec"]["template"]["metadata"]["annotations"]
        for s in rendered.all("StatefulSet")
    }
    assert len({a["checksum/cloud-init"] for a in annotations.values()}) == 3
