"""The container image users deploy, built here with podman (scripts/container) and run in
the pod namespace as a kubelet would: unprivileged, NET_ADMIN and /dev/net/tun only. The e2e
suite's core checks hold with kvm-manager inside it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from podlab import guest
from podlab.console import marker
from podlab.lab import (
    CAPABILITIES,
    HOSTNAME,
    NAMESERVERS,
    PODMAN_ULIMITS,
    REPO,
    VM_GW,
    VM_IP,
    KvmManager,
    PodLab,
)
from tests.privileges import dnsmasq_problems, pid_of, qemu_problems, status

CONTAINER = REPO / "scripts" / "container"
BOOT_TIMEOUT = 120.0
IMAGE_QEMU_UID = 10107  # the Dockerfile's kvmmgr-qemu


def podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONTAINER), "podman", *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def image() -> str:
    done = subprocess.run(
        [str(CONTAINER), "build"], stdout=subprocess.PIPE, text=True, timeout=1800, check=False
    )
    assert done.returncode == 0, "scripts/container build failed (its output is above)"
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def running(
    image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[PodLab, KvmManager]]:
    with PodLab(tmp_path_factory.mktemp("container"), guest.build()) as lab:
        vm = lab.start_container(image)
        vm.console.wait_for(r"^KVMTEST_READY ", BOOT_TIMEOUT)
        yield lab, vm


def test_the_lease_from_inside_the_container(running: tuple[PodLab, KvmManager]) -> None:
    lab, vm = running
    lease = marker(vm.console.wait_for(r"^KVMTEST_DHCP ", 5))
    assert (lease["ip"], lease["router"], lease["mask"]) == (VM_IP, VM_GW, "255.255.255.252")
    assert lease["dns"].split(",") == list(NAMESERVERS)
    assert (lease["mtu"], lease["hostname"]) == (str(lab.net.mtu), HOSTNAME)


def test_http_through_the_pod_ip_and_vnc_banner(running: tuple[PodLab, KvmManager]) -> None:
    lab, _ = running
    page = lab.from_node.http(f"http://{lab.net.pod_ip}/")
    assert page["status"] == 200 and f"ip={VM_IP}" in page["body"]
    assert lab.from_node.rfb(lab.net.pod_ip)["banner"] == "RFB 003.008"
    assert lab.in_pod.http("http://127.0.0.1/")["status"] == 200


def test_the_container_runs_unprivileged(running: tuple[PodLab, KvmManager]) -> None:
    lab, _ = running
    name = f"{lab.net.pod.name}-1"
    inspected = json.loads(podman("inspect", name).stdout)[0]
    config = inspected["HostConfig"]
    assert config["Privileged"] is False and config["ReadonlyRootfs"] is True
    assert sorted(inspected["BoundingCaps"]) == sorted(f"CAP_{c}" for c in CAPABILITIES)
    assert "no-new-privileges" in config["SecurityOpt"]
    status = lab.cli("status")  # the QMP socket is on the shared RUN_DIR volume
    assert (status.returncode, status.stdout.strip()) == (0, "running")


def test_qemu_has_nothing_to_lose_in_the_container(running: tuple[PodLab, KvmManager]) -> None:
    """The image's QEMU user, no capability in any set, no_new_privs, QEMU's own seccomp
    filter (on top of the runtime's); dnsmasq as its own user, with its network capabilities
    at most."""
    lab, _ = running
    qemu = status(pid_of(lab.net.pod, "qemu-system-x86_64"))
    assert qemu_problems(qemu) == [], qemu
    assert qemu["Uid"].split() == [str(IMAGE_QEMU_UID)] * 4  # the Dockerfile's kvmmgr-qemu
    assert int(qemu["Seccomp_filters"]) >= 2  # the runtime's profile, then QEMU's sandbox
    dnsmasq = status(pid_of(lab.net.pod, "dnsmasq"))
    assert dnsmasq_problems(dnsmasq) == [], dnsmasq


def test_the_probes_and_the_shutdown_inside_the_container_then_a_restart(
    image: str, running: tuple[PodLab, KvmManager]
) -> None:
    """The chart's probe and preStop commands, run inside the container as a kubelet does
    (root with only the container's capabilities: no DAC_OVERRIDE), reach QEMU's QMP
    socket; the guest powers off, the container exits 0, and a new one boots the VM again
    from the same disk, QEMU's group's."""
    lab, vm = running
    name = f"{lab.net.pod.name}-1"
    probe = podman("exec", name, "kvm-manager", "status", "--ready")
    assert (probe.returncode, probe.stdout.splitlines()[0]) == (0, "running"), probe.stderr
    done = podman("exec", name, "kvm-manager", "shutdown", "--timeout", "60")
    assert "the guest powered off (ACPI) and QEMU exited" in done.stdout, done.stderr
    # 137: the container ends with QEMU, its main process, and takes the exec along (SIGKILL)
    assert done.returncode in {0, 137}
    assert vm.wait(BOOT_TIMEOUT) == 0
    again = lab.start_container(image)
    again.console.wait_for(r"^KVMTEST_READY ", BOOT_TIMEOUT)
    assert marker(again.console.wait_for(r"^KVMTEST_DHCP ", 5))["ip"] == VM_IP
    assert lab.from_node.http(f"http://{lab.net.pod_ip}/")["status"] == 200


def test_the_image(image: str) -> None:
    labels = json.loads(podman("inspect", image).stdout)[0]["Config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == "kvm-manager"
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    probe = podman(
        "run", "--rm", *PODMAN_ULIMITS, "--entrypoint", "sh", image, "-c",
        "command -v gcc cc || echo no-compiler; kvm-manager --version",
    )  # fmt: skip
    assert probe.stdout.split() == ["no-compiler", "kvm-manager", "0.1.0"], probe.stderr
    ignore = (REPO / ".dockerignore").read_text()
    assert "!kvmmgr/" in ignore and Path(REPO / "Dockerfile").exists()
