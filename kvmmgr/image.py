"""The VM's disks: the shared base image (fetched once per cache, verified) and the VM's overlay.

In IMAGE_DIR, beside the base image `NAME`:
  .NAME.lock                      the cache lock (cachelock.py), while a start holds it
  .NAME.part, .NAME.part.json     a transfer under way, resumable (transfer.py)
  .NAME.unpacked                  the image being unpacked from a compressed transfer
  .NAME.json                      what the base is: source, size, sha256 (a BaseRecord)
In VM_DIR, beside the overlay `HOST.qcow2`:
  .HOST.qcow2.json                the base it was made on (a BaseRecord)

Nothing is renamed to NAME before it is complete and verified, so a start never uses a
partial or wrong image; a failed or interrupted start leaves at most the hidden work files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from kvmmgr import diskformat, proc, transfer, unpack
from kvmmgr.cachelock import CacheLock
from kvmmgr.errors import ConfigError, StepError
from kvmmgr.files import write_atomic
from kvmmgr.progress import size

log = logging.getLogger("kvmmgr")


@dataclass(frozen=True)
class DiskPlan:
    source: str | None
    base: Path
    sha256: str | None  # expected sha256 of the bytes of `source` (IMG_SHA256)
    overlay: Path
    retries: int
    ca_bundle: Path | None
    size: int | None = None  # the VM's disk size (VM_DISK_SIZE); None: the base's


@dataclass(frozen=True)
class BaseRecord:
    """What a base image is, written beside it when it is fetched (and beside each overlay,
    for the base it was made on). `mtime_ns` ties the record to the file it describes."""

    source: str | None
    size: int
    mtime_ns: int
    sha256: str | None  # of the transferred bytes, when they were hashed
    format: str


def build_disks(
    *,
    source: str | None,
    image_dir: Path,
    target: str,
    sha256: str | None,
    vm_dir: Path,
    hostname: str,
    retries: int = 5,
    ca_bundle: Path | None = None,
    size: int | None = None,
) -> DiskPlan:
    base = image_dir / target
    local = local_path(source) if source else None
    if local is not None and local.parent == image_dir and unpack.by_name(local.name) is None:
        base = local  # already in the cache: used in place, never copied
    overlay = vm_dir / f"{hostname}.qcow2"
    return DiskPlan(source, base, sha256, overlay, retries, ca_bundle, size)


def check_available(plan: DiskPlan) -> None:
    """Read-only, before any side effect: can the base image be had at all?"""
    if plan.ca_bundle is not None and not plan.ca_bundle.is_file():
        raise ConfigError.bad_value("IMG_CA_BUNDLE", str(plan.ca_bundle), "an existing PEM file")
    if plan.base.exists():
        if plan.size is not None and not plan.overlay.exists():
            _check_size_fits_base(plan)
        return
    if plan.source is None:
        raise ConfigError(
            f"IMG_SOURCE is not set and the base image {plan.base} does not exist: "
            "expected IMG_SOURCE to name the image to fetch"
        )
    local = local_path(plan.source)
    if local is not None and not local.is_file():
        raise ConfigError.bad_value("IMG_SOURCE", plan.source, "an existing image file")


def local_path(source: str) -> Path | None:
    """The file a file:// URL or absolute path names; None for http(s)."""
    if source.startswith("/"):
        return Path(source)
    parts = urlsplit(source)
    return Path(unquote(parts.path)) if parts.scheme == "file" else None


def holder(hostname: str) -> str:
    """Who holds the cache lock, as those who wait for it are told."""
    return f"{hostname} (pid {os.getpid()})"


def ensure_base(plan: DiskPlan, holder: str) -> str:
    """Make sure the base image is present and verified; what was done, for the log."""
    if plan.base.exists():
        return _verified(plan)
    plan.base.parent.mkdir(parents=True, exist_ok=True)
    lock = CacheLock(_hidden(plan.base, ".lock"), holder)
    shared = lock.acquire(waiting=lambda: _part_progress(plan))
    if not shared:
        log.warning(
            "image: %s has no file locks: starts sharing it may download at the same time",
            plan.base.parent,
        )
    try:
        if plan.base.exists():
            return _verified(plan) + " (fetched meanwhile by another start)"
        return _fetch(plan, _work_files(plan, shared))
    finally:
        lock.release()


