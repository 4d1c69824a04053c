"""Beyond NAT: the VM takes the pod's identity (bridge, macvtap), a routed CNI's /32, two
NICs, and IPv6 in NAT mode; a container restart converges in each mode."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from podlab.console import marker
from podlab.lab import REPO, VM_IP, KvmManager, PodLab
from podlab.netns import PodNetwork
from tests.e2e.conftest import BOOT_TIMEOUT, boot


def lease(vm: KvmManager, iface: str = "eth0", since: int = 0) -> dict[str, str]:
    found = vm.console.wait_for(rf"^KVMTEST_DHCP iface={iface} ", BOOT_TIMEOUT, since)
    return marker(found)


def assert_reachable(lab: PodLab, address: str, expected_ip: str) -> None:
    page = lab.from_node.http(f"http://{address}/")
    assert page["status"] == 200 and f"ip={expected_ip}" in page["body"], page
    assert lab.from_node.ping(address)


def restart(lab: PodLab, vm: KvmManager, **env: str) -> KvmManager:
    """The container dies (QEMU killed; dnsmasq left) and starts again in the same pod."""
    vm.kill()
    return boot(lab, **env)


class DhcpSniffer:
    """Counts DHCP packets on the node's side of the pod's veth while the VM boots."""

    def __init__(self, lab: PodLab, seconds: float) -> None:
        self.process = subprocess.Popen(
            lab.net.node.argv(
                sys.executable, "-m", "podlab.probe", "sniff", "veth0", str(seconds), "67", "68"
            ),
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"

    def result(self) -> dict[str, object]:
        out, _ = self.process.communicate(timeout=120)
        found: dict[str, object] = json.loads(out)
        return found


@pytest.mark.parametrize("mode", ["bridge", "macvtap"])
def test_the_vm_takes_the_pod_identity_and_dhcp_stays_inside(lab: PodLab, mode: str) -> None:
    pod = lab.net
    original_mac = pod.pod.run("cat", "/sys/class/net/eth0/address").strip()
    sniffer = DhcpSniffer(lab, seconds=25)
    vm = boot(lab, NET_MODE=mode)
    got = lease(vm)
    assert (got["ip"], got["mask"], got["router"]) == (pod.pod_ip, "255.255.255.0", pod.node_ip)
    assert got["mtu"] == str(pod.mtu) and got["serverid"].startswith("169.254.75.")
    assert marker(vm.console.wait_for(r"^KVMTEST_LINK iface=eth0 ", 5))["mac"] == original_mac
    assert_reachable(lab, pod.pod_ip, pod.pod_ip)
    # The pod interface gave its address and MAC to the VM.
    assert "inet " not in pod.pod.ip("-4", "addr", "show", "eth0")
    assert pod.pod.run("cat", "/sys/class/net/eth0/address").strip() != original_mac
    dhcp = sniffer.result()
    assert dhcp["count"] == 0, dhcp  # not a DHCP packet left the pod, or came into it

    again = restart(lab, vm, NET_MODE=mode)  # eth0 no longer shows what the VM must get
    assert lease(again)["ip"] == pod.pod_ip
    assert_reachable(lab, pod.pod_ip, pod.pod_ip)
    assert "as it was before the VM took it" in again.log.text


def test_a_routed_cni_pod_address_works_in_bridge_mode(guest_image: Path, tmp_path: Path) -> None:
    with PodLab(tmp_path, guest_image, routed=True) as lab:
        vm = boot(lab, NET_MODE="bridge")
        got = lease(vm)
        assert (got["ip"], got["mask"]) == (lab.net.pod_ip, "255.255.255.255")
        gateway = PodNetwork.ROUTED_GATEWAY
        assert got["routes"] == f"{gateway}/32@0.0.0.0,0.0.0.0/0@{gateway}"  # option 121
        assert_reachable(lab, lab.net.pod_ip, lab.net.pod_ip)


def test_two_pod_interfaces_give_the_vm_two_working_nics(guest_image: Path, tmp_path: Path) -> None:
    with PodLab(tmp_path, guest_image, secondary=True) as lab:
        vm = boot(lab, ATTACH_IFACES="eth0:nat net1:bridge")
        first, second = lease(vm, "eth0"), lease(vm, "eth1")
        assert (first["ip"], first["router"]) == (VM_IP, "192.168.254.1")
        assert (second["ip"], second["router"]) == (lab.net.net1_pod_ip, "")  # one default route
        links = [marker(m) for m in _all(vm, r"^KVMTEST_LINK ")]
        assert len({link["mac"] for link in links}) == 2
        assert_reachable(lab, lab.net.pod_ip, VM_IP)  # eth0, through NAT
        page = lab.from_node.http(f"http://{lab.net.net1_pod_ip}/ip-eth1")  # net1, bridged
        assert page["body"].strip() == lab.net.net1_pod_ip


def test_ipv6_reaches_the_vm_through_the_pod_ipv6_address(
    guest_image: Path, tmp_path: Path
) -> None:
    with PodLab(tmp_path, guest_image, dual_stack=True) as lab:
        vm = boot(lab)
        got = marker(vm.console.wait_for(r"^KVMTEST_DHCP6 ", BOOT_TIMEOUT))
        assert got["ip"] == "fd00:6b76:6d::2"  # VM_IP6, from dnsmasq's DHCPv6
        page = lab.from_node.http(f"http://[{lab.net.pod_ip6}]/ip6")
        assert page["body"].strip() == "fd00:6b76:6d::2"
        assert lab.from_node.ping(lab.net.pod_ip6)
        echo = lab.from_node.udp(lab.net.pod_ip6, 7)
        assert echo["reply"] == echo["sent"]
        assert lab.from_node.http(f"http://{lab.net.pod_ip}/")["status"] == 200  # IPv4 too

        again = restart(lab, vm)
        assert marker(again.console.wait_for(r"^KVMTEST_DHCP6 ", BOOT_TIMEOUT))["ip"] == got["ip"]
        assert lab.from_node.http(f"http://[{lab.net.pod_ip6}]/ip6")["status"] == 200


def _all(vm: KvmManager, pattern: str) -> list[re.Match[str]]:
    regex = re.compile(pattern)
    return [m for line in vm.console.lines if (m := regex.search(line))]
