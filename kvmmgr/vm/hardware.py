"""The virtual hardware, decided: the user's settings first, then what an appliance's OVF
declares, then what suits a guest that knows nothing (virtio on `pc`, BIOS). Pure."""

from __future__ import annotations

import hashlib
import uuid

from kvmmgr.config import DISK_BUSES, NIC_MODELS, DiskBus, Firmware, NicModel, VmSettings
from kvmmgr.errors import ConfigError
from kvmmgr.image.appliance import Appliance
from kvmmgr.vm.qemu import HardwarePlan, VmPlan

# The SMBIOS identity derives from the host name: the same on every start, another per VM.
SMBIOS_NAMESPACE = uuid.UUID("a3c6e1f2-5b7d-4f0e-9c1a-2d8b6e4f7a90")


def build_hardware(
    settings: VmSettings, appliance: Appliance | None, vm: VmPlan, nic_count: int, notes: list[str]
) -> HardwarePlan:
    """`vm`: memory and vCPUs already decided (an OVF's among them); `nic_count`: the NICs
    the VM gets, one per attached pod interface."""
    given = settings.hardware
    ovf = appliance or Appliance("", ())
    taken = _sizes_taken(settings, ovf, vm)
    firmware: Firmware = given.firmware or ("uefi" if given.secure_boot else "bios")
    if given.firmware is None and ovf.firmware == "uefi":
        firmware = "uefi"
        taken.append("firmware uefi")
    machine = given.machine or ("q35" if given.secure_boot else "pc")
    bus = given.disk_bus or _bus(ovf.disk_bus, machine)
    if given.disk_bus is None and bus is not None:
        taken.append(f"disk bus {bus}")
    nic = given.nic_model or _nic(ovf.nic_models)
    if given.nic_model is None and nic is not None:
        taken.append(f"NIC model {nic}")
    if taken:
        notes.append(f"from the OVF of {ovf.name}: {', '.join(taken)} (VM_* settings override it)")
    if len(ovf.nic_models) > nic_count:
        notes.append(
            f"the OVF of {ovf.name} declares {len(ovf.nic_models)} NICs: the VM gets "
            f"{nic_count}, one per attached pod interface (ATTACH_IFACES)"
        )
    if given.secure_boot and firmware != "uefi":
        raise ConfigError.bad_value(
            "VM_SECURE_BOOT", "true", "false without UEFI (VM_FIRMWARE=uefi)"
        )
    # TCG emulates `host` poorly; qemu64 is what every legacy guest knows.
    cpu = given.cpu_model or ("host" if vm.accel == "kvm" else "qemu64")
    if cpu == "host" and vm.accel != "kvm":
        raise ConfigError.bad_value("VM_CPU_MODEL", "host", "a named model under TCG (no KVM here)")
    digest = hashlib.sha256(f"kvm-manager:smbios:{vm.hostname}".encode()).hexdigest()
    return HardwarePlan(
        machine=machine,
        firmware=firmware,
        secure_boot=given.secure_boot,
        disk_bus=bus or "virtio",
        nic_model=nic or "virtio",
        cpu_model=cpu,
        serial=given.serial or f"KVM-{digest[:16].upper()}",
        uuid=given.uuid or uuid.uuid5(SMBIOS_NAMESPACE, vm.hostname),
        balloon=given.balloon,
    )


def _sizes_taken(settings: VmSettings, ovf: Appliance, vm: VmPlan) -> list[str]:
    taken = []
    if settings.memory_mib is None and ovf.memory_mib == vm.memory_mib:
        taken.append(f"memory {vm.memory_mib} MiB")
    if settings.cpus is None and ovf.cpus == vm.cpus:
        taken.append(f"{vm.cpus} vCPU{'s' if vm.cpus > 1 else ''}")
    return taken


def _bus(declared: str | None, machine: str) -> DiskBus | None:
    """The OVF's controller as a bus of ours: IDE on q35 becomes SATA (q35 has no IDE)."""
    if declared == "ide" and machine == "q35":
        return "sata"
    return next((bus for bus in DISK_BUSES if bus == declared), None)


def _nic(declared: tuple[str, ...]) -> NicModel | None:
    return next((model for model in NIC_MODELS if declared and model == declared[0]), None)