def _work_files(plan: DiskPlan, shared: bool) -> transfer.WorkFiles:
    # Without a lock, starts of different pods must not share a part: each keeps its own
    # (by host name, so that the same pod still resumes its own after a restart).
    tag = "" if shared else f".{socket.gethostname()}"
    return transfer.WorkFiles(
        part=_hidden(plan.base, f"{tag}.part"),
        state=_hidden(plan.base, f"{tag}.part.json"),
        unpacked=_hidden(plan.base, f"{tag}.unpacked"),
    )


def _hidden(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}{suffix}")


def _part_progress(plan: DiskPlan) -> str:
    try:
        return f"{size(_hidden(plan.base, '.part').stat().st_size)} downloaded so far"
    except OSError:
        return ""


def _fetch(plan: DiskPlan, files: transfer.WorkFiles) -> str:
    assert plan.source is not None  # check_available ran first
    started = time.monotonic()
    receiver = transfer.Receiver(
        files, hashing=plan.sha256 is not None, compression=unpack.by_name(plan.source)
    )
    local = local_path(plan.source)
    try:
        if local is not None:
            received = transfer.copy_local(local, receiver)
        else:
            received = transfer.download(
                plan.source, receiver, retries=plan.retries, ca_bundle=plan.ca_bundle
            )
        if plan.sha256 and received.sha256 != plan.sha256:
            raise StepError(
                f"IMG_SOURCE {plan.source}: sha256 {received.sha256} does not match "
                f"IMG_SHA256 {plan.sha256}; the download was discarded"
            )
        info = diskformat.inspect(received.image, f"IMG_SOURCE {plan.source}")
    except transfer.GaveUp:
        raise  # unfinished, not wrong: the part stays for the next start to resume
    except StepError:
        files.remove()
        raise
    except OSError as exc:  # the cache itself: full, read-only, gone
        files.remove()  # frees what space it took
        raise StepError(f"cannot write the image to {plan.base.parent}: {exc.strerror}") from exc
    os.chmod(received.image, 0o644)
    stat = received.image.stat()
    record = BaseRecord(plan.source, stat.st_size, stat.st_mtime_ns, received.sha256, info.format)
    write_atomic(_hidden(plan.base, ".json"), _json(record), mode=0o644)
    os.replace(received.image, plan.base)
    _fsync_dir(plan.base.parent)
    files.remove()
    seconds = time.monotonic() - started
    unpacked = f", unpacked from {received.compression}" if received.compression else ""
    checked = ", sha256 verified" if plan.sha256 else ""
    return (
        f"fetched {plan.source} -> {plan.base} ({info.format}, {size(stat.st_size)} in "
        f"{seconds:.1f} s{unpacked}{checked})"
    )


def _verified(plan: DiskPlan) -> str:
    """A base that is present: trusted as it is, unless IMG_SHA256 asks for a check. The
    check hashes the file once and records the result, so later starts only compare."""
    if plan.sha256 is None:
        return f"using {plan.base}"
    record = read_record(_hidden(plan.base, ".json"), plan.base)
    if record is not None and record.sha256 is not None:
        if record.sha256 != plan.sha256:
            raise StepError(
                f"the cached {plan.base} was fetched with sha256 {record.sha256}, but "
                f"IMG_SHA256 is {plan.sha256}: use another IMG_TARGET for another image"
            )
        return f"using {plan.base} (sha256 verified when fetched)"
    log.info("image: hashing %s once to check IMG_SHA256", plan.base)
    digest = _sha256_of(plan.base)
    if digest != plan.sha256:
        raise StepError(
            f"the cached {plan.base} has sha256 {digest}, but IMG_SHA256 is {plan.sha256}"
        )
    stat = plan.base.stat()
    fmt = diskformat.inspect(plan.base, str(plan.base)).format
    record = BaseRecord(plan.source, stat.st_size, stat.st_mtime_ns, digest, fmt)
    write_atomic(_hidden(plan.base, ".json"), _json(record), mode=0o644)
    return f"using {plan.base} (sha256 verified)"


