"""Every disk format an appliance comes in, and the images that try to make QEMU read another
file of the pod: fetched from local files into a real cache with the real qemu-img. (That
the guest boots from each format is tests/e2e/test_appliances.py.)"""

from __future__ import annotations

import dataclasses
import gzip
import json
import random
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from kvmmgr.config import ImageSettings
from kvmmgr.errors import StepError
from kvmmgr.image import headers, ova
from kvmmgr.image.cache import check_available, ensure_base
from kvmmgr.image.disks import DataDisk, DiskPlan, build_disks
from kvmmgr.image.sources import parse_source
from podlab import appliances

MiB = 1 << 20
CONTENT = random.Random(7).randbytes(4 * MiB)


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(CONTENT)
    return path


def disks(tmp_path: Path, source: Path, target: str = "base") -> DiskPlan:
    image = ImageSettings(
        source=parse_source(str(source)),
        target=target,
        sha256=None,
        retries=0,
        ca_bundle=None,
        image_dir=tmp_path / "cache",
        vm_dir=tmp_path / "vm",
        disk_size=None,
    )
    return build_disks(image, "vm-0")


def fetch(plan: DiskPlan) -> str:
    check_available(plan)
    return str(ensure_base(plan, "test"))


def content_of(image: Path) -> bytes:
    flat = image.parent.parent / f"{image.name}.flat"  # outside the cache
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(flat)], check=True)
    return flat.read_bytes()[: len(CONTENT)]


def record(plan: DiskPlan) -> dict[str, object]:
    data: dict[str, object] = json.loads(plan.base.with_name(f".{plan.base.name}.json").read_text())
    return data


@pytest.mark.parametrize("kind", sorted(appliances.FORMATS))
def test_each_format_becomes_a_base_with_the_same_content(
    tmp_path: Path, raw: Path, kind: str
) -> None:
    source = appliances.convert(raw, kind, tmp_path / f"exported.{kind}")
    plan = disks(tmp_path, source)
    said = fetch(plan)
    fmt = appliances.FORMATS[kind][0]
    kept = fmt in ("qcow2", "raw")
    assert (record(plan)["format"], record(plan)["converted_from"]) == (
        (fmt, None) if kept else ("qcow2", fmt)
    )
    assert f"({fmt}, " in said if kept else f"({fmt} -> qcow2, " in said
    assert content_of(plan.base) == CONTENT
    assert sorted(p.name for p in plan.base.parent.iterdir()) == [".base.json", "base"]


def test_a_compressed_vmdk_is_unpacked_then_converted(tmp_path: Path, raw: Path) -> None:
    vmdk = appliances.convert(raw, "vmdk-stream", tmp_path / "disk.vmdk")
    packed = tmp_path / "disk.vmdk.gz"
    packed.write_bytes(gzip.compress(vmdk.read_bytes()))
    plan = disks(tmp_path, packed)
    assert "unpacked from gz" in fetch(plan)
    assert content_of(plan.base) == CONTENT


def test_an_ova_gives_the_boot_disk_its_data_disks_and_its_hardware(
    tmp_path: Path, raw: Path
) -> None:
    boot = appliances.convert(raw, "vmdk-stream", tmp_path / "kvmtest-disk1.vmdk")
    data_raw = tmp_path / "data.raw"
    data_raw.write_bytes(bytes(reversed(CONTENT)))
    data = appliances.convert(data_raw, "vmdk-stream", tmp_path / "kvmtest-disk2.vmdk")
    descriptor = appliances.ovf(
        [(boot.name, len(CONTENT)), (data.name, len(CONTENT))],
        memory_mib=768, cpus=2, nics=("E1000", "VmxNet3"), bus="sata", firmware="efi",
    )  # fmt: skip
    plan = disks(tmp_path, appliances.ova(tmp_path / "kvmtest.ova", descriptor, [boot, data]))
    assert fetch(plan).endswith("; data disks base-disk2")
    assert content_of(plan.base) == CONTENT
    assert content_of(plan.base.with_name("base-disk2")) == bytes(reversed(CONTENT))
    appliance = record(plan)["appliance"]
    assert appliance == {
        "name": "kvmtest-appliance",
        "disks": ["kvmtest-disk1.vmdk", "kvmtest-disk2.vmdk"],
        "memory_mib": 768,
        "cpus": 2,
        "nic_models": ["e1000", "vmxnet3"],
        "disk_bus": "sata",
        "firmware": "uefi",
    }
    assert sorted(p.name for p in plan.base.parent.iterdir()) == [
        ".base.json", "base", "base-disk2"
    ]  # fmt: skip


# --- images that name other files, and other hostile inputs ---------------------------------


def _qcow2_backed_by_a_pod_file(tmp: Path) -> Path:
    out = tmp / "evil.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname",
         "-u", str(out), "4M"], check=True,
    )  # fmt: skip
    return out


