"""What a disk image is, read from its own headers before any QEMU tool opens it: its format,
and whether it names another file. A downloaded image is the adversary's: one that names a
backing file, an external data file, a parent disk or a descriptor's extents would make QEMU
(or qemu-img, which opens them too) read any file of the pod as the VM's disk.

Told by content, never by name: qcow2, raw, VMDK (monolithic sparse, stream-optimized), VHD
(QEMU's vpc; fixed, dynamic), VHDX, VDI, and an OVA (a tar). Anything else is refused.
"""

from __future__ import annotations

import re
import struct
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from kvmmgr.errors import StepError

Format = Literal["qcow2", "raw", "vmdk", "vpc", "vhdx", "vdi", "ova"]
SECTOR = 512
MAX_DESCRIPTOR = 1 << 20  # bytes of a VMDK's embedded descriptor that are read
QCOW2_EXTERNAL_DATA = 1 << 2  # incompatible feature bit
QCOW2_DATA_FILE_EXTENSION = 0x44415441
VMDK_ALONE = {"monolithicSparse", "streamOptimized"}  # the kinds that are one file
VHD_DIFFERENCING = 4
VDI_KINDS = {1: "dynamic", 2: "fixed", 3: "undo", 4: "differencing"}
VHDX_REGIONS = 192 << 10  # the region table's offset
VHDX_METADATA = uuid.UUID("8b7ca206-4790-4b9a-b8fe-575f050f886e")
VHDX_FILE_PARAMETERS = uuid.UUID("caa16737-fa36-4d43-b3b6-33f0aa44e76b")
VHDX_PARENT_LOCATOR = uuid.UUID("a8d35f2d-b30b-454d-abf7-d3d84834ab0c")
VHDX_HAS_PARENT = 1 << 1
# Formats qemu-img knows that are refused: what they are, for the message.
OTHER_MAGICS = {
    b"QEVM": "Parallels", b"WithoutFreeSpace": "Parallels", b"QED\0": "QED",
    b"COWD": "VMware ESX sparse (COWD)", b"LUKS\xba\xbe": "LUKS-encrypted",
    b"#!/bin/sh\n#V2.0": "cloop", b"Bochs Virtual HD": "Bochs",
}  # fmt: skip


@dataclass(frozen=True)
class Sniffed:
    format: Format
    detail: str = ""  # e.g. "stream-optimized", "dynamic"


@contextmanager
def _intact(what: str) -> Iterator[None]:
    """A header cut short (a hostile or truncated file) is refused like any bad image."""
    try:
        yield
    except struct.error:
        raise StepError(f"{what}: its header is cut short: expected an intact image") from None


def sniff(path: Path, what: str) -> Sniffed:
    """The image's format; StepError naming `what` when it names any other file, or is of a
    format that is not supported."""
    with _intact(what), path.open("rb") as image:
        head = image.read(4096)
        size = image.seek(0, 2)
        for magic, name in OTHER_MAGICS.items():
            if head.startswith(magic):
                raise StepError(f"{what} is a {name} image: not a supported format")
        if head.startswith(b"QFI\xfb"):
            return _qcow2(image, head, what)
        if head.startswith(b"KDMV"):
            return _vmdk(image, head, what)
        if head.lstrip().startswith(b"# Disk DescriptorFile"):
            raise StepError(
                f"{what} is a VMDK descriptor, which names its data in other files: expected "
                "a monolithic sparse or stream-optimized VMDK (one file; `qemu-img convert "
                "-O vmdk -o subformat=streamOptimized` makes one)"
            )
        if head.startswith(b"vhdxfile"):
            return _vhdx(image, what)
        if head[0x40:0x44] == struct.pack("<I", 0xBEDA107F):
            return _vdi(head, what)
        if head.startswith(b"conectix"):
            return _vhd(head, what)
        if size >= SECTOR:
            image.seek(size - SECTOR)
            footer = image.read(SECTOR)
            if footer.startswith(b"conectix"):
                return _vhd(footer, what)
        if head[257:262] == b"ustar":
            return Sniffed("ova")
    return Sniffed("raw")


def check_overlay(path: Path, what: str, base: Path) -> None:
    """The VM's own disk, found on its volume: a qcow2 backed by `base` and nothing else
    (whoever can write the volume could point it at any file of the pod)."""
    with _intact(what), path.open("rb") as image:
        head, backing = _backing(image, what)
        if backing != str(base.absolute()):
            raise StepError(
                f"{what} is backed by {backing or 'nothing'!r}: expected its base {base}"
            )
        _qcow2(image, head, what, backing_allowed=True)


def backing_of(path: Path, what: str) -> str:
    """The backing file a qcow2 names in its header ("" for none), as written: a name only,
    not yet a file to open (check_overlay and the disk policy decide what it may be)."""
    with _intact(what), path.open("rb") as image:
        return _backing(image, what)[1]


