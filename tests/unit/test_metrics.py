"""The metrics sidecar's pure parts: the startup record (and what a hostile one does), QEMU's
answers and the tap counters as samples, the vCPU threads seen or not seen in /proc, and its
settings. The real thing against a real QEMU: tests/integration/test_metrics.py, and with a
real guest in a pod: tests/e2e/test_metrics.py."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kvmmgr import documents
from kvmmgr.errors import EXIT_CONFIG, ConfigError
from kvmmgr.metrics import families, host, monitor, record, server
from kvmmgr.metrics.collector import VmCollector
from kvmmgr.metrics.families import Snapshot
from kvmmgr.metrics.monitor import QemuAnswers
from kvmmgr.metrics.record import Nic, StartRecord
from kvmmgr.startup import STEP_NAMES
from tests.hostile import DEEP_JSON, WIDE_JSON
from tests.unit.factories import BASE_ENV, plan

U64_NONE = (1 << 64) - 1  # a balloon figure the guest does not give
# What QEMU 7.2 answers (trimmed).
ANSWERS: dict[str, Any] = {
    "query-status": {"status": "running", "singlestep": False, "running": True},
    "query-memory-size-summary": {"base-memory": 268435456, "plugged-memory": 0},
    "query-cpus-fast": [
        {"thread-id": 2334, "cpu-index": 0, "qom-path": "/machine/unattached/device[0]"},
        {"thread-id": 2335, "cpu-index": 1, "qom-path": "/machine/unattached/device[2]"},
    ],
    "query-blockstats": [
        {
            "device": "disk0",
            "qdev": "/machine/peripheral-anon/device[1]/virtio-backend",
            "stats": {
                "rd_bytes": 4096,
                "wr_bytes": 1 << 20,
                "rd_operations": 2,
                "wr_operations": 16,
                "flush_operations": 3,
                "rd_total_time_ns": 500_000_000,
                "wr_total_time_ns": 2_000_000_000,
                "flush_total_time_ns": 1000,
                "account_invalid": True,
            },
        },
        {"device": "", "stats": {"rd_bytes": 1}},  # a -blockdev node without a drive
    ],
    "query-chardev": [
        {"label": "qmp", "filename": "disconnected", "frontend-open": True},
        {"label": "qga0", "filename": "disconnected", "frontend-open": False},
    ],
    "query-balloon": {"actual": 268435456},
    "guest-stats": {
        "stats": {
            "stat-total-memory": 250_000_000,
            "stat-available-memory": 200_000_000,
            "stat-free-memory": 150_000_000,
            "stat-swap-in": 0,
            "stat-htlb-pgalloc": U64_NONE,
            "stat-disk-caches": U64_NONE,
        },
        "last-update": 1_700_000_000,
    },
}
RECORD = StartRecord(
    vm="vm-0",
    steps=tuple((name, 0.25) for name in STEP_NAMES),
    nics=(Nic("net0", "kvmtap0", "tap"), Nic("net1", "kvmvtap1", "macvtap")),
    disks=("disk0", "cidata"),
    qemu_started=1_700_000_000.5,
)
TAP = {"rx_bytes": 10, "tx_bytes": 20, "rx_packets": 1, "tx_packets": 2, "rx_dropped": 3,
       "tx_dropped": 4}  # fmt: skip


Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def series(text: str) -> Series:
    """Every sample of a scrape, parsed by prometheus_client's own parser: (name, sorted
    labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def samples(snapshot: Snapshot) -> Series:
    """The snapshot as a scrape shows it, through the text format."""
    registry = CollectorRegistry(auto_describe=False)

    class Fixed:
        def collect(self) -> list[Any]:
            return families.build(snapshot)

    registry.register(Fixed())
    return series(generate_latest(registry).decode())


def snapshot(**changes: Any) -> Snapshot:
    built = Snapshot(
        vm="vm-0",
        now=1_700_000_100.5,
        qemu=monitor.parse(ANSWERS),
        record=RECORD,
        vcpu_seconds={0: 1.5, 1: 0.25},
        nics=((RECORD.nics[0], TAP), (RECORD.nics[1], TAP)),
        fetch=None,
    )
    return dataclasses.replace(built, **changes)


# --- the record ------------------------------------------------------------------------------


