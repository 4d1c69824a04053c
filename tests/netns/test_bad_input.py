"""Bad input in a real pod: one line on stderr naming what is wrong, a documented exit status
(2 for what is found before anything changes, 1 for a step that fails while acting), and the
pod exactly as it was: links, addresses, routes, rules, sysctls, processes, files."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmmgr.errors import EXIT_CONFIG, EXIT_FAILURE
from podlab.lab import CAPABILITIES, KVM_MANAGER, PodLab
from tests.hostile import DEEP_FLOW, fifo, gzip_bomb, laughs, link_to, loop
from tests.netns.snapshot import pod_state


def _no_address_interface(lab: PodLab) -> None:
    lab.net.pod.ip("link", "add", "net1", "type", "veth", "peer", "name", "net1-peer")


def _route_over_the_vm_network(lab: PodLab) -> None:
    lab.net.pod.ip("route", "add", "192.168.0.0/16", "via", lab.net.node_ip)


def _closed_to_others(lab: PodLab) -> None:
    """The volumes' parent root's alone (0700): QEMU, not root, could not reach its disk."""
    lab.workdir.chmod(0o700)


def _invalid_metadata(lab: PodLab) -> None:
    (lab.volumes / "metadata").write_text("role: db\nname: a: b\nzone: x\n")


def _second_address(lab: PodLab) -> None:
    lab.net.pod.ip("addr", "add", "10.244.0.11/24", "dev", "eth0")


def _invalid_cloud_config(lab: PodLab) -> None:
    (lab.volumes / "userdata").write_text("#cloud-config\npackages: [nginx\n")


def _oversized_userdata(lab: PodLab) -> None:
    (lab.volumes / "userdata").write_bytes(b"#!/bin/sh\n" + b"#" * (17 << 20))


def _userdata_is_a_directory(lab: PodLab) -> None:
    (lab.volumes / "userdata").unlink()
    (lab.volumes / "userdata").mkdir()


def _outside_the_volumes(name: str, make: Callable[[Path], None]) -> Callable[[PodLab], None]:
    """A hostile file beside the volumes ({hostile}/NAME), not in them: the snapshot reads every
    file of the volumes, and a FIFO or a device is no file to read."""

    def prepare(lab: PodLab) -> None:
        (lab.workdir / "hostile").mkdir(exist_ok=True)
        make(lab.workdir / "hostile" / name)

    return prepare


def _writing(data: Callable[[], bytes]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_bytes(data())

    return write


def _in_a_volume(name: str, data: Callable[[], bytes]) -> Callable[[PodLab], None]:
    return lambda lab: _writing(data)(lab.volumes / name)


def _base_with_a_record(data: bytes) -> Callable[[PodLab], None]:
    def prepare(lab: PodLab) -> None:
        _base_already_cached(lab)
        (lab.volumes / "image" / ".base.qcow2.json").write_bytes(data)

    return prepare


def _base_already_cached(lab: PodLab) -> None:
    """The 64 MiB base in the image cache, as a first pod would have left it."""
    shutil.copyfile(lab.workdir.parent / "base.qcow2", lab.volumes / "image" / "base.qcow2")


def _only_some_programs(*kept: str) -> Callable[[PodLab], None]:
    """A PATH directory holding only `kept`, and `ip` for `ip netns exec` (the case's PATH)."""

    def prepare(lab: PodLab) -> None:
        bin_dir = lab.workdir / "bin"
        bin_dir.mkdir()
        for program in (*kept, "ip"):
            found = shutil.which(program)
            assert found is not None, program
            (bin_dir / program).symlink_to(found)

    return prepare


def _in_mount_namespace(script: str) -> Callable[[PodLab], tuple[str, ...]]:
    """Run kvm-manager in a mount namespace of its own, after `script` (PodLab's paths as
    {volumes}): devices and volumes can be taken away without touching this machine."""

    def wrapper(lab: PodLab) -> tuple[str, ...]:
        commands = script.format(volumes=lab.volumes)
        shell = f'{commands} && exec "$@"'
        return ("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", shell, "sh")

    return wrapper


def _read_only(directory: str) -> Callable[[PodLab], tuple[str, ...]]:
    path = "{volumes}/" + directory
    return _in_mount_namespace(f"mount --bind {path} {path} && mount -o remount,bind,ro {path}")


def _without_capability(cap: str) -> Callable[[PodLab], tuple[str, ...]]:
    return lambda lab: ("setpriv", f"--inh-caps=-{cap.lower()}", f"--bounding-set=-{cap.lower()}")


def _full_image_dir(lab: PodLab) -> Callable[[], None]:
    """IMAGE_DIR on a 64 KiB tmpfs: the image (200 KiB) cannot be written. Returns the undo."""
    image_dir = lab.volumes / "image"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(image_dir)], check=True)

    def undo() -> None:
        subprocess.run(["umount", str(image_dir)], check=True)

    return undo


