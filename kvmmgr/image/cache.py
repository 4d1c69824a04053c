"""The shared base image, fetched once per cache and verified.

Nothing is renamed to NAME before it is complete and verified, so a start never uses a
partial or wrong image; a failed or interrupted start leaves at most the hidden work files
(records.py lists them).
"""

from __future__ import annotations

import contextlib
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
from kvmmgr.image import convert, diskformat, headers, ova, transfer, unpack, usage
from kvmmgr.image.appliance import BaseFacts, from_record, plain_name
from kvmmgr.image.cachelock import CacheLock
from kvmmgr.image.disks import DiskPlan
from kvmmgr.image.overlay import check_size_fits_base
from kvmmgr.image.progress import size
from kvmmgr.image.records import (
    BaseRecord,
    as_json,
    hidden,
    load_record,
    read_record,
    text_of,
)
from kvmmgr.image.sources import HttpSource, LocalSource
from kvmmgr.image.usage import Usage
from kvmmgr.system.files import write_atomic

log = logging.getLogger("kvmmgr")


def check_available(plan: DiskPlan) -> None:
    """Read-only, before any side effect: can the base image be had at all? (And is the VM
    disk's record of its base one to go by: the disk step reads it after the image step.)"""
    if plan.overlay.exists():
        load_record(hidden(plan.overlay, ".json"))
    if plan.ca_bundle is not None and not plan.ca_bundle.is_file():
        raise ConfigError.bad_value("IMG_CA_BUNDLE", str(plan.ca_bundle), "an existing PEM file")
    if plan.rebase_from is not None and not plan.rebase_from.exists():
        raise ConfigError(
            f"the VM's disk {plan.overlay} was made on {plan.rebase_from}, which is gone from "
            "the cache: VM_DISK_POLICY=rebase reads it to move the disk; restore it, or set "
            f"VM_DISK_POLICY=reimage to make the disk afresh on {plan.base.name}"
        )
    if plan.base.exists():
        if plan.size is not None and not plan.overlay.exists():
            check_size_fits_base(plan)
        return
    if plan.wanted is not None:
        raise ConfigError(
            f"the VM's disk {plan.overlay} was made on {plan.base}, which is gone from the "
            f"cache (VM_DISK_POLICY=keep keeps it on that base): restore it, or set "
            f"VM_DISK_POLICY=reimage to make the disk afresh on {plan.wanted.name}"
        )
    if plan.source is None:
        raise ConfigError(
            f"IMG_SOURCE is not set and the base image {plan.base} does not exist: "
            "expected IMG_SOURCE to name the image to fetch"
        )
    if isinstance(plan.source, LocalSource) and not plan.source.path.is_file():
        raise ConfigError.bad_value("IMG_SOURCE", str(plan.source), "an existing image file")


def base_facts(plan: DiskPlan) -> BaseFacts:
    """What the base's record says of it: nothing before it is fetched (or unrecorded)."""
    record = read_record(hidden(plan.base, ".json"), plan.base) if plan.base.exists() else None
    if record is None:
        return BaseFacts()
    names = tuple(name for name in record.data_disks if plain_name(name))
    return BaseFacts(from_record(record.appliance), names)


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
    data_disks: tuple[str, ...] = ()  # an OVA's further disks, beside the base

    def __str__(self) -> str:
        unpacked = f", unpacked from {self.unpacked_from}" if self.unpacked_from else ""
        checked = ", sha256 verified" if self.sha256_checked else ""
        data = f"; data disks {', '.join(self.data_disks)}" if self.data_disks else ""
        return (
            f"fetched {self.source} -> {self.path} ({self.format}, {size(self.size)} in "
            f"{self.seconds:.1f} s{unpacked}{checked}){data}"
        )