def _backing(image: BinaryIO, what: str) -> tuple[bytes, str]:
    head = image.read(4096)
    if not head.startswith(b"QFI\xfb"):
        raise StepError(f"{what} is not a qcow2 image: expected the VM's own disk")
    offset, length = struct.unpack_from(">QI", head, 8)
    image.seek(offset)
    backing = image.read(min(length, 4096)).decode("utf-8", "replace") if offset else ""
    return head, backing


def _qcow2(image: BinaryIO, head: bytes, what: str, *, backing_allowed: bool = False) -> Sniffed:
    version, backing_offset = struct.unpack_from(">IQ", head, 4)
    if backing_offset and not backing_allowed:
        raise StepError(f"{what} names a backing file of its own: expected a standalone image")
    if version >= 3:
        (incompatible,) = struct.unpack_from(">Q", head, 72)
        (header_length,) = struct.unpack_from(">I", head, 100)
        if incompatible & QCOW2_EXTERNAL_DATA:
            raise StepError(f"{what} keeps its data in an external file: expected one file")
    else:
        header_length = 72
    image.seek(header_length)
    for _ in range(1024):  # header extensions, up to the end marker
        entry = image.read(8)
        if len(entry) < 8:
            break
        kind, length = struct.unpack(">II", entry)
        if kind == 0:
            break
        if kind == QCOW2_DATA_FILE_EXTENSION:
            raise StepError(f"{what} names an external data file: expected one file")
        image.seek((length + 7) // 8 * 8, 1)
    return Sniffed("qcow2")


def _vmdk(image: BinaryIO, head: bytes, what: str) -> Sniffed:
    """A sparse extent header with its descriptor embedded: QEMU reads this one file, but a
    descriptor may name a parent disk (a differencing VMDK), which it would open too."""
    (flags,) = struct.unpack_from("<I", head, 8)
    offset, length = struct.unpack_from("<QQ", head, 28)
    descriptor = ""
    if offset and length:
        image.seek(offset * SECTOR)
        raw = image.read(min(length * SECTOR, MAX_DESCRIPTOR))
        descriptor = raw.split(b"\0", 1)[0].decode("latin-1")
    fields = dict(re.findall(r'^\s*(\w+)\s*=\s*"?([^"\n]*)"?\s*$', descriptor, re.MULTILINE))
    kind = fields.get("createType", "streamOptimized" if flags & (1 << 16) else "")
    if kind and kind not in VMDK_ALONE:
        raise StepError(
            f"{what} is a {kind} VMDK, made of several files: expected a monolithic sparse "
            "or stream-optimized one"
        )
    parent = fields.get("parentCID", "ffffffff").lower()
    if parent != "ffffffff" or "parentFileNameHint" in fields:
        raise StepError(
            f"{what} is a differencing VMDK that names a parent disk: expected one file"
        )
    return Sniffed("vmdk", "stream-optimized" if kind == "streamOptimized" else "sparse")


def _vhd(footer: bytes, what: str) -> Sniffed:
    (kind,) = struct.unpack_from(">I", footer, 60)
    if kind == VHD_DIFFERENCING:
        raise StepError(f"{what} is a differencing VHD that names a parent disk: expected one file")
    return Sniffed("vpc", {2: "fixed", 3: "dynamic"}.get(kind, f"type {kind}"))


def _vdi(head: bytes, what: str) -> Sniffed:
    (kind,) = struct.unpack_from("<I", head, 0x4C)
    name = VDI_KINDS.get(kind, f"type {kind}")
    if kind not in (1, 2):
        raise StepError(f"{what} is a {name} VDI, which needs another disk: expected one file")
    return Sniffed("vdi", name)


def _vhdx(image: BinaryIO, what: str) -> Sniffed:
    """The metadata region's file parameters say whether the disk has a parent."""
    image.seek(VHDX_REGIONS)
    table = image.read(64 << 10)
    if table[:4] != b"regi":
        raise StepError(f"{what}: a VHDX without its region table: expected an intact image")
    (count,) = struct.unpack_from("<I", table, 8)
    for n in range(min(count, 2047)):
        guid, offset, _length = struct.unpack_from("<16sQI", table, 16 + 32 * n)
        if uuid.UUID(bytes_le=guid) == VHDX_METADATA:
            if _vhdx_has_parent(image, offset):
                raise StepError(
                    f"{what} is a differencing VHDX that names a parent disk: expected one file"
                )
            return Sniffed("vhdx")
    raise StepError(f"{what}: a VHDX without metadata: expected an intact image")


def _vhdx_has_parent(image: BinaryIO, region: int) -> bool:
    image.seek(region)
    table = image.read(64 << 10)
    if table[:8] != b"metadata":
        return True  # unreadable: treated as the worst case
    (count,) = struct.unpack_from("<H", table, 10)
    for n in range(min(count, 2047)):
        guid, offset, _length = struct.unpack_from("<16sII", table, 32 + 32 * n)
        item = uuid.UUID(bytes_le=guid)
        if item == VHDX_PARENT_LOCATOR:
            return True
        if item == VHDX_FILE_PARAMETERS:
            image.seek(region + offset)
            _block_size, flags = struct.unpack("<II", image.read(8))
            if flags & VHDX_HAS_PARENT:
                return True
    return False
