"""What /proc/PID/status says of QEMU and dnsmasq once the VM runs, for the e2e and the
container tests: QEMU has nothing to lose, dnsmasq little."""

from __future__ import annotations

import os
from pathlib import Path

from podlab.netns import Namespace

QEMU_USER = "kvmmgr-qemu"
CAP_NET_BIND_SERVICE, CAP_NET_ADMIN, CAP_NET_RAW = 10, 12, 13
SECCOMP_FILTER = "2"


def status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def pid_of(ns: Namespace, program: str) -> int:
    """The one process running `program` in the namespace."""
    found = []
    for pid in ns.pids():
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if os.path.basename(argv0) == program.encode():
            found.append(pid)
    assert len(found) == 1, f"{program}: {found}"
    return found[0]


def qemu_problems(fields: dict[str, str]) -> list[str]:
    """Empty when QEMU runs as one unprivileged user, without a capability in any set, with
    no_new_privs and a seccomp filter."""
    problems = []
    for name in ("Uid", "Gid"):
        ids = set(fields[name].split())
        if len(ids) != 1 or "0" in ids:
            problems.append(f"{name} {fields[name]}")
    if "0" in fields["Groups"].split():
        problems.append(f"Groups {fields['Groups']}")
    for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        if int(fields[name], 16):
            problems.append(f"{name} {fields[name]}")
    if fields["NoNewPrivs"] != "1":
        problems.append(f"NoNewPrivs {fields['NoNewPrivs']}")
    if fields["Seccomp"] != SECCOMP_FILTER:
        problems.append(f"Seccomp {fields['Seccomp']}")
    return problems


def dnsmasq_problems(fields: dict[str, str]) -> list[str]:
    """Empty when dnsmasq gave up root and keeps at most the network capabilities."""
    allowed = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW) | (1 << CAP_NET_BIND_SERVICE)
    problems = [f"{n} {fields[n]}" for n in ("Uid", "Gid") if "0" in fields[n].split()]
    problems += [f"{n} {fields[n]}" for n in ("CapEff", "CapPrm") if int(fields[n], 16) & ~allowed]
    return problems
