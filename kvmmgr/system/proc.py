"""Subprocesses (argv lists only, never a shell) and processes found through /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from kvmmgr.errors import CommandError


def run(
    argv: Sequence[str],
    *,
    timeout: float = 300,
    share_stderr: bool = False,
    stdin: str | None = None,
) -> str:
    """Run a command to completion; its stdout, or CommandError with its stderr.
    With `share_stderr` the command writes to our stderr (for a daemon that keeps logging
    there after it forks: capturing would wait for it to exit). `stdin` is fed to it."""
    try:
        done = subprocess.run(
            list(argv),
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            stdout=subprocess.PIPE,
            stderr=None if share_stderr else subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise CommandError(argv, 127, f"{argv[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise CommandError(argv, -1, f"timed out after {timeout:g} s") from None
    if done.returncode != 0:
        raise CommandError(argv, done.returncode, done.stderr or "see its message above")
    return done.stdout


def watch(argv: Sequence[str], on_output: Callable[[str], None], *, timeout: float = 86400) -> None:
    """Run a command that reports as it goes (qemu-img -p rewrites one line with \\r):
    `on_output` gets each piece of its stdout; CommandError with its stderr when it fails."""
    deadline = time.monotonic() + timeout
    try:
        child = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except FileNotFoundError:
        raise CommandError(argv, 127, f"{argv[0]}: command not found") from None
    assert child.stdout is not None and child.stderr is not None
    with child:
        buffer = b""
        while chunk := os.read(child.stdout.fileno(), 4096):
            *pieces, buffer = (buffer + chunk).replace(b"\r", b"\n").split(b"\n")
            for piece in pieces:
                if piece.strip():
                    on_output(piece.decode(errors="replace").strip())
            if time.monotonic() > deadline:
                child.kill()
                raise CommandError(argv, -1, f"timed out after {timeout:g} s")
        stderr = child.stderr.read().decode(errors="replace")
    if child.returncode != 0:
        raise CommandError(argv, child.returncode, stderr)


def pids_with_argument(program: str | None, argument: str) -> list[int]:
    """PIDs of running `program` processes (None: any) that have `argument` among their
    arguments."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # exited meanwhile
        named = program is None or os.path.basename(argv[0]) == program.encode()
        if argv and named and argument.encode() in argv:
            pids.append(int(entry.name))
    return sorted(pids)


def terminate(pids: Sequence[int], *, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [pid for pid in pids if _signal(pid, sig)]
        deadline = time.monotonic() + grace
        pause = 0.001  # most exit within a few milliseconds: look again soon, then less often
        while alive and time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
            alive = [pid for pid in alive if _alive(pid)]
        if not alive:
            return
        pids = alive


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; its parent just has not reaped it yet
