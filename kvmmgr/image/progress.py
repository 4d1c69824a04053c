"""Progress lines for long transfers: a pod has no terminal, so a short log line at most every
INTERVAL seconds, with bytes, percent, rate and time left."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

INTERVAL = 5.0
log = logging.getLogger("kvmmgr")


def size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("not reached")


def duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def describe(done: int, total: int | None, moved: int, elapsed: float) -> str:
    """`done` bytes of `total`; the rate counts only `moved`, what this transfer moved in
    `elapsed` seconds (a resumed download does not count what it found already there)."""
    rate = moved / elapsed if elapsed > 0 else 0.0
    text = size(done)
    if total:
        text += f" of {size(total)} ({100 * done / total:.0f}%)"
    text += f", {size(rate)}/s"
    if total and rate > 0 and done < total:
        text += f", {duration((total - done) / rate)} left"
    return text


class Progress:
    """Counts the bytes of one transfer, logging where it stands at most every `interval` s."""

    def __init__(
        self,
        total: int | None,
        start: int = 0,
        *,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        emit: Callable[[str], None] = lambda text: log.info("image: %s", text),
    ) -> None:
        self.total = total
        self.start = start  # already there before this transfer (a resumed download)
        self.done = start
        self.clock = clock
        self.emit = emit
        self.interval = INTERVAL if interval is None else interval
        self.began = clock()
        self.last = self.began

    def add(self, count: int) -> None:
        self.done += count
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self.emit(self.describe())

    def describe(self) -> str:
        return describe(self.done, self.total, self.done - self.start, self.clock() - self.began)
