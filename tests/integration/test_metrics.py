"""`kvm-manager metrics` against a real QEMU without a guest (no root needed): QEMU's monitor
for the sidecar beside the probes' one, as kvm-manager starts it (by path here, not by file
descriptor); a QEMU that hangs; and a download under way, from a real `kvm-manager fetch`
stalled by the misbehaving image server. With a real guest in a pod: tests/e2e/test_metrics.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmmgr.errors import EXIT_CONFIG, EXIT_OK
from kvmmgr.metrics import host, record
from kvmmgr.metrics.collector import VmCollector
from kvmmgr.metrics.record import StartRecord
from kvmmgr.vm.qemu import AGENT_CHARDEV, AGENT_SOCKET, METRICS_QMP_SOCKET, QMP_SOCKET
from kvmmgr.vm.qmp import Qmp
from tests.integration.imageserver import Fault, ImageServer, Resource
from tests.unit.test_metrics import Series, series

VM = "vm-0"
MiB = 1 << 20
SCRAPE_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _env(tmp: Path, **more: str) -> dict[str, str]:
    return {
        **os.environ, "RUN_DIR": str(tmp / "run"), "IMAGE_DIR": str(tmp / "image"),
        "IMG_TARGET": "base.qcow2", "HOSTNAME": VM, **more,
    }  # fmt: skip


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Two vCPUs, a disk, the agent's channel, a balloon, and both monitors, as kvm-manager
    gives them (the guest: SeaBIOS, finding nothing to boot)."""
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "image").mkdir()
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    process = subprocess.Popen(
        [
            "qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "128", "-smp", "2",
            "-name", f"guest={VM},debug-threads=on", "-nodefaults", "-display", "none",
            "-drive", f"file={disk},if=none,id=disk0,format=qcow2",
            "-device", "virtio-blk-pci,drive=disk0,bootindex=1",
            "-qmp", f"unix:{run / QMP_SOCKET},server=on,wait=off",
            "-qmp", f"unix:{run / METRICS_QMP_SOCKET},server=on,wait=off",
            "-chardev", f"socket,id={AGENT_CHARDEV},path={run / AGENT_SOCKET},server=on,wait=off",
            "-device", "virtio-serial-pci,id=vserial0",
            "-device", f"virtserialport,chardev={AGENT_CHARDEV},name=org.qemu.guest_agent.0",
            "-device", "virtio-balloon-pci,id=balloon0,guest-stats-polling-interval=10",
        ],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not (run / METRICS_QMP_SOCKET).exists():
            assert time.monotonic() < deadline, "QEMU did not open its sockets"
            time.sleep(0.02)
        record.write(run, StartRecord(VM, (("image", 0.5),), (), ("disk0",), time.time()))
        yield process
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def sidecar(tmp_path: Path, qemu: subprocess.Popen[bytes]) -> Iterator[str]:
    """`kvm-manager metrics` serving on loopback; its URL."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "kvmmgr", "metrics", "--port", str(port)],
        env=_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + SCRAPE_TIMEOUT
        while True:
            try:
                urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "no server"
                time.sleep(0.05)
        yield url
        process.send_signal(signal.SIGTERM)  # a container stopped: a clean exit
        assert process.wait(10) == EXIT_OK
        assert process.stderr is not None and "SIGTERM, stopping" in process.stderr.read()
    finally:
        process.kill()
        process.wait()


def scrape(url: str) -> Series:
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as answer:
        return series(answer.read().decode())


def _value(got: Series, name: str, **labels: str) -> float:
    return got[(name, tuple(sorted({"vm": VM, **labels}.items())))]


def test_a_scrape_of_a_real_qemu(sidecar: str, qemu: subprocess.Popen[bytes]) -> None:
    first = scrape(sidecar)
    assert _value(first, "kvmmgr_qemu_up") == 1
    assert _value(first, "kvmmgr_vm_state", state="running") == 1
    assert _value(first, "kvmmgr_vm_memory_bytes") == 128 * MiB
    assert _value(first, "kvmmgr_vm_balloon_bytes") == 128 * MiB  # no driver: all of it
    assert _value(first, "kvmmgr_guest_agent_connected") == 0  # no guest, no agent
    assert 0 <= _value(first, "kvmmgr_vm_uptime_seconds") < 60
    assert _value(first, "kvmmgr_startup_step_seconds", step="image") == 0.5
    assert _value(first, "kvmmgr_disk_read_bytes_total", disk="disk0") > 0  # SeaBIOS looked
    # This test shares QEMU's PID namespace: its vCPU threads are seen (that they move with
    # the guest's work is the e2e suite's: here SeaBIOS soon halts, finding nothing to boot).
    vcpus = {dict(labels)["vcpu"] for name, labels in first if name == "kvmmgr_vcpu_seconds_total"}
    assert vcpus == {"0", "1"}
    assert _value(first, "kvmmgr_vcpu_seconds_total", vcpu="0") > 0  # the BIOS ran there
    with pytest.raises(urllib.error.HTTPError) as elsewhere:
        urllib.request.urlopen(sidecar.removesuffix("metrics"), timeout=SCRAPE_TIMEOUT)
    assert elsewhere.value.code == 404


def test_a_hung_qemu_does_not_hang_the_scrape(sidecar: str, qemu: subprocess.Popen[bytes]) -> None:
    """QEMU stopped (SIGSTOP): its sockets still accept, nothing answers. The scrape ends
    within the session's bound and says QEMU is not up, with what it read elsewhere."""
    os.kill(qemu.pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        got = scrape(sidecar)
        took = time.monotonic() - began
    finally:
        os.kill(qemu.pid, signal.SIGCONT)
    assert took < 5, took
    assert _value(got, "kvmmgr_qemu_up") == 0
    assert ("kvmmgr_vm_state", (("state", "running"), ("vm", VM))) not in got
    assert _value(got, "kvmmgr_startup_step_seconds", step="image") == 0.5
    assert _value(scrape(sidecar), "kvmmgr_qemu_up") == 1  # and back once it runs again


def test_a_scrape_under_way_does_not_make_the_probe_wait(
    tmp_path: Path, qemu: subprocess.Popen[bytes]
) -> None:
    """The sidecar has a monitor of its own: a session held open there (QEMU serves one
    client a monitor) leaves `kvm-manager status` on qmp.sock alone."""
    with Qmp(tmp_path / "run" / METRICS_QMP_SOCKET) as held:
        assert held.execute("query-status")["status"] == "running"
        began = time.monotonic()
        status = subprocess.run(
            [sys.executable, "-m", "kvmmgr", "status"], env=_env(tmp_path),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert status.stdout.startswith("running"), status.stdout + status.stderr
        assert time.monotonic() - began < 30


def test_the_collector_without_a_shared_pid_namespace(
    tmp_path: Path, qemu: subprocess.Popen[bytes]
) -> None:
    """As from a sidecar that cannot see QEMU's processes: another /proc (an empty one)."""
    collector = VmCollector(VM, tmp_path / "run", tmp_path / "image" / "base.qcow2",
                            proc=tmp_path / "elsewhere")  # fmt: skip
    taken = collector.snapshot()
    assert taken.qemu is not None and len(taken.qemu.vcpus) == 2
    assert taken.vcpu_seconds == {}


def test_bad_metrics_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kvmmgr", "metrics"], env=_env(tmp_path, METRICS_PORT="http"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == EXIT_CONFIG
    assert done.stderr == (
        "kvm-manager: configuration error: METRICS_PORT='http': expected a whole number from 1 "
        "to 65535\n"
    )


def test_a_download_under_way_shows_its_progress(tmp_path: Path) -> None:
    """A real `kvm-manager fetch`, stalled by the server after 1 MiB of 3: the part and its
    state are as transfer.py writes them."""
    image = tmp_path / "image"
    image.mkdir()
    body = os.urandom(3 * MiB)
    server = ImageServer()
    server.resources["/base.qcow2"] = Resource(body)
    server.faults["/base.qcow2"] = [Fault(stall_after=MiB)]
    collector = VmCollector(VM, tmp_path / "run", image / "base.qcow2")
    with server.running():
        env = _env(tmp_path, IMG_SOURCE=server.url("/base.qcow2"), IMG_RETRIES="0")
        fetch = subprocess.Popen(
            [sys.executable, "-m", "kvmmgr", "fetch"], env=env, stdin=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 30
            while (progress := collector.snapshot().fetch) is None or progress.received < MiB:
                assert fetch.poll() is None and time.monotonic() < deadline, progress
                time.sleep(0.05)
        finally:
            fetch.kill()
            fetch.wait()
    assert progress == host.FetchProgress("base.qcow2", MiB, 3 * MiB)
    (image / "base.qcow2").write_bytes(b"")  # once the base is there, no download is shown
    assert collector.snapshot().fetch is None
