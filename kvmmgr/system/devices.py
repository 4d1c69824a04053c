"""Whether a device opens: the only way to tell that a container may use it."""

from __future__ import annotations

import os


def opens(path: str) -> OSError | None:
    """None when `path` opens for reading and writing; else why not."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return exc
    return None
