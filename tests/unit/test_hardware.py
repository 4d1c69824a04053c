"""The virtual hardware as planned: machine, firmware, buses, NIC models, CPU, SMBIOS, data
disks; an appliance's OVF as the defaults that the user's settings override."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from uuid import UUID

import pytest

from kvmmgr.errors import ConfigError
from kvmmgr.image.appliance import Appliance, BaseFacts, from_record
from kvmmgr.plan import Plan, make_plan
from tests.unit.factories import BASE_ENV, plan, pod_facts, settings


def _option(argv: tuple[str, ...], flag: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == flag]


def test_defaults_suit_a_guest_that_knows_nothing() -> None:
    made = plan()
    argv = made.qemu.argv
    assert _option(argv, "-machine") == ["pc"] and _option(argv, "-cpu") == ["qemu64"]
    assert "if=pflash" not in " ".join(argv) and made.qemu.firmware is None
    assert "virtio-blk-pci,drive=disk0,bootindex=1" in _option(argv, "-device")
    assert any(d.startswith("virtio-net-pci,") for d in _option(argv, "-device"))
    serial, uuid = made.hardware.serial, made.hardware.uuid
    assert serial.startswith("KVM-") and serial == plan().hardware.serial  # stable
    assert _option(argv, "-smbios") == [f"type=1,serial={serial},uuid={uuid}"]
    assert _option(argv, "-uuid") == [str(uuid)]
    other = plan(facts=pod_facts(hostname="vm-1")).hardware
    assert (other.serial, other.uuid) != (serial, uuid)  # another VM, another identity


@pytest.mark.parametrize(
    ("env", "devices"),
    [
        (
            {"VM_DISK_BUS": "scsi"},
            ["virtio-scsi-pci,id=scsi0", "scsi-hd,bus=scsi0.0,drive=disk0,bootindex=1"],
        ),
        ({"VM_DISK_BUS": "sata"}, ["ahci,id=sata", "ide-hd,bus=sata.0,drive=disk0,bootindex=1"]),
        (
            {"VM_DISK_BUS": "sata", "VM_MACHINE": "q35"},
            ["ide-hd,bus=ide.0,drive=disk0,bootindex=1", "ide-cd,bus=ide.1,drive=cidata"],
        ),
        (
            {"VM_DISK_BUS": "ide"},
            [
                "ide-hd,bus=ide.0,unit=0,drive=disk0,bootindex=1",
                "ide-cd,bus=ide.1,unit=0,drive=cidata",
            ],
        ),
        ({"VM_NIC_MODEL": "e1000"}, ["e1000,netdev=net0,mac=2a:e8:fb:7c:c9:4f"]),
        ({"VM_NIC_MODEL": "rtl8139"}, ["rtl8139,netdev=net0,mac=2a:e8:fb:7c:c9:4f"]),
        ({"VM_NIC_MODEL": "vmxnet3"}, ["vmxnet3,netdev=net0,mac=2a:e8:fb:7c:c9:4f"]),
    ],
)  # fmt: skip
def test_buses_and_nic_models(env: dict[str, str], devices: list[str]) -> None:
    argv = plan(env).qemu.argv
    for device in devices:
        assert device in _option(argv, "-device"), _option(argv, "-device")


def test_uefi_keeps_the_vm_s_variables_beside_its_disk() -> None:
    made = plan({"VM_FIRMWARE": "uefi", "VM_DIR": "/vm"})
    firmware = made.qemu.firmware
    assert firmware is not None
    assert (firmware.code, firmware.vars) == (
        Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), Path("/vm/vm-0.efivars.fd")
    )  # fmt: skip
    drives = _option(made.qemu.argv, "-drive")
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={firmware.code}" in drives
    assert "if=pflash,format=raw,unit=1,file=/vm/vm-0.efivars.fd" in drives


def test_secure_boot_is_q35_with_smm_and_microsoft_s_keys() -> None:
    made = plan({"VM_FIRMWARE": "uefi", "VM_SECURE_BOOT": "1"})
    assert _option(made.qemu.argv, "-machine") == ["q35,smm=on"]
    assert "driver=cfi.pflash01,property=secure,value=on" in _option(made.qemu.argv, "-global")
    assert made.qemu.firmware is not None
    assert made.qemu.firmware.vars_template.name == "OVMF_VARS_4M.ms.fd"


def test_smbios_identity_cpu_and_kvm() -> None:
    made = plan({"VM_SERIAL": "VMware-56 4d,a1", "VM_UUID": "4c4c4544-0042-3610-8030-b8c04f4d4b31"})
    assert _option(made.qemu.argv, "-smbios") == [
        "type=1,serial=VMware-56 4d,,a1,uuid=4c4c4544-0042-3610-8030-b8c04f4d4b31"
    ]  # a comma doubled: QEMU's option syntax
    assert _option(plan({"VM_CPU_MODEL": "Westmere"}).qemu.argv, "-cpu") == ["Westmere"]
    with pytest.raises(ConfigError, match="VM_CPU_MODEL='host': expected a named model"):
        plan({"VM_CPU_MODEL": "host"})


def test_data_disks_in_a_stable_order_with_stable_serials() -> None:
    made = plan({"VM_DATA_DISKS": "10G /dev/xvdb", "VM_DIR": "/vm"})
    first, second = made.disks.data
    assert (first.path, first.kind, first.size, first.serial) == (
        Path("/vm/vm-0-data1.qcow2"), "new", 10 << 30, "kvmdata1"
    )  # fmt: skip
    assert (second.path, second.kind, second.serial) == (Path("/dev/xvdb"), "pod", "kvmdata2")
    devices = _option(made.qemu.argv, "-device")
    assert "virtio-blk-pci,drive=disk1,serial=kvmdata1" in devices
    assert "file=/dev/xvdb,if=none,id=disk2,format=raw,discard=unmap" in _option(
        made.qemu.argv, "-drive"
    )


def test_a_bus_too_small_for_the_disks_is_refused() -> None:
    with pytest.raises(ConfigError, match="3 data disks on the ide bus: expected at most 2"):
        plan({"VM_DISK_BUS": "ide", "VM_DATA_DISKS": "1G 1G 1G"})


def _with(appliance: Appliance, env: dict[str, str] | None = None, **base: object) -> Plan:
    from kvmmgr.guest.drive import DriveInputs

    facts = BaseFacts(appliance, **base)  # type: ignore[arg-type]
    return make_plan(settings(**(env or {})), pod_facts(), DriveInputs(None, None), (), facts)


def test_an_ovf_sets_the_defaults_and_the_user_s_settings_win() -> None:
    ovf = Appliance("legacy", ("d1.vmdk", "d2.vmdk"), 768, 2, ("e1000",), "ide", "uefi")
    made = _with(ovf, data_disks=("base-disk2",))
    assert (made.vm.memory_mib, made.vm.cpus) == (768, 2)
    hw = made.hardware
    assert (hw.disk_bus, hw.nic_model, hw.firmware) == ("ide", "e1000", "uefi")
    assert any(
        "from the OVF of legacy: memory 768 MiB, 2 vCPUs, firmware uefi, disk bus ide, "
        "NIC model e1000 (VM_* settings override it)" in n
        for n in made.notes
    )
    two_nics = dataclasses.replace(ovf, nic_models=("e1000", "e1000"))
    assert "declares 2 NICs: the VM gets 1, one per attached pod interface" in " ".join(
        _with(two_nics).notes
    )
    (data,) = made.disks.data
    assert (data.kind, data.backing) == ("overlay", Path("/image/base-disk2"))
    mine = _with(ovf, {"VM_MEMORY": "512", "VM_DISK_BUS": "virtio", "VM_FIRMWARE": "bios"})
    assert (mine.vm.memory_mib, mine.hardware.disk_bus, mine.hardware.firmware) == (
        512,
        "virtio",
        "bios",
    )
    q35 = _with(ovf, {"VM_MACHINE": "q35"})
    assert q35.hardware.disk_bus == "sata"  # the OVF's IDE, on a machine without IDE


def test_an_untrusted_record_gives_only_what_holds_up() -> None:
    assert from_record("not a mapping") is None
    odd = from_record(
        {"name": "x", "disks": ["d1", "../etc/passwd", 3], "memory_mib": "9999", "cpus": True,
         "nic_models": ["e1000", "evil"], "disk_bus": "floppy", "firmware": "efi"}
    )  # fmt: skip
    assert odd == Appliance("x", ("d1",), nic_models=("e1000",))


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"VM_MACHINE": "isapc"}, "VM_MACHINE='isapc': expected one of pc, q35"),
        ({"VM_FIRMWARE": "coreboot"}, "VM_FIRMWARE='coreboot'"),
        ({"VM_SECURE_BOOT": "1", "VM_FIRMWARE": "bios"}, "VM_SECURE_BOOT='1': expected false"),
        ({"VM_DISK_BUS": "ide", "VM_MACHINE": "q35"}, "VM_DISK_BUS='ide'"),
        ({"VM_NIC_MODEL": "pcnet"}, "VM_NIC_MODEL='pcnet'"),
        ({"VM_CPU_MODEL": "Skylake; rm -rf /"}, "VM_CPU_MODEL="),
        ({"VM_SERIAL": "x" * 65}, "VM_SERIAL="),
        ({"VM_UUID": "not-a-uuid"}, "VM_UUID='not-a-uuid'"),
        ({"VM_DATA_DISKS": "10G data.img"}, "VM_DATA_DISKS='data.img'"),
        ({"VM_DATA_DISKS": " ".join(["1G"] * 17)}, "at most 16 disks"),
    ],
)
def test_bad_hardware_settings(env: dict[str, str], says: str) -> None:
    from kvmmgr.config import load_settings

    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(")", r"\)")):
        load_settings({**BASE_ENV, **env})


def test_uuid_parsed() -> None:
    given = settings(VM_UUID="4C4C4544-0042-3610-8030-B8C04F4D4B31").vm.hardware.uuid
    assert given == UUID("4c4c4544-0042-3610-8030-b8c04f4d4b31")
