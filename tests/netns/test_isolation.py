"""Isolation: what the VM may not do to the pod and the network, and what the outside may not
do to the pod's DHCP server. A namespace stands in for the VM (tests/netns/standin.py), so a
test can make it misbehave at will: spoof its source, route to the pod's loopback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from podlab.lab import VM_GW, VM_IP, PodLab
from podlab.netns import Namespace
from tests.netns.standin import StandIn, set_up, udhcpc, udhcpc_script

PORT = 9999  # UDP, where nobody listens: what matters is who sees the packets


def counter(ns: Namespace, table: str, chain: str, rule: str) -> int:
    """Packets that matched the rule of `chain` whose iptables -L -v line contains `rule`."""
    listing = ns.run("iptables-legacy", "-t", table, "-L", chain, "-v", "-x", "-n")
    for line in listing.splitlines()[2:]:
        if re.search(rule, line):
            return int(line.split()[0])
    return -1  # no such rule: the assertions on what the packets did say what went wrong


def send_udp(
    ns: Namespace, packets: list[tuple[str, str]], payload: bytes = b"spoofed?", port: int = PORT
) -> None:
    """One datagram per (source, target), at once, waiting for no answer. Any source address
    will do: IP_TRANSPARENT lets a socket send from an address that is not its host's."""
    code = (
        "import socket, sys\n"
        "for pair in sys.argv[1:]:\n"
        "    source, target = pair.split('>')\n"
        "    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:\n"
        "        sock.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT\n"
        "        sock.bind((source, 0))\n"
        f"        sock.sendto({payload!r}, (target, {port}))\n"
    )
    ns.run(sys.executable, "-c", code, *(f"{source}>{target}" for source, target in packets))


def spoof_drops(lab: PodLab) -> int:
    return counter(lab.net.pod, "raw", "KVMMGR-PREROUTING", rf"DROP .*!{VM_IP} ")


def test_the_vm_sends_from_its_own_address_only(lab: PodLab, standin: StandIn) -> None:
    node, pod = lab.net.node_ip, lab.net.pod_ip
    # Sources the VM is not: anyone, the pod itself (which would dodge the SNAT), the node
    # (whom services in the pod may trust). Each is sent out of the pod and to the pod.
    spoofed = {"10.99.0.9": (node, VM_GW), pod: (node, VM_GW), node: (VM_GW,)}
    sniffer = lab.from_node.server("sniff", "veth0", "3", str(PORT))
    before = spoof_drops(lab)
    sent = [(source, target) for source, targets in spoofed.items() for target in targets]
    send_udp(standin.ns, [*sent, (VM_IP, node)])  # the last from its own address: SNAT'd
    assert sniffer.stdout is not None
    seen = json.loads(sniffer.stdout.read())
    assert seen["count"] == 1, seen
    assert seen["seen"][0].startswith(f"{pod} ")
    # Dropped in the raw table: before connection tracking and NAT ever saw them.
    assert spoof_drops(lab) - before >= len(sent)
    # The VM's own traffic to the pod is not: a server in the pod answers it.
    server = lab.in_pod.server("serve", "pod", "7100")
    try:
        assert standin.probe.udp(VM_GW, 7100)["reply"] == f"pod udp/7100 from {VM_IP}"
    finally:
        server.kill()
        server.wait()


def test_the_vm_cannot_reach_services_bound_to_the_pods_loopback(
    lab: PodLab, standin: StandIn
) -> None:
    # A sidecar's UDP service on 127.0.0.1:9100, a port the container keeps (NAT_EXCLUDE), so
    # that the pod's own loopback traffic reaches it rather than the VM. It prints what it gets.
    assert lab.cli("setup", NAT_EXCLUDE="udp/9100").returncode == 0
    sidecar = lab.net.pod.popen(
        ["socat", "-u", "UDP-RECV:9100,bind=127.0.0.1", "STDOUT"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    try:
        _wait_for(lambda: "127.0.0.1:9100" in lab.net.pod.run("ss", "-Hlun"))
        send_udp(lab.net.pod, [("127.0.0.1", "127.0.0.1")], b"from-the-pod\n", 9100)
        # A hostile guest routes 127.0.0.0/8 to its gateway. The pod has route_localnet on
        # the bridge (the loopback DNAT needs it), so such packets would be delivered there.
        vm = standin.ns
        for sysctl in ("all", "eth0"):
            vm.run("sysctl", "-q", "-w", f"net.ipv4.conf.{sysctl}.route_localnet=1")
        vm.ip("route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local")
        vm.ip("route", "del", "local", "127.0.0.1", "dev", "lo", "table", "local")
        vm.ip("route", "add", "127.0.0.0/8", "via", VM_GW, "dev", "eth0", "src", VM_IP)
        rule = r"DROP .*127\.0\.0\.0/8 .*ctstate"
        before = counter(lab.net.pod, "filter", "KVMMGR-INPUT", rule)
        send_udp(vm, [(VM_IP, "127.0.0.1")], b"from-the-vm\n", 9100)
        time.sleep(0.5)  # delivery is immediate on one machine; this is plenty
    finally:
        sidecar.kill()
        out, _ = sidecar.communicate()
    assert out == b"from-the-pod\n"  # and nothing from the VM...
    assert counter(lab.net.pod, "filter", "KVMMGR-INPUT", rule) > before  # ...which got there


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_dhcp_server_answers_nothing_from_outside_the_pod(lab: PodLab, tmp_path: Path) -> None:
    mac = set_up(lab)
    script = udhcpc_script(tmp_path)
    # From the node, on the pod's own link, even with the VM's MAC (the only one it serves).
    lab.net.node.ip("link", "set", "veth0", "address", mac)
    assert "LEASE" not in udhcpc(lab.net.node, script, iface="veth0")
    # The same request from the VM's side of the bridge is answered: the probe works.
    standin = StandIn(lab, mac)
    try:
        assert f"LEASE ip={VM_IP} " in udhcpc(standin.ns, script)
    finally:
        standin.close()
