"""A pod on this machine: node and pod namespaces, the base image served from the node, the
pod's volumes, and `kvm-manager` started inside the pod exactly as a container entrypoint.

    with PodLab(workdir, image) as lab:
        vm = lab.start()                      # kvm-manager run, in the pod namespace
        vm.console.wait_for("KVMTEST_READY", 60)
        lab.from_node.http(f"http://{lab.net.pod_ip}/")
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from podlab.console import Output
from podlab.netns import Namespace, PodNetwork

REPO = Path(__file__).resolve().parent.parent
KVM_MANAGER = str(Path(sys.executable).parent / "kvm-manager")
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IMAGE_PORT = 8080
CLI_TIMEOUT = 120
POD_SYSCTLS = ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.route_localnet=1")
# Every capability the container keeps (all others dropped), each proven by the container
# suite: NET_ADMIN (links, addresses, rules), NET_RAW (iptables' raw socket),
# NET_BIND_SERVICE (dnsmasq on port 67), CHOWN (QEMU's files to its group), SETUID, SETGID
# and SETPCAP (QEMU and dnsmasq give up root), KILL (a dnsmasq of its own user replaced).
CAPABILITIES = (
    "NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE", "CHOWN", "SETUID", "SETGID", "SETPCAP", "KILL",
)  # fmt: skip
# Root here lacks CAP_SYS_RESOURCE: podman must be told limits it may keep.
PODMAN_ULIMITS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768")
HOSTNAME = "kvmtest-0"
NAMESERVERS = ("10.96.0.10", "10.96.0.11", "10.96.0.12")
SEARCH = ("default.svc.cluster.local", "svc.cluster.local")
VM_IP = "192.168.254.2"
VM_GW = "192.168.254.1"
USERDATA = """#!/bin/sh
# run by the test guest's init: proves the config drive's user-data reached the guest
echo "written-by-user-data on $(hostname)" > /www/userdata.txt
"""
METADATA = "# a ConfigMap's metadata, in YAML\nrole: e2e\nzone: lab\n"


class Prober:
    """Network checks run from inside one namespace (see podlab/probe.py)."""

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns

    def _probe(self, *args: str) -> dict[str, Any]:
        out = self.ns.run(sys.executable, "-m", "podlab.probe", *args, env=_python_env())
        result: dict[str, Any] = json.loads(out)
        return result

    def tcp(self, host: str, port: int) -> dict[str, Any]:
        return self._probe("tcp", host, str(port))

    def udp(self, host: str, port: int) -> dict[str, Any]:
        return self._probe("udp", host, str(port))

    def http(self, url: str) -> dict[str, Any]:
        return self._probe("http", url)

    def rfb(self, host: str, port: int = 5900) -> dict[str, Any]:
        return self._probe("rfb", host, str(port))

    def ping(self, host: str, count: int = 2) -> bool:
        done = subprocess.run(
            self.ns.argv("ping", "-c", str(count), "-W", "2", "-i", "0.3", host),
            capture_output=True,
            check=False,
        )
        return done.returncode == 0

    def server(self, *args: str) -> subprocess.Popen[bytes]:
        """A podlab.probe server (serve, httpd) in this namespace, returned once listening."""
        process = self.ns.popen(
            [sys.executable, "-m", "podlab.probe", *args],
            env=_python_env(),
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"ready":
            process.kill()
            raise RuntimeError(f"probe server {args} did not start")
        return process


class KvmManager:
    """One `kvm-manager` in the pod: a container's main process. After `run` execs, this
    process *is* QEMU; its stdout is the guest's serial console. `argv` starts it: through
    `ip netns exec`, or `podman run` for the container image."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], logs: Path) -> None:
        self.env = dict(env)
        self.process = subprocess.Popen(
            argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self.console = Output(self.process.stdout, logs.with_suffix(".console.log"))
        self.log = Output(self.process.stderr, logs.with_suffix(".log"))

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> int:
        """SIGKILL, as when a container is killed; its exit status."""
        self.process.send_signal(signal.SIGKILL)
        return self.process.wait(10)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)