@dataclass(frozen=True)
class Case:
    name: str
    env: dict[str, str | None]
    says: str  # a fragment of the one line on stderr
    prepare: Callable[[PodLab], None] | None = None
    wrapper: Callable[[PodLab], tuple[str, ...]] | None = None
    status: int = EXIT_CONFIG
    mount: Callable[[PodLab], Callable[[], None]] | None = None  # returns how to undo it


def _serving(lab: PodLab, port: int) -> None:
    """Something else of the pod's listens on `port` (killed with the pod's namespace)."""
    lab.in_pod.server("serve", "other", str(port))


CASES = [
    Case("unparsable VM_IP", {"VM_IP": "192.168.254.256"}, "VM_IP='192.168.254.256'"),
    Case("VM_IP not a usable /30 host", {"VM_IP": "192.168.254.3"}, "usable host of its /30"),
    Case("VM_GW outside the /30", {"VM_GW": "192.168.254.9"}, "VM_GW='192.168.254.9'"),
    Case(
        "/30 inside the pod subnet",
        {"VM_IP": "10.244.0.6", "VM_GW": "10.244.0.5"},
        "overlaps the pod's network on eth0 10.244.0.0/24",
    ),
    Case(
        "/30 under a pod route",
        {},
        "overlaps a route of the pod 192.168.0.0/16",
        _route_over_the_vm_network,
    ),
    Case("bad MAC", {"VM_MAC": "52:54:00:xx:00:01"}, "VM_MAC='52:54:00:xx:00:01'"),
    Case("multicast MAC", {"VM_MAC": "03:00:00:00:00:01"}, "a unicast MAC"),
    Case("zero memory", {"VM_MEMORY": "0"}, "VM_MEMORY='0'"),
    Case("negative CPUs", {"VM_CPUS": "-2"}, "VM_CPUS='-2'"),
    Case("CPUs not a number", {"VM_CPUS": "four"}, "VM_CPUS='four'"),
    Case("unknown accelerator", {"VM_ACCEL": "hvf"}, "VM_ACCEL='hvf'"),
    Case("KVM asked for but not usable", {"VM_ACCEL": "kvm"}, "VM_ACCEL='kvm'"),
    Case("bad NAT_EXCLUDE item", {"NAT_EXCLUDE": "tcp/9100 udp/x"}, "NAT_EXCLUDE='udp/x'"),
    Case("boolean neither true nor false", {"NO_DHCP": "sometimes"}, "NO_DHCP='sometimes'"),
    Case("missing pod interface", {"POD_IFACE": "eth9"}, "POD_IFACE='eth9'"),
    Case(
        "pod interface without IPv4",
        {"POD_IFACE": "net1"},
        "an interface with an IPv4 address",
        _no_address_interface,
    ),
    Case("POD_IP not on the interface", {"POD_IP": "10.244.0.99"}, "POD_IP='10.244.0.99'"),
    Case(
        "POD_IP picks one of two addresses, VM_IP is bad",
        {"POD_IP": "10.244.0.11", "VM_IP": "10.244.0.2", "VM_GW": "10.244.0.1"},
        "overlaps the pod's network",
        _second_address,
    ),
    Case("missing resolv.conf", {"RESOLV_CONF": "/nonexistent/resolv.conf"}, "no such file"),
    Case("invalid metadata YAML", {}, "metadata line 2: invalid YAML", _invalid_metadata),
    Case("missing local image", {"IMG_SOURCE": "/nonexistent/base.qcow2"}, "IMG_SOURCE="),
    Case("no image at all", {"IMG_SOURCE": None}, "IMG_SOURCE is not set"),
    Case("relative RUN_DIR", {"RUN_DIR": "run"}, "RUN_DIR='run'"),
    Case("VNC password too long", {"VNC_PASSWORD": "far-too-long"}, "VNC_PASSWORD has 12 bytes"),
    Case("unknown NET_MODE", {"NET_MODE": "tunnel"}, "NET_MODE='tunnel'"),
    Case("unknown mode in ATTACH_IFACES", {"ATTACH_IFACES": "eth0:tunnel"}, "ATTACH_IFACES="),
    Case("SELECTED_NETWORK not a network", {"SELECTED_NETWORK": "10.244.0.0/33"}, "SELECTED_NE"),
    Case("bad VM_IP6", {"VM_IP6": "fd00::zz"}, "VM_IP6='fd00::zz'"),
    Case("IMG_SHA256 not a sha256", {"IMG_SHA256": "abc123"}, "IMG_SHA256='abc123'"),
    Case("IMG_RETRIES out of range", {"IMG_RETRIES": "1000"}, "IMG_RETRIES='1000'"),
    Case("missing IMG_CA_BUNDLE", {"IMG_CA_BUNDLE": "/nonexistent/ca.pem"}, "IMG_CA_BUNDLE="),
    Case("unbalanced DNSMASQ_OPTS", {"DNSMASQ_OPTS": "--log-dhcp 'open"}, "DNSMASQ_OPTS="),
    Case("unknown CONFIG_DRIVE_FORMAT", {"CONFIG_DRIVE_FORMAT": "iso"}, "CONFIG_DRIVE_FORMAT="),
    Case("memory in an unknown unit", {"VM_MEMORY": "2T"}, "VM_MEMORY='2T'"),
    Case("host name with bad characters", {"HOSTNAME": "vm_0!"}, "HOSTNAME='vm_0!'"),
    Case("unknown READINESS", {"READINESS": "ssh"}, "READINESS='ssh'"),
    Case("READINESS tcp without NAT", {"READINESS": "tcp:22", "NET_MODE": "bridge"}, "no NIC"),
    Case("VM_DISK_SIZE not a size", {"VM_DISK_SIZE": "big"}, "VM_DISK_SIZE='big'"),
    Case("VM_DISK_POLICY unknown", {"VM_DISK_POLICY": "replace"}, "VM_DISK_POLICY='replace'"),
    Case("METRICS_PORT not a port", {"METRICS_PORT": "70000"}, "METRICS_PORT='70000'"),
    Case("METRICS_PORT on VNC's", {"METRICS_PORT": "5900"}, "METRICS_PORT='5900'"),
    Case("WEB_CONSOLE_PORT not a port", {"WEB_CONSOLE_PORT": "novnc"}, "WEB_CONSOLE_PORT="),
    Case("WEB_CONSOLE_PORT, NO_VNC", {"WEB_CONSOLE_PORT": "6080", "NO_VNC": "1"}, "with NO_VNC"),
    Case("unknown VM_MACHINE", {"VM_MACHINE": "isapc"}, "VM_MACHINE='isapc'"),
    Case("Secure Boot on pc", {"VM_SECURE_BOOT": "1", "VM_MACHINE": "pc"}, "VM_SECURE_BOOT="),
    Case("IDE on q35", {"VM_DISK_BUS": "ide", "VM_MACHINE": "q35"}, "VM_DISK_BUS='ide'"),
    Case("unknown VM_NIC_MODEL", {"VM_NIC_MODEL": "pcnet"}, "VM_NIC_MODEL='pcnet'"),
    Case("VM_UUID not a UUID", {"VM_UUID": "not-a-uuid"}, "VM_UUID='not-a-uuid'"),
    Case("relative data disk", {"VM_DATA_DISKS": "10G data.img"}, "VM_DATA_DISKS='data.img'"),
    Case("QEMU_USER root", {"QEMU_USER": "root"}, "QEMU_USER='root'"),
    Case("QEMU_USER uid 0", {"QEMU_USER": "0:10107"}, "QEMU_USER='0:10107'"),
    Case("QEMU_USER unknown", {"QEMU_USER": "nobody-here"}, "QEMU_USER='nobody-here': no such"),
    Case("QEMU_USER gid 0", {"QEMU_USER": "10107:0"}, "QEMU_USER='10107:0'"),
    Case(
        "VM_DISK_SIZE below the cached base's",
        {"VM_DISK_SIZE": "32M"},
        "expected at least the base image's virtual size, 64.0 MiB",
        _base_already_cached,
    ),
    Case("invalid #cloud-config", {}, "invalid #cloud-config YAML", _invalid_cloud_config),
    Case("user-data over 16 MiB", {}, "USERDATA_PATH", _oversized_userdata),
    Case("user-data is a directory", {}, "USERDATA_PATH", _userdata_is_a_directory),
    # Hostile files: each refused unread or within bounds (tests/unit/test_hostile_files.py
    # has the full list), in one line naming it.
    Case(
        "resolv.conf is a FIFO",
        {"RESOLV_CONF": "{hostile}/resolv.conf"},
        "resolv.conf': is a FIFO",
        _outside_the_volumes("resolv.conf", fifo),
    ),
    Case(
        "user-data is /dev/zero",
        {"USERDATA_PATH": "{hostile}/userdata"},
        "userdata': is a character device",
        _outside_the_volumes("userdata", link_to("/dev/zero")),
    ),
    Case(
        "metadata is a symlink loop",
        {"METADATA_PATH": "{hostile}/metadata"},
        "Too many levels of symbolic links",
        _outside_the_volumes("metadata", loop),
    ),
    Case(
        "network data nests 100k deep",
        {"NETWORKDATA_PATH": "{hostile}/networkdata"},
        "networkdata: expected OpenStack network_data.json",
        _outside_the_volumes("networkdata", _writing(lambda: DEEP_FLOW)),
    ),
    Case(
        "user-data is a gzip bomb", {}, "unpacks to more than", _in_a_volume("userdata", gzip_bomb)
    ),
    Case("metadata is billion laughs", {}, "each alias counted", _in_a_volume("metadata", laughs)),
    Case(
        "resolv.conf is one 16 MiB line",
        {},
        "larger than 64 KiB",
        _in_a_volume("resolv.conf", lambda: b"search " + b"x" * (16 << 20)),
    ),
    Case(
        "remembered interfaces nest 100k deep",
        {},
        "pod-interfaces.json: not the pod's interfaces",
        _in_a_volume("run/pod-interfaces.json", lambda: DEEP_FLOW),
    ),
    Case(
        "the base's record is not one",
        {},
        ".base.qcow2.json: not a record",
        _base_with_a_record(b'{"size": "big"}'),
    ),
    *(
        Case(
            f"no {cap} capability",
            {},
            f"the {cap} capability is missing",
            None,
            _without_capability(cap),
        )
        for cap in CAPABILITIES
    ),
    Case(
        "no /dev/net/tun",
        {},
        "/dev/net/tun: cannot open (No such file or directory)",
        wrapper=_in_mount_namespace("mount -t tmpfs tmpfs /dev/net"),
    ),
    Case("read-only IMAGE_DIR", {}, "image: not writable", wrapper=_read_only("image")),
    Case("read-only RUN_DIR", {}, "run: not writable", wrapper=_read_only("run")),
    Case(
        "a directory QEMU cannot pass",
        {},
        "QEMU runs as kvmmgr-qemu and cannot pass this directory",
        _closed_to_others,
    ),
    Case(
        "QEMU not installed",
        {"PATH": "{bin}"},
        "qemu-system-x86_64: not found on PATH",
        _only_some_programs("qemu-img", "dnsmasq"),
    ),
    Case(
        "dnsmasq not installed",
        {"PATH": "{bin}"},
        "dnsmasq: not found on PATH",
        _only_some_programs("qemu-system-x86_64", "qemu-img"),
    ),
    Case(
        "WEB_CONSOLE_PORT taken",
        {"WEB_CONSOLE_PORT": "6080"},
        "WEB_CONSOLE_PORT=6080: cannot listen on it in the pod",
        lambda lab: _serving(lab, 6080),
    ),
    Case(
        "full IMAGE_DIR",
        {},
        "cannot write the image to",
        status=EXIT_FAILURE,  # found while acting: the download is the first step that does
        mount=_full_image_dir,
    ),
]


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_line_a_documented_status_and_changes_nothing(
    lab: PodLab, case: Case, request: pytest.FixtureRequest
) -> None:
    if case.prepare:
        case.prepare(lab)
    if case.mount:
        request.addfinalizer(case.mount(lab))
    env = {
        name: value.format(bin=lab.workdir / "bin", hostile=lab.workdir / "hostile")
        if value
        else value
        for name, value in case.env.items()
    }
    before = pod_state(lab)
    wrapper = case.wrapper(lab) if case.wrapper else ()
    done = subprocess.run(
        lab.net.pod.argv(*wrapper, KVM_MANAGER, "setup"),
        env=lab.env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = done.stderr.splitlines()
    assert done.returncode == case.status, done.stderr
    if case.status == EXIT_FAILURE:  # after the plan's two summary lines, the start stopped
        assert [line.split(":")[1] for line in lines[:-1]] == [" pod", " vm"], done.stderr
        lines = lines[-1:]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("kvm-manager: ")
    assert case.says in lines[0]
    assert done.stdout == ""
    assert pod_state(lab) == before
