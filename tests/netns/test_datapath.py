"""Packets really take the NAT path. A third namespace stands in for the VM: a veth on the
pod's bridge carrying the VM's MAC and VM_IP, with servers that say whom they saw."""

from __future__ import annotations

from pathlib import Path

from podlab.lab import VM_GW, VM_IP, PodLab
from tests.netns.standin import StandIn, set_up, udhcpc, udhcpc_script


def test_tcp_and_udp_for_the_pod_ip_reach_the_vm_with_the_client_address(
    lab: PodLab, standin: StandIn
) -> None:
    node = lab.net.node_ip
    tcp = lab.from_node.tcp(lab.net.pod_ip, 80)
    assert tcp["banner"] == f"standin tcp/80 from {node}\n"  # 1:1 DNAT, client address kept
    udp = lab.from_node.udp(lab.net.pod_ip, 7)
    assert udp["reply"] == f"standin udp/7 from {node}"
    assert udp["from"] == lab.net.pod_ip  # the reply comes back from the pod IP


def test_loopback_in_the_pod_reaches_the_vm_like_kubectl_port_forward(
    lab: PodLab, standin: StandIn
) -> None:
    tcp = lab.in_pod.tcp("127.0.0.1", 80)
    assert tcp["banner"] == f"standin tcp/80 from {VM_GW}\n"
    assert lab.in_pod.udp("127.0.0.1", 7)["reply"] == f"standin udp/7 from {VM_GW}"


def test_kept_ports_stay_with_the_container(lab: PodLab, standin: StandIn) -> None:
    # TCP 5900 is VNC's: nothing listens in the pod here (no QEMU), so the pod refuses.
    assert lab.from_node.tcp(lab.net.pod_ip, 5900) == {
        "connected": False,
        "error": "ConnectionRefusedError",
    }
    assert lab.in_pod.tcp("127.0.0.1", 5900)["connected"] is False
    # Only TCP 5900 is kept: UDP 5900 still goes to the VM.
    assert lab.from_node.udp(lab.net.pod_ip, 5900)["reply"].startswith("standin udp/5900")
    # NAT_EXCLUDE=tcp/9100 is kept too, though the VM listens on it.
    assert lab.from_node.tcp(lab.net.pod_ip, 9100)["connected"] is False
    assert lab.in_pod.tcp(VM_IP, 9100)["banner"].startswith("standin tcp/9100")


def test_ping_to_the_pod_ip_is_answered_by_the_vm(lab: PodLab, standin: StandIn) -> None:
    assert lab.from_node.ping(lab.net.pod_ip)
    # Without the VM nobody answers: the pod itself does not (ICMP is DNAT'd too).
    lab.net.pod.ip("link", "set", "kvmvm0", "down")
    assert not lab.from_node.ping(lab.net.pod_ip, count=1)


def test_the_vm_reaches_the_node_from_the_pod_ip(lab: PodLab, standin: StandIn) -> None:
    server = lab.from_node.server("serve", "node", "8000")
    try:
        seen = standin.probe.tcp(lab.net.node_ip, 8000)
        assert seen["banner"] == f"node tcp/8000 from {lab.net.pod_ip}\n"  # SNAT
    finally:
        server.kill()
        server.wait()


def test_dnsmasq_leases_the_vm_address_with_every_option_to_the_vm_mac_only(
    lab: PodLab, tmp_path: Path
) -> None:
    mac = set_up(lab)
    script = udhcpc_script(tmp_path)
    standin = StandIn(lab, mac)
    try:
        lease = udhcpc(standin.ns, script)
        assert (
            f"LEASE ip={VM_IP} subnet=255.255.255.252 router={VM_GW} "
            "dns=10.96.0.10 10.96.0.11 10.96.0.12 "
            "search=default.svc.cluster.local svc.cluster.local domain=default.svc.cluster.local "
            f"mtu={lab.net.mtu} hostname=kvmtest-0 lease=4294967295"
        ) in lease
        standin.ns.ip("link", "set", "eth0", "address", "52:54:00:99:99:99")
        assert "LEASE" not in udhcpc(standin.ns, script)  # another MAC gets nothing
    finally:
        standin.close()