def ensure_base(plan: DiskPlan, holder: str, claim: Usage | None = None) -> BaseImage:
    """Make sure the base image is present and verified. `claim`: the VM's record of the
    bases its disk uses, written under the base's lock, so that a `cache prune` either sees it
    or has removed the base before this start looks (and fetches it again)."""
    if plan.base.exists() and not os.access(plan.base.parent, os.W_OK):
        return _verified(plan)  # a read-only cache: nothing to record, and nothing is pruned
    plan.base.parent.mkdir(parents=True, exist_ok=True)
    lock = CacheLock(hidden(plan.base, ".lock"), holder)
    there = plan.base.exists()
    shared = lock.acquire(waiting=lambda: _part_progress(plan))
    if not shared:
        log.warning(
            "image: %s has no file locks: starts sharing it may download at the same time",
            plan.base.parent,
        )
    try:
        before = _record_claim(plan.base.parent, claim) if claim is not None else None
        if plan.base.exists():
            return dataclasses.replace(_verified(plan), meanwhile=not there)
        try:
            return BaseImage(plan.base, fetched=_fetch(plan, _work_files(plan, shared)))
        except BaseException:
            if claim is not None:  # a failed start leaves the cache as it found it
                _restore_claim(plan.base.parent, claim.vm, before)
            raise
    finally:
        lock.release()


def _record_claim(image_dir: Path, claim: Usage) -> Usage | None:
    """Write the VM's claim; the one it replaced."""
    before = usage.of(image_dir, claim.vm)
    try:
        usage.write(image_dir, claim)
    except OSError as exc:  # the VM can still start; only a prune may not know of it
        log.warning(
            "image: cannot record that %s uses %s in %s: %s (`cache prune` may remove it)",
            claim.vm, ", ".join(claim.bases), image_dir / usage.FOLDER, exc.strerror,
        )  # fmt: skip
    return before


def _restore_claim(image_dir: Path, vm: str, before: Usage | None) -> None:
    try:
        if before is not None:
            usage.write(image_dir, before)
        else:
            usage.path_of(image_dir, vm).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # empty: it was made for this claim
                (image_dir / usage.FOLDER).rmdir()
    except OSError as exc:
        log.debug("image: cannot restore %s's claim: %s", vm, exc.strerror)


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
    what = f"IMG_SOURCE {plan.source}"
    work = _Imports(plan.base)
    try:
        received = _receive(plan, files)
        stat = received.image.stat()
        record = _import(plan, received.image, what, work)
        record = dataclasses.replace(record, sha256=received.sha256)
    except transfer.GaveUp:
        raise  # unfinished, not wrong: the part stays for the next start to resume
    except StepError:
        files.remove()
        work.remove()
        raise
    except OSError as exc:  # the cache itself: full, read-only, gone
        files.remove()  # frees what space it took
        work.remove()
        raise StepError(f"cannot write the image to {plan.base.parent}: {exc.strerror}") from exc
    work.commit(record)
    files.remove()
    return Fetched(
        str(plan.source),
        plan.base,
        record.format if not record.converted_from else f"{record.converted_from} -> qcow2",
        stat.st_size,
        time.monotonic() - started,
        received.compression,
        plan.sha256 is not None,
        record.data_disks,
    )


def _receive(plan: DiskPlan, files: transfer.WorkFiles) -> transfer.Received:
    """The source's bytes in the cache (unpacked, hashed on the way)."""
    assert plan.source is not None
    receiver = transfer.Receiver(
        files, hashing=plan.sha256 is not None, compression=unpack.by_name(plan.source.name)
    )
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
    return received


