"""Image delivery against a misbehaving HTTP server on loopback (no root needed): each failure
leaves nothing under the target name, and the next start succeeds once the server behaves."""

from __future__ import annotations

import errno
import gzip
import hashlib
import logging
import lzma
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from kvmmgr.config import ImageSettings
from kvmmgr.errors import ConfigError, StepError
from kvmmgr.image import transfer
from kvmmgr.image.cache import check_available, ensure_base
from kvmmgr.image.disks import DiskPlan, build_disks
from kvmmgr.image.sources import parse_source
from tests.integration.imageserver import Fault, ImageServer, Resource

MiB = 1 << 20


def _raw_image(size: int, seed: int = 1) -> bytes:
    """Pseudo-random bytes: a raw disk to qemu-img, with NULs (not text) from the start."""
    return random.Random(seed).randbytes(size)


IMAGE = _raw_image(3 * MiB)
SHA = hashlib.sha256(IMAGE).hexdigest()


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff in milliseconds here; a Retry-After the server sends is still honoured."""
    monkeypatch.setattr(transfer, "BACKOFF_BASE", 0.01)


@pytest.fixture
def server() -> Iterator[ImageServer]:
    httpd = ImageServer()
    httpd.resources["/base.img"] = Resource(IMAGE)
    with httpd.running():
        yield httpd


def plan(
    cache: Path,
    source: str,
    sha256: str | None = None,
    retries: int = 3,
    ca_bundle: Path | None = None,
) -> DiskPlan:
    image = ImageSettings(
        source=parse_source(source),
        target="base.img",
        sha256=sha256,
        retries=retries,
        ca_bundle=ca_bundle,
        image_dir=cache,
        vm_dir=cache,
        disk_size=None,
    )
    return build_disks(image, "vm-0")


def fetch(disks: DiskPlan) -> str:
    check_available(disks)
    return str(ensure_base(disks, "test"))


def cache_files(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir()} if cache.exists() else set()


def test_download_streams_verifies_and_leaves_only_the_image(
    tmp_path: Path, server: ImageServer
) -> None:
    said = fetch(plan(tmp_path, server.url("/base.img"), SHA))
    assert "sha256 verified" in said and "(raw, 3.0 MiB" in said
    assert (tmp_path / "base.img").read_bytes() == IMAGE
    assert cache_files(tmp_path) == {"base.img", ".base.img.json"}
    assert server.full_downloads("/base.img") == 1
    assert "using" in fetch(plan(tmp_path, server.url("/base.img"), SHA))  # no second download
    assert len(server.requests("/base.img")) == 1


def test_a_cut_connection_resumes_with_a_range_request(tmp_path: Path, server: ImageServer) -> None:
    server.faults["/base.img"] = [Fault(cut_after=MiB + 12345)]
    fetch(plan(tmp_path, server.url("/base.img"), SHA))
    assert (tmp_path / "base.img").read_bytes() == IMAGE
    first, second = server.requests("/base.img")
    assert (first.status, first.sent) == (200, MiB + 12345)
    # Resumed where the client's last whole chunk ended (a chunk cut short is read again).
    assert second.status == 206 and second.range is not None
    start = int(second.range.removeprefix("bytes=").rstrip("-"))
    assert MiB <= start <= MiB + 12345
    assert second.sent == len(IMAGE) - start


def test_after_giving_up_the_next_start_resumes(tmp_path: Path, server: ImageServer) -> None:
    server.faults["/base.img"] = [Fault(cut_after=2 * MiB)]
    with pytest.raises(StepError, match="gave up after 1 attempt"):
        fetch(plan(tmp_path, server.url("/base.img"), SHA, retries=0))
    assert "base.img" not in cache_files(tmp_path)
    assert (tmp_path / ".base.img.part").stat().st_size == 2 * MiB  # kept to resume
    fetch(plan(tmp_path, server.url("/base.img"), SHA, retries=0))
    assert (tmp_path / "base.img").read_bytes() == IMAGE
    assert server.requests("/base.img")[-1].range == f"bytes={2 * MiB}-"
    assert not (tmp_path / ".base.img.part").exists()


def test_a_server_without_ranges_starts_over(tmp_path: Path, server: ImageServer) -> None:
    server.resources["/base.img"].ranges = False
    server.faults["/base.img"] = [Fault(cut_after=MiB)]
    fetch(plan(tmp_path, server.url("/base.img"), SHA))
    assert (tmp_path / "base.img").read_bytes() == IMAGE
    assert [r.status for r in server.requests("/base.img")] == [200, 200]


def test_a_changed_image_is_not_resumed_into(tmp_path: Path, server: ImageServer) -> None:
    server.faults["/base.img"] = [Fault(cut_after=MiB)]
    with pytest.raises(StepError):
        fetch(plan(tmp_path, server.url("/base.img"), retries=0))
    newer = _raw_image(3 * MiB, seed=2)
    server.resources["/base.img"] = Resource(newer, etag='"v2"', last_modified=None)
    fetch(plan(tmp_path, server.url("/base.img")))
    # If-Range carried the old ETag: the server sent the new image whole, and it was taken.
    last = server.requests("/base.img")[-1]
    assert last.range == f"bytes={MiB}-" and last.status == 200
    assert (tmp_path / "base.img").read_bytes() == newer


def test_http_404_is_not_retried_and_leaves_nothing(tmp_path: Path, server: ImageServer) -> None:
    with pytest.raises(StepError, match=r"missing.img: HTTP 404"):
        fetch(plan(tmp_path, server.url("/missing.img")))
    assert len(server.requests("/missing.img")) == 1
    assert cache_files(tmp_path) == set()
    server.resources["/missing.img"] = Resource(IMAGE)  # published at last
    fetch(plan(tmp_path, server.url("/missing.img"), SHA))
    assert (tmp_path / "base.img").read_bytes() == IMAGE


@pytest.mark.parametrize("status", [500, 503, 429])
def test_5xx_and_429_are_retried_after_retry_after(
    tmp_path: Path, server: ImageServer, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    server.faults["/base.img"] = [Fault(status=status, headers={"Retry-After": "1"})]
    began = time.monotonic()
    with caplog.at_level(logging.INFO, logger="kvmmgr"):
        fetch(plan(tmp_path, server.url("/base.img"), SHA))
    assert time.monotonic() - began >= 1.0  # the server asked for a second
    assert (tmp_path / "base.img").read_bytes() == IMAGE
    assert [r.status for r in server.requests("/base.img")] == [status, 200]
    assert f"image: HTTP {status}" in caplog.text and "retry 1 of 3 in 1.0 s" in caplog.text


def test_retries_are_bounded(tmp_path: Path, server: ImageServer) -> None:
    server.faults["/base.img"] = [Fault(status=503)] * 5
    with pytest.raises(StepError, match=r"gave up after 3 attempt\(s\): HTTP 503"):
        fetch(plan(tmp_path, server.url("/base.img"), retries=2))
    assert len(server.requests("/base.img")) == 3
    assert "base.img" not in cache_files(tmp_path)
    fetch(plan(tmp_path, server.url("/base.img"), retries=2))  # the server behaves again
    assert (tmp_path / "base.img").read_bytes() == IMAGE


def test_an_html_page_served_with_200_is_refused(tmp_path: Path, server: ImageServer) -> None:
    page = b"<!DOCTYPE html>\n<html><body>Please log in</body></html>\n" * 20
    server.resources["/base.img"] = Resource(page, content_type="text/html")
    with pytest.raises(StepError, match=r"is not a disk image: it starts with '<!DOCTYPE html>'"):
        fetch(plan(tmp_path, server.url("/base.img")))
    assert cache_files(tmp_path) == set()
    server.resources["/base.img"] = Resource(IMAGE)
    fetch(plan(tmp_path, server.url("/base.img")))
    assert (tmp_path / "base.img").read_bytes() == IMAGE


def test_a_checksum_mismatch_discards_everything(tmp_path: Path, server: ImageServer) -> None:
    with pytest.raises(StepError, match="does not match IMG_SHA256"):
        fetch(plan(tmp_path, server.url("/base.img"), "f" * 64))
    assert cache_files(tmp_path) == set()
    fetch(plan(tmp_path, server.url("/base.img"), SHA))
    assert (tmp_path / "base.img").read_bytes() == IMAGE


def test_a_stalled_server_times_out_and_resumes(
    tmp_path: Path, server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "READ_TIMEOUT", 1.0)
    server.faults["/base.img"] = [Fault(stall_after=MiB)]
    fetch(plan(tmp_path, server.url("/base.img"), SHA))
    assert (tmp_path / "base.img").read_bytes() == IMAGE
    assert server.requests("/base.img")[-1].range == f"bytes={MiB}-"


def test_a_slow_download_logs_progress(
    tmp_path: Path,
    server: ImageServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr("kvmmgr.image.progress.INTERVAL", 0.2)
    server.delay = 0.02  # 64 KiB pieces: about 3 MiB/s
    with caplog.at_level(logging.INFO, logger="kvmmgr"):
        fetch(plan(tmp_path, server.url("/base.img")))
    lines = [r.getMessage() for r in caplog.records if "%)" in r.getMessage()]
    assert len(lines) >= 3
    assert all(len(line) < 80 for line in lines)
    assert "of 3.0 MiB (" in lines[0] and "MiB/s" in lines[0] and "left" in lines[0]


@pytest.mark.parametrize(
    ("name", "pack"),
    [
        ("base.img.xz", lzma.compress),
        ("base.img.gz", gzip.compress),
        ("base.img.zst", lambda data: zstandard.ZstdCompressor().compress(data)),
        ("base-gz-without-suffix", gzip.compress),  # told by its magic bytes
    ],
)
def test_compressed_images_are_unpacked_while_streaming(
    tmp_path: Path, server: ImageServer, name: str, pack: object
) -> None:
    packed = pack(IMAGE)  # type: ignore[operator]
    server.resources[f"/{name}"] = Resource(packed)
    server.faults[f"/{name}"] = [Fault(cut_after=len(packed) // 2)]  # resumed, then replayed
    said = fetch(plan(tmp_path, server.url(f"/{name}"), hashlib.sha256(packed).hexdigest()))
    assert "unpacked from" in said
    assert (tmp_path / "base.img").read_bytes() == IMAGE
    assert server.requests(f"/{name}")[-1].status == 206
    assert cache_files(tmp_path) == {"base.img", ".base.img.json"}


def test_a_truncated_compressed_image_is_refused(tmp_path: Path, server: ImageServer) -> None:
    packed = lzma.compress(IMAGE)
    server.resources["/base.img.xz"] = Resource(packed[: len(packed) - 100])
    with pytest.raises(StepError, match="the xz stream ends early"):
        fetch(plan(tmp_path, server.url("/base.img.xz")))
    assert cache_files(tmp_path) == set()
    server.resources["/base.img.xz"] = Resource(packed, etag='"v2"')
    fetch(plan(tmp_path, server.url("/base.img.xz")))
    assert (tmp_path / "base.img").read_bytes() == IMAGE


def test_local_sources_are_copied_with_the_same_checks(tmp_path: Path) -> None:
    source = tmp_path / "src" / "base.img.gz"
    source.parent.mkdir()
    source.write_bytes(gzip.compress(IMAGE))
    cache = tmp_path / "cache"
    fetch(plan(cache, f"file://{source}"))
    assert (cache / "base.img").read_bytes() == IMAGE
    with pytest.raises(StepError, match="does not match IMG_SHA256"):
        fetch(plan(tmp_path / "other", str(source), "0" * 64))


def test_a_source_inside_the_cache_is_used_in_place(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "golden.img").write_bytes(IMAGE)
    disks = plan(tmp_path, str(tmp_path / "golden.img"), SHA)
    assert disks.base == tmp_path / "golden.img"
    with caplog.at_level(logging.INFO, logger="kvmmgr"):
        assert fetch(disks) == f"using {disks.base} (sha256 verified)"
        assert fetch(disks) == f"using {disks.base} (sha256 verified when fetched)"
    assert caplog.text.count("hashing") == 1  # hashed once, then the record is trusted
    assert cache_files(tmp_path) == {"golden.img", ".golden.img.json"}


def test_a_cached_base_with_another_checksum_is_an_error(
    tmp_path: Path, server: ImageServer
) -> None:
    fetch(plan(tmp_path, server.url("/base.img"), SHA))
    with pytest.raises(StepError, match="use another IMG_TARGET for another image"):
        fetch(plan(tmp_path, server.url("/base.img"), "a" * 64))


def test_a_base_with_a_backing_file_is_refused(tmp_path: Path, server: ImageServer) -> None:
    (tmp_path / "secret").write_bytes(b"not for the VM")
    evil = tmp_path / "evil.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(tmp_path / "secret"),
         str(evil)],
        check=True,
    )  # fmt: skip
    server.resources["/base.img"] = Resource(evil.read_bytes())
    with pytest.raises(StepError, match="names a backing file of its own"):
        fetch(plan(tmp_path / "cache", server.url("/base.img")))


def test_missing_ca_bundle_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"IMG_CA_BUNDLE='/nonexistent/ca.pem'"):
        check_available(
            plan(tmp_path, "https://127.0.0.1/base.img", ca_bundle=Path("/nonexistent/ca.pem"))
        )


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A CA of our own and a certificate it signed for 127.0.0.1: (ca.pem, cert, key)."""
    d = tmp_path_factory.mktemp("ca")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
            "-out", "ca.pem", "-days", "2", "-subj", "/CN=kvm-manager test CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
            "-out", "server.csr", "-subj", "/CN=127.0.0.1")  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2",
            "-extfile", "san.ext")  # fmt: skip
    return d / "ca.pem", d / "server.pem", d / "server.key"


