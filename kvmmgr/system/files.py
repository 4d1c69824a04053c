"""Files written whole or not at all; files read whole only when they are small and regular."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

KINDS = {
    stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket",
}  # fmt: skip


class UnfitFile(Exception):
    """Why a file cannot be read whole, in a few words: `PATH: <this>`."""


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and parents) if missing; the directory itself is kept private."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def read_regular(path: Path, limit: int) -> bytes:
    """The content of the regular file at `path`, a symbolic link to one followed (a
    ConfigMap's keys are links). Anything else is refused before it is read: opening a FIFO
    blocks, a device such as /dev/zero never ends. A missing file raises FileNotFoundError,
    a link to one, one larger than `limit` bytes or one that cannot be read UnfitFile."""
    try:
        _check_regular(os.stat(path).st_mode)  # before the open: opening a device may act
        # O_NONBLOCK: a FIFO put there since must not block the open either.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        if os.path.islink(path):
            raise UnfitFile("is a symbolic link to a missing file: expected a file") from None
        raise
    except OSError as exc:
        raise UnfitFile(f"cannot read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        found = os.fstat(fd)
        _check_regular(found.st_mode)
        size = min(found.st_size, limit)  # a buffer the file's size, not the limit's
        try:
            data = handle.read(size + 1)
            if len(data) > size:  # it grew since, or says no size (/proc)
                data += handle.read(limit + 1 - len(data))
        except OSError as exc:
            raise UnfitFile(f"cannot read: {exc.strerror}") from None
    if len(data) > limit:
        unit = f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit >> 10} KiB"
        raise UnfitFile(f"larger than {unit}: expected a smaller file")
    return data


def _check_regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise UnfitFile(f"is {KINDS.get(stat.S_IFMT(mode), 'not a file')}: expected a file")
