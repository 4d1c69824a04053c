"""Moving the bytes of IMG_SOURCE into the image cache: streamed, hashed, unpacked, resumable.

The transferred bytes go to a `.part` file as they come, with a small state file beside it
(the server's validators, and how much of the part is known to be on disk). After a cut
connection, or a start that died, the next attempt resumes from there with an HTTP Range
request guarded by If-Range, or starts over when the server cannot resume.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kvmmgr import documents
from kvmmgr.errors import StepError
from kvmmgr.image import unpack
from kvmmgr.image.hashing import BackgroundSha256
from kvmmgr.image.progress import Progress, size
from kvmmgr.system.files import UnfitFile, read_regular, write_atomic

log = logging.getLogger("kvmmgr")

CHUNK = 1 << 20
SYNC_EVERY = 16 << 20  # bytes between fsyncs of the part: what a killed start may lose
CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 60.0
BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0
RETRY_AFTER_CAP = 600.0  # a server asking for more is asked again after this
USER_AGENT = "kvm-manager"


@dataclass(frozen=True)
class WorkFiles:
    part: Path  # the transferred bytes
    state: Path  # PartState as JSON
    unpacked: Path  # the image, when the transfer is compressed

    def remove(self) -> None:
        for path in (self.part, self.state, self.unpacked):
            path.unlink(missing_ok=True)


STATE_MAX = 64 << 10  # bytes of a part's state: a URL and its validators
STATE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "url": str, "etag": documents.TEXT_OR_NULL, "last_modified": documents.TEXT_OR_NULL,
    "total": (int, type(None)), "synced": int,
}  # fmt: skip


@dataclass(frozen=True)
class PartState:
    url: str
    etag: str | None  # strong validators only: If-Range needs one
    last_modified: str | None
    total: int | None
    synced: int  # bytes of the part known to be on disk

    @property
    def validator(self) -> str | None:
        return self.etag or self.last_modified


@dataclass(frozen=True)
class Received:
    image: Path  # the part itself, or the unpacked file
    size: int  # bytes transferred
    sha256: str | None  # of the transferred bytes, when asked for
    compression: unpack.Compression | None


class Receiver:
    """Where the bytes go: appended to the part, hashed when a checksum is expected, and
    unpacked into `files.unpacked` when they turn out to be compressed (by name or magic)."""

    def __init__(
        self, files: WorkFiles, *, hashing: bool, compression: unpack.Compression | None
    ) -> None:
        self.files = files
        self.hashing = hashing
        self.named = compression
        self.size = 0
        self.synced = 0
        self._part: IO[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._hash: BackgroundSha256 | None = None
        self._unpacker: unpack.Unpacker | None = None
        self._head = b""  # the first bytes, until there are enough to tell compression
        self._decided = False
        self.compression: unpack.Compression | None = None

    def begin(self, keep: int) -> None:
        """Start (again) with the first `keep` bytes of the part: they are hashed and unpacked
        again here, since neither state survives a process."""
        self.close()
        keep = min(keep, self.files.part.stat().st_size if self.files.part.exists() else 0)
        self._part = self.files.part.open("r+b" if keep else "wb")
        self._part.truncate(keep)
        self._hash = BackgroundSha256() if self.hashing else None
        self._unpacker = None
        self._head = b""
        self._decided = False
        self.compression = None
        self.size = self.synced = 0
        self.files.unpacked.unlink(missing_ok=True)
        self._part.seek(0)
        while self.size < keep:
            chunk = self._part.read(min(CHUNK, keep - self.size))
            self._take(chunk)
        self.synced = keep

    def feed(self, chunk: bytes) -> None:
        assert self._part is not None
        self._part.write(chunk)
        self._take(chunk)

    def _take(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._hash is not None:
            self._hash.update(chunk)
        if not self._decided:
            self._head += chunk
            if len(self._head) >= unpack.MAGIC_BYTES:
                self._decide()
        elif self._unpacker is not None:
            self._unpacker.write(chunk)

    def _decide(self) -> None:
        """Compressed or not, told once by the first bytes (or the name), for the whole."""
        self._decided = True
        head, self._head = self._head, b""
        self.compression = unpack.by_content(head) or self.named
        if self.compression is not None:
            self._out = self.files.unpacked.open("wb")
            self._unpacker = unpack.unpacker(self.compression, self._out)
            self._unpacker.write(head)

    def sync(self) -> bool:
        """A checkpoint when SYNC_EVERY more bytes came; True when it made one."""
        if self._part is None or self.size - self.synced < SYNC_EVERY:
            return False
        self.checkpoint()
        return True

    def checkpoint(self) -> None:
        """Everything received so far is on disk: a later start may resume after it."""
        if self._part is not None:
            self._part.flush()
            os.fsync(self._part.fileno())
            self.synced = self.size

    def finish(self) -> Received:
        assert self._part is not None
        if not self._decided:
            self._decide()  # a file shorter than the longest magic number
        if self._unpacker is not None:
            self._unpacker.finish()
        for handle in (self._part, self._out):
            if handle is not None:
                handle.flush()  # synced by the import, if it becomes a base (cache._Imports)
        image = self.files.unpacked if self.compression else self.files.part
        digest = self._hash.hexdigest() if self._hash is not None else None
        self.close()
        return Received(image, self.size, digest, self.compression)

    def close(self) -> None:
        for handle in (self._part, self._out):
            if handle is not None:
                handle.close()
        self._part = self._out = None
        if self._hash is not None:
            self._hash.stop()


class GaveUp(StepError):
    """Every attempt failed on something passing; what was received stays resumable."""


class Retryable(Exception):
    """A failure that another attempt may not meet: connection, timeout, 5xx, 429.
    `start_over`: the part cannot be resumed; the next attempt begins at byte 0."""

    def __init__(
        self, message: str, retry_after: float | None = None, *, start_over: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.start_over = start_over


def backoff(attempt: int, retry_after: float | None, rand: Callable[[], float]) -> float:
    """Seconds before retry number `attempt` (1, 2, ...): exponential with jitter, never
    sooner than the server's Retry-After."""
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** (attempt - 1)) * (0.5 + rand() / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
    return delay


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from `now`: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def read_state(files: WorkFiles, url: str) -> PartState | None:
    """The part's state, if it is for this URL and can be resumed at all."""
    try:  # bounded: the cache is a volume other pods write too
        raw = documents.load_json(read_regular(files.state, STATE_MAX))
        state = PartState(**documents.fields(raw, STATE_FIELDS))
    except (OSError, UnfitFile, documents.Invalid):
        return None  # nothing to resume from: the download starts over
    if state.synced < 0:
        return None
    if state.url != url or state.validator is None or not files.part.exists():
        return None
    return state


def copy_local(path: Path, receiver: Receiver) -> Received:
    """A file:// or absolute-path source: the same pipeline, without the network."""
    receiver.begin(0)
    progress = Progress(path.stat().st_size)
    for chunk in _read_chunks(path):
        receiver.feed(chunk)
        progress.add(len(chunk))
    return receiver.finish()


def _read_chunks(path: Path) -> Iterator[bytes]:
    """The file's content; reading errors name the source (writing errors are the cache's)."""
    try:
        with path.open("rb") as source:
            while chunk := source.read(CHUNK):
                yield chunk
    except OSError as exc:
        raise StepError(f"IMG_SOURCE {path}: cannot read: {exc.strerror}") from exc


def download(
    url: str,
    receiver: Receiver,
    *,
    retries: int,
    ca_bundle: Path | None,
    sleep: Callable[[float], None] = time.sleep,
    rand: Callable[[], float] = random.random,
) -> Received:
    """Download with resume and bounded retries; the Received image, or StepError."""
    import requests  # imported here: only a download needs it (and it takes a while)

    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    # The image as stored, not gzip'd in transit: lengths and ranges refer to these bytes.
    session.headers["Accept-Encoding"] = "identity"
    attempt = 0
    try:
        while True:
            try:
                _attempt(session, url, receiver, str(ca_bundle) if ca_bundle else True)
                return receiver.finish()
            except Retryable as exc:
                if exc.start_over:
                    receiver.files.state.unlink(missing_ok=True)
                attempt += 1
                if attempt > retries:
                    raise GaveUp(
                        f"IMG_SOURCE {url}: gave up after {attempt} attempt(s): {exc}"
                    ) from None
                delay = backoff(attempt, exc.retry_after, rand)
                log.warning("image: %s; retry %d of %d in %.1f s", exc, attempt, retries, delay)
                sleep(delay)
    finally:
        receiver.close()
        session.close()


def _attempt(session: Any, url: str, receiver: Receiver, verify: str | bool) -> None:
    import requests

    files = receiver.files
    state = read_state(files, url)
    offset = state.synced if state else 0
    headers = {"Range": f"bytes={offset}-", "If-Range": state.validator} if state and offset else {}
    state = None  # describes the part only once this answer has been accepted
    failure: Retryable | None = None
    try:
        with session.get(
            url,
            headers=headers,
            stream=True,
            timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
            verify=verify,
        ) as response:
            offset, total = _accept(response, url, offset)
            etag = response.headers.get("ETag")
            state = PartState(
                url=url,
                etag=etag if etag and not etag.startswith("W/") else None,
                last_modified=response.headers.get("Last-Modified"),
                total=total,
                synced=offset,
            )
            _save(files, state)
            if offset:
                log.info("image: resuming %s at %s", url, size(offset))
            receiver.begin(offset)
            progress = Progress(total, offset)
            for chunk in response.iter_content(CHUNK):
                receiver.feed(chunk)
                progress.add(len(chunk))
                if receiver.sync():
                    _save(files, dataclasses.replace(state, synced=receiver.synced))
    except requests.exceptions.SSLError as exc:
        raise StepError(
            f"IMG_SOURCE {url}: TLS verification failed ({_reason(exc)}): expected a "
            "certificate trusted by the system or by IMG_CA_BUNDLE"
        ) from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        failure = Retryable(f"{_reason(exc)} after {size(receiver.size)}")
    except requests.exceptions.ChunkedEncodingError as exc:
        failure = Retryable(f"connection cut after {size(receiver.size)} ({_reason(exc)})")
    else:
        if total is not None and receiver.size < total:
            failure = Retryable(f"connection cut after {size(receiver.size)} of {size(total)}")
        elif total is not None and receiver.size > total:
            files.remove()
            raise StepError(f"IMG_SOURCE {url}: got {receiver.size} bytes, {total} announced")
    if failure is not None:
        if state is not None:  # keep what came: the next attempt resumes after it
            receiver.checkpoint()
            _save(files, dataclasses.replace(state, synced=receiver.synced))
        raise failure


def _save(files: WorkFiles, state: PartState) -> None:
    write_atomic(files.state, json.dumps(dataclasses.asdict(state)).encode(), mode=0o644)


def _accept(response: Any, url: str, offset: int) -> tuple[int, int | None]:
    """What the answer means for us: (offset to continue at, total size if known)."""
    code = response.status_code
    if code == 429 or code >= 500:
        after = parse_retry_after(response.headers.get("Retry-After"), time.time())
        raise Retryable(f"HTTP {code} {response.reason}", after)
    length = response.headers.get("Content-Length")
    known = int(length) if length and length.isdigit() else None
    if code == 206 and offset:
        first, total = _content_range(response.headers.get("Content-Range", ""))
        if first == offset:
            return offset, total if total is not None else _plus(offset, known)
        raise Retryable(f"the server resumed at byte {first}, not {offset}", 0, start_over=True)
    if code == 200:
        if offset:
            log.info("image: the server sent the whole image again (no resume): starting over")
        return 0, known
    if code == 416 and offset:  # what we hold is longer than what is there now
        raise Retryable("the server cannot resume this part", 0, start_over=True)
    raise StepError(f"IMG_SOURCE {url}: HTTP {code} {response.reason}")


def _content_range(value: str) -> tuple[int | None, int | None]:
    """`bytes 100-199/1000` -> (100, 1000); `bytes 100-199/*` -> (100, None)."""
    try:
        unit, _, spec = value.partition(" ")
        span, _, total = spec.partition("/")
        first = int(span.split("-", 1)[0])
        return (first if unit == "bytes" else None), (int(total) if total.isdigit() else None)
    except ValueError:
        return None, None


def _plus(offset: int, length: int | None) -> int | None:
    return None if length is None else offset + length


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests error, short enough for one log line."""
    while exc.__context__ is not None and exc.__context__ is not exc:
        exc = exc.__context__
    text = str(exc).strip() or type(exc).__name__
    return text.rsplit(": ", 1)[-1][:120] if len(text) > 120 else text
