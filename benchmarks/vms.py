"""The test guest in fresh pods, started by `kvm-manager run` or by a bare QEMU command: what
the boot and datapath benchmarks share. The base image sits in an image cache that a first
start filled, as it would on a cluster after the first pod; each pod has its own disk."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.common import WORKDIR, need_root, say, timed
from kvmmgr.vm.qemu import (
    AGENT_FD,
    AGENT_SOCKET,
    METRICS_QMP_FD,
    METRICS_QMP_SOCKET,
    QMP_FD,
    QMP_SOCKET,
    TAP_FD_BASE,
)
from podlab import debian, guest
from podlab.lab import KVM_MANAGER, KvmManager, PodLab
from podlab.netns import Namespace

READY = r"^KVMTEST_READY "
BOOT_TIMEOUT = 120.0
# The same guest with QEMU's user-mode network (slirp) and a host forward of port 80, as
# KubeVirt's first network binding did: no bridge, tap, firewall or DHCP server in the pod.
USER_MODE = (
    "qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-cpu", "qemu64", "-m", "256",
    "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
    "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
    "-netdev", "user,id=net0,hostfwd=tcp::80-:80", "-device", "virtio-net-pci,netdev=net0",
)  # fmt: skip


class GuestPods:
    """`guest`: busybox (the test guest, seconds to boot) or debian (the real guest)."""

    def __init__(self, workdir: Path, guest_name: str = "busybox") -> None:
        self.workdir = workdir
        self.cache = workdir / "image-cache"
        self.pods = 0
        self.debian = guest_name == "debian"
        say(f"building (or reusing) the {guest_name} guest")
        self.image = debian.build() if self.debian else guest.build()

    def prepare(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.cache.mkdir(parents=True)
        with self.pod() as lab:
            timed(lab.net.pod.argv(KVM_MANAGER, "fetch"), lab.env(**self.volumes(lab)))

    def pod(self) -> PodLab:
        self.pods += 1
        return PodLab(self.workdir / f"pod-{self.pods}")

    def volumes(self, lab: PodLab) -> dict[str, str]:
        """The shared cache, a disk of the pod's own; the Debian guest's size and inputs."""
        disk = lab.volumes / "vm"
        disk.mkdir(exist_ok=True)
        env = {"IMAGE_DIR": str(self.cache), "IMG_SOURCE": str(self.image), "VM_DIR": str(disk)}
        if self.debian:
            (lab.volumes / "userdata").write_text("#cloud-config\n{}\n")
            env["VM_MEMORY"] = debian.MEMORY_MIB
        return env

    def kvm_manager(self, lab: PodLab) -> KvmManager:
        """`kvm-manager run`, as the container's entrypoint."""
        return lab.start(**self.volumes(lab))

    def prepared_argv(self, lab: PodLab) -> list[str]:
        """Everything but QEMU made ready by `kvm-manager setup`; QEMU's argv."""
        done = timed(lab.net.pod.argv(KVM_MANAGER, "setup", "--json"), lab.env(**self.volumes(lab)))
        return standalone(json.loads(done.stdout), lab.volumes / "run")

    def bare(self, lab: PodLab, argv: Sequence[str]) -> KvmManager:
        """QEMU started directly in the pod, as the container's main process."""
        return KvmManager(lab.net.pod.argv(*argv), lab.env(), self.workdir / f"qemu-{self.pods}")

    def boot_timeout(self) -> float:
        return debian.BOOT_TIMEOUT if self.debian else BOOT_TIMEOUT

    def user_mode(self, lab: PodLab) -> KvmManager:
        disk = lab.volumes / "user-mode.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(self.cache /
             self.image.name), str(disk)],
            check=True,
        )  # fmt: skip
        drive = ("-drive", f"file={disk},if=none,id=disk0,format=qcow2")
        device = ("-device", "virtio-blk-pci,drive=disk0,bootindex=1")
        return self.bare(lab, (*USER_MODE, *drive, *device))


def standalone(argv: Sequence[str], run_dir: Path) -> list[str]:
    """setup's argv names the sockets and taps kvm-manager opens for QEMU before its exec by
    file descriptor; bare QEMU, run as root, opens them itself by name."""
    by_name = {
        f"fd={QMP_FD}": f"path={run_dir / QMP_SOCKET}",
        f"fd={AGENT_FD}": f"path={run_dir / AGENT_SOCKET}",
        f"fd={METRICS_QMP_FD}": f"path={run_dir / METRICS_QMP_SOCKET}",
    }
    words = []
    for word in argv:
        named = word
        for fd, name in by_name.items():
            named = named.replace(f",{fd},", f",{name},")
        tap = re.fullmatch(r"(tap,id=net(\d+)),fd=(\d+)(,.*)", named)
        if tap and int(tap[3]) >= TAP_FD_BASE:  # a macvtap's device is not opened by name
            named = f"{tap[1]},ifname=kvmtap{tap[2]},script=no,downscript=no{tap[4]}"
        words.append(named)
    return words


def wait_ready(vm: KvmManager) -> None:
    vm.console.wait_for(READY, BOOT_TIMEOUT)


def first_answer(ns: Namespace, url: str, timeout: float = BOOT_TIMEOUT) -> subprocess.Popen[bytes]:
    """A poller in `ns` that prints when `url` first answers 200 (see podlab.probe)."""
    poller = ns.popen(
        [sys.executable, "-m", "podlab.probe", "wait-http", url, str(timeout)],
        env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert poller.stdout is not None
    if poller.stdout.readline().strip() != b"ready":
        raise SystemExit(f"the poller for {url} did not start")
    return poller


def seconds_until_answer(
    poller: subprocess.Popen[bytes], started: float, timeout: float = BOOT_TIMEOUT
) -> float:
    out, _ = poller.communicate(timeout=timeout + 10)
    at = json.loads(out)["at"]
    if at is None:
        raise SystemExit("the VM never answered HTTP")
    return float(at) - started


def now() -> float:
    """The clock the poller reports in (CLOCK_MONOTONIC is system-wide)."""
    return time.monotonic()


def guest_benchmark(
    argv: Sequence[str] | None,
    doc: str,
    name: str,
    runs: int,
    measure: Callable[[GuestPods, int], str],
) -> int:
    """The main of a benchmark that measures the test guest in a pod of its own: `--runs`,
    `--dir` (default: WORKDIR/`name`); `measure`'s tables on stdout."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n", 1)[0])
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--dir", type=Path, default=WORKDIR / name)
    args = parser.parse_args(argv)
    need_root()
    pods = GuestPods(args.dir.resolve())
    pods.prepare()
    print(measure(pods, args.runs))
    return 0
