"""`kvm-manager resize` against a real QEMU without a guest (no root needed): what it tells
of the guest's view on each disk bus. The busybox guest's e2e test (tests/e2e/test_resize.py)
grows a virtio disk under a running kernel."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kvmmgr.errors import EXIT_OK
from tests.integration.test_qmp import _kvm_manager, _qemu


@pytest.mark.parametrize(
    ("device", "seen"),
    [
        ("virtio-blk-pci", "the guest sees it now: grow its partition"),
        ("scsi-hd,bus=scsi0.0", "the guest sees it after a rescan (Linux: echo 1 > /sys/class/"),
        ("ide-hd,bus=ide.0,unit=0", "the guest (ide-hd disk) sees it after a reboot; then grow"),
    ],
)
def test_each_bus_says_when_the_guest_sees_it(tmp_path: Path, device: str, seen: str) -> None:
    disk = tmp_path / "vm.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    controller = ["-device", "virtio-scsi-pci,id=scsi0"] if device.startswith("scsi") else []
    qemu = _qemu(
        tmp_path, "-machine", "pc", "-S", *controller,
        "-drive", f"file={disk},if=none,id=disk0,format=qcow2",
        "-device", f"{device},drive=disk0",
    )  # fmt: skip
    try:
        done = _kvm_manager(tmp_path, "resize", "--size", "96M", VM_DISK_SIZE="96M")
    finally:
        qemu.kill()
        qemu.wait()
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    grown = f"disk0 ({disk}): grown from 64.0 MiB to 96.0 MiB; {seen}"
    assert done.stdout.startswith(grown), done.stdout
