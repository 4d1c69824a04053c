"""One guest booted by `kvm-manager run` in the pod, checked from the node and from the pod.
These tests only look: they share the VM and do not depend on each other's order."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from podlab.console import marker
from podlab.lab import HOSTNAME, NAMESERVERS, SEARCH, VM_GW, VM_IP, KvmManager, PodLab
from tests.e2e.conftest import boot, guest_sh, lease


@pytest.fixture(scope="module")
def running(
    guest_image: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[PodLab, KvmManager]]:
    with PodLab(tmp_path_factory.mktemp("running"), guest_image) as lab:
        yield lab, boot(lab)


def test_the_lease_carries_every_pod_setting(running: tuple[PodLab, KvmManager]) -> None:
    lab, vm = running
    got = lease(vm)
    assert got["ip"] == VM_IP
    assert got["router"] == VM_GW
    assert got["mask"] == "255.255.255.252"
    assert got["dns"].split(",") == list(NAMESERVERS)
    assert got["search"].split(",") == list(SEARCH)
    assert got["mtu"] == str(lab.net.mtu)
    assert got["hostname"] == HOSTNAME
    link = marker(vm.console.wait_for(r"^KVMTEST_LINK ", 5))
    plan = json.loads(lab.cli("plan", "--json").stdout)
    assert link["mac"] == plan["nics"][0]["guest"]["mac"]


def test_the_pod_ip_reaches_the_vm_for_tcp_udp_and_icmp(
    running: tuple[PodLab, KvmManager],
) -> None:
    lab, _ = running
    page = lab.from_node.http(f"http://{lab.net.pod_ip}/")
    assert page["status"] == 200
    assert f"KVMTEST_GUEST hostname={HOSTNAME} ip={VM_IP}" in page["body"]
    echo = lab.from_node.udp(lab.net.pod_ip, 7)
    assert echo["reply"] == echo["sent"] and echo["from"] == lab.net.pod_ip
    assert lab.from_node.ping(lab.net.pod_ip)


def test_loopback_in_the_pod_reaches_the_vm(running: tuple[PodLab, KvmManager]) -> None:
    lab, _ = running
    page = lab.in_pod.http("http://127.0.0.1:80/")
    assert page["status"] == 200 and f"ip={VM_IP}" in page["body"]


def test_vnc_port_is_qemu_not_the_vm(running: tuple[PodLab, KvmManager]) -> None:
    lab, _ = running
    vnc = lab.from_node.rfb(lab.net.pod_ip, 5900)
    assert vnc["banner"] == "RFB 003.008"
    assert vnc["security_types"] == [1]  # no password set: "None" authentication
    assert lab.in_pod.rfb("127.0.0.1", 5900)["banner"] == "RFB 003.008"
    # The guest listens on 5900 too; it is reachable only at its own address.
    assert lab.in_pod.tcp(VM_IP, 5900)["banner"] == "KVMTEST_GUEST tcp/5900\n"
    # ...and QEMU's VNC is not reachable from the VM's side of the bridge.
    probe = guest_sh(lab, f"nc -w 2 {VM_GW} 5900 </dev/null | head -c 3; echo rc=$?")
    assert "RFB" not in probe


def test_the_vm_reaches_the_node_from_the_pod_ip(running: tuple[PodLab, KvmManager]) -> None:
    lab, _ = running
    lab.serve_file("from-the-node.txt", "node says hello\n")
    url = f"http://{lab.net.node_ip}:8080/from-the-node.txt"
    assert guest_sh(lab, f"wget -q -O - {url}") == "node says hello\n"
    requests = [json.loads(line) for line in lab.http_log.read_text().splitlines()]
    seen = [r["client"] for r in requests if r["path"] == "/from-the-node.txt"]
    assert seen == [lab.net.pod_ip]  # SNAT: the node sees the pod, never 192.168.254.2


def test_the_config_drive_reaches_the_guest(running: tuple[PodLab, KvmManager]) -> None:
    lab, vm = running
    drive = marker(vm.console.wait_for(r"^KVMTEST_CFGDRIVE ", 5))
    assert drive["label"] == "config-2"
    done = marker(vm.console.wait_for(r"^KVMTEST_USERDATA_DONE ", 30))
    assert done["rc"] == "0"
    ran = lab.from_node.http(f"http://{lab.net.pod_ip}/userdata.txt")
    assert ran["body"] == f"written-by-user-data on {HOSTNAME}\n"
    meta = lab.from_node.http(f"http://{lab.net.pod_ip}/cfg/openstack/latest/meta_data.json")
    metadata = json.loads(meta["body"])
    assert metadata["hostname"] == HOSTNAME and metadata["name"] == HOSTNAME
    assert len(metadata["uuid"]) == 36
    assert metadata["role"] == "e2e"  # the user's own keys, from YAML
    network = lab.from_node.http(f"http://{lab.net.pod_ip}/cfg/openstack/latest/network_data.json")
    link = json.loads(network["body"])["links"][0]
    assert link["ethernet_mac_address"] == marker(vm.console.wait_for(r"^KVMTEST_LINK ", 5))["mac"]


def test_the_serial_console_is_on_stdout(running: tuple[PodLab, KvmManager]) -> None:
    _, vm = running
    vm.console.wait_for(r"^KVMTEST_INIT ", 5)
    vm.console.wait_for(r"Linux version|KVMTEST_READY", 5)
    assert "KVMTEST_" not in vm.log.text  # the console is not mixed into the log...
    assert "kvm-manager: " not in vm.console.text  # ...nor the log into the console
    vm.log.wait_for(r"^kvm-manager: qemu: exec qemu-system-x86_64 ", 5)
