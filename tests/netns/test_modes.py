"""`kvm-manager setup` in bridge and macvtap modes, in a real pod namespace (nothing boots
here; the e2e suite boots a guest in each mode)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from podlab.lab import PodLab
from tests.netns.snapshot import links, pod_state


def setup(lab: PodLab, **env: str) -> str:
    done = lab.cli("setup", **env)
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.mark.parametrize("mode", ["bridge", "macvtap"])
def test_taking_the_pod_identity_converges(lab: PodLab, mode: str) -> None:
    pod = lab.net.pod
    mac = pod.run("cat", "/sys/class/net/eth0/address").strip()
    setup(lab, NET_MODE=mode)
    first = pod_state(lab)
    assert not any(a.startswith("eth0 ") for a in first["addresses"])  # the VM's now
    assert pod.run("cat", "/sys/class/net/eth0/address").strip() != mac
    memory = json.loads((lab.volumes / "run" / "pod-interfaces.json").read_text())
    assert memory["eth0"]["mac"] == mac
    assert memory["eth0"]["addresses"] == [f"{lab.net.pod_ip}/{lab.net.prefix}"]
    by_name = {link["name"]: link for link in links(pod)}
    if mode == "bridge":
        assert by_name["eth0"]["master"] == "kvmbr0"
        assert "kvmbr0 169.254.75.10/32" in first["addresses"]
    else:
        assert by_name["kvmvtap0"]["kind"] == "macvtap" and by_name["kvmvtap0"]["mac"] == mac
        assert "kvmdhcp0 169.254.75.10/32" in first["addresses"]
    guard = pod.run("nft", "list", "table", "netdev", "kvmmgr")
    assert 'hook ingress device "eth0"' in guard and 'hook egress device "eth0"' in guard

    again = setup(lab, NET_MODE=mode)  # eth0 has nothing left to observe: memory serves
    assert "as it was before the VM took it" in again
    assert pod_state(lab) == first
    assert pod.run("nft", "list", "table", "netdev", "kvmmgr") == guard


def test_an_interface_taken_over_and_forgotten_is_a_clear_error(lab: PodLab) -> None:
    setup(lab, NET_MODE="bridge")
    (lab.volumes / "run" / "pod-interfaces.json").unlink()
    done = lab.cli("setup", NET_MODE="bridge")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].startswith(
        "kvm-manager: configuration error: eth0 was given to the VM by an earlier start, "
        "and what it was is lost (pod-interfaces.json)"
    )


def test_an_attached_interface_that_does_not_exist(lab: PodLab) -> None:
    done = lab.cli("setup", ATTACH_IFACES="eth0:nat net7:bridge")
    assert done.returncode == 2
    assert "ATTACH_IFACES='net7': expected an existing network interface" in done.stderr


def test_attach_all_gives_a_nic_per_interface_with_an_address(tmp_path: Path) -> None:
    image = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    with PodLab(tmp_path / "lab", image, secondary=True) as lab:
        done = lab.cli("plan", "--json", ATTACH_IFACES="all", NET_MODE="bridge")
        assert done.returncode == 0, done.stderr
        nics = json.loads(done.stdout)["nics"]
        assert [(n["pod"]["name"], n["mode"]) for n in nics] == [
            ("eth0", "bridge"),
            ("net1", "bridge"),
        ]
        assert [n["guest"]["address"] for n in nics] == [
            f"{lab.net.pod_ip}/{lab.net.prefix}",
            f"{lab.net.net1_pod_ip}/24",
        ]
        assert nics[0]["guest"]["router"] == lab.net.node_ip  # the default route's interface
        assert nics[1]["guest"]["router"] is None
