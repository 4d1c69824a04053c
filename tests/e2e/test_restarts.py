"""Reliability: many container restarts in a row, and a start killed right after each step.

A container restart is what the kubelet does when QEMU dies: the same pod (network namespace,
volumes), `kvm-manager run` again. Whatever the earlier start left (bridge, rules, dnsmasq,
disk, a half-made state), the next one must converge to the same working VM.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from kvmmgr.startup import STEP_NAMES
from podlab.console import marker
from podlab.lab import VM_IP, KvmManager, PodLab
from tests.e2e.conftest import BOOT_TIMEOUT, boot, guest_sh, lease
from tests.netns.snapshot import (
    addresses,
    links,
    our_rules,
    planned_rules,
    processes,
    routes,
    sysctls,
)

RESTARTS = 20


def pod_network(lab: PodLab) -> dict[str, Any]:
    """What a restart must give back exactly: our rules, links, addresses, routes, sysctls,
    and the pod's processes (one dnsmasq, one QEMU)."""
    pod = lab.net.pod
    return {
        "raw": our_rules(pod, "raw"),
        "nat": our_rules(pod, "nat"),
        "filter": our_rules(pod, "filter"),
        "links": [(link["name"], link["kind"], link["master"], link["mtu"]) for link in links(pod)],
        "addresses": addresses(pod),
        "routes": routes(pod),
        "sysctls": sysctls(pod, "net.ipv4.ip_forward", "net.ipv4.conf.all.route_localnet"),
        "processes": [p.split()[0] for p in processes(pod)],
    }


def test_twenty_restarts_in_a_row_keep_the_vm_its_state_and_its_disk(lab: PodLab) -> None:
    vm = boot(lab)
    first = pod_network(lab)
    mac = nic_mac(vm)
    assert first["processes"].count("dnsmasq") == 1
    for n in range(RESTARTS):
        guest_sh(lab, f"echo restart-{n} > /mnt/disk/before-{n}.txt && sync")
        vm.kill()  # QEMU, the container's main process, dies; dnsmasq is left behind
        vm = boot(lab)
        assert (lease(vm)["ip"], nic_mac(vm)) == (VM_IP, mac)
        assert pod_network(lab) == first, f"after restart {n + 1}"
    kept = guest_sh(lab, "cat /mnt/disk/before-*.txt").split()
    assert kept == sorted(f"restart-{n}" for n in range(RESTARTS))


def nic_mac(vm: KvmManager) -> str:
    return marker(vm.console.wait_for(r"^KVMTEST_LINK ", BOOT_TIMEOUT))["mac"]


def start_and_kill_after(lab: PodLab, step: str) -> None:
    """`kvm-manager run` stopped by the test hook right after `step`, then SIGKILLed there."""
    stopped = lab.start(KVMMGR_TEST_PAUSE_AFTER=step)
    stopped.log.wait_for(rf"paused after {step} ", 60)
    stopped.kill()


@pytest.mark.parametrize("step", STEP_NAMES)
def test_a_start_killed_after_any_step_is_followed_by_a_working_vm(lab: PodLab, step: str) -> None:
    start_and_kill_after(lab, step)
    vm = boot(lab)
    check_working(lab, vm)
    state = pod_network(lab)
    assert state["processes"].count("dnsmasq") == 1
    assert state["processes"].count("qemu-system-x86_64") == 1
    plan = json.loads(lab.cli("plan", "--json").stdout)
    for table in (
        "raw",
        "nat",
        "filter",
    ):  # exactly the planned rules: nothing left over, nothing twice
        assert sorted(state[table]) == planned_rules(plan, table)


def check_working(lab: PodLab, vm: KvmManager) -> None:
    assert lease(vm)["ip"] == VM_IP
    page = lab.from_node.http(f"http://{lab.net.pod_ip}/")
    assert page["status"] == 200 and "KVMTEST_GUEST" in page["body"]
    vm.console.wait_for(r"^KVMTEST_CFGDRIVE label=config-2 ", BOOT_TIMEOUT)
