"""The pure parts of image delivery: backoff, Retry-After, progress lines, compression and
text sniffing, Content-Range."""

from __future__ import annotations

import email.utils

import pytest

from kvmmgr.image import unpack
from kvmmgr.image.diskformat import looks_like_text
from kvmmgr.image.progress import Progress, describe, duration, size
from kvmmgr.image.transfer import (
    BACKOFF_CAP,
    RETRY_AFTER_CAP,
    _content_range,
    backoff,
    parse_retry_after,
)


def test_backoff_doubles_with_jitter_up_to_a_cap() -> None:
    low = [backoff(n, None, lambda: 0.0) for n in range(1, 5)]
    high = [backoff(n, None, lambda: 1.0) for n in range(1, 5)]
    assert low == [0.5, 1.0, 2.0, 4.0]
    assert high == [1.0, 2.0, 4.0, 8.0]
    assert backoff(30, None, lambda: 1.0) == BACKOFF_CAP


def test_backoff_never_comes_before_retry_after() -> None:
    assert backoff(1, 7.0, lambda: 1.0) == 7.0
    assert backoff(6, 1.0, lambda: 1.0) == 32.0  # the longer of the two
    assert backoff(1, 86400.0, lambda: 0.0) == RETRY_AFTER_CAP


def test_retry_after_seconds_or_date() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after("120", now) == 120.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_progress_lines_are_short_and_complete() -> None:
    assert size(512) == "512 B" and size(3 * 2**30) == "3.0 GiB"
    assert duration(75) == "1:15" and duration(3725) == "1:02:05"
    assert (
        describe(2**30, 4 * 2**30, 2**30, 10.0)
        == "1.0 GiB of 4.0 GiB (25%), 102.4 MiB/s, 0:30 left"
    )
    assert describe(2**30, None, 2**30, 10.0) == "1.0 GiB, 102.4 MiB/s"


def test_progress_is_rate_limited_and_counts_only_this_transfer() -> None:
    now = [0.0]
    lines: list[str] = []
    progress = Progress(
        100 * 2**20, 50 * 2**20, interval=5, clock=lambda: now[0], emit=lines.append
    )
    for _ in range(10):
        now[0] += 1
        progress.add(2**20)
    assert len(lines) == 2  # at 5 s and 10 s, not at every chunk
    assert lines[-1] == "60.0 MiB of 100.0 MiB (60%), 1.0 MiB/s, 0:40 left"


@pytest.mark.parametrize(
    ("name", "kind"),
    [("a.qcow2.xz", "xz"), ("a.img.gz", "gz"), ("a.raw.zst", "zst"), ("a.qcow2", None)],
)
def test_compression_by_name(name: str, kind: str | None) -> None:
    assert unpack.by_name(name) == kind


def test_compression_by_content() -> None:
    assert unpack.by_content(b"\xfd7zXZ\x00\x00") == "xz"
    assert unpack.by_content(b"\x1f\x8b\x08") == "gz"
    assert unpack.by_content(b"\x28\xb5\x2f\xfd") == "zst"
    assert unpack.by_content(b"QFI\xfb") is None
    assert unpack.strip_suffix("focal.qcow2.xz") == "focal.qcow2"
    assert unpack.strip_suffix("focal.qcow2") == "focal.qcow2"


def test_text_is_not_a_disk() -> None:
    assert looks_like_text(b"<!DOCTYPE html><html>")
    assert looks_like_text("Zugriff verweigert: é".encode()[:-1])  # cut mid-character
    assert looks_like_text(b"")
    assert not looks_like_text(b"\xeb\x3c\x90mkfs.fat\x00\x02")  # a FAT boot sector
    assert not looks_like_text(b"QFI\xfb\x00\x00\x00\x03")  # qcow2
    assert not looks_like_text(bytes(range(128, 256)))  # binary, not UTF-8


def test_content_range() -> None:
    assert _content_range("bytes 100-199/1000") == (100, 1000)
    assert _content_range("bytes 100-199/*") == (100, None)
    assert _content_range("garbage") == (None, None)
