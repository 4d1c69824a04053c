"""What a hostile user writes into the files kvm-manager reads, for the unit suite's cases
(tests/unit/test_hostile_files.py) and the real CLI's (tests/netns/test_bad_input.py)."""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from functools import cache
from pathlib import Path

# --- files that are not files ----------------------------------------------------------------


def fifo(path: Path) -> None:
    os.mkfifo(path)  # opening it for reading blocks until a writer comes: none will


def directory(path: Path) -> None:
    path.mkdir()


def loop(path: Path) -> None:
    path.symlink_to(path.name)


def dangling(path: Path) -> None:
    path.symlink_to(path.with_name("nothing-here"))


def link_to(target: str) -> Callable[[Path], None]:
    return lambda path: path.symlink_to(target)


# --- documents built to expand or to nest without end ----------------------------------------


def laughs(head: bytes = b"") -> bytes:
    """Ten aliases of ten aliases...: 10^10 values, in a few hundred bytes."""
    lines = [head + b"a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for n in range(1, 10):
        lines.append(b"a%d: &a%d [%s]" % (n, n, b", ".join([b"*a%d" % (n - 1)] * 10)))
    return b"\n".join(lines) + b"\n"


DEEP_FLOW = b"[" * 100_000 + b"]" * 100_000
DEEP_BLOCK = b"".join(b"  " * n + b"a:\n" for n in range(2000)) + b"  " * 2000 + b"b\n"
DEEP_JSON = b"[" * 500 + b"]" * 500  # within json's recursion, beyond kvm-manager's bound
WIDE_JSON = b"[" + b"0," * 200_000 + b"0]"


def zeros_gzip(head: bytes, size: int) -> bytes:
    """`head` and `size` more bytes, gzip'd: a bomb of about 1000:1."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"x" * (1 << 20)
    packed = [packer.compress(head)] + [packer.compress(chunk) for _ in range(size >> 20)]
    return b"".join([*packed, packer.flush()])


@cache
def gzip_bomb() -> bytes:
    return zeros_gzip(b"#cloud-config\na: ", 256 << 20)