def _qcow2_with_a_json_backing(tmp: Path) -> Path:
    out = tmp / "json.qcow2"
    spec = 'json:{"driver":"raw","file":{"driver":"file","filename":"/etc/hostname"}}'
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", spec, "-F", "raw", "-u", str(out), "4M"],
        check=True,
    )
    return out


def _qcow2_with_an_external_data_file(tmp: Path) -> Path:
    out = tmp / "data.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={tmp / 'x.bin'}",
         str(out), "4M"], check=True,
    )  # fmt: skip
    return out


def _vmdk_descriptor_naming_a_pod_file(tmp: Path) -> Path:
    out = tmp / "flat.vmdk"
    out.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\n\n# Extent description\nRW 8 FLAT "/etc/passwd" 0\n'
    )
    return out


def _differencing_vmdk(tmp: Path) -> Path:
    parent = appliances.convert(_raw(tmp), "vmdk", tmp / "parent.vmdk")
    out = tmp / "child.vmdk"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "vmdk", "-b", str(parent), "-F", "vmdk", str(out)],
        check=True,
    )
    return out


def _patched(tmp: Path, kind: str, offset: int, value: bytes, *, from_end: bool = False) -> Path:
    out = appliances.convert(_raw(tmp), kind, tmp / f"patched.{kind}")
    with out.open("r+b") as image:
        image.seek(-offset if from_end else offset, 2 if from_end else 0)
        image.write(value)
    return out


def _differencing_vhd(tmp: Path) -> Path:  # disk type 4 in the footer's copy at offset 0
    return _patched(tmp, "vhd", 60, struct.pack(">I", 4))


def _differencing_vdi(tmp: Path) -> Path:  # image type 4 (diff)
    return _patched(tmp, "vdi", 0x4C, struct.pack("<I", 4))


def _vhdx_with_a_parent(tmp: Path) -> Path:
    """The file parameters' HasParent bit set in a VHDX that qemu-img wrote."""
    out = appliances.convert(_raw(tmp), "vhdx", tmp / "parent.vhdx")
    data = bytearray(out.read_bytes())
    region = struct.unpack_from("<Q", data, (192 << 10) + 16 + 16)[0]  # the first entry
    for n in range(2):  # the metadata region is one of the first two entries
        guid, offset, _ = struct.unpack_from("<16sQI", data, (192 << 10) + 16 + 32 * n)
        if guid.hex().startswith("06a27c8b"):
            region = offset
    for n in range(16):
        guid, item, _ = struct.unpack_from("<16sII", data, region + 32 + 32 * n)
        if guid.hex().startswith("3767a1ca"):
            struct.pack_into("<I", data, region + item + 4, 2)
    out.write_bytes(data)
    return out


def _qed(tmp: Path) -> Path:
    out = tmp / "old.qed"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qed", str(out), "4M"], check=True)
    return out


def _ova_with(tmp: Path, *members: tuple[str, bytes | None], link: str = "") -> Path:
    out = tmp / "evil.ova"
    with tarfile.open(out, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, __import__("io").BytesIO(data))
    return out


def _ova_descriptor(disk: str) -> bytes:
    return appliances.ovf([(disk, 4 * MiB)]).encode()


def _ova_with_a_symlink(tmp: Path) -> Path:
    return _ova_with(
        tmp, ("a.ovf", _ova_descriptor("d.vmdk")), ("d.vmdk", None), link="/etc/shadow"
    )


def _ova_escaping_its_folder(tmp: Path) -> Path:
    return _ova_with(tmp, ("a.ovf", _ova_descriptor("../d.vmdk")), ("../d.vmdk", CONTENT))


def _ova_with_a_hostile_disk(tmp: Path) -> Path:
    disk = _qcow2_backed_by_a_pod_file(tmp).read_bytes()
    return _ova_with(tmp, ("a.ovf", _ova_descriptor("d.qcow2")), ("d.qcow2", disk))


def _ova_whose_disk_does_not_match_its_manifest(tmp: Path) -> Path:
    manifest = b"SHA256(d.raw)= " + b"0" * 64 + b"\n"
    return _ova_with(
        tmp, ("a.ovf", _ova_descriptor("d.raw")), ("a.mf", manifest), ("d.raw", CONTENT)
    )


def _ova_with_entities(tmp: Path) -> Path:
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><Envelope>&a;</Envelope>'
    return _ova_with(tmp, ("a.ovf", bomb), ("d.raw", CONTENT))


def _raw(tmp: Path) -> Path:
    path = tmp / "content.raw"
    path.write_bytes(CONTENT)
    return path


