"""Decompression while streaming (.xz, .gz, .zst), with bounded memory: however well the
input compresses (a disk image of zeros compresses a thousandfold), output is produced and
written in pieces of at most OUT_CHUNK bytes."""

from __future__ import annotations

import lzma
import zlib
from typing import Any, BinaryIO, Literal, Protocol

from kvmmgr.errors import StepError

Compression = Literal["xz", "gz", "zst"]
OUT_CHUNK = 1 << 20
MAGICS: tuple[tuple[bytes, Compression], ...] = (
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x1f\x8b", "gz"),
    (b"\x28\xb5\x2f\xfd", "zst"),
)
SUFFIXES: dict[str, Compression] = {".xz": "xz", ".gz": "gz", ".zst": "zst"}
MAGIC_BYTES = max(len(magic) for magic, _ in MAGICS)


def by_name(name: str) -> Compression | None:
    for suffix, kind in SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    return None


def by_content(head: bytes) -> Compression | None:
    for magic, kind in MAGICS:
        if head.startswith(magic):
            return kind
    return None


def strip_suffix(name: str) -> str:
    """`focal.qcow2.xz` -> `focal.qcow2`: the name of what is inside."""
    kind = by_name(name)
    return name[: name.rfind(".")] if kind else name


class Unpacker(Protocol):
    def write(self, data: bytes) -> None: ...

    def finish(self) -> None:
        """Fail unless the compressed stream ended properly."""


def unpacker(kind: Compression, out: BinaryIO) -> Unpacker:
    if kind == "zst":
        return _Zstd(out)
    return _Stdlib(kind, out)


class _Stdlib:
    """xz and gzip through the standard library, including concatenated streams (what
    `pigz` and parallel xz write) and the zero padding xz allows between them."""

    def __init__(self, kind: Compression, out: BinaryIO) -> None:
        self.kind = kind
        self.out = out
        self._new()

    def _new(self) -> None:
        if self.kind == "xz":
            self.lz: lzma.LZMADecompressor | None = lzma.LZMADecompressor(lzma.FORMAT_XZ)
            self.zl = None
        else:
            self.lz = None
            self.zl = zlib.decompressobj(wbits=31)  # gzip header and trailer
        self.started = False

    def write(self, data: bytes) -> None:
        while data:
            rest = self._one_stream(data)
            if rest is None:
                return
            data = rest.lstrip(b"\0")  # padding between streams
            if data:
                self._new()

    def _one_stream(self, data: bytes) -> bytes | None:
        """Feed one stream; what follows its end (None if it did not end)."""
        self.started = True
        try:
            if self.lz is not None:
                self.out.write(self.lz.decompress(data, OUT_CHUNK))
                while not self.lz.eof and not self.lz.needs_input:
                    self.out.write(self.lz.decompress(b"", OUT_CHUNK))
                return self.lz.unused_data if self.lz.eof else None
            assert self.zl is not None
            self.out.write(self.zl.decompress(data, OUT_CHUNK))
            while self.zl.unconsumed_tail:
                self.out.write(self.zl.decompress(self.zl.unconsumed_tail, OUT_CHUNK))
            return self.zl.unused_data if self.zl.eof else None
        except (lzma.LZMAError, zlib.error) as exc:
            raise StepError(f"the image is not valid {self.kind} data: {exc}") from exc

    def finish(self) -> None:
        ended = self.lz.eof if self.lz is not None else self.zl is not None and self.zl.eof
        if self.started and not ended:
            raise StepError(f"the {self.kind} stream ends early: the image is truncated")


class _Zstd:
    """zstd through the `zstandard` library. Its stream writer emits output in bounded pieces
    but cannot tell a truncated frame; the frame header's content size (which the zstd tool
    writes) is checked instead, when there is one."""

    def __init__(self, out: BinaryIO) -> None:
        import zstandard

        self.zstandard = zstandard
        self.out = out
        self.writer: Any = zstandard.ZstdDecompressor().stream_writer(
            out, write_size=OUT_CHUNK, closefd=False
        )
        self.head = b""
        self.written_from = out.tell()

    def write(self, data: bytes) -> None:
        if len(self.head) < 18:  # the longest frame header
            self.head += data[: 18 - len(self.head)]
        try:
            self.writer.write(data)
        except self.zstandard.ZstdError as exc:
            raise StepError(f"the image is not valid zst data: {exc}") from exc

    def finish(self) -> None:
        self.writer.flush()
        try:
            expected = self.zstandard.frame_content_size(self.head)
        except self.zstandard.ZstdError:
            expected = -1
        got = self.out.tell() - self.written_from
        if expected >= 0 and got < expected:
            raise StepError(f"the zst stream ends early: {got} of {expected} bytes")
