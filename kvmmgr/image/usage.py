"""Which VM disks use which base of the shared cache: one record per VM, IMAGE_DIR/.vms/HOST.json,
so that `cache prune` never removes a base that a disk still needs.

A start writes its VM's record while it holds the base's cache lock (cache.ensure_base), and
prune reads the records while it holds the same lock: a base is either seen in use, or gone
before the start looks for it (and then fetched again). A record names every base the disk
needs, one as a rule, two while `rebase` moves it; it is rewritten, not added to, so the old
base's claim goes when the disk moves on.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from kvmmgr import documents
from kvmmgr.errors import short
from kvmmgr.system.files import UnfitFile, read_regular, write_atomic

log = logging.getLogger("kvmmgr")

FOLDER = ".vms"  # in IMAGE_DIR: never a base's name, which a hidden file cannot be
MAX_SIZE = 64 << 10  # bytes: a record takes a few hundred
FIELDS: dict[str, type | tuple[type, ...]] = {
    "vm": str, "disk": str, "bases": list, "last_started": (float, int, type(None)),
}  # fmt: skip


@dataclass(frozen=True)
class Usage:
    vm: str  # the host name: the disk is VM_DIR/HOST.qcow2
    disk: str
    bases: tuple[str, ...]  # file names in IMAGE_DIR
    last_started: float | None = None  # unix time of its last start; None: not started here


@dataclass(frozen=True)
class Damaged:
    path: Path
    why: str

    def __str__(self) -> str:
        return f"{self.path}: not a record as kvm-manager writes it: {self.why}"


def path_of(image_dir: Path, vm: str) -> Path:
    return image_dir / FOLDER / f"{vm}.json"


def write(image_dir: Path, usage: Usage) -> None:
    """The VM's record, replacing the one it had. Only a host name makes a file name here:
    config and the pod checked it is one (no slash, no dot first)."""
    folder = image_dir / FOLDER
    folder.mkdir(mode=0o755, exist_ok=True)
    data = {
        "vm": usage.vm,
        "disk": usage.disk,
        "bases": list(usage.bases),
        "last_started": usage.last_started,
    }
    body = json.dumps(data, indent=2, sort_keys=True) + "\n"
    write_atomic(path_of(image_dir, usage.vm), body.encode(), mode=0o644)


def of(image_dir: Path, vm: str) -> Usage | None:
    """The VM's own record, when it has a sound one."""
    return next((u for u in read_all(image_dir)[0] if u.vm == vm), None)


def read_all(image_dir: Path) -> tuple[list[Usage], list[Damaged]]:
    """Every VM's record, and the files in the folder that are not one (the cache is a volume
    other pods write: a damaged record is reported, never trusted, never a traceback)."""
    folder = image_dir / FOLDER
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return [], []
    found, damaged = [], []
    for name in names:
        path = folder / name
        if name.startswith("."):
            continue  # write_atomic's temporary file, mid-write (a host name has no dot first)
        try:
            found.append(_parse(path, read_regular(path, MAX_SIZE)))
        except FileNotFoundError:
            continue  # removed meanwhile
        except (UnfitFile, documents.Invalid) as exc:
            damaged.append(Damaged(path, str(exc)))
    return found, damaged


def _parse(path: Path, data: bytes) -> Usage:
    given = documents.fields(documents.load_json(data), FIELDS)
    bases = given["bases"]
    if not all(isinstance(b, str) and b and "/" not in b for b in bases):
        raise documents.Invalid(f"bases is {short(bases)}: expected file names")
    if path.name != f"{given['vm']}.json":
        raise documents.Invalid(f"vm is {short(given['vm'])}: expected {path.stem}")
    last = given["last_started"]
    return Usage(given["vm"], given["disk"], tuple(bases), None if last is None else float(last))
