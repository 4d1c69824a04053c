"""The virtual hardware and the disks: each vm value reaches its variable only when set, the
schema and the templates refuse what kvm-manager refuses, data disk claims become claims of
the StatefulSet, and VM_DISK_SIZE follows the disk's volume by default."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from tests.chart.render import (
    CHART_DIR,
    DEFAULT_VM,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    Values,
    chart,
    container,
    env_values,
    mounts,
    render,
    volumes,
    with_source,
)

HARDWARE_ENV = {
    "VM_MACHINE",
    "VM_FIRMWARE",
    "VM_SECURE_BOOT",
    "VM_DISK_BUS",
    "VM_NIC_MODEL",
    "VM_CPU_MODEL",
    "VM_SERIAL",
    "VM_UUID",
    "VM_DATA_DISKS",
}
UUID = "4c4c4544-0042-3610-8030-b8c04f4d4b31"


def vm_env(vm: Values, name: str = DEFAULT_VM) -> dict[str, str]:
    return env_values(render(with_source({"vm": vm})).statefulset(name))


def claims(statefulset: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The StatefulSet's volumeClaimTemplates by name."""
    return {t["metadata"]["name"]: t for t in statefulset["spec"]["volumeClaimTemplates"]}


def test_unset_hardware_values_render_nothing() -> None:
    env = env_values(render(VALUE_SETS["defaults"]).statefulset())
    assert not HARDWARE_ENV & set(env)
    # Empty strings and secureBoot false are the same as unset.
    empty = {"machine": "", "firmware": "", "diskBus": "", "nicModel": "", "secureBoot": False}
    assert not HARDWARE_ENV & set(vm_env({**empty, "cpuModel": "", "serial": "", "uuid": ""}))


@pytest.mark.parametrize(
    ("vm", "name", "value"),
    [
        ({"machine": "pc"}, "VM_MACHINE", "pc"),
        ({"machine": "q35"}, "VM_MACHINE", "q35"),
        ({"firmware": "bios"}, "VM_FIRMWARE", "bios"),
        ({"firmware": "uefi"}, "VM_FIRMWARE", "uefi"),
        ({"secureBoot": True}, "VM_SECURE_BOOT", "true"),
        ({"diskBus": "scsi"}, "VM_DISK_BUS", "scsi"),
        ({"diskBus": "ide"}, "VM_DISK_BUS", "ide"),
        ({"nicModel": "vmxnet3"}, "VM_NIC_MODEL", "vmxnet3"),
        ({"nicModel": "rtl8139"}, "VM_NIC_MODEL", "rtl8139"),
        ({"cpuModel": "host"}, "VM_CPU_MODEL", "host"),
        ({"cpuModel": "Skylake-Server-v4"}, "VM_CPU_MODEL", "Skylake-Server-v4"),
        ({"serial": "CZC1234XYZ"}, "VM_SERIAL", "CZC1234XYZ"),
        # Any printable ASCII, passed as it is (YAML quoting included).
        ({"serial": 'S/N: "42" #7 \\ ~'}, "VM_SERIAL", 'S/N: "42" #7 \\ ~'),
        ({"uuid": UUID}, "VM_UUID", UUID),
        ({"dataDisks": [{"size": "10G"}]}, "VM_DATA_DISKS", "10G"),
        ({"dataDisks": [{"path": "/dev/xvdb"}]}, "VM_DATA_DISKS", "/dev/xvdb"),
    ],
)
def test_each_hardware_value_reaches_its_variable(vm: Values, name: str, value: str) -> None:
    env = vm_env(vm)
    assert env[name] == value
    assert HARDWARE_ENV & set(env) == {name}, "one value, one variable"


