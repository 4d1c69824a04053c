"""Where the VM's disks are, as data: the shared base image and the VM's own overlay. Pure;
cache.py makes them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

from kvmmgr.config import ImageSettings
from kvmmgr.image import unpack
from kvmmgr.image.sources import ImageSource, LocalSource


@dataclass(frozen=True)
class DiskPlan:
    source: ImageSource | None
    base: Path
    sha256: str | None  # expected sha256 of the bytes of `source` (IMG_SHA256)
    overlay: Path
    retries: int
    ca_bundle: Path | None
    size: int | None = None  # the VM's disk size (VM_DISK_SIZE); None: the base's


def _in_cache(source: ImageSource | None, image_dir: Path) -> TypeGuard[LocalSource]:
    """A local image already in the cache, not compressed: it is the base itself."""
    return (
        isinstance(source, LocalSource)
        and source.path.parent == image_dir
        and unpack.by_name(source.name) is None
    )


def build_disks(image: ImageSettings, hostname: str) -> DiskPlan:
    base = image.image_dir / image.target
    source = image.source
    if _in_cache(source, image.image_dir):
        base = source.path  # used in place, never copied
    return DiskPlan(
        source=source,
        base=base,
        sha256=image.sha256,
        overlay=image.vm_dir / f"{hostname}.qcow2",
        retries=image.retries,
        ca_bundle=image.ca_bundle,
        size=image.disk_size,
    )
