"""The pure planner: the same inputs give the same plan; every decision is checked as data.
The NICs themselves (modes, addresses, routes): test_nics.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmmgr.errors import ConfigError
from kvmmgr.facts import Devices, Limits
from kvmmgr.net.model import derive_mac
from kvmmgr.plan import QEMU_OVERHEAD_MIB
from tests.unit.factories import plan, pod_facts


def test_plan_json_is_deterministic_and_complete() -> None:
    first = plan().to_json()
    assert first == plan().to_json()
    data = json.loads(first)
    assert set(data) >= {"pod", "vm", "nics", "firewall", "dhcp", "disks", "config_drive", "qemu"}
    nic = data["nics"][0]
    assert nic["mode"] == "nat" and nic["pod"]["name"] == "eth0"
    assert nic["guest"]["address"] == "192.168.254.2/30"
    assert nic["guest"]["mac"] == derive_mac("vm-0")
    assert nic["link"]["pod_address"] == "10.244.1.7/24"
    assert data["disks"]["overlay"] == "/image/vm-0.qcow2"
    assert data["qemu"]["argv"][0] == "qemu-system-x86_64"
    paths = {f["path"] for f in data["config_drive"]["files"]}
    assert paths == {
        f"openstack/{version}/{name}"
        for version in ("2015-10-15", "latest")
        for name in ("meta_data.json", "network_data.json", "user_data")
    }
    assert data["config_drive"]["network_config"]["links"][0]["ethernet_mac_address"] == (
        derive_mac("vm-0")
    )
    assert data["dhcp_guard"] is None  # NAT mode: DHCP stays on the VM's own bridge


def test_plan_json_does_not_print_user_data() -> None:
    from kvmmgr.guest.drive import DriveInputs

    text = plan(inputs=DriveInputs(b"#cloud-config\npassword: hunter2\n", None)).to_json()
    assert "hunter2" not in text


def test_plan_json_does_not_print_the_vnc_password() -> None:
    assert "s3cret" not in plan({"VNC_PASSWORD": "s3cret"}).to_json()


def test_mac_is_stable_local_and_unicast() -> None:
    mac = derive_mac("vm-0")
    assert mac == derive_mac("vm-0")
    assert mac != derive_mac("vm-1")
    first = int(mac.split(":")[0], 16)
    assert first & 0b10  # locally administered
    assert not first & 0b01  # unicast


def test_vm_mac_overrides_the_derived_one() -> None:
    assert plan({"VM_MAC": "52:54:00:00:00:01"}).nics[0].guest.mac == "52:54:00:00:00:01"


def test_memory_and_cpus_follow_the_container_limits() -> None:
    facts = pod_facts(limits=Limits(memory_mib=4096, cpus=3))
    p = plan(facts=facts)
    assert (p.vm.memory_mib, p.vm.cpus) == (4096 - QEMU_OVERHEAD_MIB, 3)
    assert ["-m", str(4096 - QEMU_OVERHEAD_MIB)] == list(
        p.qemu.argv[p.qemu.argv.index("-m") : p.qemu.argv.index("-m") + 2]
    )


def test_explicit_memory_and_cpus_win_with_a_note_when_tight() -> None:
    p = plan({"VM_MEMORY": "4G", "VM_CPUS": "2"}, pod_facts(limits=Limits(4096, 8)))
    assert (p.vm.memory_mib, p.vm.cpus) == (4096, 2)
    assert any("VM_MEMORY=4096 MiB" in note for note in p.notes)


def test_defaults_without_limits() -> None:
    p = plan()
    assert (p.vm.memory_mib, p.vm.cpus) == (1024, 1)


def test_memory_limit_too_small_for_a_vm() -> None:
    with pytest.raises(ConfigError, match="memory limit of 200 MiB"):
        plan(facts=pod_facts(limits=Limits(200, None)))


def test_accel_auto_falls_back_to_tcg_with_a_note() -> None:
    p = plan()
    assert p.vm.accel == "tcg"
    assert any("using TCG" in note for note in p.notes)
    kvm = plan(facts=pod_facts(devices=Devices(kvm=True, vhost_net=True)))
    assert kvm.vm.accel == "kvm" and not kvm.notes


def test_accel_kvm_without_kvm_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"VM_ACCEL='kvm'"):
        plan({"VM_ACCEL": "kvm"})


def test_accel_tcg_is_honoured_even_with_kvm() -> None:
    p = plan({"VM_ACCEL": "tcg"}, pod_facts(devices=Devices(kvm=True, vhost_net=False)))
    assert p.vm.accel == "tcg" and not p.notes


def test_paths() -> None:
    p = plan(
        {"IMAGE_DIR": "/cache", "VM_DIR": "/disks", "RUN_DIR": "/run/x"},
        pod_facts(hostname="db-3"),
    )
    assert p.disks.base == Path("/cache/base.qcow2")
    assert p.disks.overlay == Path("/disks/db-3.qcow2")
    assert p.config_drive is not None and p.config_drive.iso == Path("/run/x/config-drive.iso")
    assert p.qemu.qmp_socket == Path("/run/x/qmp.sock")


def test_no_dhcp() -> None:
    assert plan({"NO_DHCP": "yes"}).dhcp is None
    assert plan({"NO_DHCP": "yes", "NET_MODE": "bridge"}).dhcp_guard is None
