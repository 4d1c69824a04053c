"""Tests only: on PYTHONPATH, Python imports this at start. It records every process the
interpreter starts or becomes (subprocess, exec, spawn, system) as one JSON line in the file
named by KVMMGR_AUDIT_LOG, through Python's audit hooks (PEP 578). Environments are not
recorded: they may hold secrets."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

_LOG = os.environ.get("KVMMGR_AUDIT_LOG")
# event -> the index of the program in its arguments, and of its argv
_EVENTS = {
    "subprocess.Popen": (0, 1),
    "os.exec": (0, 1),
    "os.posix_spawn": (0, 1),
    "os.spawn": (1, 2),
    "os.system": (None, 0),
}


def _record(event: str, args: tuple[Any, ...]) -> None:
    if event not in _EVENTS or not _LOG:
        return
    program_at, argv_at = _EVENTS[event]
    argv = args[argv_at]
    entry = {
        "event": event,
        "program": None if program_at is None else _text(args[program_at]),
        "argv": [_text(a) for a in argv] if isinstance(argv, (list, tuple)) else _text(argv),
    }
    os.write(_FD, (json.dumps(entry) + "\n").encode())


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return os.fsdecode(value) if isinstance(value, (bytes, os.PathLike)) else str(value)


if _LOG:
    # Opened now, while the process is root: it records QEMU's exec after giving root up.
    _FD = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    sys.addaudithook(_record)
