"""Base image upgrades and the shared cache, through the real CLI and real qemu-img: each VM
disk claims its base; `cache list` and `cache prune` (safe against a start that holds a lock);
a pet keeps its base when IMG_TARGET names a new one; VM_DISK_POLICY=reimage makes a cattle
disk afresh; `rebase` moves a stopped disk onto the new base, the guest seeing the same bytes,
and refuses while QEMU has the disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kvmmgr.config import load_image
from kvmmgr.errors import EXIT_CONFIG, EXIT_IN_USE, EXIT_OK
from kvmmgr.image import cache, overlay, usage
from kvmmgr.image.disks import DiskPlan, build_disks

MiB = 1 << 20
VM = "vm-0"


class Cache:
    """Two base images A and B (raw, random, different) as local sources, the shared cache
    and a VM_DIR, and the VM's environment naming one base or the other."""

    def __init__(self, tmp: Path, vm_dir: str = "vms") -> None:
        self.tmp = tmp
        self.image_dir, self.vm_dir, self.run_dir = tmp / "cache", tmp / vm_dir, tmp / "run"
        for folder in (self.image_dir, self.vm_dir, self.run_dir):
            folder.mkdir(exist_ok=True)
        for name, seed in (("a.img", 1), ("b.img", 2)):
            (tmp / name).write_bytes(random.Random(seed).randbytes(4 * MiB))

    def env(self, base: str, vm: str = VM, **more: str) -> dict[str, str]:
        return {
            "IMG_SOURCE": str(self.tmp / base), "IMAGE_DIR": str(self.image_dir),
            "VM_DIR": str(self.vm_dir), "RUN_DIR": str(self.run_dir), "HOSTNAME": vm, **more,
        }  # fmt: skip

    def disks(self, base: str, vm: str = VM, **more: str) -> DiskPlan:
        """As a start plans them: with what the VM's existing disk says of its base."""
        image = load_image(self.env(base, vm, **more))
        made_on = overlay.made_on(build_disks(image, vm), image.image_dir)
        return build_disks(image, vm, made_on=made_on)

    def start(self, base: str, vm: str = VM, **more: str) -> DiskPlan:
        """The image and disk steps of a start."""
        disks = self.disks(base, vm, **more)
        cache.check_available(disks)
        claim = usage.Usage(vm, str(disks.overlay), (disks.base.name,), time.time())
        cache.ensure_base(disks, cache.holder(vm), claim)
        overlay.ensure_overlay(disks)
        overlay.ensure_data_disks(disks)
        return disks

    def cli(self, *args: str, base: str = "b.img", **more: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ["PATH"], **self.env(base, **more)}
        return subprocess.run(
            [sys.executable, "-m", "kvmmgr", *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    def listing(self) -> dict[str, object]:
        done = self.cli("cache", "list", "--json")
        assert done.returncode == EXIT_OK, done.stderr
        listed: dict[str, object] = json.loads(done.stdout)
        return listed

    def users(self) -> dict[str, list[str]]:
        bases = self.listing()["bases"]
        assert isinstance(bases, list)
        return {b["name"]: [u["vm"] for u in b["vms"]] for b in bases}


@pytest.fixture
def lab(tmp_path: Path) -> Cache:
    return Cache(tmp_path)


def guest_view(disk: Path) -> str:
    """What the guest reads: the whole disk, through its backing chain."""
    raw = disk.with_name(disk.name + ".view")
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(raw)], check=True)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    raw.unlink()
    return digest


def guest_writes(disk: Path, offset: int, pattern: int) -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} 64k", str(disk)],
        check=True,
        capture_output=True,
    )


def test_each_start_claims_its_base_and_list_shows_who_uses_what(lab: Cache) -> None:
    lab.start("a.img", "vm-0")
    lab.start("a.img", "vm-1")
    record = json.loads((lab.image_dir / ".vms" / "vm-0.json").read_text())
    assert record["bases"] == ["a.img"] and record["disk"] == str(lab.vm_dir / "vm-0.qcow2")
    assert time.time() - record["last_started"] < 60
    listed = lab.listing()
    bases = listed["bases"]
    assert isinstance(bases, list) and len(bases) == 1
    base = bases[0]
    assert base["name"] == "a.img" and base["size"] == 4 * MiB
    assert base["sha256"] is None and base["source"] == str(lab.tmp / "a.img")
    assert [u["vm"] for u in base["vms"]] == ["vm-0", "vm-1"]
    text = lab.cli("cache", "list").stdout
    assert "a.img: 4.0 MiB, raw" in text and "used by vm-1" in text, text


