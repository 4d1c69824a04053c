"""Which formats a base is used in, and the one-time conversion of the others to qcow2.

qcow2 and raw are used in place, as the overlay's backing file. VMDK, VHD (vpc), VHDX and VDI
are converted once, into the cache, under the same lock as the download:
- the VM's backing chain then holds only qcow2 and raw, the formats QEMU develops first and
  tests most (its other drivers are mainly there to import images);
- a stream-optimized VMDK is compressed grain by grain, and a VHD's or VHDX's block table
  is read through a cache of its own: as a qcow2 the guest's random reads are plain;
- the converted image is ours, made by qemu-img, checked again before it is used.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from kvmmgr.image import diskformat
from kvmmgr.image.progress import INTERVAL, duration, size
from kvmmgr.system import proc

log = logging.getLogger("kvmmgr")
IN_PLACE = frozenset({"qcow2", "raw"})
_PERCENT = re.compile(r"\((\d+(?:\.\d+)?)/100%\)")


def to_qcow2(source: Path, fmt: str, target: Path, virtual_size: int) -> diskformat.DiskInfo:
    """Convert `source` (in `fmt`) to a qcow2 at `target`, with progress lines; qemu-img's
    view of the result, which must stand alone like any base."""
    started = last = time.monotonic()

    def report(piece: str) -> None:
        nonlocal last
        found = _PERCENT.search(piece)
        now = time.monotonic()
        if found and now - last >= INTERVAL:
            last = now
            percent = float(found.group(1))
            left = (now - started) * (100 - percent) / percent if percent else 0.0
            log.info(
                "image: converting %s to qcow2: %.0f%% of %s, %s left",
                fmt,
                percent,
                size(virtual_size),
                duration(left),
            )

    argv = ["qemu-img", "convert", "-p", "-f", fmt, "-O", "qcow2", str(source), str(target)]
    proc.watch(argv, report)
    return diskformat.inspect(target, f"the qcow2 made from {source.name}", "qcow2")
