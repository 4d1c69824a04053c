"""The example objects in configmaps/: valid Kubernetes objects with the keys the chart
mounts, valid cloud-init inputs, and consumable by the chart by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.chart.render import (
    CONFIGMAPS_DIR,
    KUBE_VERSION,
    Manifest,
    mounted_volume,
    render,
    with_source,
)

KEYS = {"userdata", "metadata", "networkdata", "vendordata"}
FILES = sorted(CONFIGMAPS_DIR.glob("*.yaml"))


def load(path: Path) -> Manifest:
    (manifest,) = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert isinstance(manifest, dict)
    return manifest


def data(manifest: Manifest) -> dict[str, str]:
    """A ConfigMap's data or a Secret's stringData."""
    found: dict[str, str] = manifest["data" if manifest["kind"] == "ConfigMap" else "stringData"]
    return found


def examples(kind: str) -> list[Manifest]:
    return [m for m in map(load, FILES) if m["kind"] == kind]


def test_there_are_config_maps_and_a_secret() -> None:
    assert len(examples("ConfigMap")) >= 2
    assert len(examples("Secret")) >= 1
    assert (CONFIGMAPS_DIR / "README.md").is_file()


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_each_file_is_a_valid_object_with_the_chart_keys(path: Path) -> None:
    manifest = load(path)
    kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
    assert manifest["kind"] in {"ConfigMap", "Secret"}
    keys = set(data(manifest))
    assert keys and keys <= KEYS
    if manifest["kind"] == "Secret":
        assert keys == {"userdata"}  # the chart mounts only userdata from a Secret


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_each_input_parses_as_cloud_init_expects(path: Path) -> None:
    inputs = data(load(path))
    if "userdata" in inputs:
        assert inputs["userdata"].startswith("#cloud-config\n")
        assert isinstance(yaml.safe_load(inputs["userdata"]), dict)
    if "metadata" in inputs:
        assert isinstance(yaml.safe_load(inputs["metadata"]), dict)
    if "networkdata" in inputs:
        network: dict[str, Any] = yaml.safe_load(inputs["networkdata"])
        assert network["version"] in (1, 2)


def test_the_examples_cover_user_data_metadata_and_network() -> None:
    inputs = data(load(CONFIGMAPS_DIR / "cloud-init.yaml"))
    userdata = yaml.safe_load(inputs["userdata"])
    assert {"qemu-guest-agent", "htop"} <= set(userdata["packages"])
    (admin,) = [user for user in userdata["users"] if isinstance(user, dict)]
    assert admin["ssh_authorized_keys"]
    metadata = yaml.safe_load(inputs["metadata"])
    assert metadata["role"] and metadata["public_keys"]
    network = yaml.safe_load(data(load(CONFIGMAPS_DIR / "cloud-init-nocloud.yaml"))["networkdata"])
    assert [nic["dhcp4"] for nic in network["ethernets"].values()] == [True]
    # The password is in the Secret only, and hashed.
    secret = yaml.safe_load(data(load(CONFIGMAPS_DIR / "userdata-secret.yaml"))["userdata"])
    (admin,) = [user for user in secret["users"] if isinstance(user, dict)]
    assert admin["passwd"].startswith("$6$")
    for config_map in examples("ConfigMap"):
        assert "passwd" not in data(config_map).get("userdata", "")


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_the_chart_mounts_the_example_by_name(path: Path) -> None:
    manifest = load(path)
    name = manifest["metadata"]["name"]
    kind = "existingConfigMap" if manifest["kind"] == "ConfigMap" else "existingSecret"
    rendered = render(with_source({"cloudInit": {kind: name}}))
    volume = mounted_volume(rendered.statefulset(), "/cloud-init")
    (source,) = volume["projected"]["sources"]
    (projection,) = source.values()
    assert projection["name"] == name
    mounted = {item["key"] for item in projection["items"]}
    assert set(data(manifest)) <= mounted