def test_the_record_of_a_plan_names_its_taps_and_drives(tmp_path: Path) -> None:
    made = record.from_plan(plan(), (("image", 1.5),))
    assert made == StartRecord("vm-0", (("image", 1.5),), (Nic("net0", "kvmtap0", "tap"),),
                               ("disk0", "cidata"))  # fmt: skip
    without_drive = plan({"CONFIG_DRIVE_FORMAT": "none", "VM_DATA_DISKS": "1G"})
    assert record.from_plan(without_drive, ()).disks == ("disk0", "disk1")
    record.write(tmp_path, made)
    assert (tmp_path / record.FILE_NAME).stat().st_mode & 0o777 == 0o600  # RUN_DIR's files
    assert record.read(tmp_path) == made
    record.started(tmp_path, 1_700_000_000.25)
    assert record.read(tmp_path) == dataclasses.replace(made, qemu_started=1_700_000_000.25)


def test_no_record_is_none_and_no_start_time_is_added_to_none(tmp_path: Path) -> None:
    assert record.read(tmp_path) is None
    record.started(tmp_path, 1.0)
    assert not (tmp_path / record.FILE_NAME).exists()


GOOD = json.loads(json.dumps(dataclasses.asdict(RECORD)))
HOSTILE_RECORDS: dict[str, bytes] = {
    "not JSON": b"{vm: 1",
    "a list": b"[]",
    "deep": DEEP_JSON,
    "wide": WIDE_JSON,
    "no vm": json.dumps({k: v for k, v in GOOD.items() if k != "vm"}).encode(),
    "vm twice": b'{"vm": "a", "vm": "b", "steps": [], "nics": [], "disks": [], '
    b'"qemu_started": null}',
    "an empty vm": json.dumps({**GOOD, "vm": ""}).encode(),
    "a vm with a newline": json.dumps({**GOOD, "vm": "a\nb"}).encode(),
    "seconds as text": json.dumps({**GOOD, "steps": [["image", "1"]]}).encode(),
    "seconds as true": json.dumps({**GOOD, "steps": [["image", True]]}).encode(),
    "negative seconds": json.dumps({**GOOD, "steps": [["image", -1]]}).encode(),
    "infinite seconds": b'{"vm": "vm-0", "steps": [["image", 1e999]], "nics": [], '
    b'"disks": [], "qemu_started": null}',
    "a step of three": json.dumps({**GOOD, "steps": [["image", 1, 2]]}).encode(),
    "a step with a space": json.dumps({**GOOD, "steps": [["im age", 1]]}).encode(),
    "many steps": json.dumps({**GOOD, "steps": [["s", 1]] * 65}).encode(),
    "an interface that is a path": json.dumps(
        {**GOOD, "nics": [{"name": "net0", "interface": "../../etc", "kind": "tap"}]}
    ).encode(),
    "an interface ..": json.dumps(
        {**GOOD, "nics": [{"name": "net0", "interface": "..", "kind": "tap"}]}
    ).encode(),
    "a long interface": json.dumps(
        {**GOOD, "nics": [{"name": "net0", "interface": "x" * 16, "kind": "tap"}]}
    ).encode(),
    "a veth": json.dumps(
        {**GOOD, "nics": [{"name": "net0", "interface": "eth0", "kind": "veth"}]}
    ).encode(),
    "a disk that is a number": json.dumps({**GOOD, "disks": [0]}).encode(),
    "start time as text": json.dumps({**GOOD, "qemu_started": "now"}).encode(),
    "not UTF-8": b'{"vm": "\xff"}',
}


@pytest.mark.parametrize("case", sorted(HOSTILE_RECORDS))
def test_a_record_that_does_not_hold_up_is_refused_in_one_line(tmp_path: Path, case: str) -> None:
    (tmp_path / record.FILE_NAME).write_bytes(HOSTILE_RECORDS[case])
    with pytest.raises(documents.Invalid) as caught:
        record.read(tmp_path)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


@pytest.mark.parametrize("kind", ["fifo", "directory", "large"])
def test_a_record_that_is_no_small_file_is_refused_unread(tmp_path: Path, kind: str) -> None:
    path = tmp_path / record.FILE_NAME
    if kind == "fifo":
        os.mkfifo(path)  # opening it would block
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b" " * (record.MAX_SIZE + 1))
    with pytest.raises(documents.Invalid):
        record.read(tmp_path)


