"""What the image cache and the VM's disks record about a base image, beside it (and beside
each overlay, for the base it was made on), and the hidden names of the work files:

In IMAGE_DIR, beside the base image `NAME`:
  .NAME.lock                      the cache lock (cachelock.py), while a start holds it
  .NAME.part, .NAME.part.json     a transfer under way, resumable (transfer.py)
  .NAME.unpacked                  the image being unpacked from a compressed transfer
  .NAME.json                      what the base is: source, size, sha256 (a BaseRecord)
In VM_DIR, beside the overlay `HOST.qcow2`:
  .HOST.qcow2.json                the base it was made on (a BaseRecord)
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvmmgr import documents
from kvmmgr.errors import ConfigError, short
from kvmmgr.image import diskformat
from kvmmgr.image.convert import IN_PLACE
from kvmmgr.image.disks import DiskPlan
from kvmmgr.image.sources import ImageSource
from kvmmgr.system.files import UnfitFile, read_regular

MAX_SIZE = 1 << 20  # bytes: a record takes a few hundred, an OVA's a few more
_SHA256 = re.compile(r"[0-9a-f]{64}")
FIELDS: dict[str, type | tuple[type, ...]] = {
    "source": documents.TEXT_OR_NULL, "size": int, "mtime_ns": int,
    "sha256": documents.TEXT_OR_NULL, "format": str, "converted_from": documents.TEXT_OR_NULL,
    "appliance": (dict, type(None)), "data_disks": list,
}  # fmt: skip
OPTIONAL = ("converted_from", "appliance", "data_disks")  # older records lack them


@dataclass(frozen=True)
class BaseRecord:
    """What a base image is, written beside it when it is fetched (and beside each overlay,
    for the base it was made on). `mtime_ns` ties the record to the file it describes."""

    source: str | None
    size: int
    mtime_ns: int
    sha256: str | None  # of the transferred bytes, when they were hashed
    format: str
    converted_from: str | None = None  # the format it came in, when it was converted
    appliance: dict[str, Any] | None = None  # an OVA's declared hardware (ova.Appliance)
    data_disks: tuple[str, ...] = ()  # an OVA's further disks, beside the base in the cache


def read_record(path: Path, describes: Path) -> BaseRecord | None:
    """The record at `path`, if it is (still) about the file `describes`."""
    record = load_record(path)
    try:
        stat = describes.stat()
    except OSError:
        return None
    if record is None or (record.size, record.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
        return None
    return record


def load_record(path: Path) -> BaseRecord | None:
    """The record at `path`; None when there is none. The cache is a volume other pods
    write too: a record that does not hold up is an error naming it."""
    try:
        given = documents.fields(
            documents.load_json(read_regular(path, MAX_SIZE)), FIELDS, OPTIONAL
        )
        disks = given.get("data_disks", [])
        if not all(isinstance(name, str) for name in disks):
            raise documents.Invalid(f"data_disks is {short(disks)}: expected file names")
        if given["sha256"] is not None and not _SHA256.fullmatch(given["sha256"]):
            raise documents.Invalid(f"sha256 is {short(given['sha256'])}: expected 64 hex digits")
        if given["format"] not in IN_PLACE:  # a base is one, or was converted to qcow2
            raise documents.Invalid(f"format is {short(given['format'])}: expected qcow2 or raw")
    except FileNotFoundError:
        return None
    except (UnfitFile, documents.Invalid) as exc:
        raise ConfigError(
            f"{path}: not a record as kvm-manager writes it: {exc} (remove it if it is "
            "damaged: the image is then checked again)"
        ) from None
    return BaseRecord(**{**given, "data_disks": tuple(disks)})


def base_record(plan: DiskPlan) -> BaseRecord:
    """The base as it is now: its own record when it has one, else read off the file."""
    record = read_record(hidden(plan.base, ".json"), plan.base)
    if record is not None:
        return record
    stat = plan.base.stat()
    fmt = diskformat.identify(plan.base, str(plan.base)).format
    return BaseRecord(text_of(plan.source), stat.st_size, stat.st_mtime_ns, None, fmt)


def text_of(source: ImageSource | None) -> str | None:
    return None if source is None else str(source)


def as_json(record: BaseRecord) -> bytes:
    return (json.dumps(dataclasses.asdict(record), indent=2, sort_keys=True) + "\n").encode()


def hidden(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}{suffix}")
