"""The VM's own disk: created once with the base's detected format, reused as it is, and
never run on a base that changed under it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import subprocess
from pathlib import Path

import pytest

from kvmmgr.config import ImageSettings
from kvmmgr.errors import ConfigError, StepError
from kvmmgr.image.cache import ensure_base
from kvmmgr.image.disks import DiskPlan, build_disks
from kvmmgr.image.overlay import ensure_overlay
from kvmmgr.image.sources import parse_source

MiB = 1 << 20


def _disks(tmp_path: Path, content: bytes, with_sha: bool = True) -> DiskPlan:
    """A base fetched from a local file with this content (replacing any earlier one)."""
    source = tmp_path / "source.img"
    source.write_bytes(content)
    cache = tmp_path / "cache"
    for old in (cache / "base.img", cache / ".base.img.json"):
        old.unlink(missing_ok=True)
    image = ImageSettings(
        source=parse_source(str(source)),
        target="base.img",
        sha256=hashlib.sha256(content).hexdigest() if with_sha else None,
        retries=0,
        ca_bundle=None,
        image_dir=cache,
        vm_dir=tmp_path / "disks",
        disk_size=None,
    )
    disks = build_disks(image, "vm-0")
    ensure_base(disks, "test")
    return disks


def _info(path: Path) -> dict[str, object]:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)], capture_output=True, check=True
    ).stdout
    info: dict[str, object] = json.loads(out)
    return info


def test_overlay_records_its_base_and_is_reused_untouched(tmp_path: Path) -> None:
    disks = _disks(tmp_path, random.Random(1).randbytes(MiB))
    assert str(ensure_overlay(disks)).startswith(f"created {disks.overlay} (qcow2 on raw base")
    info = _info(disks.overlay)
    assert info["backing-filename-format"] == "raw"
    assert info["backing-filename"] == str(disks.base)
    assert disks.overlay.stat().st_mode & 0o777 == 0o600
    record = json.loads((disks.overlay.parent / ".vm-0.qcow2.json").read_text())
    assert record["size"] == MiB and record["format"] == "raw" and len(record["sha256"]) == 64
    before = (disks.overlay.stat().st_ino, disks.overlay.read_bytes())
    assert str(ensure_overlay(disks)) == f"reusing {disks.overlay}"
    assert (disks.overlay.stat().st_ino, disks.overlay.read_bytes()) == before


def test_a_qcow2_base_is_recorded_as_qcow2(tmp_path: Path) -> None:
    raw = tmp_path / "r.img"
    raw.write_bytes(random.Random(2).randbytes(MiB))
    qcow2 = tmp_path / "q.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    disks = _disks(tmp_path, qcow2.read_bytes())
    ensure_overlay(disks)
    assert _info(disks.overlay)["backing-filename-format"] == "qcow2"


def test_a_base_of_another_size_stops_the_start(tmp_path: Path) -> None:
    disks = _disks(tmp_path, random.Random(1).randbytes(MiB), with_sha=False)
    ensure_overlay(disks)
    disks = _disks(tmp_path, random.Random(1).randbytes(2 * MiB), with_sha=False)
    with pytest.raises(StepError, match=r"changed since .* \(size 1048576 -> 2097152\)"):
        ensure_overlay(disks)


def test_a_base_with_another_checksum_stops_the_start(tmp_path: Path) -> None:
    disks = _disks(tmp_path, random.Random(1).randbytes(MiB))
    ensure_overlay(disks)
    overlay = disks.overlay.read_bytes()
    disks = _disks(tmp_path, random.Random(2).randbytes(MiB))  # same size, other bytes
    with pytest.raises(StepError, match=r"changed since .* \(sha256 .*\): the VM would see"):
        ensure_overlay(disks)
    assert disks.overlay.read_bytes() == overlay  # not rebased, not touched


def test_an_overlay_without_a_record_is_reused(tmp_path: Path) -> None:
    disks = _disks(tmp_path, random.Random(1).randbytes(MiB))
    ensure_overlay(disks)
    (disks.overlay.parent / ".vm-0.qcow2.json").unlink()  # as made by an older version
    assert str(ensure_overlay(disks)) == f"reusing {disks.overlay}"


def test_the_disk_takes_vm_disk_size_grows_when_it_is_raised_and_never_shrinks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = _disks(tmp_path, random.Random(2).randbytes(MiB))
    sized = dataclasses.replace(base, size=64 * MiB)
    assert str(ensure_overlay(sized)).endswith(", 64.0 MiB)")
    assert _info(sized.overlay)["virtual-size"] == 64 * MiB
    grown = dataclasses.replace(base, size=96 * MiB)
    assert str(ensure_overlay(grown)) == f"reusing {base.overlay} (grown from 64.0 MiB to 96.0 MiB)"
    assert _info(base.overlay)["virtual-size"] == 96 * MiB
    assert str(ensure_overlay(grown)) == f"reusing {base.overlay}"  # converged: nothing to do
    # What the base held is still there, and the rest reads as zeros.
    flat = tmp_path / "flat.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(base.overlay), str(flat)],
        check=True,
    )
    head = flat.read_bytes()[: 2 * MiB]
    assert head == random.Random(2).randbytes(MiB) + bytes(MiB)
    assert (
        str(ensure_overlay(dataclasses.replace(base, size=32 * MiB))) == f"reusing {base.overlay}"
    )
    assert "a disk never shrinks" in caplog.text
    assert _info(base.overlay)["virtual-size"] == 96 * MiB


def test_a_disk_size_below_the_base_or_beyond_the_volume_is_refused_before_any_change(
    tmp_path: Path,
) -> None:
    base = _disks(tmp_path, random.Random(3).randbytes(4 * MiB))
    with pytest.raises(ConfigError, match=r"VM_DISK_SIZE='2.0 MiB': expected at least the base"):
        ensure_overlay(dataclasses.replace(base, size=2 * MiB))
    with pytest.raises(ConfigError, match=r"VM_DISK_SIZE='60.0 TiB'|a size the volume .* can hold"):
        ensure_overlay(dataclasses.replace(base, size=60 << 40))
    assert not base.overlay.parent.exists() or list(base.overlay.parent.iterdir()) == []
    # Also once the disk exists: growing it past the volume's free space is refused.
    ensure_overlay(base)
    before = base.overlay.read_bytes()
    with pytest.raises(ConfigError, match=r"a size the volume .* can hold: it has .* free"):
        ensure_overlay(dataclasses.replace(base, size=60 << 40))
    assert base.overlay.read_bytes() == before
