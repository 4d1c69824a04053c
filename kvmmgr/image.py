"""The VM's disks: the shared base image (fetched once, verified) and the VM's own overlay."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from kvmmgr import proc
from kvmmgr.errors import ConfigError, StepError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 60.0


@dataclass(frozen=True)
class DiskPlan:
    source: str | None
    base: Path
    sha256: str | None
    overlay: Path


def build_disks(
    *, source: str | None, base: Path, sha256: str | None, vm_dir: Path, hostname: str
) -> DiskPlan:
    return DiskPlan(source, base, sha256, vm_dir / f"{hostname}.qcow2")


def check_available(plan: DiskPlan) -> None:
    """Read-only check before any side effect: can the base image be had at all?"""
    if plan.base.exists():
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


def ensure_base(plan: DiskPlan) -> str:
    """Make sure the base image is present; what was done, for the log."""
    if plan.base.exists():
        return f"using {plan.base}"
    assert plan.source is not None  # check_available ran first
    plan.base.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with _temporary_beside(plan.base) as (temp_path, handle):
        local = local_path(plan.source)
        if local is not None:
            with local.open("rb") as src:
                digest, size = _copy(src, handle)
        else:
            digest, size = _download(plan.source, handle)
        handle.flush()
        os.fsync(handle.fileno())
        if plan.sha256 and digest != plan.sha256:
            raise StepError(
                f"IMG_SOURCE {plan.source}: sha256 {digest} does not match IMG_SHA256 "
                f"{plan.sha256}; the download was discarded"
            )
        os.chmod(temp_path, 0o644)
        os.replace(temp_path, plan.base)
    seconds = time.monotonic() - started
    return (
        f"fetched {plan.source} -> {plan.base} ({size / (1 << 20):.1f} MiB in {seconds:.1f} s"
        + (", sha256 verified)" if plan.sha256 else ")")
    )


def ensure_overlay(plan: DiskPlan) -> str:
    """Create the VM's own disk on top of the base image, only if it does not exist yet.
    The overlay is the VM's persistent state: it is never recreated or overwritten."""
    if plan.overlay.exists():
        return f"reusing {plan.overlay}"
    base_format = detect_format(plan.base)
    plan.overlay.parent.mkdir(parents=True, exist_ok=True)
    temp = plan.overlay.with_name(f".{plan.overlay.name}.{os.getpid()}.tmp")
    try:
        proc.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                base_format,
                "-b",
                str(plan.base.absolute()),
                str(temp),
            ]
        )
        os.chmod(temp, 0o600)
        try:
            os.link(temp, plan.overlay)  # unlike rename, never replaces an existing file
        except FileExistsError:
            return f"reusing {plan.overlay} (created meanwhile by another start)"
    finally:
        temp.unlink(missing_ok=True)
    return f"created {plan.overlay} (qcow2 on {base_format} base {plan.base})"


def detect_format(path: Path) -> str:
    info = json.loads(proc.run(["qemu-img", "info", "--output=json", str(path)]))
    return str(info["format"])


def _download(url: str, out: BinaryIO) -> tuple[str, int]:
    import requests  # imported here: only a download needs it

    try:
        with requests.get(url, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)) as response:
            if response.status_code != 200:
                raise StepError(f"IMG_SOURCE {url}: HTTP {response.status_code} {response.reason}")
            expected = response.headers.get("Content-Length")
            digest, size = _copy_chunks(response.iter_content(CHUNK), out)
    except requests.RequestException as exc:
        raise StepError(f"IMG_SOURCE {url}: download failed: {exc}") from exc
    if expected is not None and expected.isdigit() and int(expected) != size:
        raise StepError(f"IMG_SOURCE {url}: got {size} bytes of {expected}")
    return digest, size


def _copy(src: BinaryIO, out: BinaryIO) -> tuple[str, int]:
    return _copy_chunks(iter(lambda: src.read(CHUNK), b""), out)


def _copy_chunks(chunks: Iterator[bytes], out: BinaryIO) -> tuple[str, int]:
    """Write every chunk and hash it on the way: constant memory whatever the size."""
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        out.write(chunk)
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


@contextlib.contextmanager
def _temporary_beside(target: Path) -> Iterator[tuple[Path, BinaryIO]]:
    """A temporary file in the target's directory (so the final rename is atomic), removed
    unless it was renamed into place."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield path, handle
    finally:
        path.unlink(missing_ok=True)