HOSTILE = {
    "qcow2 backed by a pod file": (_qcow2_backed_by_a_pod_file, "names a backing file"),
    "qcow2 with a json: backing": (_qcow2_with_a_json_backing, "names a backing file"),
    "qcow2 with an external data file": (_qcow2_with_an_external_data_file, "external"),
    "VMDK descriptor naming /etc/passwd": (_vmdk_descriptor_naming_a_pod_file, "VMDK descriptor"),
    "differencing VMDK": (_differencing_vmdk, "differencing VMDK"),
    "differencing VHD": (_differencing_vhd, "differencing VHD"),
    "differencing VDI": (_differencing_vdi, "differencing VDI"),
    "VHDX with a parent": (_vhdx_with_a_parent, "differencing VHDX"),
    "QED": (_qed, "QED image: not a supported format"),
    "OVA with a symlink": (_ova_with_a_symlink, "is not a plain file of the OVA"),
    "OVA escaping its folder": (_ova_escaping_its_folder, "is not a plain file of the OVA"),
    "OVA with a hostile disk": (_ova_with_a_hostile_disk, "d.qcow2 names a backing file"),
    "OVA not matching its manifest": (_ova_whose_disk_does_not_match_its_manifest, "manifest"),
    "OVA with XML entities": (_ova_with_entities, "DTD or entities"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_an_image_that_names_another_file_is_refused_and_leaves_nothing(
    tmp_path: Path, case: str
) -> None:
    make, says = HOSTILE[case]
    plan = disks(tmp_path, make(tmp_path))
    with pytest.raises(StepError, match=says) as caught:
        fetch(plan)
    assert "\n" not in str(caught.value)
    assert list(plan.base.parent.iterdir()) == []  # no base, no work file, no lock


def test_a_hostile_base_found_in_the_cache_is_refused_too(tmp_path: Path) -> None:
    """Placed by hand, or by an earlier version: checked before it is used."""
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(_qcow2_backed_by_a_pod_file(tmp_path), cache / "evil.qcow2")
    plan = disks(tmp_path, cache / "evil.qcow2", target="evil.qcow2")
    with pytest.raises(StepError, match="names a backing file"):
        fetch(plan)
    assert sorted(p.name for p in cache.iterdir()) == ["evil.qcow2"]  # nothing recorded


def test_a_disk_of_the_vm_pointed_at_another_file_is_refused(tmp_path: Path, raw: Path) -> None:
    plan = disks(tmp_path, raw)
    fetch(plan)
    from kvmmgr.image.overlay import ensure_overlay

    ensure_overlay(plan)
    subprocess.run(  # what someone who can write the VM's volume could do
        ["qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname",
         str(plan.overlay)], check=True,
    )  # fmt: skip
    with pytest.raises(StepError, match="is backed by '/etc/hostname': expected its base"):
        ensure_overlay(plan)


def test_a_data_disk_of_the_vm_made_to_name_another_file_is_refused(
    tmp_path: Path, raw: Path
) -> None:
    """A new data disk is made once and kept; one replaced by a qcow2 backed by a pod file
    is refused at the next start, before QEMU opens it."""
    plan = dataclasses.replace(
        disks(tmp_path, raw),
        data=(DataDisk(tmp_path / "vm" / "vm-0-data1.qcow2", "d1", "new", 1 << 20),),
    )
    fetch(plan)
    from kvmmgr.image.overlay import ensure_data_disks

    ensure_data_disks(plan)
    shutil.copy(_qcow2_backed_by_a_pod_file(tmp_path), plan.data[0].path)
    with pytest.raises(StepError, match="names a backing file") as caught:
        ensure_data_disks(plan)
    assert "\n" not in str(caught.value)


def test_cut_and_mangled_images_are_refused_in_one_line_or_taken_never_a_traceback(
    tmp_path: Path, raw: Path
) -> None:
    """Seeded mutations (truncations, flipped bytes, overwritten runs) of every format and of
    an OVA, through the headers and the OVA reader: each ends in a StepError or a format."""
    seeds = [
        appliances.convert(raw, kind, tmp_path / f"seed-{kind}") for kind in appliances.FORMATS
    ]
    disk = appliances.convert(raw, "vmdk-stream", tmp_path / "disk1.vmdk")
    seeds.append(
        appliances.ova(tmp_path / "seed.ova", appliances.ovf([(disk.name, len(CONTENT))]), [disk])
    )
    heads = [path.read_bytes()[: 1 << 18] for path in seeds]  # every header is in there
    rand = random.Random(16)
    mangled, refused = tmp_path / "mangled", 0
    for _ in range(1500):
        data = bytearray(rand.choice(heads))
        match rand.randrange(3):
            case 0:
                del data[rand.randrange(len(data)) :]
            case 1:
                for _ in range(rand.randrange(1, 16)):
                    data[rand.randrange(len(data))] = rand.randrange(256)
            case _:
                at = rand.randrange(len(data))
                data[at : at + 8] = rand.randbytes(8)
        mangled.write_bytes(bytes(data))
        try:
            if headers.sniff(mangled, "mangled").format == "ova":
                for member in ova.read(mangled, "mangled").disks:
                    ova.extract(mangled, "mangled", member, tmp_path / "member")
        except StepError as exc:
            assert "\n" not in str(exc)
            refused += 1
    assert refused > 100  # the mutations did reach the checks
