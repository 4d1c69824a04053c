"""A small synchronous QMP client: QEMU's machine protocol over its unix socket.

Our own client rather than QEMU's qemu.qmp (asyncio): a probe that runs every few seconds
should start fast, "QEMU has exited" is simply the end of the stream, and the guest agent
speaks the same JSON lines with another handshake that qemu.qmp does not know (guestagent.py),
so one small reader (jsonlines.py) serves both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kvmmgr.vm.jsonlines import JsonLines, ProtocolError, answer


class Qmp(JsonLines):
    """One QMP session, capabilities already negotiated."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        super().__init__(path, timeout)
        try:
            greeting = self.read()
            if "QMP" not in greeting:
                raise ProtocolError(f"{path} did not greet like QMP: {greeting}")
            self.execute("qmp_capabilities")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Qmp:
        return self

    def execute(self, command: str, **arguments: Any) -> Any:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self.send(message)
        while True:
            reply = self.read()
            if "error" in reply or "return" in reply:
                return answer(f"QMP {command}", reply)
            # anything else is an asynchronous event: not what we are waiting for

    def frontend_open(self, chardev: str) -> bool:
        """Whether the guest side of a character device is open: for a virtio-serial port,
        whether a program in the guest (the guest agent) holds it."""
        for device in self.execute("query-chardev"):
            if isinstance(device, dict) and device.get("label") == chardev:
                return bool(device.get("frontend-open"))
        return False
