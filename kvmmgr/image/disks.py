"""Where the VM's disks are, as data: the shared base image, the VM's own overlay, and its data
disks. Pure; cache.py fetches the base, overlay.py makes the VM's disks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeGuard, assert_never

from kvmmgr.config import ImageSettings
from kvmmgr.image import unpack
from kvmmgr.image.appliance import plain_name
from kvmmgr.image.sources import ImageSource, LocalSource, NewDisk, PodDisk


@dataclass(frozen=True)
class DataDisk:
    """A disk the VM has besides its boot disk, in a stable place and order, with a stable
    serial number (so that the guest's fstab can name it by id)."""

    path: Path
    serial: str
    kind: Literal["new", "overlay", "pod"]  # made here; over an OVA's disk; the pod's own
    size: int | None = None  # a new disk's
    backing: Path | None = None  # an overlay's: the OVA's disk in the cache

    @property
    def format(self) -> str:
        return "raw" if self.kind == "pod" else "qcow2"


@dataclass(frozen=True)
class DiskPlan:
    source: ImageSource | None
    base: Path
    sha256: str | None  # expected sha256 of the bytes of `source` (IMG_SHA256)
    overlay: Path
    retries: int
    ca_bundle: Path | None
    size: int | None = None  # the VM's disk size (VM_DISK_SIZE); None: the base's
    data: tuple[DataDisk, ...] = ()
    # The base IMG_TARGET names, when the VM's disk keeps the one it was made on instead
    # (VM_DISK_POLICY=keep); `base` is then that one, and `source` None: nothing is fetched.
    wanted: Path | None = None
    reimage: bool = False  # VM_DISK_POLICY=reimage: a disk on another base is made afresh
    rebase_from: Path | None = None  # VM_DISK_POLICY=rebase: the base the disk moves off


def _in_cache(source: ImageSource | None, image_dir: Path) -> TypeGuard[LocalSource]:
    """A local image already in the cache, not compressed: it is the base itself."""
    return (
        isinstance(source, LocalSource)
        and source.path.parent == image_dir
        and unpack.by_name(source.name) is None
    )


def build_disks(
    image: ImageSettings,
    hostname: str,
    appliance_disks: tuple[str, ...] = (),
    made_on: Path | None = None,
) -> DiskPlan:
    """`appliance_disks`: an OVA's further disks, beside the base in the cache. `made_on`: the
    base in the cache that the VM's existing disk was made on (overlay.made_on)."""
    base = image.image_dir / image.target
    source, sha256 = image.source, image.sha256
    if _in_cache(source, image.image_dir):
        base = source.path  # used in place, never copied
    wanted = rebase_from = None
    if made_on is not None and made_on != base and image.disk_policy == "keep":
        base, wanted, source, sha256 = made_on, base, None, None  # a pet keeps its base
    elif made_on is not None and made_on != base and image.disk_policy == "rebase":
        rebase_from = made_on
    data = [
        DataDisk(
            _data_path(image, hostname, n), _serial(n), "overlay", backing=base.with_name(name)
        )
        for n, name in enumerate(filter(plain_name, appliance_disks), start=1)
    ]
    for spec in image.data_disks:
        n = len(data) + 1
        match spec:
            case NewDisk(size=size):
                data.append(DataDisk(_data_path(image, hostname, n), _serial(n), "new", size=size))
            case PodDisk(path=path):
                data.append(DataDisk(path, _serial(n), "pod"))
            case unknown:
                assert_never(unknown)
    return DiskPlan(
        source=source,
        base=base,
        sha256=sha256,
        overlay=image.vm_dir / f"{hostname}.qcow2",
        retries=image.retries,
        ca_bundle=image.ca_bundle,
        size=image.disk_size,
        data=tuple(data),
        wanted=wanted,
        reimage=image.disk_policy == "reimage",
        rebase_from=rebase_from,
    )


def claimed_bases(plan: DiskPlan) -> tuple[str, ...]:
    """The bases the VM's disk needs during this start: while it moves, the old one too."""
    moving = (plan.rebase_from.name,) if plan.rebase_from is not None else ()
    return (*moving, plan.base.name)


def _data_path(image: ImageSettings, hostname: str, number: int) -> Path:
    return image.vm_dir / f"{hostname}-data{number}.qcow2"


def _serial(number: int) -> str:
    return f"kvmdata{number}"  # virtio-blk keeps 20 characters of a serial
