"""`kvm-manager setup` in a fresh pod namespace: real links, rules, sysctls and dnsmasq.

Each test gets its own node and pod namespaces (podlab); nothing boots here, the e2e suite does.
"""

from __future__ import annotations

import grp
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from podlab.lab import HOSTNAME, KVM_MANAGER, PodLab
from tests.netns.snapshot import links, our_rules, planned_rules, pod_state, processes
from tests.privileges import QEMU_USER


def setup(lab: PodLab, **env: str | None) -> subprocess.CompletedProcess[str]:
    done = lab.cli("setup", "--json", **env)
    assert done.returncode == 0, done.stderr
    return done


def planned(lab: PodLab, **env: str | None) -> dict[str, Any]:
    done = lab.cli("plan", "--json", **env)
    assert done.returncode == 0, done.stderr
    plan: dict[str, Any] = json.loads(done.stdout)
    return plan


def dnsmasq_pids(lab: PodLab) -> list[str]:
    return [p for p in processes(lab.net.pod) if p.startswith("dnsmasq")]


def test_setup_builds_the_pod_side_of_the_vm(lab: PodLab) -> None:
    done = setup(lab)
    argv = json.loads(done.stdout)
    assert argv[0] == "qemu-system-x86_64"
    by_name = {link["name"]: link for link in links(lab.net.pod)}
    assert by_name["kvmbr0"]["kind"] == "bridge"
    assert by_name["kvmbr0"]["up"] and by_name["kvmbr0"]["mtu"] == lab.net.mtu
    assert by_name["kvmtap0"]["kind"] == "tun"
    assert by_name["kvmtap0"]["master"] == "kvmbr0" and by_name["kvmtap0"]["mtu"] == lab.net.mtu
    state = pod_state(lab)
    assert "kvmbr0 192.168.254.1/30" in state["addresses"]
    assert state["sysctls"]["net.ipv4.ip_forward"] == "1"
    assert lab.net.pod.run("cat", "/proc/sys/net/ipv4/conf/kvmbr0/route_localnet").strip() == "1"
    conf = lab.volumes / "run" / "dnsmasq.conf"
    assert dnsmasq_pids(lab) == [f"dnsmasq --conf-file={conf}"]
    overlay = lab.volumes / "image" / f"{HOSTNAME}.qcow2"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(overlay)], capture_output=True, check=True
        ).stdout
    )
    assert info["format"] == "qcow2"
    assert info["backing-filename-format"] == "qcow2"
    assert Path(info["backing-filename"]) == lab.volumes / "image" / "base.qcow2"
    # What QEMU opens by path is its group's, read-only or read-write, and nobody else's.
    qemu_gid = grp.getgrnam(QEMU_USER).gr_gid
    for path, mode in ((lab.volumes / "run" / "config-drive.iso", 0o640), (overlay, 0o660)):
        info = path.stat()
        assert (info.st_mode & 0o777, info.st_uid, info.st_gid) == (mode, 0, qemu_gid), path
    # One line per step, saying what was decided.
    for step in (
        "pod:",
        "vm:",
        "image:",
        "disk:",
        "network:",
        "firewall:",
        "dhcp:",
        "config-drive:",
        "qemu-access:",
    ):
        assert f"kvm-manager: {step}" in done.stderr


def test_setup_twice_converges_to_the_same_state(lab: PodLab) -> None:
    first = setup(lab)
    after_first = pod_state(lab)
    overlay = lab.volumes / "image" / f"{HOSTNAME}.qcow2"
    inode = overlay.stat().st_ino
    dnsmasq_before = lab.net.pod.run("cat", str(lab.volumes / "run" / "dnsmasq.pid"))

    second = setup(lab)
    assert pod_state(lab) == after_first
    assert second.stdout == first.stdout  # the same QEMU argv
    assert overlay.stat().st_ino == inode  # the VM's disk is never recreated
    assert "disk: reusing" in second.stderr
    assert len(dnsmasq_pids(lab)) == 1  # replaced, not duplicated
    assert lab.net.pod.run("cat", str(lab.volumes / "run" / "dnsmasq.pid")) != dnsmasq_before


def test_setup_twice_with_the_web_console_replaces_its_server(lab: PodLab) -> None:
    """Started again, the server of the last start is replaced on the same port: one, as
    QEMU's user, serving the page (QEMU is not there: nothing boots here)."""
    first = setup(lab, WEB_CONSOLE_PORT="6080")
    after_first = pod_state(lab)
    servers = [p for p in processes(lab.net.pod) if "kvmmgr.webconsole" in p]
    assert len(servers) == 1 and f"--of={lab.volumes / 'run'}" in servers[0]
    second = setup(lab, WEB_CONSOLE_PORT="6080")
    assert pod_state(lab) == after_first and second.stdout == first.stdout
    assert "web-console: noVNC on port 6080" in second.stderr
    page = lab.from_node.http(f"http://{lab.net.pod_ip}:6080/vnc.html")
    assert page["status"] == 200 and "<title>noVNC</title>" in page["body"]


def test_installed_rules_are_exactly_the_planned_ones(lab: PodLab) -> None:
    kept = {"NAT_EXCLUDE": "tcp/9100 udp/5353 tcp/8000-8010 sctp/3868"}  # multiport for tcp
    plan = planned(lab, **kept)
    setup(lab, **kept)
    for table in ("raw", "nat", "filter"):
        assert sorted(our_rules(lab.net.pod, table)) == planned_rules(plan, table)


