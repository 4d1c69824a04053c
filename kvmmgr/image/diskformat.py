"""What qemu-img says of a disk image whose format headers.py has already told (and checked):
asked with that format given (`-f`), never letting it probe. A body that is not an image (an
HTML error page served with 200) reads as "raw", so raw files are also sniffed: real disks
have NUL bytes in their first sectors, text never does."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvmmgr.errors import StepError
from kvmmgr.image import headers
from kvmmgr.system import proc

SNIFF_BYTES = 4096


@dataclass(frozen=True)
class DiskInfo:
    format: str
    virtual_size: int


def inspect(path: Path, what: str, fmt: str) -> DiskInfo:
    """qemu-img's view of the image at `path` in format `fmt`; StepError naming `what` if it
    is not a usable, standalone disk."""
    info = _info(path, fmt)
    if "backing-filename" in info or "data-file" in info.get("format-specific", {}).get("data", {}):
        # A base must stand alone: one that names another file could make QEMU open any
        # file of the pod (headers.py refuses those first; this is qemu-img's word on it).
        raise StepError(f"{what} names a backing file of its own: expected a standalone image")
    for extent in info.get("format-specific", {}).get("data", {}).get("extents", []):
        if Path(str(extent.get("filename", ""))).name != path.name:
            raise StepError(f"{what} has an extent in another file: expected one file")
    if fmt == "raw":
        with path.open("rb") as handle:
            head = handle.read(SNIFF_BYTES)
        if looks_like_text(head):
            preview = head[:60].decode("utf-8", "replace").split("\n", 1)[0].strip()
            raise StepError(f"{what} is not a disk image: it starts with {preview!r}")
    return DiskInfo(fmt, int(info.get("virtual-size", 0)))


def identify(path: Path, what: str) -> DiskInfo:
    """A disk image found in place (in the cache, not fetched by us): told and checked by its
    headers first, then by qemu-img. In place, only qcow2 and raw are used."""
    sniffed = headers.sniff(path, what)
    if sniffed.format not in ("qcow2", "raw"):
        raise StepError(
            f"{what} is {sniffed.format}, used in place: expected qcow2 or raw there (an image "
            "fetched into the cache, from outside it, is converted: point IMG_SOURCE there)"
        )
    return inspect(path, what, sniffed.format)


def virtual_size(path: Path) -> int:
    """The size the guest sees of a disk of our own (the VM's overlay)."""
    return int(_info(path, "qcow2")["virtual-size"])


def _info(path: Path, fmt: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(
        proc.run(["qemu-img", "info", "--output=json", "-f", fmt, str(path)])
    )
    return info


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
