"""`kvm-manager resize` against the busybox guest booted by `kvm-manager run`: the disk grows
under the running guest, which sees it at once (virtio-blk), and every refusal leaves the
disk as it was. One boot; the checks run in the order written (the last one restarts)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmmgr.errors import EXIT_CONFIG, EXIT_NOT_RUNNING, EXIT_OK
from kvmmgr.vm.qmp import Qmp
from podlab.lab import HOSTNAME, KvmManager, PodLab
from tests.e2e.conftest import BOOT_TIMEOUT, boot, guest_sh

MIB = 1 << 20
BOOTED = 128 * MIB  # VM_DISK_SIZE at the start; the guest's base is 64 MiB
GROWN = 256 * MIB


@pytest.fixture(scope="module")
def running(
    guest_image: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[PodLab, KvmManager]]:
    with PodLab(tmp_path_factory.mktemp("resize"), guest_image) as lab:
        yield lab, boot(lab, VM_DISK_SIZE="128M")


def disk(lab: PodLab) -> Path:
    return lab.volumes / "image" / f"{HOSTNAME}.qcow2"  # VM_DIR defaults to IMAGE_DIR


def qmp_size(lab: PodLab) -> int:
    with Qmp(lab.volumes / "run" / "qmp.sock") as qmp:
        block = next(b for b in qmp.execute("query-block") if b["device"] == "disk0")
    return int(block["inserted"]["image"]["virtual-size"])


def file_size(lab: PodLab) -> int:
    """qemu-img's view of the file; -U: QEMU holds the image's write lock."""
    info = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(disk(lab))],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(json.loads(info.stdout)["virtual-size"])


def guest_size(lab: PodLab) -> int:
    return int(guest_sh(lab, "cat /sys/block/vda/size")) * 512


def resize(lab: PodLab, *args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    """`kubectl exec` into the container: its environment, VM_DISK_SIZE the one it booted with."""
    return lab.cli("resize", *args, **{"VM_DISK_SIZE": "128M", **env})


def assert_refused(done: subprocess.CompletedProcess[str], status: int, *words: str) -> None:
    assert done.returncode == status, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), done.stderr


def test_without_qemu_a_start_grows_the_disk(tmp_path: Path, guest_image: Path) -> None:
    with PodLab(tmp_path, guest_image) as lab:
        done = resize(lab, "--size", "3G")
    assert_refused(done, EXIT_NOT_RUNNING, "QEMU is not running", "VM_DISK_SIZE=3G")


@pytest.mark.parametrize("text", ["lots", "3X", "0", "65T", ""])
def test_a_bad_size_is_refused(running: tuple[PodLab, KvmManager], text: str) -> None:
    lab, _ = running
    assert_refused(resize(lab, "--size", text), EXIT_CONFIG, f"--size={text!r}: expected")
    assert qmp_size(lab) == BOOTED


def test_a_size_comes_from_the_option_or_vm_disk_size(
    running: tuple[PodLab, KvmManager],
) -> None:
    lab, _ = running
    neither = resize(lab, VM_DISK_SIZE=None)
    assert_refused(neither, EXIT_CONFIG, "--size", "VM_DISK_SIZE")
    bad_env = resize(lab, VM_DISK_SIZE="big")
    assert_refused(bad_env, EXIT_CONFIG, "VM_DISK_SIZE='big': expected")
    same = resize(lab)  # the container's own VM_DISK_SIZE: the disk has it already
    assert same.returncode == EXIT_OK, same.stdout + same.stderr
    assert same.stdout == f"disk0 ({disk(lab)}): already 128.0 MiB: nothing to do\n"


def test_a_disk_never_shrinks(running: tuple[PodLab, KvmManager]) -> None:
    lab, _ = running
    done = resize(lab, "--size", "100M")
    assert_refused(done, EXIT_CONFIG, "--size='100.0 MiB'", "128.0 MiB", "never shrinks")
    assert qmp_size(lab) == file_size(lab) == guest_size(lab) == BOOTED


def test_a_size_the_volume_cannot_hold_is_refused(running: tuple[PodLab, KvmManager]) -> None:
    lab, _ = running
    done = resize(lab, "--size", "60T")
    assert_refused(done, EXIT_CONFIG, "--size=", f"the volume of {disk(lab)} can hold")
    assert qmp_size(lab) == file_size(lab) == BOOTED


def test_the_running_guest_sees_its_disk_grow(running: tuple[PodLab, KvmManager]) -> None:
    lab, _ = running
    done = resize(lab, "--size", "256M")
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        f"disk0 ({disk(lab)}): grown from 128.0 MiB to 256.0 MiB; the guest sees it now: grow "
        "its partition and filesystem (cloud-init's growpart does at the next boot)",
        "set VM_DISK_SIZE (the chart's vm.diskSize) to 256M too, so that later starts agree",
    ]
    assert qmp_size(lab) == file_size(lab) == GROWN
    deadline = time.monotonic() + 30  # the guest's kernel takes virtio's config interrupt
    while guest_size(lab) != GROWN:
        assert time.monotonic() < deadline, guest_size(lab)
        time.sleep(0.5)
    again = resize(lab, VM_DISK_SIZE="256M")  # as the chart's raised diskSize says
    assert again.returncode == EXIT_OK and "nothing to do" in again.stdout, again.stderr


def test_the_next_start_at_the_new_size_keeps_the_disk(
    running: tuple[PodLab, KvmManager],
) -> None:
    lab, vm = running
    vm.kill()  # a container restart
    restarted = lab.start(VM_DISK_SIZE="256M")
    restarted.console.wait_for(r"^KVMTEST_READY ", BOOT_TIMEOUT)
    said = [line for line in restarted.log.lines if line.startswith("kvm-manager: disk: ")]
    assert said and said[0].startswith(f"kvm-manager: disk: reusing {disk(lab)}"), said
    assert "grown" not in said[0]  # it has VM_DISK_SIZE already
    assert qmp_size(lab) == guest_size(lab) == GROWN
