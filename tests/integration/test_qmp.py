"""`kvm-manager status` and `shutdown` against a real QEMU that has no guest (no root needed).
A machine without ACPI ignores the power button: that is how the hard-quit path is shown;
the e2e suite shows the ACPI path with a real guest."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from kvmmgr.errors import EXIT_FORCED, EXIT_NOT_RUNNING, EXIT_OK


def _kvm_manager(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvmmgr", *args],
        env={**os.environ, "RUN_DIR": str(run_dir)},
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
