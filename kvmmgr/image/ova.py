"""An OVA: a tar holding an OVF descriptor, its disks and perhaps a manifest of their digests.
Read as the adversary's: regular members with plain names only, a bounded descriptor without
a DTD, every disk checked against the manifest when there is one.

The OVF says which disks the appliance has and in which order (the first is the boot disk),
and what hardware it expects: memory, CPUs, NICs, the disk controller, the firmware. Those
become defaults that the user's settings override (plan.py).
"""

from __future__ import annotations

import hashlib
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from kvmmgr.errors import StepError
from kvmmgr.image.appliance import Appliance

MAX_OVF = 4 << 20
MAX_MEMBERS = 256
CHUNK = 1 << 20
# CIM resource types (DMTF DSP1041) of the items that matter here
CPU, MEMORY, IDE, SCSI, ETHERNET, DISK, SATA = 3, 4, 5, 6, 10, 17, 20
BUSES = {IDE: "ide", SCSI: "scsi", SATA: "sata"}
NIC_MODELS = {"e1000": "e1000", "e1000e": "e1000e", "vmxnet3": "vmxnet3", "virtio": "virtio"}
UNITS = {"": 0, "kilo": 10, "mega": 20, "giga": 30, "tera": 40}


def read(path: Path, what: str) -> Appliance:
    """The OVF of the OVA at `path`, checked: StepError naming `what` if it is not sound."""
    with _open(path, what) as tar:
        members = _members(tar, what)
        ovf = next((m for m in members if m.name.lower().endswith(".ovf")), None)
        if ovf is None:
            raise StepError(f"{what} is a tar without an OVF descriptor: expected an OVA")
        if ovf.size > MAX_OVF:
            raise StepError(f"{what}: its OVF is larger than {MAX_OVF >> 20} MiB")
        text = _read_member(tar, ovf).decode("utf-8", "replace")
    appliance = parse_ovf(text, f"{what} ({ovf.name})")
    names = {m.name for m in members}
    missing = [disk for disk in appliance.disks if disk not in names]
    if missing:
        raise StepError(f"{what}: its OVF names disks the OVA lacks: {', '.join(missing)}")
    return appliance


def extract(path: Path, what: str, member: str, into: Path) -> None:
    """One disk of the OVA written to `into`, checked against the manifest's digest."""
    with _open(path, what) as tar:
        members = {m.name: m for m in _members(tar, what)}
        manifest = _manifest(tar, members)
        source = tar.extractfile(members[member])
        assert source is not None  # a regular member (_members checked)
        algorithm, expected = manifest.get(member, ("sha256", None))
        digest = hashlib.new(algorithm)
        with into.open("wb") as out:
            for chunk in _chunks(source):
                digest.update(chunk)
                out.write(chunk)
    if expected is not None and digest.hexdigest() != expected:
        raise StepError(f"{what}: {member} does not match the OVA's manifest ({algorithm})")


def parse_ovf(text: str, what: str) -> Appliance:
    if re.search(r"<!(DOCTYPE|ENTITY)", text):
        raise StepError(f"{what}: an OVF with a DTD or entities: expected plain XML")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise StepError(f"{what}: not valid XML: {exc}") from None
    files = {_attr(f, "id"): _attr(f, "href") for f in _all(root, "File")}
    disks = {_attr(d, "diskId"): files.get(_attr(d, "fileRef"), "") for d in _all(root, "Disk")}
    items = [_item(node) for node in root.iter() if _local(node.tag).endswith("Item")]
    attached = [_disk_of(item, disks) for item in items if item.get("ResourceType") == str(DISK)]
    order = [disk for disk in attached if disk] or [href for href in disks.values() if href]
    if not order:
        raise StepError(f"{what}: an OVF without disks: expected at least the boot disk")
    return Appliance(
        name=next((_text(n) for n in _all(root, "Name")), "") or "appliance",
        disks=tuple(dict.fromkeys(order)),
        memory_mib=_quantity(items, MEMORY, 20),
        cpus=_quantity(items, CPU, 0),
        nic_models=tuple(_nic_model(i) for i in items if i.get("ResourceType") == str(ETHERNET)),
        disk_bus=_boot_bus(items),
        firmware="uefi" if _firmware(root) == "efi" else None,
    )


