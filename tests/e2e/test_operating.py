"""The README's "Operating" procedures, on real guests: a base image upgrade (two pets on base
A, a new replica on base B, prune keeping A while a disk uses it, `rebase`, prune removing
A, a pet moved by the command and one by VM_DISK_POLICY=rebase), and a cattle VM re-imaged
when its base changes. Replicas are pods of the same
StatefulSet: here, one pod namespace that runs them one after the other under their own
host names, sharing the image cache volume as they would, each with its own RUN_DIR (a pod's
emptyDir: its DHCP leases are its own).

Each base is the test guest with a file /release.txt on its FAT disk saying which it is, so
the guest itself shows which base it reads; the pets write /pet.txt, their own state.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from kvmmgr.errors import EXIT_OK
from podlab.lab import IMAGE_PORT, KvmManager, PodLab
from tests.e2e.conftest import BOOT_TIMEOUT, boot, guest_sh


def release(lab: PodLab, guest: Path, name: str) -> str:
    """A base that is the test guest plus /release.txt = `name`, served by the node."""
    raw = lab.workdir / f"{name}.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(guest), str(raw)], check=True)
    text = lab.workdir / "release.txt"
    text.write_text(f"{name}\n")
    subprocess.run(["mcopy", "-o", "-i", str(raw), str(text), "::/release.txt"], check=True)
    served = lab.served / f"guest-{name}.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(served)], check=True)
    raw.unlink()
    return f"http://{lab.net.node_ip}:{IMAGE_PORT}/{served.name}"


def run_dir(lab: PodLab, host: str) -> str:
    return str(lab.volumes / f"run-{host}")


def start(lab: PodLab, host: str, source: str, **env: str) -> KvmManager:
    return boot(lab, HOSTNAME=host, IMG_SOURCE=source, RUN_DIR=run_dir(lab, host), **env)


def stop(lab: PodLab, vm: KvmManager) -> None:
    done = lab.cli("shutdown", "--timeout", "60", RUN_DIR=vm.env["RUN_DIR"])
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert vm.wait(BOOT_TIMEOUT) == 0


def reads(lab: PodLab, name: str) -> str:
    return guest_sh(lab, f"cat /mnt/disk/{name} 2>&1 || true").strip()


def test_a_base_image_upgrade(lab: PodLab, guest_image: Path) -> None:
    a, b = release(lab, guest_image, "a"), release(lab, guest_image, "b")
    for host in ("kvm-0", "kvm-1"):  # two pets on base A
        vm = start(lab, host, a)
        assert reads(lab, "release.txt") == "a"
        guest_sh(lab, f"echo pet {host} > /mnt/disk/pet.txt && sync")
        stop(lab, vm)

    # The upgrade: the chart's vm.image.source names B. A new replica is made on B...
    vm = start(lab, "kvm-2", b)
    assert reads(lab, "release.txt") == "b"
    stop(lab, vm)
    # ...and a pet that restarts under the new values keeps the base its disk was made on.
    vm = start(lab, "kvm-0", b)
    assert (reads(lab, "release.txt"), reads(lab, "pet.txt")) == ("a", "pet kvm-0")
    assert "it keeps its base (VM_DISK_POLICY=keep)" in vm.log.text
    stop(lab, vm)

    kept = lab.cli("cache", "prune")  # nothing to remove: A is used, B is used
    assert kept.returncode == EXIT_OK, kept.stderr
    assert "kept guest-a.qcow2: used by kvm-0, kvm-1" in kept.stdout, kept.stdout
    assert (lab.volumes / "image" / "guest-a.qcow2").exists()

    # Each pet moved onto B: kvm-0, stopped, by `kvm-manager rebase` (a debug pod's way)...
    moved = lab.cli("rebase", HOSTNAME="kvm-0", IMG_SOURCE=b, RUN_DIR=run_dir(lab, "kvm-0"))
    assert moved.returncode == EXIT_OK, moved.stderr
    assert "from guest-a.qcow2 onto guest-b.qcow2" in moved.stdout, moved.stdout
    dry = lab.cli("cache", "prune", "--dry-run")
    assert "kept guest-a.qcow2: used by kvm-1" in dry.stdout, dry.stdout
    # ...kvm-1 by its next start under VM_DISK_POLICY=rebase (the chart's vm.diskPolicy).
    vm = start(lab, "kvm-1", b, VM_DISK_POLICY="rebase")
    assert "disk: rebased" in vm.log.text and "onto guest-b.qcow2" in vm.log.text
    assert (reads(lab, "release.txt"), reads(lab, "pet.txt")) == ("a", "pet kvm-1")
    stop(lab, vm)

    dry = lab.cli("cache", "prune", "--dry-run")
    assert "would remove guest-a.qcow2" in dry.stdout, dry.stdout
    assert (lab.volumes / "image" / "guest-a.qcow2").exists()
    pruned = lab.cli("cache", "prune")
    assert "removed guest-a.qcow2" in pruned.stdout, pruned.stdout
    assert not (lab.volumes / "image" / "guest-a.qcow2").exists()

    vm = start(lab, "kvm-0", b)  # the guest sees the very disk it had: A's files and its own
    assert (reads(lab, "release.txt"), reads(lab, "pet.txt")) == ("a", "pet kvm-0")
    assert "keeps its base" not in vm.log.text
    stop(lab, vm)


def test_a_cattle_vm_is_re_imaged_when_its_base_changes(lab: PodLab, guest_image: Path) -> None:
    a, b = release(lab, guest_image, "a"), release(lab, guest_image, "b")
    vm = start(lab, "kvm-0", a, VM_DISK_POLICY="reimage")
    guest_sh(lab, "echo scratch > /mnt/disk/pet.txt && sync")
    stop(lab, vm)
    vm = start(lab, "kvm-0", a, VM_DISK_POLICY="reimage")  # the same base: the disk is kept
    assert reads(lab, "pet.txt") == "scratch"
    stop(lab, vm)

    vm = start(lab, "kvm-0", b, VM_DISK_POLICY="reimage")
    assert reads(lab, "release.txt") == "b"
    assert "No such file" in reads(lab, "pet.txt")
    assert "disk: re-imaged" in vm.log.text and "it was made on" in vm.log.text
    stop(lab, vm)
    listed = lab.cli("cache", "list")
    assert "guest-a.qcow2" in listed.stdout and "used by no VM" in listed.stdout, listed.stdout
