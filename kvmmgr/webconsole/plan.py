"""The browser console as data: the port the page is served on, noVNC's files, and the
WebSocket listener of QEMU's VNC that the page's connection is passed on to. Pure."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from kvmmgr.facts import Identity

NOVNC_DIR = Path("/usr/share/novnc")  # Debian's novnc package: vnc.html and its scripts
PAGE = "vnc.html"
# QEMU's VNC over WebSocket listens here, for the console's server only: not on 127.0.0.1,
# which the loopback DNAT sends to the VM (firewall.py), and not on a pod address.
QEMU_WEBSOCKET = ("127.0.0.2", 5700)
WEBSOCKET_PATH = "/websockify"  # noVNC's default path
LOG_FILE = "web-console.log"  # in RUN_DIR, when no container log is there to write to


@dataclass(frozen=True)
class WebConsolePlan:
    port: int  # WEB_CONSOLE_PORT, on every IPv4 address of the pod, as VNC's 5900
    files: Path
    upstream: tuple[str, int]
    run_dir: Path  # names the VM the server is for: how a later start finds it
    user: Identity  # the server runs as QEMU's user, with no capability
    groups: tuple[int, ...]

    @property
    def marker(self) -> str:
        """The argument that tells this VM's console server among the pod's processes."""
        return f"--of={self.run_dir}"

    @property
    def log_file(self) -> Path:
        return self.run_dir / LOG_FILE

    def argv(self, listener_fd: int, ready_fd: int, *, parent: int | None) -> list[str]:
        """The server's command line: `listener_fd` its listening socket, `ready_fd` where
        it says it serves. `parent`: the process whose end ends the server too (the one
        that becomes QEMU)."""
        host, port = self.upstream
        user = f"{self.user.name}:{self.user.uid}:{self.user.gid}"
        groups = ",".join(map(str, self.groups))
        argv = [sys.executable, "-m", "kvmmgr.webconsole", self.marker, f"--fd={listener_fd}"]
        argv += [f"--ready={ready_fd}"]
        argv += [f"--files={self.files}", f"--upstream={host}:{port}", f"--user={user}"]
        argv += [f"--groups={groups}"] + ([f"--parent={parent}"] if parent else [])
        return argv


def build_web_console(
    port: int | None, run_dir: Path, user: Identity, files: Path = NOVNC_DIR
) -> WebConsolePlan | None:
    if port is None:
        return None
    return WebConsolePlan(port, files, QEMU_WEBSOCKET, run_dir, user, (user.gid,))
