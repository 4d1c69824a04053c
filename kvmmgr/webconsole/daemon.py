"""The console's server started from its plan, replacing any an earlier start left."""

from __future__ import annotations

import os
import select
import socket
import subprocess
from contextlib import ExitStack
from pathlib import Path

from kvmmgr.errors import StepError
from kvmmgr.system import proc
from kvmmgr.webconsole.plan import WebConsolePlan

STARTED_WITHIN = 10.0  # seconds for the server to give up root and say it is ready


def apply_web_console(plan: WebConsolePlan, *, detached: bool = False) -> int:
    """The server's PID, once it runs as QEMU's user. It serves on WEB_CONSOLE_PORT, bound
    here, where any port may be bound. `detached`: this process does not become QEMU
    (`setup`, a repair), so the server neither ends with it nor keeps its stderr: it logs
    to RUN_DIR/web-console.log."""
    stop_web_console(plan)
    try:
        listener = socket.create_server(("0.0.0.0", plan.port))
    except OSError as exc:
        raise StepError(f"cannot listen on WEB_CONSOLE_PORT {plan.port}: {exc}") from exc
    with ExitStack() as stack:
        stack.enter_context(listener)
        log = _log(plan.log_file) if detached else None
        if log is not None:
            stack.callback(os.close, log)
        ready, said = os.pipe()
        stack.callback(os.close, ready)
        try:
            child = subprocess.Popen(
                plan.argv(listener.fileno(), said, parent=None if detached else os.getpid()),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                pass_fds=(listener.fileno(), said),
                start_new_session=True,  # the demo's Ctrl-C is QEMU's to handle, not the server's
            )
        finally:
            os.close(said)  # the child's copy is the only one: its exit is our EOF
        if not _ready(ready):
            child.kill()
            child.wait()
            where = f"; see {plan.log_file}" if detached else " (its message is above)"
            raise StepError(f"the web console's server did not start{where}")
    return child.pid


def stop_web_console(plan: WebConsolePlan) -> None:
    """Stop every server of this VM's, found through /proc: whoever started it."""
    pids = running(plan)
    if pids:
        proc.terminate(pids)


def running(plan: WebConsolePlan) -> list[int]:
    """The live console servers of this VM (a zombie has no command line any more)."""
    return proc.pids_with_argument(None, plan.marker)


def _log(path: Path) -> int:
    """Appended to, owner-only like everything in RUN_DIR: it names the browsers' addresses."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _ready(fd: int) -> bool:
    """The child's word that it serves, unprivileged; EOF or silence: it failed."""
    readable, _, _ = select.select([fd], [], [], STARTED_WITHIN)
    return bool(readable) and os.read(fd, 16) == b"ready\n"
