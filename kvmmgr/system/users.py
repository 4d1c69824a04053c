"""QEMU_USER looked up in the container's user database."""

from __future__ import annotations

import pwd

from kvmmgr.errors import ConfigError
from kvmmgr.facts import Identity


def lookup(run_as: str) -> Identity:
    """A name from /etc/passwd (its primary group), or UID:GID as given (no entry needed)."""
    if ":" in run_as:
        uid, gid = (int(n) for n in run_as.split(":"))
        return Identity(run_as, uid, gid)
    try:
        entry = pwd.getpwnam(run_as)
    except KeyError:
        raise ConfigError(
            f"QEMU_USER={run_as!r}: no such user in this container's /etc/passwd: expected "
            "the user QEMU runs as (the image has kvmmgr-qemu), or UID:GID"
        ) from None
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise ConfigError.bad_value(
            "QEMU_USER", run_as, f"a user other than root (it has uid {entry.pw_uid}, "
            f"gid {entry.pw_gid})"
        )  # fmt: skip
    return Identity(run_as, entry.pw_uid, entry.pw_gid)