class _Imports:
    """The disks an import makes, each in a hidden work file until all are ready, then
    renamed into place together (the base last: its presence says the import is done)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.ready: list[tuple[Path, Path]] = []  # (work file, final name)
        self.scratch: list[Path] = []

    def work_file(self, final: Path, suffix: str) -> Path:
        path = hidden(final, suffix)
        self.scratch.append(path)
        return path

    def done(self, work: Path, final: Path) -> None:
        self.ready.append((work, final))

    def commit(self, record: BaseRecord) -> None:
        """Each disk made durable, then renamed: a crash never leaves a base whose blocks
        are still only in the page cache (the one place that syncs what becomes a base, so
        a received part that is then converted is never synced for nothing)."""
        for work, _ in self.ready:
            _fsync(work)
        for work, final in sorted(self.ready, key=lambda pair: pair[1] == self.base):
            os.chmod(work, 0o644)
            if final == self.base:
                stat = work.stat()
                record = dataclasses.replace(record, size=stat.st_size, mtime_ns=stat.st_mtime_ns)
                write_atomic(hidden(final, ".json"), as_json(record), mode=0o644)
            os.replace(work, final)
        _fsync_dir(self.base.parent)
        self.remove()

    def remove(self) -> None:
        for path in self.scratch:
            path.unlink(missing_ok=True)


def _import(plan: DiskPlan, image: Path, what: str, work: _Imports) -> BaseRecord:
    """The received image made a base: a disk used in place or converted to qcow2, or an
    OVA's disks, each so."""
    sniffed = headers.sniff(image, what)
    if sniffed.format != "ova":
        fmt, converted = _disk(image, sniffed.format, plan.base, what, work)
        return BaseRecord(text_of(plan.source), 0, 0, None, fmt, converted)
    appliance = ova.read(image, what)
    bases = [plan.base] + [
        plan.base.with_name(f"{plan.base.name}-disk{n}") for n in range(2, len(appliance.disks) + 1)
    ]
    formats = []
    for member, base in zip(appliance.disks, bases, strict=True):
        extracted = work.work_file(base, ".ova-member")
        ova.extract(image, what, member, extracted)
        inner = headers.sniff(extracted, f"{what}: {member}")
        if inner.format == "ova":
            raise StepError(f"{what}: {member} is an OVA inside the OVA: expected a disk")
        formats.append(_disk(extracted, inner.format, base, f"{what}: {member}", work)[1])
    log.info(
        "image: %s is an OVA of %s: %d disk(s) (%s)",
        plan.source,
        appliance.name,
        len(bases),
        ", ".join(filter(None, formats)) or "qcow2",
    )
    return BaseRecord(
        text_of(plan.source), 0, 0, None, "qcow2", "ova",
        dataclasses.asdict(appliance), tuple(str(b.name) for b in bases[1:]),
    )  # fmt: skip


def _disk(image: Path, fmt: str, final: Path, what: str, work: _Imports) -> tuple[str, str | None]:
    """One disk readied for `final`: (its format there, the format it was converted from)."""
    info = diskformat.inspect(image, what, fmt)
    if fmt in convert.IN_PLACE:
        work.done(image, final)
        return fmt, None
    log.info("image: converting %s (%s, %s) to qcow2", what, fmt, size(info.virtual_size))
    target = work.work_file(final, ".converted")
    convert.to_qcow2(image, fmt, target, info.virtual_size)
    work.done(target, final)
    return "qcow2", fmt


def _verified(plan: DiskPlan) -> BaseImage:
    """A base that is present. One without a record (put there by hand, or a source used in
    place) is checked as any fetched image is, once, and recorded. With IMG_SHA256, the file
    is hashed once and the result recorded, so later starts only compare."""
    record = read_record(hidden(plan.base, ".json"), plan.base)
    checked = record is None
    if record is None:
        fmt = diskformat.identify(plan.base, str(plan.base)).format
        stat = plan.base.stat()
        record = BaseRecord(text_of(plan.source), stat.st_size, stat.st_mtime_ns, None, fmt)
    if plan.sha256 is None:
        if checked:
            _keep(plan, record)
        return BaseImage(plan.base)
    if record.sha256 is not None:
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
    _keep(plan, dataclasses.replace(record, sha256=digest))
    return BaseImage(plan.base, sha256="now")


def _keep(plan: DiskPlan, record: BaseRecord) -> None:
    """Record what was found out; a cache that cannot be written (a read-only volume holding
    the image) only means it is found out again at the next start."""
    try:
        write_atomic(hidden(plan.base, ".json"), as_json(record), mode=0o644)
    except OSError as exc:
        log.debug("image: cannot record %s: %s", plan.base, exc.strerror)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(transfer.CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable."""
    _fsync(path, os.O_DIRECTORY)


def _fsync(path: Path, flags: int = 0) -> None:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
