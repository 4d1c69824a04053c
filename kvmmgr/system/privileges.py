"""The last thing before QEMU: this process gives up root for good. After drop(), it has one
user and its groups, no capability in any set (the bounding set included, so that no exec
can bring one back), and no_new_privs; QEMU's own seccomp sandbox then narrows it further."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path

from kvmmgr.errors import StepError
from kvmmgr.facts import Identity

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAP_LAST_CAP = Path("/proc/sys/kernel/cap_last_cap")
LINUX_CAPABILITY_VERSION_3 = 0x20080522
# What /proc/self/status must say afterwards: every capability set empty, no new privileges.
EMPTY_SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def drop(user: Identity, groups: Sequence[int], what: str = "QEMU") -> None:
    """Become `user` with exactly `groups`, with nothing to regain root by. Needs SETPCAP
    (the bounding set), SETGID and SETUID; checked afterwards, whatever the kernel did.
    `what`: the program that is to run so, for the messages."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        os.setgroups(list(groups))
        for cap in range(int(CAP_LAST_CAP.read_text()) + 1):  # while we still may
            _call(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"dropping capability {cap}")
        _call(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "ambient set")
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)  # empties the permitted and effective sets
        header, data = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
        _call(libc.capset(ctypes.byref(header), data), "emptying the inheritable set")
        _call(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "setting no_new_privs")
    except OSError as exc:
        raise StepError(
            f"cannot become {user.name} (uid {user.uid}, gid {user.gid}) for {what}: {exc} "
            "(the container needs the SETUID, SETGID and SETPCAP capabilities)"
        ) from exc
    left = leftovers(Path("/proc/self/status").read_text(), user)
    if left:
        raise StepError(f"{what} would not run unprivileged: {', '.join(left)}")


def leftovers(status: str, user: Identity) -> list[str]:
    """What /proc/PID/status shows that an unprivileged QEMU must not have."""
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    wrong = [name for name in EMPTY_SETS if int(fields.get(name, "1"), 16) != 0]
    if fields.get("NoNewPrivs", "").strip() != "1":
        wrong.append("NoNewPrivs not 1")
    ids = {"Uid": user.uid, "Gid": user.gid}
    for name, expected in ids.items():
        if set(fields.get(name, "").split()) != {str(expected)}:
            wrong.append(f"{name} {fields.get(name, '').split()}")
    return wrong


def _call(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
