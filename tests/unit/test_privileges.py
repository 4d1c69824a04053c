"""QEMU's user and what it may reach, as planned and as checked: QEMU_USER, the groups of the
devices it opens, the directories it must pass, the files given to its group."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kvmmgr.errors import ConfigError
from kvmmgr.facts import Devices, Identity
from kvmmgr.system import access, privileges
from kvmmgr.values import run_as
from kvmmgr.vm.qemu import QemuFile
from tests.unit.factories import plan, pod_facts

QEMU = Identity("kvmmgr-qemu", 10107, 10107)
UNPRIVILEGED = """Name:\tqemu-system-x86
Uid:\t10107\t10107\t10107\t10107
Gid:\t10107\t10107\t10107\t10107
CapInh:\t0000000000000000
CapPrm:\t0000000000000000
CapEff:\t0000000000000000
CapBnd:\t0000000000000000
CapAmb:\t0000000000000000
NoNewPrivs:\t1
"""


@pytest.mark.parametrize("value", ["kvmmgr-qemu", "_qemu", "1000:1000", "4294967294:1"])
def test_qemu_user_takes_a_name_or_ids(value: str) -> None:
    assert run_as("QEMU_USER", value) == value


@pytest.mark.parametrize("value", ["root", "0:1000", "1000:0", "0:0", "Qemu", "a b", "1:", "-1:5"])
def test_qemu_user_is_never_root_nor_a_malformed_name(value: str) -> None:
    with pytest.raises(ConfigError, match=f"^QEMU_USER='{value}': expected a user name"):
        run_as("QEMU_USER", value)


def test_the_status_of_an_unprivileged_process_has_nothing_left() -> None:
    assert privileges.leftovers(UNPRIVILEGED, QEMU) == []


def test_every_capability_set_no_new_privs_and_ids_are_checked() -> None:
    status = (
        UNPRIVILEGED.replace("CapBnd:\t0000000000000000", "CapBnd:\t000001ffffffffff")
        .replace("NoNewPrivs:\t1", "NoNewPrivs:\t0")
        .replace("Uid:\t10107\t10107\t10107\t10107", "Uid:\t10107\t0\t10107\t10107")
    )
    assert privileges.leftovers(status, QEMU) == [
        "CapBnd",
        "NoNewPrivs not 1",
        "Uid ['10107', '0', '10107', '10107']",
    ]


def test_qemu_joins_the_group_of_each_device_it_opens_and_no_other() -> None:
    devices = Devices(kvm=True, vhost_net=True, groups=(("/dev/kvm", 108), ("/dev/vhost-net", 109)))
    qemu = plan(facts=pod_facts(devices=devices)).qemu
    assert (qemu.user, qemu.groups) == (QEMU, (10107, 108, 109))
    assert plan({"VM_ACCEL": "tcg"}, pod_facts(devices=devices)).qemu.groups == (10107, 109)


def test_vhost_net_only_root_may_open_is_left_off_with_a_note() -> None:
    devices = Devices(kvm=False, vhost_net=True, root_only=("/dev/vhost-net",))
    planned = plan(facts=pod_facts(devices=devices))
    assert "vhost=off" in " ".join(planned.qemu.argv)
    assert any("vhost-net is off" in note for note in planned.notes)


def test_the_files_qemu_opens_by_path_are_its_disks_and_what_it_reads_at_start() -> None:
    files = plan({"VNC_PASSWORD": "secret", "VM_FIRMWARE": "uefi"}).qemu.files
    assert files == (
        QemuFile(Path("/image/vm-0.qcow2"), True),
        QemuFile(Path("/image/base.qcow2"), False),
        QemuFile(Path("/image/vm-0.efivars.fd"), True),
        QemuFile(Path("/run/test-kvmmgr/config-drive.iso"), False),
        QemuFile(Path("/run/test-kvmmgr/vnc-password"), False),
    )


def test_a_directory_is_passable_by_its_owner_group_or_everyone(tmp_path: Path) -> None:
    info = tmp_path.stat()
    for mode, uid, groups, passes in [
        (0o700, info.st_uid, (), True),
        (0o700, 12345, (info.st_gid,), False),
        (0o710, 12345, (info.st_gid,), True),
        (0o701, 12345, (), True),
        (0o750, 12345, (), False),
    ]:
        tmp_path.chmod(mode)
        assert access.passable(tmp_path.stat(), uid, groups) is passes, oct(mode)
    tmp_path.chmod(0o755)


def test_a_closed_directory_outside_the_volumes_is_found_inside_one_it_is_opened(
    tmp_path: Path,
) -> None:
    stranger = Identity("stranger", 12345, 12345)
    volume = tmp_path / "vm"
    volume.mkdir(mode=0o700)
    disk = volume / "disk.qcow2"
    disk.write_bytes(b"")
    tmp_path.chmod(0o700)
    try:
        # tmp_path, or one of pytest's folders above it, root's alone too
        assert access.closed_directory(disk, stranger, (12345,), [volume]) in disk.parents[1:]
        # ... but never a volume or a folder in one: kvm-manager opens those itself
        closed = access.closed_directory(disk, stranger, (12345,), [tmp_path])
        assert closed is None or closed in tmp_path.parents
        group = os.getgid()  # a group of our own: no CHOWN capability needed for the test
        granted = access.grant([QemuFile(disk, True)], Identity("us", 12345, group), [], [volume])
        assert granted.opened == (volume,) and granted.writable == 1
        assert stat.S_IMODE(volume.stat().st_mode) == 0o710
        assert (stat.S_IMODE(disk.stat().st_mode), disk.stat().st_gid) == (0o660, group)
    finally:
        tmp_path.chmod(0o755)
