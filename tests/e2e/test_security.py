"""Security of a running VM: the VNC password stays secret, RUN_DIR is private, and nothing is
started through a shell (every process kvm-manager starts or becomes is recorded through
Python's audit hooks, podlab/audit/sitecustomize.py)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from podlab.lab import REPO, PodLab
from tests.e2e.conftest import boot

PASSWORD = "Pa55-wrd"  # VNC uses 8 bytes at most
STARTED = {"dnsmasq", "qemu-img", "qemu-system-x86_64"}  # all kvm-manager may start
SHELLS = {"sh", "bash", "dash", "ash", "zsh", "busybox"}


def test_the_vnc_password_never_shows_and_run_dir_is_private(lab: PodLab) -> None:
    audit = lab.workdir / "audit.jsonl"
    vm = boot(
        lab,
        VNC_PASSWORD=PASSWORD,
        PYTHONPATH=str(REPO / "podlab" / "audit"),
        KVMMGR_AUDIT_LOG=str(audit),
    )
    assert lab.from_node.rfb(lab.net.pod_ip)["security_types"] == [2]  # it is asked for

    secret = PASSWORD.encode()
    for pid in lab.net.pod.pids():  # QEMU and dnsmasq: neither arguments nor environment
        for part in ("cmdline", "environ"):
            assert secret not in Path(f"/proc/{pid}/{part}").read_bytes(), (pid, part)
    assert PASSWORD not in vm.log.text  # kvm-manager's and dnsmasq's log
    assert PASSWORD not in vm.console.text

    run_dir = lab.volumes / "run"
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    holding = []
    for path in sorted(lab.volumes.rglob("*")):
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.parent == run_dir and path.is_socket():  # QMP: nobody else may connect
            assert mode & 0o022 == 0, f"{path} is {oct(mode)}"
        elif path.parent == run_dir:  # the config drive, dnsmasq's files, the VNC secret...
            assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
        if path.is_file() and secret in path.read_bytes():
            holding.append((path, mode))
    assert holding == [(run_dir / "vnc-password", 0o600)]  # QEMU reads it there, only there


def test_nothing_is_started_through_a_shell(lab: PodLab) -> None:
    audit = lab.workdir / "audit.jsonl"
    boot(lab, PYTHONPATH=str(REPO / "podlab" / "audit"), KVMMGR_AUDIT_LOG=str(audit))
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    programs = [
        os.path.basename(event["program"] or event["argv"][0])
        for event in events
        if isinstance(event["argv"], list)
    ]
    assert len(programs) == len(events), events  # no os.system: it takes a shell command line
    assert set(programs) <= STARTED, programs
    assert not SHELLS & set(programs)
    assert "dnsmasq" in programs and "qemu-img" in programs  # the hook saw what ran...
    last = events[-1]
    assert last["event"] == "os.exec" and last["argv"][0] == "qemu-system-x86_64"  # ...and QEMU
