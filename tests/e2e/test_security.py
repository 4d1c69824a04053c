"""Security of a running VM: QEMU runs with nothing to lose, the VNC password stays secret,
RUN_DIR is private, and nothing is started through a shell (every process kvm-manager starts
or becomes is recorded through Python's audit hooks, podlab/audit/sitecustomize.py)."""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
from pathlib import Path

from kvmmgr.errors import EXIT_NOT_RUNNING, EXIT_OK
from podlab.lab import HOSTNAME, REPO, VM_IP, PodLab
from tests.e2e.conftest import BOOT_TIMEOUT, boot, lease
from tests.privileges import QEMU_USER, dnsmasq_problems, pid_of, qemu_problems, status

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
    qemu_gid = grp.getgrnam(QEMU_USER).gr_gid
    info = run_dir.stat()  # root's; QEMU's group may pass it to read its files, not list it
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o710, 0, qemu_gid)
    holding = []
    for path in sorted(lab.volumes.rglob("*")):
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.parent == run_dir and path.is_socket():  # QMP: root's alone (QEMU accepts)
            assert mode & 0o077 == 0 and path.lstat().st_uid == 0, f"{path} is {oct(mode)}"
        elif path.name == "dnsmasq.pid":  # dnsmasq's own user's, to remove it at exit
            assert mode & 0o022 == 0 and path.lstat().st_uid == pwd.getpwnam("dnsmasq").pw_uid
        elif path.parent == run_dir:  # the config drive, dnsmasq's files, the VNC secret...
            assert mode & 0o007 == 0, f"{path} is {oct(mode)}"
            assert path.lstat().st_gid in {0, qemu_gid}, path
        if path.is_file() and secret in path.read_bytes():
            holding.append((path, mode))
    assert holding == [(run_dir / "vnc-password", 0o640)]  # QEMU reads it there, only there


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


def test_qemu_runs_with_nothing_to_lose_and_the_vm_still_works(lab: PodLab) -> None:
    """After the setup QEMU is an unprivileged user's process: no capability in any set,
    no_new_privs, its own seccomp filter; dnsmasq gave up root too. Everything the VM does
    still works, through a power-off and a start again."""
    qemu_user = pwd.getpwnam(QEMU_USER)
    for start in (1, 2):
        vm = boot(lab, VNC_PASSWORD=PASSWORD)
        fields = status(pid_of(lab.net.pod, "qemu-system-x86_64"))
        assert qemu_problems(fields) == [], fields
        assert fields["Uid"].split()[0] == str(qemu_user.pw_uid)
        assert fields["Gid"].split()[0] == str(qemu_user.pw_gid)
        dnsmasq = status(pid_of(lab.net.pod, "dnsmasq"))
        assert dnsmasq_problems(dnsmasq) == [], dnsmasq
        assert dnsmasq["Uid"].split()[0] == str(pwd.getpwnam("dnsmasq").pw_uid)

        assert lease(vm)["ip"] == VM_IP
        page = lab.from_node.http(f"http://{lab.net.pod_ip}/")
        assert page["status"] == 200 and f"ip={VM_IP}" in page["body"]
        assert lab.from_node.rfb(lab.net.pod_ip)["security_types"] == [2]
        assert lab.cli("status").stdout.strip() == "running"
        disk = lab.volumes / "image" / f"{HOSTNAME}.qcow2"  # QEMU's group's, nobody else's
        info = disk.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (
            0o660,
            0,
            qemu_user.pw_gid,
        ), start

        done = lab.cli("shutdown", "--timeout", "60")
        assert done.returncode == EXIT_OK, done.stdout + done.stderr
        assert vm.wait(BOOT_TIMEOUT) == 0
        assert lab.cli("status").returncode == EXIT_NOT_RUNNING
