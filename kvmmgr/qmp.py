"""A small synchronous QMP client, and the two things the CLI asks QEMU: status and shutdown.

Our own client rather than an asyncio library: a probe that runs every few seconds should
start fast, and "QEMU has exited" is simply the end of the stream.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path
from typing import Any

from kvmmgr.errors import EXIT_FORCED, EXIT_NOT_RUNNING, EXIT_OK, StepError


class QmpError(StepError):
    """QEMU answered a command with an error."""


class Qmp:
    """One QMP session over QEMU's unix socket, capabilities already negotiated."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(str(path))
            self._buffer = b""
            greeting = self._read()
            if "QMP" not in greeting:
                raise QmpError(f"{path} did not greet like QMP: {greeting}")
            self.execute("qmp_capabilities")
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self) -> Qmp:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def execute(self, command: str, **arguments: Any) -> Any:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self._sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply = self._read()
            if "error" in reply:
                raise QmpError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")
            if "return" in reply:
                return reply["return"]
            # anything else is an asynchronous event: not what we are waiting for

    def wait_closed(self, timeout: float) -> bool:
        """True once QEMU closes the connection (it has exited), False after `timeout` s."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self._sock.settimeout(left)
            try:
                self._read()
            except (EOFError, ConnectionError):
                return True
            except TimeoutError:
                return False
        return False

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            chunk = self._sock.recv(65536)  # a timeout here keeps what was already read
            if not chunk:
                raise EOFError("QMP connection closed")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        value = json.loads(line)
        if not isinstance(value, dict):
            raise QmpError(f"unexpected QMP message: {line!r}")
        return value


def vm_status(qmp_socket: Path, timeout: float = 5.0) -> str | None:
    """QEMU's run state (`running`, `paused`, `shutdown`...), None when no QEMU answers."""
    try:
        with Qmp(qmp_socket, timeout) as qmp:
            return str(qmp.execute("query-status")["status"])
    except (OSError, EOFError):
        return None


def shutdown_vm(qmp_socket: Path, timeout: float) -> tuple[int, str]:
    """Press the ACPI power button, wait for QEMU to exit, quit it hard after `timeout` s.
    Returns the CLI's exit status and what happened."""
    try:
        qmp = Qmp(qmp_socket)
    except (OSError, EOFError):
        return EXIT_NOT_RUNNING, "QEMU is not running (nothing answers on its QMP socket)"
    with qmp:
        qmp.execute("system_powerdown")
        if qmp.wait_closed(timeout):
            return EXIT_OK, "the guest powered off (ACPI) and QEMU exited"
        with contextlib.suppress(OSError, EOFError):  # it may have exited on its own just now
            qmp.execute("quit")
        qmp.wait_closed(10.0)
        return EXIT_FORCED, f"the guest did not power off within {timeout:g} s: QEMU was quit"