def test_a_pet_keeps_its_base_when_img_target_names_a_new_one(lab: Cache) -> None:
    old = lab.start("a.img")
    guest_writes(old.overlay, 0, 0x11)
    before = guest_view(old.overlay)
    disks = lab.disks("b.img")  # the upgrade: a new IMG_SOURCE, so a new IMG_TARGET
    assert (disks.base.name, disks.wanted, disks.source) == ("a.img", lab.image_dir / "b.img", None)
    lab.start("b.img")
    assert not (lab.image_dir / "b.img").exists()  # a pet's start does not fetch the new base
    assert guest_view(old.overlay) == before
    lab.start("b.img", "vm-1")  # a new replica gets the new base
    assert lab.users() == {"a.img": [VM], "b.img": ["vm-1"]}
    (lab.image_dir / "a.img").unlink()
    done = lab.cli("plan", base="b.img")
    assert done.returncode == EXIT_CONFIG
    assert "a.img, which is gone from the cache" in done.stderr, done.stderr


def test_reimage_makes_a_cattle_disk_afresh_on_a_new_base(lab: Cache) -> None:
    first = lab.start("a.img", VM_DISK_POLICY="reimage")
    guest_writes(first.overlay, 0, 0x22)
    written = guest_view(first.overlay)
    again = lab.start("a.img", VM_DISK_POLICY="reimage")  # the same base: the disk is kept
    assert guest_view(again.overlay) == written
    lab.start("b.img", VM_DISK_POLICY="reimage")
    assert guest_view(first.overlay) == hashlib.sha256((lab.tmp / "b.img").read_bytes()).hexdigest()
    assert lab.users() == {"a.img": [], "b.img": [VM]}  # the claim moved with the disk
    record = json.loads((lab.vm_dir / f".{VM}.qcow2.json").read_text())
    assert record["source"] == str(lab.tmp / "b.img")


def test_prune_removes_what_nothing_uses_after_a_dry_run(lab: Cache) -> None:
    lab.start("a.img", "vm-0")
    lab.start("b.img", "vm-1")
    (lab.vm_dir / "vm-1.qcow2").unlink()
    lab.start("a.img", "vm-1", VM_DISK_POLICY="reimage")  # vm-1 is now on a: b is unused
    leftover = lab.image_dir / ".c.img.part"
    leftover.write_bytes(b"x" * 1000)
    dry = lab.cli("cache", "prune", "--dry-run")
    assert dry.returncode == EXIT_OK, dry.stderr
    assert "would remove b.img (4.0 MiB, unused)" in dry.stdout, dry.stdout
    assert (
        "would remove .c.img.part" in dry.stdout and "kept a.img: used by vm-0, vm-1" in dry.stdout
    )
    assert (lab.image_dir / "b.img").exists() and leftover.exists()
    done = lab.cli("cache", "prune")
    assert done.returncode == EXIT_OK, done.stderr
    assert sorted(os.listdir(lab.image_dir)) == [".a.img.json", ".vms", "a.img"]
    assert "removed 1 base(s) and 1 leftover file(s)" in done.stdout, done.stdout


def test_prune_never_takes_a_vm_s_files_beside_the_bases(tmp_path: Path) -> None:
    """VM_DIR defaults to IMAGE_DIR: the VMs' disks, data disks and UEFI variables (and the
    disk's own record of its base) live beside the bases, and none of them is a base."""
    lab = Cache(tmp_path, vm_dir="cache")
    lab.start("a.img", VM_DATA_DISKS="8M")
    (lab.image_dir / f"{VM}.efivars.fd").write_bytes(b"\0" * 4096)
    vm_files = {f"{VM}.qcow2", f".{VM}.qcow2.json", f"{VM}-data1.qcow2", f"{VM}.efivars.fd"}
    assert vm_files <= set(os.listdir(lab.image_dir))
    assert list(lab.users()) == ["a.img"]  # what the cache lists as bases: a.img alone
    lab.start("b.img", VM_DATA_DISKS="8M", VM_DISK_POLICY="reimage")
    done = lab.cli("cache", "prune")
    assert done.returncode == EXIT_OK, done.stderr
    assert "removed 1 base(s) and 0 leftover file(s): 4.0 MiB" in done.stdout, done.stdout
    assert set(os.listdir(lab.image_dir)) == vm_files | {"b.img", ".b.img.json", ".vms"}


