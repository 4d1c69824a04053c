"""The chart's own pod, run: the chart rendered with Helm's library for a realistic release,
converted by podlab/kubeplay.py into what `podman kube play` (4.3) takes, each conversion
listed there and in the README, and played with the image `scripts/container` builds, in a
pod network of the test's. Everything run and checked comes from the rendered manifest (env,
mount paths, capabilities, probe and preStop commands), so a chart and an image that
disagree fail here; the last two tests show two such disagreements failing.

Why podman: neither Debian 12 nor PyPI has a kubelet or CRI-O (only containerd, without a
kubelet to drive it); `podman kube play` runs Kubernetes pod YAML itself."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from podlab import guest
from podlab.console import Output, marker
from podlab.kubeplay import Manifest, Play, convert
from podlab.lab import REPO, VM_IP, PodLab
from podlab.netns import PodNetwork, sh
from tests.chart.render import NAMESPACE, Rendered, chart, merged

CONTAINER = REPO / "scripts" / "container"
BOOT_TIMEOUT = 180.0
FAIL_TIMEOUT = 60.0
CONTAINER_NAME = "kvm-manager"  # the chart's VM container
USERDATA = """#!/bin/sh
# run by the test guest's init: proves the ConfigMap's user-data reached the guest
echo "written-by-user-data on $(hostname)" > /www/userdata.txt
"""
VNC_PASSWORD = "kp-pw"
# podman builds its pause image around catatonit, which Debian's podman only recommends: the
# infra container here is a shell that waits, on the base image scripts/container makes.
PAUSE_BASE = "localhost/kvmmgr-base:bookworm"
PAUSE_IMAGE = "localhost/kvmmgr-kube-pause:1"
PAUSE_ENTRYPOINT = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]
# Root here lacks CAP_SYS_RESOURCE: limits it may keep (podlab.lab.PODMAN_ULIMITS).
ULIMITS = ["nofile=20000:20000", "nproc=32768:32768"]


def release(suffix: str = "") -> str:
    """Unique per run: the claims, ConfigMaps and secrets podman makes are named after it."""
    return f"kp{os.getpid()}{suffix}"


def values(image: str, source: str, override: dict[str, Any] | None = None) -> dict[str, Any]:
    """A realistic release: user-data and metadata in the ConfigMap, a VNC password Secret,
    the image cache and disk claims, NAT mode, the device plugin's resources (the chart's
    defaults); TCG, a small VM and a small disk here."""
    repository, tag = image.rsplit(":", 1)
    base = {
        "image": {"repository": repository, "tag": tag},
        "vm": {"image": {"source": source}, "accel": "tcg", "memory": 256, "netMode": "nat"},
        "disk": {"size": "2Gi"},
        "cloudInit": {"userdata": USERDATA, "metadata": {"role": "kube-play"}},
        "vnc": {"password": VNC_PASSWORD},
        "webConsole": {"enabled": True},
    }
    return merged(base, override or {})


def render(name: str, values: dict[str, Any]) -> list[Manifest]:
    files = chart().render(values, name=name, namespace=NAMESPACE, is_install=True)
    return Rendered(files).manifests


def podman(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONTAINER), "podman", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"{done.args}: exit {done.returncode}\n{done.stderr}"
    return done.stdout


def containers_conf(devices: tuple[str, ...]) -> str:
    """What the node gives every container, for what podman's pod YAML cannot say: the
    device plugins' devices, the pause image, and ulimits root may keep."""
    present = [device for device in devices if Path(device).exists()]
    return (
        f"[containers]\ndevices = {json.dumps(present)}\ndefault_ulimits = {json.dumps(ULIMITS)}\n"
        f'[engine]\ninfra_image = "{PAUSE_IMAGE}"\n'
    )


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    done = subprocess.run(
        [str(CONTAINER), "build"], stdout=subprocess.PIPE, text=True, timeout=1800, check=False
    )
    assert done.returncode == 0, "scripts/container build failed (its output is above)"
    if podman("image", "exists", PAUSE_IMAGE).returncode != 0:
        context = tmp_path_factory.mktemp("pause")
        entrypoint = json.dumps(PAUSE_ENTRYPOINT)
        (context / "Containerfile").write_text(f"FROM {PAUSE_BASE}\nENTRYPOINT {entrypoint}\n")
        ok(podman("build", "--network=none", "-t", PAUSE_IMAGE, str(context)))
    return done.stdout.strip().splitlines()[-1]