def test_a_vms_entry_has_its_own_hardware() -> None:
    rendered = render(VALUE_SETS["data-disks"])
    legacy = env_values(rendered.statefulset(f"{DEFAULT_VM}-legacy"))
    assert {name: legacy[name] for name in HARDWARE_ENV & set(legacy)} == {
        "VM_MACHINE": "pc",
        "VM_DISK_BUS": "ide",
        "VM_NIC_MODEL": "rtl8139",
        "VM_CPU_MODEL": "pentium3",
        # Its list replaces the top level's, claims numbered afresh.
        "VM_DATA_DISKS": "/data/1/disk.img /dev/kvmmgr-data2",
    }
    top = env_values(rendered.statefulset())
    assert not {"VM_MACHINE", "VM_DISK_BUS", "VM_NIC_MODEL", "VM_CPU_MODEL"} & set(top)


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"vm": {"machine": "i440fx"}}, "/vm/machine"),
        ({"vm": {"machine": "Q35"}}, "/vm/machine"),
        ({"vm": {"firmware": "efi"}}, "/vm/firmware"),
        ({"vm": {"secureBoot": "true"}}, "/vm/secureBoot"),
        ({"vm": {"diskBus": "nvme"}}, "/vm/diskBus"),
        ({"vm": {"nicModel": "virtio-net-pci"}}, "/vm/nicModel"),
        ({"vm": {"cpuModel": "host,+vmx"}}, "/vm/cpuModel"),
        ({"vm": {"cpuModel": "-cpu"}}, "/vm/cpuModel"),
        ({"vm": {"cpuModel": "W" * 65}}, "/vm/cpuModel"),
        ({"vm": {"serial": "S" * 65}}, "/vm/serial"),
        ({"vm": {"serial": "séria"}}, "/vm/serial"),
        ({"vm": {"serial": "tab\there"}}, "/vm/serial"),
        ({"vm": {"serial": " padded "}}, "/vm/serial"),
        ({"vm": {"uuid": "not-a-uuid"}}, "/vm/uuid"),
        ({"vm": {"uuid": UUID[:-1]}}, "/vm/uuid"),
        ({"vm": {"uuid": UUID + "0"}}, "/vm/uuid"),
        ({"vm": {"diskSizeFromVolume": "no"}}, "/vm/diskSizeFromVolume"),
        ({"vm": {"dataDisks": {"size": "10G"}}}, "/vm/dataDisks"),
        ({"vm": {"dataDisks": [{}]}}, "/vm/dataDisks/0"),
        ({"vm": {"dataDisks": [{"size": "1G", "path": "/dev/xvdb"}]}}, "/vm/dataDisks/0"),
        ({"vm": {"dataDisks": [{"path": "/a", "claim": {"size": "1Gi"}}]}}, "/vm/dataDisks/0"),
        ({"vm": {"dataDisks": [{"size": "1G"}] * 17}}, "/vm/dataDisks"),
        ({"vm": {"dataDisks": [{"device": "/dev/xvdb"}]}}, "device"),
        ({"vm": {"dataDisks": [{"size": "10 G"}]}}, "/vm/dataDisks/0/size"),
        ({"vm": {"dataDisks": [{"size": "0"}]}}, "/vm/dataDisks/0/size"),
        ({"vm": {"dataDisks": [{"size": "10GB!"}]}}, "/vm/dataDisks/0/size"),
        ({"vm": {"dataDisks": [{"path": "data/disk.img"}]}}, "/vm/dataDisks/0/path"),
        ({"vm": {"dataDisks": [{"path": "/data/my disk.img"}]}}, "/vm/dataDisks/0/path"),
        ({"vm": {"dataDisks": [{"path": "/a,/b"}]}}, "/vm/dataDisks/0/path"),
        ({"vm": {"dataDisks": [{"claim": {}}]}}, "/vm/dataDisks/0/claim"),
        ({"vm": {"dataDisks": [{"claim": {"size": "50 Gi"}}]}}, "/vm/dataDisks/0/claim/size"),
        ({"vm": {"dataDisks": [{"claim": {"size": "1Gi", "volumeMode": "block"}}]}}, "volumeMode"),
        ({"vm": {"dataDisks": [{"claim": {"size": "1Gi", "storageclass": "x"}}]}}, "storageclass"),
        ({"vms": {"web": {"vm": {"firmware": "coreboot"}}}}, "/vms/web/vm/firmware"),
        ({"vms": {"web": {"vm": {"dataDisks": [{}]}}}}, "/vms/web/vm/dataDisks/0"),
    ],
)
def test_the_schema_refuses_what_kvm_manager_refuses(values: Values, where: str) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart().validate_schema(with_source(values))
    assert where in str(caught.value)


@pytest.mark.parametrize(
    "vm",
    [
        {"dataDisks": [{"size": "10Gi"}, {"size": "10240M"}, {"size": "1T"}, {"size": "4096"}]},
        {"dataDisks": [{"size": "1GiB"}, {"path": "/data/disk.img"}, {"path": "/dev/sdb"}]},
        {"dataDisks": [{"claim": {"size": "1.5Ti", "volumeMode": "Filesystem"}}] * 16},
        {"serial": "~", "uuid": UUID.upper(), "cpuModel": "EPYC-Rome_v1.2"},
    ],
)
def test_the_schema_accepts_what_kvm_manager_accepts(vm: Values) -> None:
    chart().validate_schema(with_source({"vm": vm}))


