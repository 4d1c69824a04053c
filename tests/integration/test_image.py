"""The base image from each kind of IMG_SOURCE, and the VM's overlay, with real files, a real
HTTP server on loopback and real qemu-img (no root needed)."""

from __future__ import annotations

import hashlib
import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from kvmmgr.errors import ConfigError, StepError
from kvmmgr.image import DiskPlan, check_available, ensure_base, ensure_overlay


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A small raw image with recognisable content."""
    path = tmp_path / "src" / "base.img"
    path.parent.mkdir()
    path.write_bytes(b"kvm-manager test image\n" * 50_000)
    return path


@pytest.fixture
def server(source: Path) -> Iterator[str]:
    """Serves the source's folder on 127.0.0.1; 404 for anything else."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = partial(Quiet, directory=str(source.parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _plan(tmp_path: Path, source: str | None, sha256: str | None = None) -> DiskPlan:
    cache = tmp_path / "cache"
    return DiskPlan(source, cache / "base.img", sha256, cache / "vm-0.qcow2")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(plan: DiskPlan) -> list[str]:
    folder = plan.base.parent
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("form", ["path", "file-url", "http"])
def test_each_source_form_is_fetched_and_verified(
    tmp_path: Path, source: Path, server: str, form: str
) -> None:
    url = {"path": str(source), "file-url": f"file://{source}", "http": f"{server}/base.img"}[form]
    plan = _plan(tmp_path, url, _sha256(source))
    check_available(plan)
    said = ensure_base(plan)
    assert said.startswith(f"fetched {url} -> {plan.base}") and "sha256 verified" in said
    assert plan.base.read_bytes() == source.read_bytes()
    assert _leftovers(plan) == ["base.img"]  # no temporary file left


def test_a_present_base_is_used_as_is(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "http://127.0.0.1:9/never-asked.img")
    plan.base.parent.mkdir()
    plan.base.write_bytes(b"already here")
    assert ensure_base(plan) == f"using {plan.base}"
    assert plan.base.read_bytes() == b"already here"


def test_http_error_is_an_error_and_leaves_nothing(tmp_path: Path, server: str) -> None:
    plan = _plan(tmp_path, f"{server}/missing.img")
    with pytest.raises(StepError, match=r"missing.img: HTTP 404"):
        ensure_base(plan)
    assert _leftovers(plan) == []


def test_checksum_mismatch_leaves_nothing(tmp_path: Path, source: Path, server: str) -> None:
    plan = _plan(tmp_path, f"{server}/base.img", "0" * 64)
    with pytest.raises(StepError, match="does not match IMG_SHA256"):
        ensure_base(plan)
    assert _leftovers(plan) == []


def test_missing_local_source_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="IMG_SOURCE="):
        check_available(_plan(tmp_path, f"file://{tmp_path}/nope.img"))


def test_overlay_records_the_detected_backing_format_and_is_never_rewritten(
    tmp_path: Path, source: Path
) -> None:
    plan = _plan(tmp_path, str(source))
    ensure_base(plan)
    assert ensure_overlay(plan).startswith(f"created {plan.overlay} (qcow2 on raw base")
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(plan.overlay)],
            capture_output=True,
            check=True,
        ).stdout
    )
    assert info["backing-filename-format"] == "raw"
    assert info["backing-filename"] == str(plan.base)
    assert plan.overlay.stat().st_mode & 0o777 == 0o600
    before = (plan.overlay.stat().st_ino, plan.overlay.read_bytes())
    assert ensure_overlay(plan) == f"reusing {plan.overlay}"
    assert (plan.overlay.stat().st_ino, plan.overlay.read_bytes()) == before