def test_a_damaged_record_is_absent_and_said_once_and_the_scrape_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No QEMU at all here: QEMU is down, the rest is still said."""
    (tmp_path / record.FILE_NAME).write_bytes(HOSTILE_RECORDS["an interface that is a path"])
    collector = VmCollector("vm-0", tmp_path, tmp_path / "base.qcow2")
    with caplog.at_level(logging.WARNING, logger="kvmmgr"):
        first, second = collector.snapshot(), collector.snapshot()
    assert first.record is None and second.record is None and first.qemu is None
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "startup.json does not hold up, left out: a NIC is" in said[0]
    assert samples(first) == {("kvmmgr_qemu_up", (("vm", "vm-0"),)): 0.0}


def test_the_record_of_another_vm_is_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record.write(tmp_path, dataclasses.replace(RECORD, vm="vm-1"))
    with caplog.at_level(logging.WARNING, logger="kvmmgr"):
        assert VmCollector("vm-0", tmp_path, tmp_path / "base").snapshot().record is None
    assert "the record of VM 'vm-1', not of 'vm-0'" in caplog.text


# --- QEMU's answers as samples ---------------------------------------------------------------


def test_qemu_answers_are_read_for_what_they_say() -> None:
    answers = monitor.parse(ANSWERS)
    assert answers.state == "running"
    assert answers.memory_bytes == 256 << 20
    assert answers.vcpus == ((0, 2334), (1, 2335))
    assert list(answers.disks) == ["disk0"]  # the unnamed node is no drive
    assert answers.disks["disk0"]["written_bytes"] == 1 << 20
    assert answers.agent_connected is False
    assert answers.balloon_bytes == 256 << 20
    assert answers.guest_memory == {  # 2^64 - 1: the guest does not say
        "stat-total-memory": 250_000_000, "stat-available-memory": 200_000_000,
        "stat-free-memory": 150_000_000, "stat-swap-in": 0,
    }  # fmt: skip


@pytest.mark.parametrize(
    "changes",
    [
        {"query-status": {"status": 5}},
        {"query-status": {"status": "x" * 100}},
        {"query-memory-size-summary": {"base-memory": -1}},
        {"query-memory-size-summary": {"base-memory": True}},
        {"query-cpus-fast": [{"thread-id": "1", "cpu-index": 0}, "cpu", {"cpu-index": 1}]},
        {"query-blockstats": [{"device": "disk0", "stats": {"rd_bytes": 1.5}}]},
        {"query-blockstats": {"device": "disk0"}},
        {"query-chardev": [{"label": "qga0", "frontend-open": "yes"}]},
        {"query-balloon": None, "guest-stats": None},  # no balloon: QEMU refused the command
        {"guest-stats": {"stats": {"stat-free-memory": 1}, "last-update": 0}},  # no report yet
        {"guest-stats": {"stats": ["stat-free-memory"], "last-update": 5}},
    ],
)
def test_what_is_not_of_the_expected_shape_is_left_out(changes: dict[str, Any]) -> None:
    answers = monitor.parse({**ANSWERS, **changes})
    fields = {f.name: getattr(answers, f.name) for f in dataclasses.fields(answers)}
    expected = {
        f.name: getattr(monitor.parse(ANSWERS), f.name) for f in dataclasses.fields(answers)
    }
    changed = {name for name in fields if fields[name] != expected[name]}
    assert len(changed) >= 1
    assert all(fields[name] in (None, (), {}) for name in changed), fields


def test_every_series_as_a_scrape_shows_it() -> None:
    got = samples(snapshot())
    vm = (("vm", "vm-0"),)
    assert got[("kvmmgr_qemu_up", vm)] == 1
    assert got[("kvmmgr_vm_state", (("state", "running"), *vm))] == 1
    assert got[("kvmmgr_vm_state", (("state", "paused"), *vm))] == 0
    assert got[("kvmmgr_vm_start_time_seconds", vm)] == 1_700_000_000.5
    assert got[("kvmmgr_vm_uptime_seconds", vm)] == 100
    assert got[("kvmmgr_vm_memory_bytes", vm)] == 256 << 20
    assert got[("kvmmgr_vm_balloon_bytes", vm)] == 256 << 20
    assert got[("kvmmgr_guest_memory_available_bytes", vm)] == 200_000_000
    assert got[("kvmmgr_guest_swap_in_bytes_total", vm)] == 0
    assert ("kvmmgr_guest_memory_disk_caches_bytes", vm) not in got  # the guest did not say
    assert got[("kvmmgr_guest_agent_connected", vm)] == 0
    assert got[("kvmmgr_vcpu_seconds_total", (("vcpu", "0"), *vm))] == 1.5
    disk = (("disk", "disk0"), *vm)
    assert got[("kvmmgr_disk_written_bytes_total", disk)] == 1 << 20
    assert got[("kvmmgr_disk_write_operations_total", disk)] == 16
    assert got[("kvmmgr_disk_write_seconds_total", disk)] == 2.0
    assert got[("kvmmgr_disk_flush_seconds_total", disk)] == pytest.approx(1e-6)
    steps = {labels[0][1]: v for (name, labels), v in got.items() if "startup_step" in name}
    assert steps == dict.fromkeys(STEP_NAMES, 0.25)
    assert all(dict(labels)["vm"] == "vm-0" for _, labels in got)


def test_nic_counters_are_the_guests_view_of_a_tap_and_of_a_macvtap() -> None:
    """A tap's transmit is what the guest receives; a macvtap counts as the guest does."""
    got = samples(snapshot())
    tap = (("interface", "kvmtap0"), ("nic", "net0"), ("vm", "vm-0"))
    macvtap = (("interface", "kvmvtap1"), ("nic", "net1"), ("vm", "vm-0"))
    assert got[("kvmmgr_nic_receive_bytes_total", tap)] == TAP["tx_bytes"]
    assert got[("kvmmgr_nic_transmit_bytes_total", tap)] == TAP["rx_bytes"]
    assert got[("kvmmgr_nic_receive_packets_total", tap)] == TAP["tx_packets"]
    assert got[("kvmmgr_nic_receive_drops_total", tap)] == TAP["tx_dropped"]
    assert got[("kvmmgr_nic_transmit_drops_total", tap)] == TAP["rx_dropped"]
    assert got[("kvmmgr_nic_receive_bytes_total", macvtap)] == TAP["rx_bytes"]
    assert got[("kvmmgr_nic_transmit_packets_total", macvtap)] == TAP["tx_packets"]


