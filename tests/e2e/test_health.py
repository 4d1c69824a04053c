"""Nothing dies unnoticed: with the VM running, dnsmasq is killed and the rules are flushed.
`status` says so (the liveness probe would fail), `status --repair` (what the chart's
liveness probe runs) restores both in place, and the guest, rebooted afterwards, gets its
lease again and answers through the pod IP. The same parts, one by one and without a guest:
tests/netns/test_health.py."""

from __future__ import annotations

import os
import signal

from kvmmgr.errors import EXIT_DEGRADED, EXIT_OK
from kvmmgr.vm.qmp import Qmp
from podlab.console import marker
from podlab.lab import VM_IP, PodLab
from tests.e2e.conftest import BOOT_TIMEOUT, boot, lease
from tests.netns.snapshot import pids_of


def test_a_killed_dnsmasq_and_flushed_rules_heal_and_the_rebooted_guest_gets_its_lease(
    lab: PodLab,
) -> None:
    vm = boot(lab)
    assert lease(vm)["ip"] == VM_IP
    pod, url = lab.net.pod, f"http://{lab.net.pod_ip}/"
    assert lab.from_node.http(url)["status"] == 200

    (dnsmasq,) = pids_of(pod, "dnsmasq")
    os.kill(dnsmasq, signal.SIGKILL)
    pod.run("iptables-legacy", "-F")  # filter
    pod.run("iptables-legacy", "-t", "nat", "-F")
    assert lab.from_node.http(url)["status"] != 200  # the pod IP is the pod's own again

    # Without the repair, the liveness probe fails: the kubelet would restart the container.
    status = lab.cli("status")
    assert status.returncode == EXIT_DEGRADED, status.stdout + status.stderr
    broken = {line.split(":", 1)[0] for line in status.stdout.splitlines()[1:]}
    assert broken == {"firewall", "dhcp"}
    assert "dhcp: dnsmasq is not running" in status.stdout

    repaired = lab.cli("status", "--repair")
    assert repaired.returncode == EXIT_OK, repaired.stdout + repaired.stderr
    assert [line.split(":", 1)[0] for line in repaired.stdout.splitlines()[1:]] == [
        "firewall",
        "dhcp",
    ]
    assert lab.cli("status").stdout == "running\n"
    assert lab.from_node.http(url)["status"] == 200  # before the guest even notices

    since = vm.console.mark()
    with Qmp(lab.volumes / "run" / "qmp.sock") as qmp:
        qmp.execute("system_reset")
    again = marker(vm.console.wait_for(r"^KVMTEST_DHCP ", BOOT_TIMEOUT, since))
    assert again["ip"] == VM_IP
    vm.console.wait_for(r"^KVMTEST_READY ", BOOT_TIMEOUT, since)
    # From the dnsmasq the repair started, which logs to RUN_DIR (it is not the container's
    # main process's child, whose stderr is the container log).
    log = (lab.volumes / "run" / "dnsmasq.log").read_text()
    assert f"DHCPACK(kvmbr0) {VM_IP}" in log
    page = lab.from_node.http(url)
    assert page["status"] == 200 and f"ip={VM_IP}" in page["body"]