def read_record(path: Path, describes: Path) -> BaseRecord | None:
    """The record at `path`, if it is (still) about the file `describes`."""
    try:
        record = BaseRecord(**json.loads(path.read_text()))
        stat = describes.stat()
    except (OSError, ValueError, TypeError):
        return None
    if (record.size, record.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
        return None
    return record


def ensure_overlay(plan: DiskPlan) -> str:
    """Create the VM's own disk on top of the base image, only if it does not exist yet.
    The overlay is the VM's persistent state: it is never recreated, overwritten or rebased;
    it only grows, to VM_DISK_SIZE when that is raised."""
    overlay_record = _hidden(plan.overlay, ".json")
    if plan.overlay.exists():
        _check_same_base(plan, overlay_record)
        return f"reusing {plan.overlay}{_grow(plan)}"
    base = _base_record(plan)
    sized: list[str] = []  # qemu-img's size argument; none: the base's size
    if plan.size is not None:
        _check_size_fits_base(plan)
        _check_room(plan, plan.size)
        sized = [str(plan.size)]
    plan.overlay.parent.mkdir(parents=True, exist_ok=True)
    temp = plan.overlay.with_name(f".{plan.overlay.name}.{os.getpid()}.tmp")
    try:
        proc.run(
            [
                "qemu-img", "create", "-q", "-f", "qcow2", "-F", base.format,
                "-b", str(plan.base.absolute()), str(temp), *sized,
            ]
        )  # fmt: skip
        os.chmod(temp, 0o600)
        write_atomic(overlay_record, _json(base), mode=0o644)
        try:
            os.link(temp, plan.overlay)  # unlike rename, never replaces an existing file
        except FileExistsError:
            return f"reusing {plan.overlay} (created meanwhile by another start)"
    finally:
        temp.unlink(missing_ok=True)
    of = f", {size(plan.size)}" if plan.size is not None else ""
    return f"created {plan.overlay} (qcow2 on {base.format} base {plan.base}{of})"


def _grow(plan: DiskPlan) -> str:
    """Grow the overlay to VM_DISK_SIZE when that is more than it has; never shrink it."""
    if plan.size is None:
        return ""
    now = diskformat.virtual_size(plan.overlay)
    if plan.size < now:
        log.warning(
            "disk: VM_DISK_SIZE %s is less than the disk's %s: a disk never shrinks",
            size(plan.size),
            size(now),
        )
        return ""
    if plan.size == now:
        return ""
    _check_room(plan, plan.size - plan.overlay.stat().st_blocks * 512)
    proc.run(["qemu-img", "resize", "-q", "-f", "qcow2", str(plan.overlay), str(plan.size)])
    return f" (grown from {size(now)} to {size(plan.size)})"


def _check_size_fits_base(plan: DiskPlan) -> None:
    """VM_DISK_SIZE may not cut the base image short: the guest's data would be lost."""
    assert plan.size is not None
    base = diskformat.inspect(plan.base, str(plan.base)).virtual_size
    if plan.size < base:
        raise ConfigError.bad_value(
            "VM_DISK_SIZE",
            size(plan.size),
            f"at least the base image's virtual size, {size(base)} ({plan.base})",
        )


def _check_room(plan: DiskPlan, growth: int) -> None:
    """The disk may come to hold `growth` more bytes: the volume must have them."""
    folder = plan.overlay.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    fs = os.statvfs(folder)
    free = fs.f_bavail * fs.f_frsize
    if growth > free:
        raise ConfigError.bad_value(
            "VM_DISK_SIZE",
            size(plan.size or 0),
            f"a size the volume of {plan.overlay} can hold: it has {size(free)} free",
        )


def _base_record(plan: DiskPlan) -> BaseRecord:
    """The base as it is now: its own record when it has one, else read off the file."""
    record = read_record(_hidden(plan.base, ".json"), plan.base)
    if record is not None:
        return record
    stat = plan.base.stat()
    fmt = diskformat.inspect(plan.base, str(plan.base)).format
    return BaseRecord(plan.source, stat.st_size, stat.st_mtime_ns, None, fmt)


def _check_same_base(plan: DiskPlan, overlay_record: Path) -> None:
    """An overlay on a base that changed would show the VM a disk of mixed contents."""
    try:
        then = BaseRecord(**json.loads(overlay_record.read_text()))
    except (OSError, ValueError, TypeError):
        return  # made before records existed, or by hand: nothing to compare with
    now = _base_record(plan)
    changes = []
    if then.size != now.size:
        changes.append(f"size {then.size} -> {now.size}")
    if then.sha256 and now.sha256 and then.sha256 != now.sha256:
        changes.append(f"sha256 {then.sha256[:12]}... -> {now.sha256[:12]}...")
    if changes:
        raise StepError(
            f"the base image {plan.base} changed since the VM's disk {plan.overlay} was made "
            f"on it ({', '.join(changes)}): the VM would see a corrupt disk, so it is not "
            "started; restore the original base (or point IMG_TARGET at it), or remove the "
            "disk to start afresh"
        )


def _json(record: BaseRecord) -> bytes:
    return (json.dumps(dataclasses.asdict(record), indent=2, sort_keys=True) + "\n").encode()


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(transfer.CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
