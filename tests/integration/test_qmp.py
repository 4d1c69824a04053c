"""`kvm-manager status` and `shutdown` against a real QEMU that has no guest (no root needed).
A machine without ACPI ignores the power button: that is how the hard-quit path is shown;
the e2e suite shows the ACPI path with a real guest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from kvmmgr.errors import EXIT_CONFIG, EXIT_FORCED, EXIT_NOT_READY, EXIT_NOT_RUNNING, EXIT_OK


def _kvm_manager(run_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvmmgr", *args],
        env={**os.environ, "RUN_DIR": str(run_dir), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _qemu(run_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    socket = run_dir / "qmp.sock"
    process = subprocess.Popen(
        [
            "qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
            "-qmp", f"unix:{socket},server=on,wait=off", *extra,
        ],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not socket.exists():
        assert time.monotonic() < deadline, "QEMU did not open its QMP socket"
        time.sleep(0.02)
    return process


def test_status_running_then_forced_quit_when_the_guest_ignores_acpi(tmp_path: Path) -> None:
    qemu = _qemu(tmp_path)
    try:
        status = _kvm_manager(tmp_path, "status")
        assert (status.returncode, status.stdout.strip()) == (EXIT_OK, "running")
        assert "the VM's parts are not checked: no plan" in status.stderr
        shutdown = _kvm_manager(tmp_path, "shutdown", "--timeout", "1")
        assert shutdown.returncode == EXIT_FORCED
        assert "did not power off within 1 s: QEMU was quit" in shutdown.stdout
        assert qemu.wait(10) == 0
    finally:
        qemu.kill()
        qemu.wait()
    after = _kvm_manager(tmp_path, "status")
    assert (after.returncode, after.stdout.strip()) == (EXIT_NOT_RUNNING, "not running")


def test_a_paused_vm_is_not_running(tmp_path: Path) -> None:
    qemu = _qemu(tmp_path, "-S")
    try:
        status = _kvm_manager(tmp_path, "status")
        assert (status.returncode, status.stdout.strip()) == (EXIT_NOT_RUNNING, "prelaunch")
    finally:
        qemu.kill()
        qemu.wait()


def test_shutdown_without_qemu(tmp_path: Path) -> None:
    done = _kvm_manager(tmp_path, "shutdown", "--timeout", "1")
    assert done.returncode == EXIT_NOT_RUNNING
    assert "QEMU is not running" in done.stdout


def test_without_a_guest_agent_status_is_qemu_s_alone(tmp_path: Path) -> None:
    """The channel kvm-manager always gives the VM, with nothing in the guest behind it."""
    agent = tmp_path / "qga.sock"
    qemu = _qemu(
        tmp_path, "-machine", "pc", "-accel", "tcg",
        "-chardev", f"socket,id=qga0,path={agent},server=on,wait=off",
        "-device", "virtio-serial-pci,id=vserial0",
        "-device", "virtserialport,bus=vserial0.0,chardev=qga0,name=org.qemu.guest_agent.0",
    )  # fmt: skip
    try:
        status = _kvm_manager(tmp_path, "status")
        assert (status.returncode, status.stdout) == (EXIT_OK, "running\n")
        data = json.loads(_kvm_manager(tmp_path, "status", "--json").stdout)
        # No environment of a pod here, hence no plan: the parts are not checked, QEMU is.
        assert data.pop("parts") is None and data.pop("unchecked").startswith("no plan: ")
        assert data == {"state": "running", "agent": "absent", "guest": None}
        ready = _kvm_manager(tmp_path, "status", "--ready", READINESS="agent")
        assert ready.returncode == EXIT_NOT_READY
        assert ready.stdout.splitlines()[-1] == "not ready: the guest agent does not answer"
        assert _kvm_manager(tmp_path, "status", "--ready").returncode == EXIT_OK
        bad = _kvm_manager(tmp_path, "status", "--ready", READINESS="ping")
        assert bad.returncode == EXIT_CONFIG and "READINESS='ping'" in bad.stderr
        shutdown = _kvm_manager(tmp_path, "shutdown", "--timeout", "1")
        assert shutdown.returncode == EXIT_FORCED
        assert shutdown.stdout.endswith("QEMU was quit (tried ACPI)\n")  # no agent to ask
    finally:
        qemu.kill()
        qemu.wait()
