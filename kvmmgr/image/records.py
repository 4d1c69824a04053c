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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvmmgr.image import diskformat
from kvmmgr.image.disks import DiskPlan
from kvmmgr.image.sources import ImageSource


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
    try:
        raw = json.loads(path.read_text())
        record = BaseRecord(**{**raw, "data_disks": tuple(raw.get("data_disks", ()))})
        stat = describes.stat()
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if (record.size, record.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
        return None
    return record


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
