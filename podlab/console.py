"""A process's output, collected line by line in the background and waited on by pattern.

The guest's serial console arrives on kvm-manager's stdout; its markers are one line each,
`KVMTEST_NAME key=value ...` (see podlab/guest/README.md).
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import IO


class Output:
    """Lines of one stream, also copied to `log_file` as they come (for failure reports)."""

    def __init__(self, stream: IO[bytes], log_file: Path) -> None:
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._closed = False
        self.log_file = log_file
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[bytes]) -> None:
        with self.log_file.open("a", encoding="utf-8") as log:
            for raw in iter(stream.readline, b""):
                # The guest writes \r\n; BIOS and kernel setup leave escape codes mid-line.
                line = raw.decode("utf-8", "replace").replace("\r", "").rstrip("\n")
                log.write(line + "\n")
                log.flush()
                with self._changed:
                    self._lines.append(line)
                    self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def lines(self) -> list[str]:
        with self._changed:
            return list(self._lines)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def mark(self) -> int:
        """A position: later waits can look only at what comes after it."""
        with self._changed:
            return len(self._lines)

    def wait_for(self, pattern: str, timeout: float, since: int = 0) -> re.Match[str]:
        """The first line after `since` matching `pattern`; TimeoutError with the tail."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = since
        with self._changed:
            while True:
                for line in self._lines[seen:]:
                    found = regex.search(line)
                    if found:
                        return found
                seen = len(self._lines)
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    tail = "\n".join(self._lines[-25:])
                    why = "stream closed" if self._closed else f"{timeout:g} s passed"
                    raise TimeoutError(
                        f"no line matching {pattern!r} ({why}); see {self.log_file}; last lines:\n"
                        f"{tail}"
                    )
                self._changed.wait(min(left, 1.0))


def marker(line_match: re.Match[str]) -> dict[str, str]:
    """`KVMTEST_DHCP ip=1.2.3.4 dns=a,b` -> {'ip': '1.2.3.4', 'dns': 'a,b'}."""
    line = line_match.string[line_match.start() :]
    fields = {}
    for word in line.split()[1:]:
        key, sep, value = word.partition("=")
        if sep:
            fields[key] = value
    return fields
