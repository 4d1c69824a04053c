"""Newline-delimited JSON over a unix socket: the wire format of QMP and of the guest agent.

Both peers can be hostile or broken (the guest agent speaks for the guest): every read has a
timeout and a line has a size limit, so a probe never hangs or grows without bound.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from kvmmgr.errors import StepError

MAX_LINE = 4 << 20  # bytes: more than any answer QEMU or the agent gives


class ProtocolError(StepError):
    """The peer said something that is not the protocol."""


class JsonLines:
    """One connection; `timeout` bounds each wait for the peer."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self._buffer = b""
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(str(path))
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self) -> JsonLines:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def send(self, message: dict[str, Any], prefix: bytes = b"") -> None:
        self._sock.sendall(prefix + json.dumps(message).encode() + b"\n")

    def read_line(self) -> bytes:
        """The next line, without its newline. EOFError when the peer closed."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE:
                raise ProtocolError(f"{self.path}: a message longer than {MAX_LINE >> 20} MiB")
            chunk = self._sock.recv(65536)  # a timeout here keeps what was already read
            if not chunk:
                raise EOFError(f"{self.path}: connection closed")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def read(self) -> dict[str, Any]:
        return self.parse(self.path, self.read_line())

    @staticmethod
    def parse(path: Path, line: bytes) -> dict[str, Any]:
        try:
            value = json.loads(line)
        except ValueError:
            raise ProtocolError(f"{path}: not JSON: {line[:80]!r}") from None
        if not isinstance(value, dict):
            raise ProtocolError(f"{path}: unexpected message: {line[:80]!r}")
        return value

    def wait_closed(self, timeout: float) -> bool:
        """True once the peer closes the connection (QEMU has exited), False after `timeout`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self._sock.settimeout(left)
            try:
                self.read_line()
            except (EOFError, ConnectionError):
                return True
            except TimeoutError:
                return False
            except ProtocolError:
                self._buffer = b""
        return False

    def settimeout(self, timeout: float) -> None:
        self._sock.settimeout(timeout)


def answer(command: str, reply: dict[str, Any]) -> Any:
    """The `return` of a reply, or the error it carries as a StepError."""
    if "error" in reply:
        error = reply["error"]
        desc = error.get("desc", error) if isinstance(error, dict) else error
        raise CommandFailed(f"{command}: {desc}")
    return reply["return"]


class CommandFailed(StepError):
    """The peer answered a command with an error."""