def test_a_rerun_with_other_settings_replaces_the_rules(lab: PodLab) -> None:
    setup(lab)
    other = {"NO_VNC": "1", "NAT_EXCLUDE": "udp/5353 tcp/9100-9102"}
    plan = planned(lab, **other)
    setup(lab, **other)
    nat = our_rules(lab.net.pod, "nat")
    assert sorted(nat) == planned_rules(plan, "nat")
    assert not any("5900" in rule for rule in nat + our_rules(lab.net.pod, "filter"))
    assert "-A KVMMGR-DNAT-eth0 -p tcp -m tcp --dport 9100:9102 -j RETURN" in nat


def test_foreign_rules_stay_and_duplicate_jumps_collapse(lab: PodLab) -> None:
    pod = lab.net.pod
    foreign = "-A POSTROUTING -s 10.1.0.0/16 -j MASQUERADE"
    pod.run("iptables-legacy", "-t", "nat", *foreign.split())
    setup(lab)
    pod.run("iptables-legacy", "-t", "nat", "-I", "PREROUTING", "-j", "KVMMGR-PREROUTING")
    pod.run("iptables-legacy", "-t", "nat", "-A", "KVMMGR-DNAT-eth0", "-j", "ACCEPT")  # stray edit
    setup(lab)
    saved = pod.run("iptables-legacy-save", "-t", "nat").splitlines()
    assert saved.count(foreign) == 1
    assert saved.count("-A PREROUTING -j KVMMGR-PREROUTING") == 1
    assert "-A KVMMGR-DNAT-eth0 -j ACCEPT" not in saved


def test_plan_is_deterministic_and_changes_nothing(lab: PodLab) -> None:
    before = pod_state(lab)
    first = lab.cli("plan", "--json")
    second = lab.cli("plan", "--json")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert pod_state(lab) == before
    plan = json.loads(first.stdout)
    (eth0,) = plan["pod"]["interfaces"]
    assert eth0["addresses"] == [f"{lab.net.pod_ip}/{lab.net.prefix}"]
    assert eth0["mtu"] == lab.net.mtu
    # The default route alone: the connected subnet is the address's own, left out.
    assert eth0["routes"] == [{"destination": "0.0.0.0/0", "gateway": lab.net.node_ip}]
    assert f"{lab.net.node_ip.rsplit('.', 1)[0]}.0/{lab.net.prefix}" in plan["pod"]["networks"]
    assert len(plan["pod"]["dns"]["nameservers"]) == 3
    assert len(plan["pod"]["dns"]["search"]) == 2


def test_a_device_of_another_kind_under_our_name_is_an_error(lab: PodLab) -> None:
    lab.net.pod.ip("link", "add", "kvmbr0", "type", "veth", "peer", "name", "kvmbr0-peer")
    done = lab.cli("setup")
    assert done.returncode == 1
    assert "'kvmbr0' exists but is a veth, not a bridge" in done.stderr.splitlines()[-1]


def _setup_with_read_only_proc_sys(lab: PodLab) -> subprocess.CompletedProcess[str]:
    """As in an unprivileged container: /proc/sys mounted read-only (in a mount namespace of
    the test's own; the shell is the test's, kvm-manager starts none)."""
    remount = "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys"
    argv = lab.net.pod.argv(
        "unshare", "--mount", "--propagation", "private",
        "sh", "-c", f'{remount} && exec "$@"', "sh", KVM_MANAGER, "setup",
    )  # fmt: skip
    return subprocess.run(
        argv, env=lab.env(), capture_output=True, text=True, timeout=120, check=False
    )


def test_read_only_proc_sys_needs_the_pod_sysctls(lab: PodLab) -> None:
    # A new namespace may start from the host's values (podman turns forwarding on there).
    lab.net.pod.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
    lab.net.pod.run("sysctl", "-q", "-w", "net.ipv4.conf.all.route_localnet=0")
    refused = _setup_with_read_only_proc_sys(lab)
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[-1] == (
        "kvm-manager: error: could not set net.ipv4.ip_forward=1: Read-only file system: "
        "expected net.ipv4.ip_forward=1 in the pod's securityContext.sysctls, "
        "or a privileged container"
    )
    # What the kubelet does with securityContext.sysctls, before the container starts:
    lab.net.pod.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    lab.net.pod.run("sysctl", "-q", "-w", "net.ipv4.conf.all.route_localnet=1")
    done = _setup_with_read_only_proc_sys(lab)
    assert done.returncode == 0, done.stderr
    assert lab.net.pod.run("cat", "/proc/sys/net/ipv4/conf/kvmbr0/route_localnet").strip() == "0"


def test_a_base_on_a_read_only_volume_is_used_as_it_is(tmp_path: Path) -> None:
    """A cache filled beforehand and mounted read-only: its base cannot be given to QEMU's
    group, and need not be when QEMU may read it already; else one line says why."""
    from kvmmgr.errors import StepError
    from kvmmgr.facts import Identity
    from kvmmgr.system import access
    from kvmmgr.vm.qemu import QemuFile

    cache = tmp_path / "cache"
    cache.mkdir()
    tmp_path.chmod(0o755)
    (cache / "open.qcow2").write_bytes(b"base")
    (cache / "closed.qcow2").write_bytes(b"base")
    (cache / "open.qcow2").chmod(0o644)
    (cache / "closed.qcow2").chmod(0o600)
    qemu = Identity(QEMU_USER, grp.getgrnam(QEMU_USER).gr_gid, grp.getgrnam(QEMU_USER).gr_gid)
    subprocess.run(["mount", "--bind", str(cache), str(cache)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(cache)], check=True)
        given = access.grant([QemuFile(cache / "open.qcow2", False)], qemu, [qemu.gid], [cache])
        assert given.files == 1
        with pytest.raises(StepError, match=r"closed\.qcow2 usable by QEMU's group"):
            access.grant([QemuFile(cache / "closed.qcow2", False)], qemu, [qemu.gid], [cache])
    finally:
        subprocess.run(["umount", str(cache)], check=True)