def test_the_recorded_drives_only_and_all_of_them_without_a_record() -> None:
    more = {**ANSWERS, "query-blockstats": [
        {**ANSWERS["query-blockstats"][0], "device": name} for name in ("disk0", "pflash1")
    ]}  # fmt: skip
    names = {
        dict(labels)["disk"]
        for (name, labels) in samples(snapshot(qemu=monitor.parse(more)))
        if name.startswith("kvmmgr_disk_")
    }
    assert names == {"disk0"}
    unrecorded = samples(snapshot(qemu=monitor.parse(more), record=None))
    assert {dict(labels)["disk"] for (name, labels) in unrecorded if "disk_" in name} == {
        "disk0", "pflash1",
    }  # fmt: skip


def test_without_qemu_only_what_does_not_need_it() -> None:
    progress = host.FetchProgress("base.qcow2", 1 << 20, 3 << 20)
    got = samples(snapshot(qemu=None, vcpu_seconds={}, nics=(), fetch=progress))
    names = {name for name, _ in got}
    assert got[("kvmmgr_qemu_up", (("vm", "vm-0"),))] == 0
    assert names == {
        "kvmmgr_qemu_up", "kvmmgr_startup_step_seconds", "kvmmgr_image_fetch_received_bytes",
        "kvmmgr_image_fetch_size_bytes",
    }  # fmt: skip
    image = (("image", "base.qcow2"), ("vm", "vm-0"))
    assert got[("kvmmgr_image_fetch_received_bytes", image)] == 1 << 20
    assert got[("kvmmgr_image_fetch_size_bytes", image)] == 3 << 20


# --- /proc and /sys ---------------------------------------------------------------------------


def _thread(proc: Path, tid: int, comm: str, utime: int, stime: int) -> None:
    (proc / str(tid)).mkdir(parents=True)
    rest = ["S", "1", "1", "1", "0", "-1", "4194560", "0", "0", "0", "0", str(utime), str(stime)]
    (proc / str(tid) / "stat").write_text(f"{tid} ({comm}) {' '.join(rest)} 0 0 20 0 1\n")


