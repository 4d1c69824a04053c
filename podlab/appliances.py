"""Appliances as other hypervisors export them, made from a test guest's disk: every disk
format qemu-img writes, and an OVA (an OVF descriptor, its disks, a SHA256 manifest) as
VMware's exporter lays it out."""

from __future__ import annotations

import hashlib
import subprocess
import tarfile
from pathlib import Path

# (format, qemu-img options) of each disk format, as exported by its hypervisor
FORMATS = {
    "qcow2": ("qcow2", ()),
    "raw": ("raw", ()),
    "vmdk": ("vmdk", ("-o", "subformat=monolithicSparse")),
    "vmdk-stream": ("vmdk", ("-o", "subformat=streamOptimized")),
    "vhd": ("vpc", ("-o", "subformat=dynamic")),
    "vhd-fixed": ("vpc", ("-o", "subformat=fixed")),
    "vhdx": ("vhdx", ()),
    "vdi": ("vdi", ()),
}
CONTROLLERS = {"ide": (5, "PIIX4"), "sata": (20, "vmware.sata.ahci"), "scsi": (6, "lsilogic")}


def convert(source: Path, kind: str, out: Path) -> Path:
    """`source` (any format qemu-img reads) written as `kind` (a key of FORMATS)."""
    fmt, options = FORMATS[kind]
    subprocess.run(["qemu-img", "convert", "-O", fmt, *options, str(source), str(out)], check=True)
    return out


def ovf(
    disks: list[tuple[str, int]],
    *,
    memory_mib: int = 512,
    cpus: int = 1,
    nics: tuple[str, ...] = ("E1000",),
    bus: str = "ide",
    firmware: str = "bios",
) -> str:
    """An OVF 1.0 descriptor of one VM with these disks (file name, capacity in bytes)."""
    kind, subtype = CONTROLLERS[bus]
    files = "".join(
        f'<File ovf:id="file{n}" ovf:href="{name}"/>' for n, (name, _) in enumerate(disks)
    )
    sections = "".join(
        f'<Disk ovf:diskId="vmdisk{n}" ovf:fileRef="file{n}" ovf:capacity="{capacity}" '
        'ovf:capacityAllocationUnits="byte" ovf:format="http://www.vmware.com/interfaces/'
        'specifications/vmdk.html#streamOptimized"/>'
        for n, (_, capacity) in enumerate(disks)
    )
    memory = (
        "<rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>"
        f"<rasd:VirtualQuantity>{memory_mib}</rasd:VirtualQuantity>"
    )
    items = [
        _item(1, 3, "Virtual CPUs", f"<rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity>"),
        _item(2, 4, "Memory", memory),
        _item(
            3, kind, "Disk controller", f"<rasd:ResourceSubType>{subtype}</rasd:ResourceSubType>"
        ),
    ]
    for n in range(len(disks)):
        where = (
            f"<rasd:AddressOnParent>{n}</rasd:AddressOnParent>"
            f"<rasd:HostResource>ovf:/disk/vmdisk{n}</rasd:HostResource><rasd:Parent>3</rasd:Parent>"
        )
        items.append(_item(10 + n, 17, f"Hard disk {n + 1}", where))
    for n, model in enumerate(nics):
        items.append(
            _item(20 + n, 10, f"Network adapter {n + 1}",
                  f"<rasd:ResourceSubType>{model}</rasd:ResourceSubType>")
        )  # fmt: skip
    config = f'<vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="{firmware}"/>'
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" '
        'xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" '
        'xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/'
        'CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf">'
        f"<References>{files}</References>"
        f"<DiskSection><Info>Virtual disks</Info>{sections}</DiskSection>"
        '<VirtualSystem ovf:id="kvmtest"><Name>kvmtest-appliance</Name>'
        f"<VirtualHardwareSection><Info>Hardware</Info>{''.join(items)}{config}"
        "</VirtualHardwareSection></VirtualSystem></Envelope>\n"
    )


def _item(instance: int, kind: int, name: str, more: str) -> str:
    return (
        f"<Item><rasd:ElementName>{name}</rasd:ElementName>"
        f"<rasd:InstanceID>{instance}</rasd:InstanceID>"
        f"<rasd:ResourceType>{kind}</rasd:ResourceType>{more}</Item>"
    )


def ova(out: Path, descriptor: str, disks: list[Path], *, manifest: bool = True) -> Path:
    """A tar: the OVF first (as the format requires), the manifest, then the disks."""
    work = out.parent
    files = [(work / f"{out.stem}.ovf", descriptor.encode())]
    if manifest:
        lines = [f"SHA256({disk.name})= {_sha256(disk)}\n" for disk in disks]
        files.append((work / f"{out.stem}.mf", "".join(lines).encode()))
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tar:
        for path, data in files:
            path.write_bytes(data)
            tar.add(path, arcname=path.name)
        for disk in disks:
            tar.add(disk, arcname=disk.name)
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