def test_https_checks_the_certificate_and_trusts_img_ca_bundle(
    tmp_path: Path, private_ca: tuple[Path, Path, Path]
) -> None:
    ca, cert, key = private_ca
    httpd = ImageServer(tls=(cert, key))
    httpd.resources["/base.img"] = Resource(IMAGE)
    with httpd.running():
        url = httpd.url("/base.img")
        with pytest.raises(StepError, match=r"TLS verification failed .*IMG_CA_BUNDLE") as caught:
            fetch(plan(tmp_path, url))
        assert "\n" not in str(caught.value)
        assert cache_files(tmp_path) == set()
        said = fetch(plan(tmp_path, url, SHA, ca_bundle=ca))
        assert said.startswith(f"fetched {url}")
    assert (tmp_path / "base.img").read_bytes() == IMAGE
    assert httpd.full_downloads("/base.img") == 1  # the refused handshake sent nothing


def test_without_file_locks_each_pod_keeps_its_own_part(
    tmp_path: Path,
    server: ImageServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr("kvmmgr.image.cachelock.fcntl.lockf", no_locks)
    server.faults["/base.img"] = [Fault(cut_after=2 * MiB)]
    with caplog.at_level(logging.WARNING, logger="kvmmgr"), pytest.raises(StepError):
        fetch(plan(tmp_path, server.url("/base.img"), retries=0))
    assert "has no file locks" in caplog.text
    own_part = f".base.img.{socket.gethostname()}.part"
    assert own_part in cache_files(tmp_path)
    fetch(plan(tmp_path, server.url("/base.img"), retries=0))  # the same pod resumes its own
    assert server.requests("/base.img")[-1].range == f"bytes={2 * MiB}-"
    assert (tmp_path / "base.img").read_bytes() == IMAGE


def test_magic_bytes_inside_an_uncompressed_image_are_just_data(
    tmp_path: Path, server: ImageServer
) -> None:
    # Chunks are 1 MiB: a later chunk that starts like gzip must not be taken for one.
    image = bytearray(_raw_image(3 * MiB, seed=5))
    image[MiB : MiB + 3] = b"\x1f\x8b\x08"
    server.resources["/base.img"] = Resource(bytes(image))
    fetch(plan(tmp_path / "http", server.url("/base.img")))
    assert (tmp_path / "http" / "base.img").read_bytes() == image
    source = tmp_path / "local.img"
    source.write_bytes(image)
    fetch(plan(tmp_path / "local", str(source)))
    assert (tmp_path / "local" / "base.img").read_bytes() == image
