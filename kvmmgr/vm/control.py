"""What the CLI asks a running VM: its state (and the guest's, through the agent), whether it
is ready, and to power off. QEMU answers over QMP; the guest agent, when the guest runs one,
over its channel. Both sockets are in RUN_DIR."""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kvmmgr.config import Readiness
from kvmmgr.errors import EXIT_FORCED, EXIT_NOT_RUNNING, EXIT_OK
from kvmmgr.guest.agent import GuestAgent, GuestInfo, guest_info
from kvmmgr.vm.jsonlines import CommandFailed, ProtocolError
from kvmmgr.vm.qemu import AGENT_CHARDEV, AGENT_SOCKET, QMP_SOCKET
from kvmmgr.vm.qmp import Qmp

AgentState = Literal["absent", "silent", "answers"]
TCP_TIMEOUT = 2.0


@dataclass(frozen=True)
class VmStatus:
    state: str | None  # QEMU's run state (running, paused, shutdown...); None: no QEMU
    agent: AgentState | None = None  # None: not asked (no QEMU)
    guest: GuestInfo | None = None

    def as_data(self) -> dict[str, Any]:
        guest = None
        if self.guest is not None:
            info = self.guest
            guest = {
                "agent_version": info.agent_version,
                "os": {"name": info.os_name, "version": info.os_version, "id": info.os_id},
                "kernel": info.kernel,
                "hostname": info.hostname,
                "interfaces": [
                    {"name": i.name, "mac": i.mac, "addresses": list(i.addresses)}
                    for i in info.interfaces
                ],
            }
        return {"state": self.state, "agent": self.agent, "guest": guest}

    def lines(self) -> list[str]:
        """The human form: QEMU's state alone, as before the agent, when the guest has none."""
        lines = [self.state or "not running"]
        if self.agent == "silent":
            lines.append("guest agent: connected, but it does not answer")
        if self.guest is not None:
            info = self.guest
            lines.append(f"guest agent: answers (version {info.agent_version or 'unknown'})")
            system = " ".join(filter(None, (info.os_name, f"kernel {info.kernel}")))
            lines.append(f"guest: {system or 'unknown system'}, host name {info.hostname}")
            for iface in info.interfaces:
                addresses = ", ".join(iface.addresses) or "no address"
                lines.append(f"guest interface {iface.name} ({iface.mac}): {addresses}")
        return lines


def vm_status(run_dir: Path, *, with_guest: bool = True) -> VmStatus:
    """QEMU's state; with the agent's view of the guest when it answers."""
    try:
        with Qmp(run_dir / QMP_SOCKET) as qmp:
            state = str(qmp.execute("query-status")["status"])
            connected = qmp.frontend_open(AGENT_CHARDEV)
    except (OSError, EOFError, ProtocolError):
        return VmStatus(None)
    if not connected:
        return VmStatus(state, "absent")
    try:
        with GuestAgent(run_dir / AGENT_SOCKET) as agent:
            return VmStatus(state, "answers", guest_info(agent) if with_guest else None)
    except (OSError, EOFError, ProtocolError):
        return VmStatus(state, "silent")


def check_ready(run_dir: Path, readiness: Readiness) -> tuple[VmStatus, str | None]:
    """The VM's status and, when it is not ready, why (None: ready)."""
    status = vm_status(run_dir, with_guest=False)
    if status.state != "running":
        return status, f"QEMU is {status.state or 'not running'}"
    if readiness.check == "agent" and status.agent != "answers":
        return status, "the guest agent does not answer"
    if readiness.check == "tcp":
        assert readiness.address is not None and readiness.port is not None
        target = f"{readiness.address}:{readiness.port}"
        try:
            socket.create_connection((str(readiness.address), readiness.port), TCP_TIMEOUT).close()
        except OSError as exc:
            return status, f"the VM does not accept TCP connections on {target} ({exc})"
    return status, None


def shutdown_vm(run_dir: Path, timeout: float) -> tuple[int, str]:
    """The guest agent's shutdown when it answers (given half the time), then the ACPI power
    button, then a hard quit after `timeout` s. Returns the exit status and what happened."""
    try:
        qmp = Qmp(run_dir / QMP_SOCKET)
    except (OSError, EOFError, ProtocolError):
        return EXIT_NOT_RUNNING, "QEMU is not running (nothing answers on its QMP socket)"
    deadline = time.monotonic() + timeout
    tried: list[str] = []
    with qmp:
        if qmp.frontend_open(AGENT_CHARDEV) and _agent_shutdown(run_dir):
            tried.append("the guest agent")
            if qmp.wait_closed(timeout / 2):
                return EXIT_OK, "the guest powered off (guest agent) and QEMU exited"
        tried.append("ACPI")
        try:
            qmp.execute("system_powerdown")
        except (OSError, EOFError):
            return EXIT_OK, f"the guest powered off ({', then '.join(tried)}) and QEMU exited"
        if qmp.wait_closed(max(deadline - time.monotonic(), 0.0)):
            return EXIT_OK, f"the guest powered off ({', then '.join(tried)}) and QEMU exited"
        with contextlib.suppress(OSError, EOFError):  # it may have exited on its own just now
            qmp.execute("quit")
        qmp.wait_closed(10.0)
        return (
            EXIT_FORCED,
            f"the guest did not power off within {timeout:g} s: QEMU was quit "
            f"(tried {', then '.join(tried)})",
        )


def _agent_shutdown(run_dir: Path) -> bool:
    """True when the agent took the request."""
    try:
        with GuestAgent(run_dir / AGENT_SOCKET) as agent:
            agent.request_shutdown()
    except (OSError, EOFError, ProtocolError, CommandFailed):
        return False  # no agent after all, or one that refuses (guest-shutdown disabled)
    return True
