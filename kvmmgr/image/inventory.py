"""The shared cache as a whole: what it holds (`cache list`) and what nothing needs any more
(`cache prune`). Finding out is pure reading; removing happens base by base under the base's
cache lock, the one every start takes to fetch a base or to claim it (usage.py), so a prune
is safe while other pods start and fetch.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmmgr import values
from kvmmgr.errors import EXIT_OK, ConfigError, StepError
from kvmmgr.image import headers, usage
from kvmmgr.image.appliance import plain_name
from kvmmgr.image.cachelock import CacheLock
from kvmmgr.image.progress import size
from kvmmgr.image.records import BaseRecord, hidden, read_record

# What a start leaves beside a base while it works (records.py lists them); a prune removes
# those whose base's lock is free: nothing is working on them.
# (A lock file is no leftover: its holder removes it, and so does the next start or prune.)
WORK_SUFFIXES = (".part.json", ".part", ".unpacked", ".converted", ".ova-member")
HOLDER = f"cache prune (pid {os.getpid()})"


@dataclass(frozen=True)
class Base:
    name: str
    size: int  # bytes on the volume, with an OVA's further disks
    record: BaseRecord | None  # None: put there by hand, not yet checked by a start
    users: tuple[usage.Usage, ...] = ()

    @property
    def data_disks(self) -> tuple[str, ...]:
        """An OVA's further disks, as the cache names them (NAME-disk2...): a record on a
        shared volume may say anything, and a prune removes what it names."""
        given = self.record.data_disks if self.record else ()
        return tuple(d for d in given if _ova_base(d) == self.name and plain_name(d))

    def as_data(self) -> dict[str, Any]:
        record = self.record
        return {
            "name": self.name,
            "size": self.size,
            "format": record.format if record else None,
            "sha256": record.sha256 if record else None,
            "source": record.source if record else None,
            "fetched": record.mtime_ns / 1e9 if record else None,
            "data_disks": list(self.data_disks),
            "vms": [
                {"vm": u.vm, "disk": u.disk, "last_started": u.last_started} for u in self.users
            ],
        }


@dataclass(frozen=True)
class Cache:
    folder: Path
    bases: tuple[Base, ...]
    leftovers: tuple[tuple[str, str, int], ...]  # (file, the base it belongs to, size)
    damaged: tuple[usage.Damaged, ...] = ()
    missing: tuple[tuple[str, str], ...] = ()  # (vm, base) a VM claims, not in the cache

    def as_data(self) -> dict[str, Any]:
        return {
            "image_dir": str(self.folder),
            "bases": [base.as_data() for base in self.bases],
            "leftovers": [{"file": f, "base": b, "size": n} for f, b, n in self.leftovers],
            "damaged_records": [str(d) for d in self.damaged],
            "missing_bases": [{"vm": vm, "base": b} for vm, b in self.missing],
        }


def read(folder: Path) -> Cache:
    """What the cache holds. Reads only."""
    claims, damaged = usage.read_all(folder)
    entries = _entries(folder)
    bases, leftovers = [], []
    owned: set[str] = set()  # an OVA's further disks, counted with their base
    claimed = {name for u in claims for name in u.bases}
    for name, entry in sorted(entries.items()):
        if name.startswith(".") or not stat.S_ISREG(entry.st_mode):
            continue
        record = _record(folder / name)
        if not _is_base(folder / name, record, claimed):
            continue  # VM_DIR may be IMAGE_DIR: the VMs' disks and UEFI variables live here too
        base = Base(name, entry.st_size, record, tuple(u for u in claims if name in u.bases))
        owned.update(base.data_disks)
        bases.append(base)
    bases = [
        Base(b.name, b.size + sum(_size(entries, d) for d in b.data_disks), b.record, b.users)
        for b in bases
        if b.name not in owned
    ]
    for name, entry in sorted(entries.items()):
        owner = _work_file_of(name)
        if owner is not None and stat.S_ISREG(entry.st_mode):
            leftovers.append((name, owner, entry.st_size))
    present = {b.name for b in bases} | owned
    missing = tuple((u.vm, b) for u in claims for b in u.bases if b not in present)
    return Cache(folder, tuple(bases), tuple(leftovers), tuple(damaged), missing)


@dataclass
class Pruned:
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    freed: int = 0
    bases: int = 0
    leftovers: int = 0


def prune(folder: Path, dry_run: bool) -> Pruned:
    """Remove each base no VM claims, and each leftover work file whose base nobody is
    working on. A base is looked at again under its lock: a start may claim it meanwhile."""
    cache = read(folder)
    if cache.damaged:
        raise ConfigError(
            f"{cache.damaged[0]}: a damaged record could claim any base, so nothing is pruned "
            "(remove it if its VM is gone; a start of that VM writes it again)"
        )
    done = Pruned()
    for base in cache.bases:
        if base.users:
            done.kept.append(f"kept {base.name}: used by {', '.join(u.vm for u in base.users)}")
            continue
        with _locked(folder, base.name) as free:
            if not free:
                done.kept.append(f"kept {base.name}: a start holds its lock")
                continue
            if not dry_run and any(base.name in u.bases for u in usage.read_all(folder)[0]):
                done.kept.append(f"kept {base.name}: claimed by a start meanwhile")
                continue
            files = [base.name, *base.data_disks, hidden(Path(base.name), ".json").name]
            _remove(folder, files, dry_run, done, f"{base.name} ({size(base.size)}, unused)")
            done.bases += 1
    for name, owner, length in cache.leftovers:
        with _locked(folder, owner, _ova_base(owner)) as free:
            if not free:
                done.kept.append(f"kept {name}: a start is working on {owner}")
                continue
            _remove(folder, [name], dry_run, done, f"{name} ({size(length)}, left over)")
            done.leftovers += 1
    return done


def list_command(env: Mapping[str, str], *, as_json: bool) -> int:
    cache = read(_image_dir(env))
    if as_json:
        print(json.dumps(cache.as_data(), indent=2, sort_keys=True))
    else:
        print("\n".join(describe(cache)))
    return EXIT_OK


def prune_command(env: Mapping[str, str], *, dry_run: bool) -> int:
    done = prune(_image_dir(env), dry_run)
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} {what}" for what in done.removed] + done.kept
    lines.append(
        f"{verb} {done.bases} base(s) and {done.leftovers} leftover file(s): {size(done.freed)}"
    )
    print("\n".join(lines))
    return EXIT_OK


def describe(cache: Cache) -> list[str]:
    lines = [f"{cache.folder}: {len(cache.bases)} base(s)"]
    for base in cache.bases:
        record = base.record
        facts = [size(base.size)]
        if record is not None:
            facts.append(record.format)
            facts.append(f"sha256 {record.sha256}" if record.sha256 else "sha256 not taken")
            facts.append(f"fetched {_when(record.mtime_ns / 1e9)}")
            facts.append(f"from {record.source}" if record.source else "placed by hand")
        else:
            facts.append("not yet checked by a start")
        lines.append(f"{base.name}: {', '.join(facts)}")
        if base.data_disks:
            lines.append(f"  with its data disks {', '.join(base.data_disks)}")
        for user in base.users:
            started = _when(user.last_started) if user.last_started else "never"
            lines.append(f"  used by {user.vm} ({user.disk}), last started {started}")
        if not base.users:
            lines.append("  used by no VM: `kvm-manager cache prune` removes it")
    for name, owner, length in cache.leftovers:
        lines.append(f"left over: {name} ({size(length)}, of {owner})")
    lines += [f"VM {vm} claims {base}, which is not in the cache" for vm, base in cache.missing]
    lines += [f"damaged: {damaged}" for damaged in cache.damaged]
    return lines


def _image_dir(env: Mapping[str, str]) -> Path:
    folder = values.abs_path(env, "IMAGE_DIR", "/image")
    if not folder.is_dir():
        raise ConfigError.bad_value("IMAGE_DIR", str(folder), "the image cache's directory")
    return folder


def _entries(folder: Path) -> dict[str, os.stat_result]:
    found = {}
    with os.scandir(folder) as listing:
        for entry in listing:
            try:
                found[entry.name] = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed meanwhile
    return found


def _record(path: Path) -> BaseRecord | None:
    try:
        return read_record(hidden(path, ".json"), path)
    except ConfigError:
        return None  # a damaged base record only means the next start checks the base again


def _size(entries: Mapping[str, os.stat_result], name: str) -> int:
    entry = entries.get(name)
    return entry.st_size if entry is not None else 0


def _work_file_of(name: str) -> str | None:
    """The base a work file `.NAME<suffix>` belongs to (records.py names them)."""
    if not name.startswith("."):
        return None
    for suffix in WORK_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix) + 1:
            return name[1 : -len(suffix)]
    return None


def _is_base(path: Path, record: BaseRecord | None, claimed: set[str]) -> bool:
    """A base is what the cache recorded as one (a start records every base it uses), or
    what a VM claims; a VM's disk never is, even with a record of its own beside it (that
    one describes its base: its size and time are not the disk's) or named like a base: a
    base is a standalone image, a VM's boot disk a qcow2 on one."""
    if record is None and path.name not in claimed:
        return False  # put there by hand and never used, or not a base at all: left alone
    try:
        return headers.backing_of(path, str(path)) == ""
    except StepError:
        return True  # not a qcow2 (a raw base), or one cut short: no VM disk either way