@dataclass
class KubePod:
    """One converted rendering, played by `podman kube play`; `down()` undoes it all."""

    play: Play
    workdir: Path
    net: PodNetwork
    _made: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.play.pod["metadata"]["name"])

    @property
    def container_name(self) -> str:
        return f"{self.name}-{CONTAINER_NAME}"  # podman's name for the pod's container

    @property
    def container(self) -> dict[str, Any]:
        return self.play.container(CONTAINER_NAME)

    def podman(self, *args: str) -> subprocess.CompletedProcess[str]:
        return podman(*args, env={"CONTAINERS_CONF": str(self.workdir / "containers.conf")})

    def up(self) -> Output:
        """As a kubelet starts a pod: the sandbox (the infra container) first, its network
        by a "CNI plugin" (the test), then the containers. The console: the container's log."""
        (self.workdir / "containers.conf").write_text(containers_conf(self.play.devices))
        for secret, data in self.play.secrets.items():
            (self.workdir / f"secret-{secret}").write_bytes(data)
            self._made.append(f"secret:{secret}")
            ok(self.podman("secret", "create", secret, str(self.workdir / f"secret-{secret}")))
        kube = self.workdir / "kube.yaml"
        kube.write_text(self.play.yaml())
        self._made.append(f"kube:{kube}")
        ok(self.podman("kube", "play", "--network", "none", "--start=false", str(kube)))
        infra = json.loads(ok(self.podman("pod", "inspect", self.name)))["InfraContainerID"]
        ok(self.podman("start", infra))
        self._wire(int(json.loads(ok(self.podman("inspect", infra)))[0]["State"]["Pid"]))
        ok(self.podman("pod", "start", self.name))
        self.logs = subprocess.Popen(
            [str(CONTAINER), "podman", "logs", "--follow", self.container_name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        assert self.logs.stdout is not None
        return Output(self.logs.stdout, self.workdir / "console.log")

    def _wire(self, pid: int) -> None:
        """The pod's eth0 (the lab's, its peer on the node) into the sandbox's network
        namespace with the pod IP and default route, and the pod's sysctls set there, as a
        runtime does. (`podman exec` then enters that namespace; with `--network host` it
        would run the probes in the machine's own.)"""
        net = self.net
        net.pod.ip("link", "set", "eth0", "netns", str(pid))
        inside = ["nsenter", f"--net=/proc/{pid}/ns/net"]
        sh(*inside, "ip", "addr", "add", f"{net.pod_ip}/{net.prefix}", "dev", "eth0")
        sh(*inside, "ip", "link", "set", "eth0", "up")
        sh(*inside, "ip", "link", "set", "lo", "up")
        sh(*inside, "ip", "route", "add", "default", "via", net.node_ip)
        for sysctl in self.play.sysctls:
            sh(*inside, "sysctl", "-q", "-w", sysctl)

    def exec(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        """`command` in the container, as a kubelet runs an exec probe or hook."""
        return self.podman("exec", self.container_name, *command)

    def inspect(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(ok(self.podman("inspect", self.container_name)))[0]
        return found

    def exit_code(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.inspect()["State"]
            if state["Status"] in ("exited", "stopped"):
                return int(state["ExitCode"])
            time.sleep(0.5)
        raise TimeoutError(f"{self.container_name} still runs after {timeout:g} s")

    def down(self) -> None:
        """Everything the play made, whatever state it is in."""
        for made in reversed(self._made):
            kind, _, what = made.partition(":")
            if kind == "kube":
                self.podman("kube", "play", "--down", what)
            else:
                self.podman("secret", "rm", what)
        if hasattr(self, "logs"):
            self.logs.kill()
            self.logs.wait()
        for volume in self.play.volumes():
            self.podman("volume", "rm", "--force", volume)


@contextmanager
def played(
    workdir: Path, image: str, name: str, override: dict[str, Any] | None = None
) -> Iterator[tuple[PodLab, KubePod, Output]]:
    """The release `name` rendered, converted and played in a new lab; removed on exit."""
    with PodLab(workdir / "lab", guest.build()) as lab:
        assert lab.image_url is not None
        manifests = render(name, values(image, lab.image_url, override))
        pod = KubePod(convert(manifests, host_dir=str(workdir / "host")), workdir, lab.net)
        try:
            yield lab, pod, pod.up()
        finally:
            pod.down()


@pytest.fixture(scope="module")
def running(
    image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[PodLab, KubePod, Output]]:
    """One boot, shared by the checks below; the last one ends it."""
    with played(tmp_path_factory.mktemp("kube-play"), image, release()) as (lab, pod, console):
        console.wait_for(r"^KVMTEST_READY ", BOOT_TIMEOUT)
        yield lab, pod, console


def test_the_container_is_as_the_manifest_says(running: tuple[PodLab, KubePod, Output]) -> None:
    """podman took the securityContext, env and mounts as rendered: what follows runs the
    chart's pod, not podman's idea of it."""
    _, pod, _ = running
    inspected, rendered = pod.inspect(), pod.container
    security = rendered["securityContext"]
    assert security["capabilities"]["drop"] == ["ALL"]
    wanted = sorted(f"CAP_{c}" for c in security["capabilities"]["add"])
    assert sorted(inspected["BoundingCaps"]) == wanted
    config = inspected["HostConfig"]
    assert config["Privileged"] is security["privileged"]
    assert config["ReadonlyRootfs"] is security["readOnlyRootFilesystem"]
    no_new_privileges = "no-new-privileges" in config["SecurityOpt"]
    assert no_new_privileges is not security["allowPrivilegeEscalation"]
    env = dict(item.split("=", 1) for item in inspected["Config"]["Env"])
    assert {e["name"]: env.get(e["name"]) for e in rendered["env"] if "value" in e} == {
        e["name"]: e["value"] for e in rendered["env"] if "value" in e
    }
    mounts = {m["Destination"] for m in inspected["Mounts"]}
    assert {m["mountPath"] for m in rendered["volumeMounts"]} <= mounts
    assert inspected["Config"]["Cmd"] == rendered["args"]


def test_the_vm_takes_its_lease_and_answers_on_the_pod_ip(
    running: tuple[PodLab, KubePod, Output],
) -> None:
    lab, pod, console = running
    lease = marker(console.wait_for(r"^KVMTEST_DHCP ", 5))
    assert (lease["ip"], lease["mask"]) == (VM_IP, "255.255.255.252")
    assert lease["hostname"] == pod.play.pod["spec"]["hostname"]  # the StatefulSet's pod name
    assert lease["mtu"] == str(lab.net.mtu)
    page = lab.from_node.http(f"http://{lab.net.pod_ip}/")
    assert page["status"] == 200 and f"ip={VM_IP}" in page["body"]


def test_the_probe_commands_succeed_in_the_container(
    running: tuple[PodLab, KubePod, Output],
) -> None:
    _, pod, _ = running
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = pod.container[probe]["exec"]["command"]
        done = pod.exec(command)
        assert done.returncode == 0, f"{probe} {command}: {done.stdout}{done.stderr}"


def test_the_cloud_init_configmap_reaches_the_guest(
    running: tuple[PodLab, KubePod, Output],
) -> None:
    lab, pod, console = running
    env = {e["name"]: e.get("value") for e in pod.container["env"]}
    label = {"configdrive": "config-2", "nocloud": "cidata"}[env["CONFIG_DRIVE_FORMAT"]]
    assert marker(console.wait_for(r"^KVMTEST_CFGDRIVE ", 5))["label"] == label
    assert marker(console.wait_for(r"^KVMTEST_USERDATA_DONE ", 30))["rc"] == "0"
    ran = lab.from_node.http(f"http://{lab.net.pod_ip}/userdata.txt")
    assert ran["body"] == f"written-by-user-data on {pod.play.pod['spec']['hostname']}\n"
    meta = lab.from_node.http(f"http://{lab.net.pod_ip}/cfg/openstack/latest/meta_data.json")
    assert json.loads(meta["body"])["role"] == "kube-play"  # the ConfigMap's metadata


def test_the_vnc_password_secret_reaches_qemu(running: tuple[PodLab, KubePod, Output]) -> None:
    lab, pod, _ = running
    vnc = lab.from_node.rfb(lab.net.pod_ip)
    assert (vnc["banner"], vnc["security_types"]) == ("RFB 003.008", [2])  # a password asked
    (run,) = (v for v in pod.play.pod["spec"]["volumes"] if v["name"] == "run")  # RUN_DIR's
    assert (Path(run["hostPath"]["path"]) / "vnc-password").read_text() == VNC_PASSWORD


def test_the_web_console_answers_on_the_pod_ip(running: tuple[PodLab, KubePod, Output]) -> None:
    """The chart's web console port, served by the image: noVNC's page is there."""
    lab, pod, _ = running
    (port,) = (e["value"] for e in pod.container["env"] if e["name"] == "WEB_CONSOLE_PORT")
    page = lab.from_node.http(f"http://{lab.net.pod_ip}:{port}/vnc.html")
    assert page["status"] == 200 and "<title>noVNC</title>" in page["body"]


def test_the_prestop_command_powers_the_guest_off(
    running: tuple[PodLab, KubePod, Output],
) -> None:
    """Last of the boot's checks: the pod's deletion as a kubelet does it, the preStop
    command, then the container's end."""
    _, pod, _ = running
    command = pod.container["lifecycle"]["preStop"]["exec"]["command"]
    done = pod.exec(command)
    assert "the guest powered off (ACPI) and QEMU exited" in done.stdout, done.stderr
    # 137: the container ends with QEMU, its main process, and takes the exec along (SIGKILL)
    assert done.returncode in {0, 137}
    assert pod.exit_code(30) == 0


def test_a_capability_the_chart_leaves_out_fails_the_pod(image: str, tmp_path: Path) -> None:
    """A chart that drops a capability the image needs: the pod fails, saying which."""
    add = ["NET_ADMIN", "NET_BIND_SERVICE", "CHOWN", "SETUID", "SETGID", "SETPCAP", "KILL"]
    override = {"securityContext": {"capabilities": {"add": add}}}  # no NET_RAW
    with played(tmp_path, image, release("-caps"), override) as (_, pod, console):
        assert pod.exit_code(FAIL_TIMEOUT) == 2  # bad pod environment
        console.wait_for(r"the NET_RAW capability is missing", 10)


def test_a_path_the_chart_does_not_mount_fails_the_pod(image: str, tmp_path: Path) -> None:
    """A chart whose VM_DIR is not one of its volumes: the read-only root refuses it."""
    override = {"extraEnv": [{"name": "VM_DIR", "value": "/var/lib/vm"}]}
    with played(tmp_path, image, release("-path"), override) as (_, pod, console):
        assert pod.exit_code(FAIL_TIMEOUT) == 2
        console.wait_for(r"/var/lib/vm", 10)