@pytest.mark.parametrize(
    ("vm", "message"),
    [
        ({"secureBoot": True, "firmware": "bios"}, r'secureBoot needs UEFI on q35, not .*"bios"'),
        ({"secureBoot": True, "machine": "pc"}, r'secureBoot needs UEFI on q35, not .*"pc"'),
        ({"diskBus": "ide", "machine": "q35"}, r'diskBus "ide" is not .* \(vm\.machine is q35\)'),
        ({"diskBus": "ide", "secureBoot": True}, r"diskBus .* \(vm\.secureBoot makes .* q35\)"),
        ({"cpuModel": "host", "accel": "tcg"}, r'cpuModel "host" needs KVM, not vm\.accel "tcg"'),
        ({"diskBus": "sata", "dataDisks": [{"size": "1G"}] * 5}, r"dataDisks has 5 .* sata .* 4"),
        ({"diskBus": "ide", "dataDisks": [{"size": "1G"}] * 3}, r"dataDisks has 3 .* ide .* 2"),
    ],
)
def test_the_templates_refuse_combinations_kvm_manager_refuses(vm: Values, message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=rf"VM {DEFAULT_VM}: vm\.{message}"):
        render(with_source({"vm": vm}))


def test_combinations_are_checked_after_a_vms_entry_is_merged() -> None:
    values = with_source({"vm": {"machine": "pc"}, "vms": {"web": {"vm": {"secureBoot": True}}}})
    with pytest.raises(helm.HelmRenderError, match=rf"VM {DEFAULT_VM}-web: vm\.secureBoot"):
        render(values)
    # What kvm-manager allows renders: Secure Boot picks q35 itself; IDE on pc; UEFI on pc.
    assert vm_env({"secureBoot": True})["VM_SECURE_BOOT"] == "true"
    assert vm_env({"secureBoot": True, "firmware": "uefi", "machine": "q35"})["VM_MACHINE"] == "q35"
    assert vm_env({"diskBus": "ide", "machine": "pc", "dataDisks": [{"size": "1G"}] * 2})
    assert vm_env({"firmware": "uefi", "machine": "pc"})["VM_FIRMWARE"] == "uefi"
    assert vm_env({"diskBus": "sata", "machine": "q35", "dataDisks": [{"size": "1G"}] * 4})
    assert vm_env({"diskBus": "scsi", "dataDisks": [{"size": "1G"}] * 16})


def test_data_disks_in_order_with_claims_numbered_from_one() -> None:
    statefulset = render(VALUE_SETS["everything"]).statefulset()
    assert (
        env_values(statefulset)["VM_DATA_DISKS"]
        == "10G /vm/scratch.img /dev/kvmmgr-data1 /data/2/disk.img"
    )
    # Block: the claim is the device; Filesystem: the claim is mounted, the disk a file on it.
    assert container(statefulset)["volumeDevices"] == [
        {"name": "data-1", "devicePath": "/dev/kvmmgr-data1"}
    ]
    assert mounts(statefulset)["/data/2"] == {"name": "data-2", "mountPath": "/data/2"}
    assert "/data/1" not in mounts(statefulset)
    # Both are per-pod claims of the StatefulSet, not pod volumes.
    assert not {"data-1", "data-2"} & set(volumes(statefulset))
    assert list(claims(statefulset)) == ["disk", "data-1", "data-2"]


def test_data_disk_claims_follow_their_values() -> None:
    everything = claims(render(VALUE_SETS["everything"]).statefulset())
    block, filesystem = everything["data-1"], everything["data-2"]
    assert block["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "volumeMode": "Block",
        "storageClassName": "fast",
        "resources": {"requests": {"storage": "50Gi"}},
    }
    assert filesystem["spec"] == {
        "accessModes": ["ReadWriteOncePod"],
        "volumeMode": "Filesystem",
        "resources": {"requests": {"storage": "5Gi"}},
    }
    # Labelled like the VM's disk claim (not with its storage class: "-" is for the disk only).
    assert block["metadata"]["labels"] == everything["disk"]["metadata"]["labels"]
    assert everything["disk"]["spec"]["storageClassName"] == ""
    # Block unless said; "-" asks for no storage class, "" (unset) for the cluster's default.
    legacy = claims(render(VALUE_SETS["data-disks"]).statefulset(f"{DEFAULT_VM}-legacy"))
    assert legacy["data-2"]["spec"]["volumeMode"] == "Block"
    assert legacy["data-2"]["spec"]["storageClassName"] == ""
    assert "storageClassName" not in legacy["data-1"]["spec"]


def test_no_data_disks_no_claims_devices_or_mounts() -> None:
    statefulset = render(VALUE_SETS["defaults"]).statefulset()
    assert list(claims(statefulset)) == ["disk"]
    assert "volumeDevices" not in container(statefulset)
    # Sizes and paths need nothing of the chart but the variable.
    sized = render(with_source({"vm": {"dataDisks": [{"size": "1G"}, {"path": "/dev/sdb"}]}}))
    assert list(claims(sized.statefulset())) == ["disk"]
    assert "volumeDevices" not in container(sized.statefulset())