@contextmanager
def lock_held(lock: Path) -> Iterator[None]:
    """Another process holds the cache lock, as a start fetching that base does."""
    code = (
        "import sys, time; from pathlib import Path; from kvmmgr.image.cachelock import CacheLock;"
        f"CacheLock(Path({str(lock)!r}), 'vm-9 (pid 1)').acquire();"
        "print('held', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.kill()
        holder.wait()


def test_prune_passes_by_a_base_a_start_is_working_on(lab: Cache) -> None:
    lab.start("b.img")
    (lab.vm_dir / f"{VM}.qcow2").unlink()
    (lab.image_dir / ".vms" / f"{VM}.json").unlink()  # b.img is unclaimed, but its lock held
    (lab.image_dir / ".b.img.part").write_bytes(b"y" * 100)
    with lock_held(lab.image_dir / ".b.img.lock"):
        done = lab.cli("cache", "prune")
    assert done.returncode == EXIT_OK, done.stderr
    assert "kept b.img: a start holds its lock" in done.stdout
    assert "kept .b.img.part: a start is working on b.img" in done.stdout
    assert (lab.image_dir / "b.img").exists() and (lab.image_dir / ".b.img.part").exists()


def test_a_damaged_claim_stops_a_prune_that_would_remove_anything(lab: Cache) -> None:
    lab.start("a.img")
    (lab.image_dir / ".vms" / "vm-7.json").write_text('{"vm": "vm-7", "bases": "a.img"}')
    (lab.vm_dir / f"{VM}.qcow2").unlink()
    (lab.image_dir / ".vms" / f"{VM}.json").unlink()
    done = lab.cli("cache", "prune")
    assert done.returncode == EXIT_CONFIG
    assert done.stderr.count("\n") == 1 and "vm-7.json: not a record" in done.stderr
    assert (lab.image_dir / "a.img").exists()


def test_rebase_moves_a_stopped_disk_the_guest_seeing_the_same_bytes(lab: Cache) -> None:
    disks = lab.start("a.img")
    guest_writes(disks.overlay, 1 * MiB, 0x33)
    before = guest_view(disks.overlay)
    done = lab.cli("rebase", base="b.img")
    assert done.returncode == EXIT_OK, done.stderr
    assert f"rebased {disks.overlay} from a.img onto b.img" in done.stdout, done.stdout
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(disks.overlay)],
            capture_output=True,
            check=True,
        ).stdout
    )
    assert info["backing-filename"] == str(lab.image_dir / "b.img")
    assert guest_view(disks.overlay) == before
    assert lab.users() == {"a.img": [], "b.img": [VM]}
    lab.start("b.img")  # the next start finds the disk on the base it names, as recorded
    assert guest_view(disks.overlay) == before
    again = lab.cli("rebase", base="b.img")
    assert again.returncode == EXIT_OK and "on b.img already" in again.stdout
    pruned = lab.cli("cache", "prune")
    assert "removed a.img" in pruned.stdout and not (lab.image_dir / "a.img").exists()


def test_rebase_refuses_while_qemu_runs_or_has_the_disk_open(lab: Cache) -> None:
    disks = lab.start("a.img")
    qmp = lab.run_dir / "qmp.sock"
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "none", "-display", "none", "-nodefaults",
         "-qmp", f"unix:{qmp},server=on,wait=off",
         "-drive", f"file={disks.overlay},if=none,id=d0,format=qcow2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            if qmp.exists():
                break
            time.sleep(0.1)
        running = lab.cli("rebase", base="b.img")
        assert running.returncode == EXIT_IN_USE, running.stderr
        assert "the VM is" in running.stderr and "stop it first" in running.stderr
        qmp.unlink()  # a QEMU that this pod's RUN_DIR does not know of: its lock tells
        elsewhere = lab.cli("rebase", base="b.img")
        assert elsewhere.returncode == EXIT_IN_USE, elsewhere.stderr
        assert f"{disks.overlay} is in use" in elsewhere.stderr
    finally:
        qemu.kill()
        qemu.wait()
    assert lab.users()["a.img"] == [VM]  # still claimed: the disk never moved


def test_prune_removes_only_what_a_base_record_may_name(lab: Cache) -> None:
    """A base's record on the shared volume may name any file as the base's further disk:
    a prune takes only names the cache gives them (NAME-diskN), beside the base."""
    lab.start("a.img")
    outside, beside = lab.tmp / "outside", lab.image_dir / "keep.img"
    outside.write_text("not the cache's")
    beside.write_text("not a.img's")
    record_path = lab.image_dir / ".a.img.json"
    record = json.loads(record_path.read_text())
    record["data_disks"] = ["../outside", "keep.img", "a.img-disk2"]
    record_path.write_text(json.dumps(record))
    (lab.image_dir / "a.img-disk2").write_bytes(b"d" * 10)
    (lab.vm_dir / f"{VM}.qcow2").unlink()
    (lab.image_dir / ".vms" / f"{VM}.json").unlink()
    done = lab.cli("cache", "prune")
    assert done.returncode == EXIT_OK, done.stderr
    assert not (lab.image_dir / "a.img").exists() and not (lab.image_dir / "a.img-disk2").exists()
    assert outside.exists() and beside.exists()
