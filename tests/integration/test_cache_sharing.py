"""Many pods, one image cache: `kvm-manager fetch` in separate processes sharing IMAGE_DIR
(a local folder here; the lock is a POSIX record lock, as it would be on NFS)."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.imageserver import Fault, ImageServer, Resource

MiB = 1 << 20


@pytest.fixture
def server() -> Iterator[ImageServer]:
    httpd = ImageServer()
    with httpd.running():
        yield httpd


def start_fetch(cache: Path, url: str, sha: str, host: str) -> subprocess.Popen[str]:
    env = {
        "PATH": os.environ["PATH"],
        "IMG_SOURCE": url,
        "IMG_SHA256": sha,
        "IMAGE_DIR": str(cache),
        "HOSTNAME": host,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "kvmmgr", "fetch"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_eight_starts_at_once_download_once(tmp_path: Path, server: ImageServer) -> None:
    image = random.Random(8).randbytes(4 * MiB)
    server.resources["/base.img"] = Resource(image)
    server.delay = 0.05  # 64 KiB pieces: about 3 s for the whole image
    sha = hashlib.sha256(image).hexdigest()
    starts = [start_fetch(tmp_path, server.url("/base.img"), sha, f"vm-{n}") for n in range(8)]
    outputs = [p.communicate(timeout=120)[0] for p in starts]
    assert [p.returncode for p in starts] == [0] * 8, outputs
    assert server.full_downloads("/base.img") == 1
    assert len(server.requests("/base.img")) == 1
    assert (tmp_path / "base.img").read_bytes() == image
    fetched = [out for out in outputs if "image: fetched" in out]
    waited = [out for out in outputs if "fetched meanwhile by another start" in out]
    assert len(fetched) == 1
    assert len(waited) >= 4, outputs  # most started while the download was under way
    assert {p.name for p in tmp_path.iterdir()} == {"base.img", ".base.img.json"}


def test_a_holder_that_died_does_not_block_and_its_download_is_resumed(
    tmp_path: Path, server: ImageServer
) -> None:
    image = random.Random(9).randbytes(24 * MiB)
    server.resources["/base.img"] = Resource(image)
    server.faults["/base.img"] = [Fault(stall_after=20 * MiB)]
    sha = hashlib.sha256(image).hexdigest()
    holder = start_fetch(tmp_path, server.url("/base.img"), sha, "vm-0")
    part = tmp_path / ".base.img.part"
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size >= 20 * MiB):
        assert time.monotonic() < deadline, "the first start did not get 20 MiB"
        time.sleep(0.05)
    waiter = start_fetch(tmp_path, server.url("/base.img"), sha, "vm-1")
    time.sleep(1.0)
    assert waiter.poll() is None  # waiting for the lock while the holder lives
    holder.send_signal(signal.SIGKILL)  # the holder's pod dies mid-download
    holder.wait(10)
    out = waiter.communicate(timeout=60)[0]
    assert waiter.returncode == 0, out
    assert "resuming" in out and "at 16.0 MiB" in out  # its last checkpoint
    assert server.requests("/base.img")[-1].range == f"bytes={16 * MiB}-"
    assert (tmp_path / "base.img").read_bytes() == image


def _file_size_limit(limit: int) -> None:
    """In the child: files may not grow past `limit` bytes (like a full volume)."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_full_cache_is_one_line_and_leaves_nothing(tmp_path: Path, server: ImageServer) -> None:
    image = random.Random(10).randbytes(3 * MiB)
    server.resources["/base.img"] = Resource(image)
    env = {
        "PATH": os.environ["PATH"],
        "IMG_SOURCE": server.url("/base.img"),
        "IMAGE_DIR": str(tmp_path),
        "HOSTNAME": "vm-0",
    }
    command = [sys.executable, "-m", "kvmmgr", "fetch"]
    full = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=lambda: _file_size_limit(MiB),
    )
    assert full.returncode == 1
    assert full.stderr.splitlines()[-1] == (
        f"kvm-manager: error: cannot write the image to {tmp_path}: File too large"
    )
    assert {p.name for p in tmp_path.iterdir()} == set()
    again = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "base.img").read_bytes() == image