# disk.size -> the default VM_DISK_SIZE: B - ceil(8% of B) - 128 MiB, floored to MiB. For 20Gi:
# 21474836480 - 1717986919 - 134217728 = 19622631833 B = 18713.6 MiB -> 18713M.
@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ("20Gi", "18713M"),
        ("21474836480", "18713M"),
        ("20G", "17419M"),  # decimal: 20 * 10^9
        ("500Mi", "332M"),  # 500 - 40 - 128, to the byte
        ("1.5Ti", "1446906M"),
        ("4T", "3509393M"),
        ("100Pi", "67108864M"),  # at most kvm-manager's 64 TiB
    ],
)
def test_the_vm_disk_is_sized_from_its_volume_by_default(size: str, expected: str) -> None:
    env = env_values(render(with_source({"disk": {"size": size}})).statefulset())
    assert env["VM_DISK_SIZE"] == expected


def test_the_volume_default_leaves_room_for_data_disks_made_on_it() -> None:
    # The `size` disks share /vm (10G is 10 GiB for kvm-manager, and 1000 becomes 1 MiB);
    # claims and pod paths do not.
    disks = [{"size": "10G"}, {"claim": {"size": "5Gi"}}, {"path": "/dev/sdb"}, {"size": "1000"}]
    assert vm_env({"dataDisks": disks})["VM_DISK_SIZE"] == f"{18713 - 10240 - 1}M"
    env = env_values(render(VALUE_SETS["data-disks"]).statefulset())
    assert env["VM_DISK_SIZE"] == f"{40960 * 92 // 100 - 128 - 10240}M"


def test_vm_disk_size_given_or_the_base_image_size() -> None:
    assert vm_env({"diskSize": "18G"})["VM_DISK_SIZE"] == "18G"
    assert vm_env({"diskSize": "18G", "diskSizeFromVolume": False})["VM_DISK_SIZE"] == "18G"
    # false: no variable, so kvm-manager keeps the base image's virtual size.
    assert "VM_DISK_SIZE" not in vm_env({"diskSizeFromVolume": False})
    # Per VM, like the disk it comes from.
    rendered = render(VALUE_SETS["two-vms"])
    assert env_values(rendered.statefulset(f"{DEFAULT_VM}-web"))["VM_DISK_SIZE"] == "37555M"
    off = render(with_source({"vms": {"web": {"vm": {"diskSizeFromVolume": False}}}}))
    assert "VM_DISK_SIZE" not in env_values(off.statefulset(f"{DEFAULT_VM}-web"))
    assert env_values(off.statefulset())["VM_DISK_SIZE"] == "18713M"


def test_a_volume_too_small_for_the_default_fails_with_a_clear_message() -> None:
    fix = r"raise it, set vm\.diskSize, or set vm\.diskSizeFromVolume to false"
    with pytest.raises(helm.HelmRenderError, match=rf"disk\.size 100Mi leaves no room .*: {fix}"):
        render(with_source({"disk": {"size": "100Mi"}}))
    data = {"dataDisks": [{"size": "19G"}]}
    with pytest.raises(helm.HelmRenderError, match=r"20Gi leaves no room .* the size data disks"):
        vm_env(data)
    huge = {"dataDisks": [{"size": "99999999999999T"}]}
    with pytest.raises(helm.HelmRenderError, match=r'size "99999999999999T": at most 64 TiB'):
        vm_env(huge)
    # Either way out renders: kvm-manager then judges the size against the volume.
    assert "VM_DISK_SIZE" not in vm_env({**data, "diskSizeFromVolume": False})
    assert vm_env({**data, "diskSize": "1G"})["VM_DISK_SIZE"] == "1G"
    small = with_source({"disk": {"size": "100Mi"}, "vm": {"diskSizeFromVolume": False}})
    assert "VM_DISK_SIZE" not in env_values(render(small).statefulset())


def test_an_unparsable_disk_size_is_named(tmp_path: Path) -> None:
    # The schema refuses it first...
    with pytest.raises(helm.HelmValuesError, match="/disk/size"):
        render(with_source({"disk": {"size": "20 Gi"}}))
    # ... and without it (helm --skip-schema-validation) the template still names disk.size.
    copy = tmp_path / "kvm-manager"
    shutil.copytree(CHART_DIR, copy)
    (copy / "values.schema.json").unlink()
    unchecked = helm.Chart.load(copy)
    with pytest.raises(helm.HelmRenderError, match=r'disk\.size "20 Gi" is not a quantity'):
        unchecked.render(
            with_source({"disk": {"size": "20 Gi"}}),
            name=RELEASE,
            namespace=NAMESPACE,
            is_install=True,
        )
