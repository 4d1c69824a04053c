"""The shared base image, fetched once per cache and verified.

Nothing is renamed to NAME before it is complete and verified, so a start never uses a
partial or wrong image; a failed or interrupted start leaves at most the hidden work files
(records.py lists them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, assert_never

from kvmmgr.errors import ConfigError, StepError
from kvmmgr.image import diskformat, transfer, unpack
from kvmmgr.image.cachelock import CacheLock
from kvmmgr.image.disks import DiskPlan
from kvmmgr.image.overlay import check_size_fits_base
from kvmmgr.image.progress import size
from kvmmgr.image.records import BaseRecord, as_json, hidden, read_record, text_of
from kvmmgr.image.sources import HttpSource, LocalSource
from kvmmgr.system.files import write_atomic

log = logging.getLogger("kvmmgr")


def check_available(plan: DiskPlan) -> None:
    """Read-only, before any side effect: can the base image be had at all?"""
    if plan.ca_bundle is not None and not plan.ca_bundle.is_file():
        raise ConfigError.bad_value("IMG_CA_BUNDLE", str(plan.ca_bundle), "an existing PEM file")
    if plan.base.exists():
        if plan.size is not None and not plan.overlay.exists():
            check_size_fits_base(plan)
        return
    if plan.source is None:
        raise ConfigError(
            f"IMG_SOURCE is not set and the base image {plan.base} does not exist: "
            "expected IMG_SOURCE to name the image to fetch"
        )
    if isinstance(plan.source, LocalSource) and not plan.source.path.is_file():
        raise ConfigError.bad_value("IMG_SOURCE", str(plan.source), "an existing image file")


def holder(hostname: str) -> str:
    """Who holds the cache lock, as those who wait for it are told."""
    return f"{hostname} (pid {os.getpid()})"


@dataclass(frozen=True)
class BaseImage:
    """What the image step did."""

    path: Path
    fetched: Fetched | None = None  # None: it was there already
    sha256: Literal["", "now", "when fetched"] = ""  # when IMG_SHA256 was checked
    meanwhile: bool = False  # fetched by another start while this one waited

    def __str__(self) -> str:
        if self.fetched is not None:
            return str(self.fetched)
        checked = {"": "", "now": " (sha256 verified)"}
        said = f"using {self.path}" + checked.get(self.sha256, " (sha256 verified when fetched)")
        return said + (" (fetched meanwhile by another start)" if self.meanwhile else "")


@dataclass(frozen=True)
class Fetched:
    source: str
    path: Path
    format: str
    size: int
    seconds: float
    unpacked_from: str | None
    sha256_checked: bool

    def __str__(self) -> str:
        unpacked = f", unpacked from {self.unpacked_from}" if self.unpacked_from else ""
        checked = ", sha256 verified" if self.sha256_checked else ""
        return (
            f"fetched {self.source} -> {self.path} ({self.format}, {size(self.size)} in "
            f"{self.seconds:.1f} s{unpacked}{checked})"
        )


def ensure_base(plan: DiskPlan, holder: str) -> BaseImage:
    """Make sure the base image is present and verified."""
    if plan.base.exists():
        return _verified(plan)
    plan.base.parent.mkdir(parents=True, exist_ok=True)
    lock = CacheLock(hidden(plan.base, ".lock"), holder)
    shared = lock.acquire(waiting=lambda: _part_progress(plan))
    if not shared:
        log.warning(
            "image: %s has no file locks: starts sharing it may download at the same time",
            plan.base.parent,
        )
    try:
        if plan.base.exists():
            return dataclasses.replace(_verified(plan), meanwhile=True)
        return BaseImage(plan.base, fetched=_fetch(plan, _work_files(plan, shared)))
    finally:
        lock.release()


def _work_files(plan: DiskPlan, shared: bool) -> transfer.WorkFiles:
    # Without a lock, starts of different pods must not share a part: each keeps its own
    # (by host name, so that the same pod still resumes its own after a restart).
    tag = "" if shared else f".{socket.gethostname()}"
    return transfer.WorkFiles(
        part=hidden(plan.base, f"{tag}.part"),
        state=hidden(plan.base, f"{tag}.part.json"),
        unpacked=hidden(plan.base, f"{tag}.unpacked"),
    )


def _part_progress(plan: DiskPlan) -> str:
    try:
        return f"{size(hidden(plan.base, '.part').stat().st_size)} downloaded so far"
    except OSError:
        return ""


def _fetch(plan: DiskPlan, files: transfer.WorkFiles) -> Fetched:
    assert plan.source is not None  # check_available ran first
    started = time.monotonic()
    receiver = transfer.Receiver(
        files, hashing=plan.sha256 is not None, compression=unpack.by_name(plan.source.name)
    )
    try:
        match plan.source:
            case LocalSource(path=path):
                received = transfer.copy_local(path, receiver)
            case HttpSource(url=url):
                received = transfer.download(
                    url, receiver, retries=plan.retries, ca_bundle=plan.ca_bundle
                )
            case unknown:
                assert_never(unknown)
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
    record = BaseRecord(
        text_of(plan.source), stat.st_size, stat.st_mtime_ns, received.sha256, info.format
    )
    write_atomic(hidden(plan.base, ".json"), as_json(record), mode=0o644)
    os.replace(received.image, plan.base)
    _fsync_dir(plan.base.parent)
    files.remove()
    return Fetched(
        str(plan.source),
        plan.base,
        info.format,
        stat.st_size,
        time.monotonic() - started,
        received.compression,
        plan.sha256 is not None,
    )


def _verified(plan: DiskPlan) -> BaseImage:
    """A base that is present: trusted as it is, unless IMG_SHA256 asks for a check. The
    check hashes the file once and records the result, so later starts only compare."""
    if plan.sha256 is None:
        return BaseImage(plan.base)
    record = read_record(hidden(plan.base, ".json"), plan.base)
    if record is not None and record.sha256 is not None:
        if record.sha256 != plan.sha256:
            raise StepError(
                f"the cached {plan.base} was fetched with sha256 {record.sha256}, but "
                f"IMG_SHA256 is {plan.sha256}: use another IMG_TARGET for another image"
            )
        return BaseImage(plan.base, sha256="when fetched")
    log.info("image: hashing %s once to check IMG_SHA256", plan.base)
    digest = _sha256_of(plan.base)
    if digest != plan.sha256:
        raise StepError(
            f"the cached {plan.base} has sha256 {digest}, but IMG_SHA256 is {plan.sha256}"
        )
    stat = plan.base.stat()
    fmt = diskformat.inspect(plan.base, str(plan.base)).format
    record = BaseRecord(text_of(plan.source), stat.st_size, stat.st_mtime_ns, digest, fmt)
    write_atomic(hidden(plan.base, ".json"), as_json(record), mode=0o644)
    return BaseImage(plan.base, sha256="now")


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
