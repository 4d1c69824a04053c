"""`status` notices every part of the VM that is not as planned, and `status --repair` (the
liveness probe) restores in place what heals, in a real pod namespace. QEMU runs on the
suite's blank base (nothing boots: BIOS finds no disk to boot and waits), started as a
container's PID 1 is: the reaper of its orphans, which it does not reap, so a dnsmasq that
dies stays a zombie. The same with a real guest that then reboots: tests/e2e/test_health.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmmgr.errors import EXIT_DEGRADED, EXIT_OK
from podlab.lab import KVM_MANAGER, VM_IP, KvmManager, PodLab
from tests.netns.snapshot import links, our_rules, pids_of, planned_rules, processes

# What a container runtime makes of its main process: the reaper of every orphan in it.
AS_PID_1 = (
    "import ctypes, os, sys; "
    "ctypes.CDLL(None).prctl(36, 1, 0, 0, 0); "  # PR_SET_CHILD_SUBREAPER, kept across exec
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def start_as_pid_1(lab: PodLab, **env: str) -> KvmManager:
    """`kvm-manager run` in the pod, returned once `status` says all is well."""
    argv = lab.net.pod.argv(sys.executable, "-c", AS_PID_1, KVM_MANAGER, "run")
    vm = KvmManager(argv, lab.env(**env), lab.workdir / "as-pid-1")
    vm.log.wait_for(r"^kvm-manager: qemu: exec ", 60)
    deadline = time.monotonic() + 30
    while (done := lab.cli("status", **env)).returncode != EXIT_OK:
        assert time.monotonic() < deadline, done.stdout + done.stderr
        time.sleep(0.1)
    return vm


@pytest.fixture
def vm(lab: PodLab) -> Iterator[KvmManager]:
    vm = start_as_pid_1(lab)
    yield vm
    vm.kill()


def degraded(lab: PodLab, **env: str) -> list[str]:
    """What `status` says is wrong; it must exit EXIT_DEGRADED."""
    done = lab.cli("status", **env)
    assert done.returncode == EXIT_DEGRADED, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "running"
    return lines[1:]


def repaired(lab: PodLab, **env: str) -> list[str]:
    """What `status --repair` did; then plain `status` must say all is well again."""
    done = lab.cli("status", "--repair", **env)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    again = lab.cli("status", **env)
    assert (again.returncode, again.stdout) == (EXIT_OK, "running\n"), again.stdout
    return done.stdout.splitlines()[1:]


def state_of(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_dead_dnsmasq_is_noticed_then_replaced(lab: PodLab, vm: KvmManager) -> None:
    (dnsmasq,) = pids_of(lab.net.pod, "dnsmasq")
    os.kill(dnsmasq, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while state_of(dnsmasq) != "Z":  # dead, and left unreaped by QEMU: counts as dead
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert degraded(lab) == ["dhcp: dnsmasq is not running"]
    data = json.loads(lab.cli("status", "--json").stdout)
    assert data["parts"]["dhcp"] == {
        "state": "failed",
        "problems": ["dnsmasq is not running"],
        "heals": True,
    }
    assert {name: part["state"] for name, part in data["parts"].items()} == {
        "network": "ok",
        "firewall": "ok",
        "dhcp-guard": "off",
        "dhcp": "failed",
        "web-console": "off",
    }
    (line,) = repaired(lab)
    assert line.startswith("dhcp: repaired (dnsmasq is not running): dnsmasq pid ")
    conf = lab.volumes / "run" / "dnsmasq.conf"
    live = [p for p in processes(lab.net.pod) if p.startswith("dnsmasq")]
    assert live == [f"dnsmasq --conf-file={conf}"]  # one, bound to kvmbr0 (status checked)


def test_flushed_rules_and_a_deleted_jump_are_restored(lab: PodLab, vm: KvmManager) -> None:
    pod = lab.net.pod
    plan = json.loads(lab.cli("plan", "--json").stdout)
    pod.run("iptables-legacy", "-t", "nat", "-F")
    found = degraded(lab)
    assert "firewall: iptables nat: PREROUTING does not jump to KVMMGR-PREROUTING" in found
    assert "firewall: iptables nat: KVMMGR-DNAT-eth0 is empty or missing (2 rules planned)" in (
        found
    )
    assert all(line.startswith("firewall: iptables nat: ") for line in found)
    (line,) = repaired(lab)
    assert line.startswith("firewall: repaired (") and line.endswith(
        f": 10 rules in 6 chains: {lab.net.pod_ip} -> {VM_IP} (every protocol and port; "
        "kept by the container: tcp/5900)"
    )
    for table in ("raw", "nat", "filter"):
        assert sorted(our_rules(pod, table)) == planned_rules(plan, table)

    pod.run("iptables-legacy", "-t", "raw", "-D", "PREROUTING", "-j", "KVMMGR-PREROUTING")
    assert degraded(lab) == [
        "firewall: iptables raw: PREROUTING does not jump to KVMMGR-PREROUTING"
    ]
    repaired(lab)
    assert sorted(our_rules(pod, "raw")) == planned_rules(plan, "raw")


def test_a_tap_taken_off_its_bridge_is_put_back(lab: PodLab, vm: KvmManager) -> None:
    pod = lab.net.pod
    pod.ip("link", "set", "kvmtap0", "nomaster")
    pod.ip("link", "set", "kvmbr0", "down")
    assert degraded(lab) == ["network: kvmbr0 is down", "network: kvmtap0 is not a port of kvmbr0"]
    (line,) = repaired(lab)
    assert line.startswith("network: repaired (kvmbr0 is down; kvmtap0 is not a port of ")
    by_name = {link["name"]: link for link in links(pod)}
    assert by_name["kvmtap0"]["master"] == "kvmbr0" and by_name["kvmbr0"]["up"]


def test_what_needs_a_restart_is_left_to_it(lab: PodLab, vm: KvmManager) -> None:
    lab.net.pod.ip("link", "del", "kvmtap0")  # QEMU's NIC: a new tap would not be the VM's
    expected = [
        "network: kvmtap0 is missing: the VM's NIC went with it (needs a container restart)"
    ]
    assert degraded(lab) == expected
    done = lab.cli("status", "--repair")
    assert (done.returncode, done.stdout.splitlines()[1:]) == (EXIT_DEGRADED, expected)
    assert "kvmtap0" not in {link["name"] for link in links(lab.net.pod)}  # nothing made


def test_the_dhcp_guard_of_bridge_mode_is_restored(lab: PodLab) -> None:
    vm = start_as_pid_1(lab, NET_MODE="bridge")
    try:
        pod = lab.net.pod
        guard = pod.run("nft", "list", "table", "netdev", "kvmmgr")
        pod.run("nft", "delete", "table", "netdev", "kvmmgr")
        assert degraded(lab, NET_MODE="bridge") == [
            "dhcp-guard: the nftables table netdev kvmmgr is missing"
        ]
        (line,) = repaired(lab, NET_MODE="bridge")
        assert line == (
            "dhcp-guard: repaired (the nftables table netdev kvmmgr is missing): "
            "DHCP does not cross eth0 (nftables table netdev kvmmgr)"
        )
        assert pod.run("nft", "list", "table", "netdev", "kvmmgr") == guard
    finally:
        vm.kill()


def test_status_and_repair_take_a_probe_s_time(lab: PodLab, vm: KvmManager) -> None:
    """Within a probe's default timeout (the chart's: 10 s) by far, in tens of MiB."""
    for args in (("status",), ("status", "--repair")):
        lab.net.pod.run("iptables-legacy", "-t", "nat", "-F")  # something to repair
        os.kill(pids_of(lab.net.pod, "dnsmasq")[0], signal.SIGKILL)
        argv = ["/usr/bin/time", "-f", "%e %M", *lab.net.pod.argv(KVM_MANAGER, *args)]
        done = subprocess.run(argv, env=lab.env(), capture_output=True, text=True, check=False)
        seconds, kib = done.stderr.splitlines()[-1].split()
        assert float(seconds) < 5 and int(kib) < 80 * 1024, (args, seconds, kib)
        lab.cli("status", "--repair")


@pytest.mark.parametrize(
    ("network", "env"),
    [
        ({}, {"NET_MODE": "macvtap"}),
        ({"dual_stack": True}, {}),  # ip6tables' chains too
        ({"secondary": True}, {"ATTACH_IFACES": "eth0:nat net1:bridge"}),  # dnsmasq on two
    ],
    ids=["macvtap", "dual-stack", "two-nics"],
)
def test_a_vm_just_started_is_as_planned_in_every_mode(
    tmp_path: Path, network: dict[str, bool], env: dict[str, str]
) -> None:
    image = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    with PodLab(tmp_path / "lab", image, **network) as lab:
        vm = start_as_pid_1(lab, **env)  # `status` exits 0: every part as planned
        try:
            data = json.loads(lab.cli("status", "--json", **env).stdout)
            assert {part["state"] for part in data["parts"].values()} <= {"ok", "off"}
            os.kill(pids_of(lab.net.pod, "dnsmasq")[0], signal.SIGKILL)
            assert degraded(lab, **env) == ["dhcp: dnsmasq is not running"]
            repaired(lab, **env)
        finally:
            vm.kill()