class PodLab:
    """The whole pod on this machine; everything it made is removed by `close()`."""

    def __init__(self, workdir: Path, image: Path | None = None, **network: Any) -> None:
        """`network`: PodNetwork's variants (routed, dual_stack, secondary)."""
        self.workdir = workdir
        self.volumes = workdir / "volumes"
        self.net = PodNetwork.create(**network)
        self._servers: list[subprocess.Popen[bytes]] = []
        self._containers: list[str] = []
        self._runs = 0
        self.served = workdir / "served"  # what the node's HTTP server serves...
        self.http_log = workdir / "node-httpd.jsonl"  # ...and who asked for what
        try:
            self.from_node = Prober(self.net.node)
            self.in_pod = Prober(self.net.pod)
            self._make_volumes()
            self.served.mkdir(exist_ok=True)
            self.image_url = self._serve_image(image) if image else None
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> PodLab:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _make_volumes(self) -> None:
        for name in ("image", "run"):
            (self.volumes / name).mkdir(parents=True, exist_ok=True)
        self.open_volumes()
        resolv = [f"nameserver {ns}" for ns in NAMESERVERS] + [f"search {' '.join(SEARCH)}"]
        (self.volumes / "resolv.conf").write_text("\n".join([*resolv, "options ndots:5", ""]))
        (self.volumes / "userdata").write_text(USERDATA)
        (self.volumes / "metadata").write_text(METADATA)

    def open_volumes(self) -> None:
        """A kubelet's volume directories are reachable by every user of the pod; pytest's
        temporary ones are root's alone. QEMU, not root, must pass them (search only). Done
        again at each start: a pytest session that begins meanwhile closes its base folder
        (/tmp/pytest-of-root) again."""
        for parent in (self.volumes, *self.volumes.parents):
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)

    def serve_file(self, name: str, content: str) -> None:
        """Put a file on the node's HTTP server (port IMAGE_PORT)."""
        (self.served / name).write_text(content)

    def _serve_image(self, image: Path) -> str:
        target = self.served / image.name
        try:
            os.link(image, target)  # the guest stays where it was built; no copy
        except OSError:
            shutil.copyfile(image, target)
        self._servers.append(
            self.from_node.server(
                "httpd", str(self.served), self.net.node_ip, str(IMAGE_PORT), str(self.http_log)
            )
        )
        return f"http://{self.net.node_ip}:{IMAGE_PORT}/{image.name}"

    def env(self, **overrides: str | None) -> dict[str, str]:
        """The container's environment: nothing inherited from this process. An override
        of None removes a variable."""
        env: dict[str, str | None] = {
            "PATH": CONTAINER_PATH,
            "HOSTNAME": HOSTNAME,
            "IMAGE_DIR": str(self.volumes / "image"),
            "RUN_DIR": str(self.volumes / "run"),
            "RESOLV_CONF": str(self.volumes / "resolv.conf"),
            "USERDATA_PATH": str(self.volumes / "userdata"),
            "METADATA_PATH": str(self.volumes / "metadata"),
            "VM_ACCEL": "tcg",
            "VM_MEMORY": "256",
        }
        if self.image_url:
            env["IMG_SOURCE"] = self.image_url
        env.update(overrides)
        return {name: value for name, value in env.items() if value is not None}

    def start(self, *args: str, **env: str | None) -> KvmManager:
        """`kvm-manager ARGS` (default: run) in the pod namespace, as the container would."""
        self.open_volumes()
        argv = self.net.pod.argv(KVM_MANAGER, *(args or ("run",)))
        return KvmManager(argv, self.env(**env), self._log_name())

    def start_container(self, image: str, *args: str, **env: str | None) -> KvmManager:
        """The container image itself in the pod namespace, as a kubelet runs the chart's
        container: unprivileged, with CAPABILITIES and /dev/net/tun, no_new_privs
        (allowPrivilegeEscalation: false), the runtime's default seccomp profile, a read-only
        root filesystem without any tmpfs (readOnlyRootFilesystem: true), the pod's sysctls
        set beforehand, and the volumes mounted at the same paths (so the environment is the
        same)."""
        self.open_volumes()
        for sysctl in POD_SYSCTLS:  # what securityContext.sysctls does
            self.net.pod.run("sysctl", "-q", "-w", sysctl)
        name = f"{self.net.pod.name}-{self._runs + 1}"
        self._containers.append(name)
        container_env = self.env(**env)
        argv = [
            str(REPO / "scripts" / "container"), "podman", "run", "--rm", "--name", name,
            "--network", f"ns:/run/netns/{self.net.pod.name}",
            "--hostname", container_env["HOSTNAME"],
            "--cap-drop", "all", "--cap-add", ",".join(CAPABILITIES), "--device", "/dev/net/tun",
            "--security-opt", "no-new-privileges", "--read-only", "--read-only-tmpfs=false",
            *PODMAN_ULIMITS,
            "--volume", f"{self.volumes}:{self.volumes}",
        ]  # fmt: skip
        for key, value in container_env.items():
            if key != "PATH":  # the image's own PATH finds its entrypoint
                argv += ["--env", f"{key}={value}"]
        argv += [image, *(args or ("run",))]
        return KvmManager(argv, {**os.environ}, self._log_name())

    def _log_name(self) -> Path:
        self._runs += 1
        return self.workdir / f"kvm-manager-{self._runs}"

    def cli(self, *args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
        """A short kvm-manager command in the pod (status, shutdown, setup, plan)."""
        self.open_volumes()
        return subprocess.run(
            self.net.pod.argv(KVM_MANAGER, *args),
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def close(self) -> None:
        for server in self._servers:
            server.kill()
            server.wait()
        self.net.delete()  # kills QEMU, dnsmasq and every other process inside
        for name in self._containers:
            subprocess.run(
                [str(REPO / "scripts" / "container"), "podman", "rm", "--force", "--ignore", name],
                capture_output=True,
                check=False,
            )


def _python_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}