def test_vcpu_times_come_from_the_threads_qemu_names(tmp_path: Path) -> None:
    _thread(tmp_path, 2334, "CPU 0/TCG", 150, 50)
    _thread(tmp_path, 2335, "CPU 1/KVM", 3, 1)
    ticks = host.TICKS
    assert host.vcpu_seconds(((0, 2334), (1, 2335)), tmp_path) == {
        0: 200 / ticks, 1: 4 / ticks,
    }  # fmt: skip
    assert host.vcpu_seconds(((0, 2334), (1, 2334)), tmp_path) == {0: 200 / ticks}  # shared


@pytest.mark.parametrize(
    ("threads", "why"),
    [
        ({}, "no {proc}/2334, the thread of vCPU 0"),  # another PID namespace: no such entry
        ({2334: "kvm-manager"}, "is 'kvm-manager', not the thread of vCPU 0"),  # someone else
        ({2334: "CPU 1/TCG"}, "is 'CPU 1/TCG', not the thread of vCPU 0"),
    ],
)
def test_threads_that_are_not_qemus_give_no_vcpu_time_and_say_why(
    tmp_path: Path, threads: dict[int, str], why: str
) -> None:
    for tid, comm in threads.items():
        _thread(tmp_path, tid, comm, 1, 1)
    with pytest.raises(host.NotVisible, match=why.format(proc=tmp_path)):
        host.vcpu_seconds(((0, 2334),), tmp_path)


def test_cannot_see_qemu_is_said_once_and_no_vcpu_series(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The collector's side of it: the scrape goes on without the vCPU series."""
    collector = VmCollector("vm-0", tmp_path, tmp_path / "base", proc=tmp_path / "proc")
    answers = QemuAnswers(state="running", vcpus=((0, 2334),))
    with caplog.at_level(logging.WARNING, logger="kvmmgr"):
        assert collector._vcpus(answers) == {} and collector._vcpus(answers) == {}
    assert len(caplog.records) == 1
    assert "shareProcessNamespace" in caplog.records[0].getMessage()


def test_a_stat_line_whose_name_holds_parentheses() -> None:
    line = b"7 (a) (b) c) S 1 1 1 0 -1 0 0 0 0 0 12 34 0 0 20 0 1\n"
    assert host.parse_stat(line) == ("a) (b) c", 46)
    assert host.parse_stat(b"7 (x) S 1")[1] is None


def test_tap_counters_from_sysfs(tmp_path: Path) -> None:
    statistics = tmp_path / "kvmtap0" / "statistics"
    statistics.mkdir(parents=True)
    for n, name in enumerate(host.NIC_COUNTERS):
        (statistics / name).write_text(f"{n * 100}\n")
    assert host.nic_counters("kvmtap0", tmp_path) == {
        name: n * 100 for n, name in enumerate(host.NIC_COUNTERS)
    }
    assert host.nic_counters("kvmtap1", tmp_path) is None  # gone
    (statistics / "rx_bytes").write_text("lots\n")
    assert host.nic_counters("kvmtap0", tmp_path) is None


# --- settings ---------------------------------------------------------------------------------


def test_the_port_is_the_options_then_metrics_port_then_9477() -> None:
    assert server.load(BASE_ENV, None).port == 9477
    assert server.load({**BASE_ENV, "METRICS_PORT": "9100"}, None).port == 9100
    assert server.load({**BASE_ENV, "METRICS_PORT": "9100"}, 9200).port == 9200
    loaded = server.load(BASE_ENV, None)
    assert (loaded.vm, loaded.run_dir) == ("vm-0", Path("/run/test-kvmmgr"))
    assert loaded.base == Path("/image/base.qcow2")  # as kvm-manager names it


@pytest.mark.parametrize(
    ("env", "port", "message"),
    [
        ({"METRICS_PORT": "70000"}, None, "METRICS_PORT='70000': expected a whole number"),
        ({"METRICS_PORT": "x"}, 9200, "METRICS_PORT='x': expected a whole number"),
        ({}, 0, "--port=0: expected a whole number from 1 to 65535"),
        ({"IMG_SOURCE": ""}, None, "IMG_SOURCE is not set"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(
    env: dict[str, str], port: int | None, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        server.load({**BASE_ENV, **env}, port)
    assert str(caught.value).startswith(message) and caught.value.exit_status == EXIT_CONFIG
