"""podlab/kubeplay.py against the chart as rendered: each conversion does what its line says,
the README lists every line, and nothing else of the pod spec changes."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from podlab.kubeplay import CONVERSIONS, Play, convert
from podlab.lab import REPO
from tests.chart.render import DEFAULT_VM, Rendered, container, pod_spec, render, with_source

RELEASE_VALUES = with_source(
    {
        "cloudInit": {"userdata": "#!/bin/sh\necho hi\n", "metadata": {"role": "web"}},
        "vnc": {"password": "pa55word"},
    }
)
HOST_DIR = "/srv/kube-play"
POD = f"{DEFAULT_VM}-0"


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    return render(RELEASE_VALUES)


@pytest.fixture(scope="module")
def play(rendered: Rendered) -> Play:
    return convert(rendered.manifests, host_dir=HOST_DIR)


def volumes(play: Play) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in play.pod["spec"]["volumes"]}


def test_the_readme_lists_every_conversion_in_order() -> None:
    readme = " ".join((REPO / "README.md").read_text().split())
    section = readme.split("### The chart, run by podman", 1)[1].split(" #", 1)[0]
    listed = [f"- {c.description}" for c in CONVERSIONS]
    positions = [section.find(line) for line in listed]
    assert -1 not in positions, [line for line, at in zip(listed, positions, strict=True) if at < 0]
    assert positions == sorted(positions)


def test_a_realistic_release_takes_every_conversion(play: Play) -> None:
    assert play.conversions == tuple(c.description for c in CONVERSIONS)


def test_the_container_is_left_as_rendered(rendered: Rendered, play: Play) -> None:
    """All but the ports: env, args, securityContext, probes, lifecycle, mounts, resources."""
    original = dict(container(rendered.statefulset()))
    del original["ports"]
    assert play.container("kvm-manager") == original


def test_the_statefulset_becomes_its_first_pod(rendered: Rendered, play: Play) -> None:
    template = rendered.statefulset()["spec"]["template"]
    assert [d["kind"] for d in play.documents] == [
        "PersistentVolumeClaim", "PersistentVolumeClaim", "ConfigMap", "Pod",
    ]  # fmt: skip
    pod = play.pod
    assert pod["metadata"]["name"] == pod["spec"]["hostname"] == POD
    assert pod["spec"]["subdomain"] == f"{DEFAULT_VM}-headless"
    assert pod["metadata"]["labels"] == template["metadata"]["labels"]
    assert "checksum/cloud-init" not in pod["metadata"].get("annotations", {})
    assert pod["spec"]["restartPolicy"] == "Never"
    assert "sysctls" not in pod["spec"]["securityContext"]
    assert play.sysctls == ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.route_localnet=1")


def test_claims_become_named_volumes(rendered: Rendered, play: Play) -> None:
    (template,) = rendered.statefulset()["spec"]["volumeClaimTemplates"]
    claim = next(d for d in play.documents if d["metadata"]["name"] == f"disk-{POD}")
    assert claim["spec"] == template["spec"]
    assert volumes(play)["disk"] == {
        "name": "disk",
        "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]},
    }
    cache = volumes(play)["image-cache"]["persistentVolumeClaim"]["claimName"]
    assert rendered.get("PersistentVolumeClaim", cache) in play.documents
    assert set(play.volumes()) == {f"disk-{POD}", cache, f"{DEFAULT_VM}-cloud-init"}


def test_volumes_podman_4_3_lacks(rendered: Rendered, play: Play) -> None:
    projected = next(v for v in pod_spec(rendered.statefulset())["volumes"] if "projected" in v)
    (source,) = projected["projected"]["sources"]
    assert volumes(play)["cloud-init"] == {"name": "cloud-init", **source}
    run = volumes(play)["run"]
    assert run == {
        "name": "run",
        "hostPath": {"path": f"{HOST_DIR}/{POD}/run", "type": "DirectoryOrCreate"},
    }


def test_secrets_become_podman_secrets(play: Play) -> None:
    assert all(d["kind"] != "Secret" for d in play.documents)
    data = json.loads(play.secrets[f"{DEFAULT_VM}-vnc"])
    assert data == {"password": base64.b64encode(b"pa55word").decode()}


def test_device_plugin_resources_become_devices(play: Play) -> None:
    assert play.devices == ("/dev/kvm", "/dev/net/tun")


def test_a_projection_of_two_sources_is_refused() -> None:
    both = render(
        with_source({"cloudInit": {"userdata": "x", "userdataSecret": True, "metadata": {"a": 1}}})
    )
    with pytest.raises(ValueError, match="a projection of 2 sources"):
        convert(both.manifests, host_dir=HOST_DIR)


def test_the_manifests_are_left_as_they_are(rendered: Rendered) -> None:
    before = json.dumps(rendered.manifests, sort_keys=True)
    convert(rendered.manifests, host_dir=HOST_DIR)
    assert json.dumps(rendered.manifests, sort_keys=True) == before
