"""Is this file a disk image, and of which format? qemu-img knows the formats. A body that is
not an image (an HTML error page served with 200) probes as "raw", so raw files are also
sniffed: real disks have NUL bytes in their first sectors, text never does."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kvmmgr.errors import StepError
from kvmmgr.system import proc

SNIFF_BYTES = 4096


@dataclass(frozen=True)
class DiskInfo:
    format: str
    virtual_size: int


def inspect(path: Path, what: str) -> DiskInfo:
    """The format of the image at `path`; StepError naming `what` if it is not a usable base."""
    info = json.loads(proc.run(["qemu-img", "info", "--output=json", str(path)]))
    if "backing-filename" in info:
        # A base must stand alone: a downloaded image that names a backing file of its own
        # could make QEMU open any file of the pod (a known risk of format probing).
        raise StepError(f"{what} names a backing file of its own: expected a standalone image")
    fmt = str(info["format"])
    if fmt == "raw":
        with path.open("rb") as handle:
            head = handle.read(SNIFF_BYTES)
        if looks_like_text(head):
            preview = head[:60].decode("utf-8", "replace").split("\n", 1)[0].strip()
            raise StepError(f"{what} is not a disk image: it starts with {preview!r}")
    return DiskInfo(fmt, int(info.get("virtual-size", 0)))


def virtual_size(path: Path) -> int:
    """The size the guest sees of a disk of our own (the VM's overlay)."""
    info = json.loads(proc.run(["qemu-img", "info", "--output=json", str(path)]))
    return int(info["virtual-size"])


def looks_like_text(head: bytes) -> bool:
    """An empty file, or text (no NUL, valid UTF-8): an error page, a redirect notice."""
    if not head:
        return True
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3  # cut inside a multi-byte character: still text
    return True
