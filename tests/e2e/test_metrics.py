"""The metrics sidecar beside a real guest in its pod, as the chart runs it: `kvm-manager
metrics` in the pod's network namespace with the VM container's environment, as root without
a single capability (and no_new_privs), scraped over HTTP through the pod IP from the node.
The counters must move with what the guest really does: its disk, its network, its CPU.

One boot of the test guest serves the checks of the first part; the Debian guest (its QEMU
guest agent, and the balloon's figures from its driver) has a boot of its own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmmgr.errors import EXIT_OK
from kvmmgr.startup import STEP_NAMES
from podlab import debian
from podlab.lab import HOSTNAME, KVM_MANAGER, VM_GW, KvmManager, PodLab
from tests.e2e.conftest import boot, guest_sh
from tests.e2e.test_debian import Guest, _guest
from tests.privileges import status
from tests.unit.test_metrics import Series, series

PORT = "9477"
READY_TIMEOUT = 30.0
BLOB = 512 << 10  # bytes the node fetches from the guest
FILTERED = 8 << 10  # bytes the tap may send that the guest's NIC filters out


def start_sidecar(lab: PodLab) -> KvmManager:
    """As the chart's container: root, every capability dropped (the bounding set too, so the
    exec brings none back), no_new_privs; the pod's network; the VM container's environment."""
    argv = lab.net.pod.argv(
        "setpriv", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all",
        KVM_MANAGER, "metrics",
    )  # fmt: skip
    sidecar = KvmManager(argv, lab.env(METRICS_PORT=PORT), lab.workdir / "metrics")
    deadline = time.monotonic() + READY_TIMEOUT
    while lab.from_node.http(url(lab))["status"] != 200:
        assert sidecar.process.poll() is None, sidecar.log.text
        assert time.monotonic() < deadline, "the sidecar does not answer through the pod IP"
        time.sleep(0.2)
    return sidecar


def url(lab: PodLab) -> str:
    return f"http://{lab.net.pod_ip}:{PORT}/metrics"


def scrape(lab: PodLab) -> Series:
    answer = lab.from_node.http(url(lab))
    assert answer["status"] == 200, answer
    return series(answer["body"])


def value(got: Series, name: str, **labels: str) -> float:
    return got[(name, tuple(sorted({"vm": HOSTNAME, **labels}.items())))]


def guest_counter(lab: PodLab, name: str) -> int:
    return int(guest_sh(lab, f"cat /sys/class/net/eth0/statistics/{name}"))


@pytest.fixture(scope="module")
def pod(
    guest_image: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[PodLab, KvmManager, KvmManager]]:
    with PodLab(tmp_path_factory.mktemp("metrics"), guest_image) as lab:
        vm = boot(lab, METRICS_PORT=PORT)
        yield lab, vm, start_sidecar(lab)


DISK = {"disk": "disk0"}
NIC = {"nic": "net0", "interface": "kvmtap0"}


def test_the_sidecar_has_no_capability_and_still_reads_everything(
    pod: tuple[PodLab, KvmManager, KvmManager],
) -> None:
    lab, _, sidecar = pod
    fields = status(sidecar.pid)
    assert fields["Uid"].split()[0] == "0" and fields["NoNewPrivs"] == "1"
    assert all(int(fields[name], 16) == 0 for name in ("CapEff", "CapPrm", "CapBnd", "CapAmb"))
    got = scrape(lab)
    names = {name for name, _ in got}
    assert {
        "kvmmgr_qemu_up", "kvmmgr_vm_state", "kvmmgr_vm_uptime_seconds",
        "kvmmgr_vm_start_time_seconds", "kvmmgr_vm_memory_bytes", "kvmmgr_vcpu_seconds_total",
        "kvmmgr_disk_read_bytes_total", "kvmmgr_nic_receive_bytes_total",
        "kvmmgr_guest_agent_connected", "kvmmgr_startup_step_seconds",
    } <= names  # fmt: skip
    assert "kvmmgr_vm_balloon_bytes" not in names  # VM_BALLOON is off by default
    assert [line for line in sidecar.log.lines if "metrics: VM " not in line] == []  # no warning


def test_qemu_runs_since_its_exec_after_every_step(
    pod: tuple[PodLab, KvmManager, KvmManager],
) -> None:
    lab, _, _ = pod
    got = scrape(lab)
    assert value(got, "kvmmgr_qemu_up") == 1
    assert value(got, "kvmmgr_vm_state", state="running") == 1
    assert sum(v for (name, _), v in got.items() if name == "kvmmgr_vm_state") == 1
    uptime, started = (
        value(got, "kvmmgr_vm_uptime_seconds"),
        value(got, "kvmmgr_vm_start_time_seconds"),
    )
    assert 0 < uptime < 600 and abs(time.time() - uptime - started) < 5
    assert value(got, "kvmmgr_vm_memory_bytes") == 256 << 20
    assert value(got, "kvmmgr_guest_agent_connected") == 0  # the test guest runs no agent
    steps = {dict(labels)["step"]: v for (name, labels), v in got.items() if "step" in name}
    assert list(steps) == list(STEP_NAMES) and all(v >= 0 for v in steps.values())
    assert steps["image"] > 0  # it downloaded the base from the node


def test_disk_counters_move_with_the_guests_reads_and_writes(
    pod: tuple[PodLab, KvmManager, KvmManager],
) -> None:
    lab, _, _ = pod
    before = scrape(lab)
    # 1 MiB written through (conv=fsync, and the guest's disk cache is write-through), then
    # read back from the device once the guest's page cache is dropped.
    done = guest_sh(
        lab, "dd if=/dev/urandom of=/mnt/disk/metrics.bin bs=64k count=16 conv=fsync 2>/dev/null"
        " && echo 3 >/proc/sys/vm/drop_caches && wc -c </mnt/disk/metrics.bin"
        " && rm /mnt/disk/metrics.bin && sync",
    )  # fmt: skip
    assert done.split() == [str(1 << 20)]
    after = scrape(lab)

    def grew(name: str) -> float:
        return value(after, name, **DISK) - value(before, name, **DISK)

    assert grew("kvmmgr_disk_written_bytes_total") >= 1 << 20
    assert grew("kvmmgr_disk_read_bytes_total") >= 1 << 20
    assert grew("kvmmgr_disk_write_operations_total") >= 1  # the guest merges requests
    assert grew("kvmmgr_disk_read_operations_total") >= 1
    assert grew("kvmmgr_disk_write_seconds_total") > 0
    assert grew("kvmmgr_disk_read_seconds_total") > 0
    assert value(after, "kvmmgr_disk_read_bytes_total", disk="cidata") > 0  # the config drive


def test_nic_counters_move_with_real_traffic_and_are_the_guests_view(
    pod: tuple[PodLab, KvmManager, KvmManager],
) -> None:
    lab, _, _ = pod
    guest_sh(lab, f"yes x | head -c {BLOB} >/www/blob")
    before = scrape(lab)
    assert len(lab.from_node.http(f"http://{lab.net.pod_ip}/blob")["body"]) == BLOB
    assert lab.from_node.ping(lab.net.pod_ip, count=3)
    after = scrape(lab)

    def grew(name: str) -> float:
        return value(after, name, **NIC) - value(before, name, **NIC)

    assert grew("kvmmgr_nic_transmit_bytes_total") >= BLOB  # the guest sent the blob
    assert grew("kvmmgr_nic_transmit_packets_total") >= 3  # offloaded: 64 KiB segments count one
    assert grew("kvmmgr_nic_receive_packets_total") >= 3 + 1  # the pings, the request
    assert grew("kvmmgr_nic_receive_bytes_total") < grew("kvmmgr_nic_transmit_bytes_total")
    assert value(after, "kvmmgr_nic_receive_drops_total", **NIC) == 0
    # The guest's own counters lie between two scrapes: the tap's transmit is its receive.
    # But for a few frames: QEMU's virtio-net drops what the guest's receive filter refuses
    # (multicast it never joined, such as the bridge's IPv6 MLD reports), which the tap
    # counted as sent (seen once in CI: 797 bytes). Swapped directions would be a BLOB off.
    first = scrape(lab)
    received, sent = guest_counter(lab, "rx_bytes"), guest_counter(lab, "tx_bytes")
    last = scrape(lab)
    for name, guest in (("receive", received), ("transmit", sent)):
        metric = f"kvmmgr_nic_{name}_bytes_total"
        low, high = value(first, metric, **NIC), value(last, metric, **NIC)
        assert low - FILTERED <= guest <= high, (name, low, guest, high)


def test_vcpu_time_moves_with_the_guests_work(
    pod: tuple[PodLab, KvmManager, KvmManager],
) -> None:
    """The lab shares QEMU's PID namespace, as the chart's shareProcessNamespace does."""
    lab, _, _ = pod
    before = value(scrape(lab), "kvmmgr_vcpu_seconds_total", vcpu="0")
    guest_sh(lab, "i=0; while [ $i -lt 20000 ]; do i=$((i + 1)); done; echo $i")
    after = value(scrape(lab), "kvmmgr_vcpu_seconds_total", vcpu="0")
    assert after - before > 0.05


def test_the_metrics_port_is_the_pods_and_closed_to_the_vm(
    pod: tuple[PodLab, KvmManager, KvmManager],
) -> None:
    """Every scrape above came through the pod IP: METRICS_PORT is not forwarded to the VM.
    The guest cannot reach the sidecar from its side of the bridge, and the probes still
    answer (the sidecar has a monitor of its own)."""
    lab, vm, _ = pod
    assert "kept by the container: tcp/5900, tcp/9477)" in vm.log.text
    probe = guest_sh(lab, f"wget -q -T 3 -O - http://{VM_GW}:{PORT}/metrics | head -c 20; echo")
    assert "kvmmgr" not in probe and "#" not in probe
    status = lab.cli("status", METRICS_PORT=PORT)  # a probe has the container's environment
    assert status.returncode == EXIT_OK, status.stdout + status.stderr


# --- the Debian guest: its agent, and the balloon's figures from its driver ------------------


@pytest.fixture(scope="module")
def debian_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Guest, KvmManager]]:
    tmp = tmp_path_factory.mktemp("metrics-debian")
    with PodLab(tmp, debian.build()) as lab:
        guest = _guest(lab, tmp, VM_BALLOON="true", METRICS_PORT=PORT)
        yield guest, start_sidecar(lab)


def test_the_agent_and_the_balloon_of_a_real_guest(
    debian_pod: tuple[Guest, KvmManager],
) -> None:
    guest, _ = debian_pod
    lab = guest.lab
    deadline = time.monotonic() + 120  # the agent starts late; the balloon reports every 10 s
    while True:
        got = scrape(lab)
        names = {name for name, _ in got}
        agent = value(got, "kvmmgr_guest_agent_connected")
        if agent == 1 and "kvmmgr_guest_memory_available_bytes" in names:
            break
        assert time.monotonic() < deadline, (agent, sorted(names))
        time.sleep(2)
    memory = 512 << 20  # debian.MEMORY_MIB
    assert value(got, "kvmmgr_vm_memory_bytes") == memory
    assert value(got, "kvmmgr_vm_balloon_bytes") == memory  # nobody inflated it
    total = value(got, "kvmmgr_guest_memory_total_bytes")
    assert memory // 2 < total <= memory  # what the guest's kernel has, less its own
    assert 0 < value(got, "kvmmgr_guest_memory_available_bytes") <= total
    assert 0 < value(got, "kvmmgr_guest_memory_free_bytes") <= total
    in_guest = int(guest.sh("awk '/^MemTotal:/ {print $2 * 1024}' /proc/meminfo"))
    assert total == in_guest
