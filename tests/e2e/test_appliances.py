"""Appliances as other hypervisors export them, booted by `kvm-manager run`: the test guest
converted to each disk format and packed as an OVA; then each disk bus and NIC model on `pc`
and `q35`, UEFI (and Secure Boot, which refuses our unsigned loader), data disks and the
SMBIOS identity, each as the guest itself reports it (its KVMTEST_HW console line)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from podlab import appliances
from podlab.console import marker
from podlab.lab import HOSTNAME, KvmManager, PodLab
from tests.e2e.conftest import BOOT_TIMEOUT, boot, guest_sh

MiB = 1 << 20
UEFI_MEMORY = "512"  # OVMF keeps a share of the guest's memory; GRUB runs out at 256 MiB
# What each choice looks like from inside the guest: the disk's drivers up to its PCI
# controller, and the NIC's driver.
BUS_DRIVERS = {
    "virtio": "virtio_blk,virtio-pci",
    "scsi": "sd,virtio_scsi,virtio-pci",
    "sata": "sd,ahci",
    "ide": "sd,ata_piix",
}
NIC_DRIVERS = {
    "virtio": "virtio_net",
    "e1000": "e1000",
    "e1000e": "e1000e",
    "rtl8139": "8139cp",  # QEMU's RTL8139 is a C+ chip, which 8139too leaves to 8139cp
    "vmxnet3": "vmxnet3",
}
SUFFIXES = {"vmdk-stream": "vmdk", "vhd-fixed": "vhd"}


def hardware(vm: KvmManager) -> dict[str, str]:
    return marker(vm.console.wait_for(r"^KVMTEST_HW ", BOOT_TIMEOUT))


def data_disks(hw: dict[str, str]) -> list[str]:
    """`serial:bytes` of each disk but the boot disk, by serial (the kernel names them in
    the order it finds them, which is not the guest's business: its fstab names serials)."""
    return sorted(disk.split(":", 1)[1] for disk in hw["data"].split(",") if disk)


def planned(lab: PodLab, **env: str) -> dict[str, object]:
    done = lab.cli("plan", "--json", **env)
    assert done.returncode == 0, done.stderr
    plan: dict[str, object] = json.loads(done.stdout)
    return plan


def guest_bytes(image: Path, fmt: str = "qcow2") -> int:
    info = subprocess.run(
        ["qemu-img", "info", "-f", fmt, "--output=json", str(image)],
        capture_output=True,
        check=True,
    )
    size: int = json.loads(info.stdout)["virtual-size"]
    return size


def assert_same_content(lab: PodLab, guest_image: Path) -> None:
    """The guest reads, from its disk, the very initramfs the build put there."""
    built = hashlib.sha256((guest_image.parent / "initrd.gz").read_bytes()).hexdigest()
    assert guest_sh(lab, "sha256sum /mnt/disk/initrd.gz").split()[0] == built


@pytest.mark.parametrize("kind", [kind for kind in appliances.FORMATS if kind != "qcow2"])
def test_the_guest_boots_from_each_disk_format(
    kind: str, guest_image: Path, tmp_path: Path
) -> None:
    name = f"appliance.{SUFFIXES.get(kind, kind)}"
    export = appliances.convert(guest_image, kind, tmp_path / name)
    fmt = appliances.FORMATS[kind][0]
    with PodLab(tmp_path, export) as lab:
        vm = boot(lab)
        hw = hardware(vm)
        # VHD rounds the size up to a whole CHS geometry: the guest sees the export's size
        assert hw["disk"] == "vda" and int(hw["disk_bytes"]) == guest_bytes(export, fmt), hw
        assert_same_content(lab, guest_image)
        converted = "image: converting" in vm.log.text
        assert converted == (kind != "raw"), vm.log.text  # raw is used in place, as qcow2


def test_an_ova_boots_with_its_data_disk_and_the_hardware_its_ovf_declares(
    guest_image: Path, tmp_path: Path
) -> None:
    boot_disk = appliances.convert(guest_image, "vmdk-stream", tmp_path / "kvmtest-disk1.vmdk")
    blank = tmp_path / "blank.raw"
    blank.write_bytes(b"\0" * (24 * MiB))
    data_disk = appliances.convert(blank, "vmdk-stream", tmp_path / "kvmtest-disk2.vmdk")
    descriptor = appliances.ovf(
        [(boot_disk.name, guest_bytes(boot_disk, "vmdk")), (data_disk.name, 24 * MiB)],
        memory_mib=320, cpus=1, nics=("E1000",), bus="ide",
    )  # fmt: skip
    export = appliances.ova(tmp_path / "kvmtest.ova", descriptor, [boot_disk, data_disk])
    with PodLab(tmp_path, export) as lab:
        vm = boot(lab, VM_MEMORY=None)  # the OVF's 320 MiB, not the lab's 256
        hw = hardware(vm)
        assert hw["disk_drivers"] == BUS_DRIVERS["ide"] and hw["nic"] == "e1000", hw
        assert data_disks(hw) == [f"kvmdata1:{24 * MiB}"], hw
        assert_same_content(lab, guest_image)
        assert "disk bus ide, NIC model e1000" in vm.log.text, vm.log.text
        argv = Path(f"/proc/{vm.pid}/cmdline").read_bytes().split(b"\0")
        assert argv[argv.index(b"-m") + 1] == b"320", argv


# Every bus on both machines (IDE exists only on pc), each with another NIC model.
MATRIX = [
    ("pc", "virtio", "e1000"),
    ("pc", "scsi", "e1000e"),
    ("pc", "sata", "rtl8139"),
    ("pc", "ide", "vmxnet3"),
    ("q35", "virtio", "virtio"),
    ("q35", "scsi", "rtl8139"),
    ("q35", "sata", "e1000"),
]


@pytest.mark.parametrize(("machine", "bus", "nic"), MATRIX)
def test_each_disk_bus_and_nic_model(lab: PodLab, machine: str, bus: str, nic: str) -> None:
    data_file = lab.volumes / "data.img"  # a PVC in filesystem mode, holding a raw disk
    data_file.write_bytes(b"\0" * (16 * MiB))
    vm = boot(
        lab, VM_MACHINE=machine, VM_DISK_BUS=bus, VM_NIC_MODEL=nic,
        VM_DATA_DISKS=f"32M {data_file}",
    )  # fmt: skip
    hw = hardware(vm)
    assert hw["disk_drivers"] == BUS_DRIVERS[bus] and hw["nic"] == NIC_DRIVERS[nic], hw
    assert hw["efi"] == "no"
    # the data disks in their order, each with its serial number and size
    assert data_disks(hw) == [f"kvmdata1:{32 * MiB}", f"kvmdata2:{16 * MiB}"], hw
    # the SMBIOS identity derives from the host name, the same as `plan` says
    machine_plan = planned(lab, VM_MACHINE=machine, VM_DISK_BUS=bus, VM_NIC_MODEL=nic)
    assert hw["serial"] == machine_plan["hardware"]["serial"], machine_plan  # type: ignore[index]
    assert guest_sh(lab, "cat /sys/class/dmi/id/sys_vendor").strip() == "QEMU"


def test_uefi_keeps_the_vms_variables_and_secure_boot_refuses_an_unsigned_loader(
    lab: PodLab,
) -> None:
    serial, uuid = "APPLIANCE-0042", "6b1f3c2e-8d4a-4e5f-9a7b-0c1d2e3f4a5b"
    env = {"VM_FIRMWARE": "uefi", "VM_MEMORY": UEFI_MEMORY, "VM_SERIAL": serial, "VM_UUID": uuid}
    vm = boot(lab, VM_MACHINE="q35", VM_DISK_BUS="sata", **env)
    hw = hardware(vm)
    assert (hw["efi"], hw["serial"], hw["uuid"]) == ("yes", serial, uuid), hw
    variables = lab.volumes / "image" / f"{HOSTNAME}.efivars.fd"
    assert variables.stat().st_mode & 0o777 == 0o660  # root's, and QEMU's group's, who writes it
    first = variables.stat().st_ino
    vm.kill()
    vm = boot(lab, VM_MACHINE="pc", VM_DISK_BUS="ide", **env)  # UEFI on pc as well
    assert hardware(vm)["efi"] == "yes"
    assert variables.stat().st_ino == first and "(kept)" in vm.log.text
    vm.kill()

    # Secure Boot with Microsoft's keys enrolled: our GRUB is signed by nobody.
    variables.unlink()
    vm = lab.start(VM_SECURE_BOOT="true", **env)
    vm.console.wait_for(r"Access Denied", BOOT_TIMEOUT)
    assert "KVMTEST_INIT" not in vm.console.text