def _ova_base(name: str) -> str | None:
    """An OVA's further disk NAME-diskN is extracted while NAME's lock is held."""
    stem, _, number = name.rpartition("-disk")
    return stem if stem and number.isdigit() else None


class _locked:
    """The cache locks of the given bases, all or none, without waiting: True when held."""

    def __init__(self, folder: Path, *names: str | None) -> None:
        self.locks = [CacheLock(folder / f".{n}.lock", HOLDER) for n in names if n]
        self.held: list[CacheLock] = []

    def __enter__(self) -> bool:
        for lock in self.locks:
            got = lock.take()
            if got == "no locks":
                self.__exit__()
                raise StepError(
                    f"{lock.path.parent} has no file locks: a prune cannot know what starts "
                    "are doing, so it removes nothing"
                )
            if got == "busy":
                self.__exit__()
                return False
            self.held.append(lock)
        return True

    def __exit__(self, *exc: object) -> None:
        for lock in self.held:
            lock.release()
        self.held = []


def _remove(folder: Path, names: list[str], dry_run: bool, done: Pruned, what: str) -> None:
    freed = 0
    for name in names:
        path = folder / name
        try:
            freed += path.lstat().st_size
            if not dry_run:
                path.unlink()
        except FileNotFoundError:
            continue
    done.removed.append(what)
    done.freed += freed


def _when(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix))