@contextmanager
def _open(path: Path, what: str) -> Iterator[tarfile.TarFile]:
    """The tar, read lazily: a header or member cut short may show at any read in the block
    (the cache's own write errors there are left to the import)."""
    try:
        tar = tarfile.open(path, "r:")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise StepError(f"{what} is not a readable tar (OVA): {exc}") from None
    with tar:
        try:
            yield tar
        except (tarfile.TarError, EOFError) as exc:
            raise StepError(f"{what} is not a readable tar (OVA): {exc}") from None


def _members(tar: tarfile.TarFile, what: str) -> list[tarfile.TarInfo]:
    members = []
    for n, member in enumerate(tar):
        if n >= MAX_MEMBERS:
            raise StepError(f"{what}: an OVA of more than {MAX_MEMBERS} files")
        if not member.isfile() or member.name.startswith("/") or ".." in member.name.split("/"):
            raise StepError(
                f"{what}: {member.name!r} is not a plain file of the OVA: expected only files"
            )
        members.append(member)
    return members


def _manifest(
    tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo]
) -> dict[str, tuple[str, str]]:
    """`SHA256(disk1.vmdk)= 0123...` lines of the .mf member: name -> (algorithm, hex)."""
    found: dict[str, tuple[str, str]] = {}
    for name, member in members.items():
        if name.lower().endswith(".mf") and member.size <= MAX_OVF:
            text = _read_member(tar, member).decode("ascii", "replace")
            for algorithm, file, digest in re.findall(
                r"^(SHA1|SHA256|SHA512)\((.+)\)\s*=\s*([0-9a-fA-F]+)\s*$", text, re.MULTILINE
            ):
                found[file] = (algorithm.lower(), digest.lower())
    return found


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    assert handle is not None
    return handle.read(MAX_OVF + 1)


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while chunk := handle.read(CHUNK):
        yield chunk


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _all(root: ET.Element, name: str) -> Iterator[ET.Element]:
    return (node for node in root.iter() if _local(node.tag) == name)


def _attr(node: ET.Element, name: str) -> str:
    return next((v for k, v in node.attrib.items() if _local(k) == name), "")


def _text(node: ET.Element) -> str:
    return (node.text or "").strip()[:256]


def _item(node: ET.Element) -> dict[str, str]:
    return {_local(child.tag): _text(child) for child in node}


def _disk_of(item: dict[str, str], disks: dict[str, str]) -> str:
    resource = item.get("HostResource", "")  # ovf:/disk/vmdisk1 (or /file/...)
    return disks.get(resource.rsplit("/", 1)[-1], "")


def _quantity(items: list[dict[str, str]], kind: int, shift: int) -> int | None:
    """The first item of `kind`'s VirtualQuantity, in 2**shift units (MiB: 20)."""
    for item in items:
        if item.get("ResourceType") == str(kind) and item.get("VirtualQuantity", "").isdigit():
            value = int(item["VirtualQuantity"]) << _unit_shift(item.get("AllocationUnits", ""))
            return max(value >> shift, 1) if shift else int(item["VirtualQuantity"])
    return None


def _unit_shift(units: str) -> int:
    """`byte * 2^20`, `MegaBytes`, `GigaBytes`...: the power of two the quantity is in."""
    power = re.search(r"2\s*\^\s*(\d+)", units)
    if power:
        return int(power.group(1))
    for prefix, shift in UNITS.items():
        if prefix and units.lower().startswith(prefix):
            return shift
    return 20  # OVF's default for memory is MegaBytes


def _nic_model(item: dict[str, str]) -> str:
    return NIC_MODELS.get(item.get("ResourceSubType", "").lower(), "e1000")


def _boot_bus(items: list[dict[str, str]]) -> str | None:
    """The controller (its InstanceID is a disk's Parent) of the first disk."""
    controllers = {i.get("InstanceID", ""): i.get("ResourceType", "") for i in items}
    for item in items:
        if item.get("ResourceType") == str(DISK):
            kind = controllers.get(item.get("Parent", ""), "")
            return BUSES.get(int(kind)) if kind.isdigit() else None
    return None


def _firmware(root: ET.Element) -> str:
    for node in _all(root, "Config"):
        if _attr(node, "key") == "firmware":
            return _attr(node, "value").lower()
    return ""
