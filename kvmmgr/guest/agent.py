"""The QEMU guest agent: a program in the guest, reached through a virtio-serial channel
whose host side is a socket in RUN_DIR. It answers only when the guest runs it.

Everything it says comes from the guest, which may be hostile: answers are type-checked,
printable, and cut to a sane length before anyone sees them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmmgr.vm.jsonlines import CommandFailed, JsonLines, ProtocolError, answer

SYNC_MARK = b"\xff"  # the agent flushes its parser on it and prefixes its sync answer with it
MAX_TEXT = 256
MAX_ITEMS = 64


@dataclass(frozen=True)
class GuestInterface:
    name: str
    mac: str
    addresses: tuple[str, ...]  # address/prefix


@dataclass(frozen=True)
class GuestInfo:
    """What the agent tells about the guest; empty strings where it would not say."""

    agent_version: str
    os_name: str
    os_version: str
    os_id: str
    kernel: str
    hostname: str
    interfaces: tuple[GuestInterface, ...] = field(default=())


class GuestAgent(JsonLines):
    """One session with the agent, synchronised: answers left over from an earlier client
    that gave up are skipped."""

    def __init__(self, path: Path, timeout: float = 3.0) -> None:
        super().__init__(path, timeout)
        try:
            self._sync()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> GuestAgent:
        return self

    def _sync(self) -> None:
        token = int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF
        self.send({"execute": "guest-sync-delimited", "arguments": {"id": token}}, SYNC_MARK)
        while True:
            line = self.read_line()
            if not line.startswith(SYNC_MARK):
                continue  # a stale answer, or noise: not ours
            try:
                reply = JsonLines.parse(self.path, line.lstrip(SYNC_MARK))
            except ProtocolError:
                continue
            if reply.get("return") == token:
                return

    def execute(self, command: str, **arguments: Any) -> Any:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self.send(message)
        return answer(f"guest agent {command}", self.read())

    def request_shutdown(self) -> None:
        """guest-shutdown answers only when it fails; success is the guest powering off. An
        error that comes back within a second is raised."""
        self.send({"execute": "guest-shutdown", "arguments": {"mode": "powerdown"}})
        self.settimeout(1.0)
        try:
            answer("guest agent guest-shutdown", self.read())
        except (TimeoutError, EOFError, ConnectionError):
            return


def guest_info(agent: GuestAgent) -> GuestInfo:
    """The agent's version, the guest's OS, host name and interfaces."""
    version = _get(_call(agent, "guest-info"), "version")
    osinfo = _call(agent, "guest-get-osinfo")
    return GuestInfo(
        agent_version=version,
        os_name=_get(osinfo, "pretty-name") or _get(osinfo, "name"),
        os_version=_get(osinfo, "version"),
        os_id=_get(osinfo, "id"),
        kernel=_get(osinfo, "kernel-release"),
        hostname=_get(_call(agent, "guest-get-host-name"), "host-name"),
        interfaces=_interfaces(_call(agent, "guest-network-get-interfaces")),
    )


def _call(agent: GuestAgent, command: str) -> Any:
    """An answer, or None when the guest does not support the command or refuses it."""
    try:
        return agent.execute(command)
    except CommandFailed:
        return None


def _interfaces(value: Any) -> tuple[GuestInterface, ...]:
    if not isinstance(value, list):
        return ()
    found = []
    for item in value[:MAX_ITEMS]:
        if not isinstance(item, dict):
            continue
        addresses = []
        for address in item.get("ip-addresses") or ():
            if isinstance(address, dict) and isinstance(address.get("prefix"), int):
                addresses.append(f"{_get(address, 'ip-address')}/{address['prefix']}")
        found.append(
            GuestInterface(
                _get(item, "name"), _get(item, "hardware-address"), tuple(addresses[:MAX_ITEMS])
            )
        )
    return tuple(found)


def _get(value: Any, key: str) -> str:
    """A printable string field of the guest's answer, '' when absent or not a string."""
    text = value.get(key) if isinstance(value, dict) else None
    if not isinstance(text, str):
        return ""
    return "".join(c if c.isprintable() else "?" for c in text[:MAX_TEXT])
