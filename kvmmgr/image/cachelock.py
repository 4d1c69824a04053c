"""The image cache's lock: one start downloads, the others sharing IMAGE_DIR wait for it.

A POSIX record lock (fcntl) on a file beside the image. It works on local filesystems and on
NFS (v4, or v3 with lockd; not with `nolock` mounts), CephFS and most ReadWriteMany volumes.
The kernel drops it when its holder dies, and an NFS server when the holder's node stops
renewing its lease: a dead holder never blocks the others for good. Where the filesystem has
no locks at all, `acquire` says so and each start downloads on its own (see image.py).

POSIX locks belong to the process and vanish when *any* descriptor of the file is closed:
the holder never opens the lock file a second time. The holder removes the file before it
lets go, so the cache keeps no lock files. A start that locked a file removed meanwhile (its
descriptor came from before the removal; on NFS another node's removal shows as ESTALE) opens
and locks the one now at the path instead.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from kvmmgr.errors import ConfigError, StepError
from kvmmgr.image.progress import duration
from kvmmgr.system.files import UnfitFile, read_regular

log = logging.getLogger("kvmmgr")

POLL = 0.25  # seconds between tries while another start holds the lock
REPORT_EVERY = 10.0
UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
HOLDER_MAX = 1024  # bytes: "vm-3 (pid 12)"
NOT_A_FILE = {errno.ELOOP: "a symbolic link", errno.EISDIR: "a directory"}  # at the lock's path


class CacheLock:
    def __init__(self, path: Path, holder: str) -> None:
        self.path = path
        self.holder = holder  # who we are, for the log lines of those who wait
        self._fd: int | None = None

    def acquire(self, waiting: Callable[[], str] = lambda: "") -> bool:
        """Wait for the lock; False if the filesystem has no locks (then nothing is held).
        `waiting()` adds to the periodic "waiting" line, e.g. how far the holder has got."""
        began = time.monotonic()
        next_report = began + REPORT_EVERY
        while (got := self.take()) == "busy":
            now = time.monotonic()
            if now >= next_report:
                next_report = now + REPORT_EVERY
                extra = waiting()
                log.info(
                    "image: waiting %s for %s to finish%s",
                    duration(now - began),
                    self._current_holder(),
                    f" ({extra})" if extra else "",
                )
            time.sleep(POLL)
        return got == "held"

    def take(self) -> Literal["held", "busy", "no locks"]:
        """One try, without waiting (`cache prune` passes by a base that a start is fetching)."""
        while True:
            fd = self._open()
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if self._still_there(fd):
                    break
                # Its holder removed it while we tried: try its successor.
                os.close(fd)
                continue
            except OSError as exc:
                os.close(fd)
                if exc.errno in UNSUPPORTED:
                    self.path.unlink(missing_ok=True)  # of no use without locks
                    return "no locks"
                # ESTALE: an NFS client's handle on a file another node removed meanwhile.
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.ESTALE):
                    raise
                return "busy"
        os.ftruncate(fd, 0)
        os.pwrite(fd, self.holder.encode(), 0)
        self._fd = fd
        return "held"

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self.path.unlink(missing_ok=True)  # still held: nobody takes a file on its way out
            os.close(fd)  # closing drops the lock

    def _open(self) -> int:
        """The lock file, which must be one: the cache is a volume other pods write too (a
        link is not followed; a FIFO would not block the open, but is no file to lock)."""
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            if exc.errno in NOT_A_FILE:
                what = NOT_A_FILE[exc.errno]
                raise ConfigError(f"{self.path}: {what}: expected the cache's lock file") from None
            raise StepError(f"cannot open the lock file {self.path}: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ConfigError(f"{self.path}: not a regular file: expected the cache's lock file")
        return fd

    def _still_there(self, fd: int) -> bool:
        """Whether the locked file is the one at our path (not one removed meanwhile)."""
        try:
            named = self.path.stat()
            held = os.fstat(fd)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ESTALE):
                return False
            raise
        return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)

    def _current_holder(self) -> str:
        try:
            said = read_regular(self.path, HOLDER_MAX).decode(errors="replace")
        except (OSError, UnfitFile):
            return "another start"
        return " ".join(said.split()) or "another start"  # one line, whatever it holds
