"""One scrape's readings as Prometheus metric families. Pure.

Names follow Prometheus' conventions: the `kvmmgr_` prefix, base units (bytes, seconds),
`_total` on counters (prometheus_client adds it), and every series labelled with the VM's name
(`vm`). What could not be read is left out, never reported as 0, but for `kvmmgr_qemu_up`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from kvmmgr.metrics.host import FetchProgress
from kvmmgr.metrics.monitor import QemuAnswers
from kvmmgr.metrics.record import Nic, StartRecord

# QEMU's run states (its QAPI RunState): each gets a series, 1 for the current one.
RUN_STATES = (
    "debug", "inmigrate", "internal-error", "io-error", "paused", "postmigrate", "prelaunch",
    "finish-migrate", "restore-vm", "running", "save-vm", "shutdown", "suspended", "watchdog",
    "guest-panicked", "colo",
)  # fmt: skip
NS = 1e-9
# query-blockstats' figures: (name, help, figure, scale), each a counter by disk.
DISK_COUNTERS = (
    ("kvmmgr_disk_read_bytes", "Bytes the guest read from the disk.", "read_bytes", 1),
    ("kvmmgr_disk_written_bytes", "Bytes the guest wrote to the disk.", "written_bytes", 1),
    ("kvmmgr_disk_read_operations", "Read requests completed.", "reads", 1),
    ("kvmmgr_disk_write_operations", "Write requests completed.", "writes", 1),
    ("kvmmgr_disk_flush_operations", "Flush requests completed.", "flushes", 1),
    ("kvmmgr_disk_read_seconds", "Time spent on read requests.", "read_ns", NS),
    ("kvmmgr_disk_write_seconds", "Time spent on write requests.", "write_ns", NS),
    ("kvmmgr_disk_flush_seconds", "Time spent on flush requests.", "flush_ns", NS),
)  # fmt: skip
# A tap's counters are the host's side of the link: what it transmits, the guest receives.
# A macvtap's count the guest's side already (the guest's frames leave through it).
GUEST_SIDE = {
    "tap": {"receive": "tx", "transmit": "rx"},
    "macvtap": {"receive": "rx", "transmit": "tx"},
}
NIC_COUNTERS = (
    ("bytes", "bytes", "Bytes the guest {verb} on this NIC."),
    ("packets", "packets", "Packets the guest {verb} on this NIC."),
    ("drops", "dropped", "Packets dropped on their way {way} the guest on this NIC."),
)
# The balloon's figures of the guest's memory (QEMU's stat-* names), gauges or counters.
GUEST_MEMORY = (
    ("stat-total-memory", "kvmmgr_guest_memory_total_bytes", "Memory the guest can use."),
    ("stat-available-memory", "kvmmgr_guest_memory_available_bytes",
     "Memory the guest can still give to programs without swapping (its MemAvailable)."),
    ("stat-free-memory", "kvmmgr_guest_memory_free_bytes", "Memory the guest leaves unused."),
    ("stat-disk-caches", "kvmmgr_guest_memory_disk_caches_bytes",
     "Memory the guest uses for its disk caches."),
)  # fmt: skip
GUEST_COUNTERS = (
    ("stat-swap-in", "kvmmgr_guest_swap_in_bytes", "Bytes the guest swapped in."),
    ("stat-swap-out", "kvmmgr_guest_swap_out_bytes", "Bytes the guest swapped out."),
    ("stat-major-faults", "kvmmgr_guest_major_page_faults", "The guest's major page faults."),
    ("stat-minor-faults", "kvmmgr_guest_minor_page_faults", "The guest's minor page faults."),
)


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape read."""

    vm: str
    now: float  # unix time of the scrape
    qemu: QemuAnswers | None  # None: QEMU did not answer on its metrics monitor
    record: StartRecord | None  # None: none, or one that did not hold up
    vcpu_seconds: Mapping[int, float]  # empty: QEMU's threads cannot be seen from here
    nics: tuple[tuple[Nic, Mapping[str, int]], ...]  # each NIC and its link's counters
    fetch: FetchProgress | None  # a download of the base under way


def build(snapshot: Snapshot) -> list[Metric]:
    return [
        *_qemu(snapshot),
        *_vcpus(snapshot),
        *_disks(snapshot),
        *_nics(snapshot),
        *_startup(snapshot),
        *_fetch(snapshot),
    ]


def _gauge(name: str, help: str, vm: str, value: float, **labels: str) -> GaugeMetricFamily:
    """One series: `vm` and `labels`."""
    family = GaugeMetricFamily(name, help, labels=["vm", *labels])
    family.add_metric([vm, *labels.values()], value)
    return family


def _qemu(snapshot: Snapshot) -> Iterator[Metric]:
    vm, qemu = snapshot.vm, snapshot.qemu
    yield _gauge(
        "kvmmgr_qemu_up", "1 when QEMU answered on its monitor during this scrape.", vm,
        int(qemu is not None),
    )  # fmt: skip
    if qemu is None:
        return
    if qemu.state is not None:
        state = GaugeMetricFamily(
            "kvmmgr_vm_state", "QEMU's run state: 1 for the current one.", labels=["vm", "state"]
        )
        for name in dict.fromkeys((*RUN_STATES, qemu.state)):
            state.add_metric([vm, name], int(name == qemu.state))
        yield state
    started = snapshot.record.qemu_started if snapshot.record else None
    if started is not None:
        yield _gauge("kvmmgr_vm_start_time_seconds", "Unix time QEMU started.", vm, started)
        yield _gauge(
            "kvmmgr_vm_uptime_seconds", "Seconds since QEMU started.", vm,
            max(snapshot.now - started, 0.0),
        )  # fmt: skip
    if qemu.memory_bytes is not None:
        yield _gauge("kvmmgr_vm_memory_bytes", "The VM's memory size.", vm, qemu.memory_bytes)
    if qemu.balloon_bytes is not None:
        yield _gauge(
            "kvmmgr_vm_balloon_bytes", "Memory the balloon leaves the guest (VM_BALLOON).", vm,
            qemu.balloon_bytes,
        )  # fmt: skip
    yield from _guest_memory(vm, qemu.guest_memory)
    if qemu.agent_connected is not None:
        yield _gauge(
            "kvmmgr_guest_agent_connected",
            "1 when a program in the guest (its QEMU guest agent) holds the agent's channel.",
            vm,
            int(qemu.agent_connected),
        )


def _guest_memory(vm: str, figures: Mapping[str, int]) -> Iterator[Metric]:
    for stat, name, help in GUEST_MEMORY:
        if stat in figures:
            yield _gauge(
                name, f"{help} As the guest reports it through the balloon.", vm, figures[stat]
            )
    for stat, name, help in GUEST_COUNTERS:
        if stat in figures:
            counter = CounterMetricFamily(name, f"{help} As the guest reports it.", labels=["vm"])
            counter.add_metric([vm], figures[stat])
            yield counter


def _vcpus(snapshot: Snapshot) -> Iterator[Metric]:
    if not snapshot.vcpu_seconds:
        return
    family = CounterMetricFamily(
        "kvmmgr_vcpu_seconds", "CPU time of the vCPU's thread in QEMU, user and system.",
        labels=["vm", "vcpu"],
    )  # fmt: skip
    for index, seconds in sorted(snapshot.vcpu_seconds.items()):
        family.add_metric([snapshot.vm, str(index)], seconds)
    yield family


def _disks(snapshot: Snapshot) -> Iterator[Metric]:
    """The VM's disks (and config drive) as the record names them; without a record, every
    drive QEMU names."""
    if snapshot.qemu is None:
        return
    found = snapshot.qemu.disks
    names = [d for d in snapshot.record.disks if d in found] if snapshot.record else list(found)
    if not names:
        return
    for name, help, figure, scale in DISK_COUNTERS:
        family = CounterMetricFamily(name, help, labels=["vm", "disk"])
        for disk in names:
            family.add_metric([snapshot.vm, disk], found[disk][figure] * scale)
        yield family


def _nics(snapshot: Snapshot) -> Iterator[Metric]:
    if not snapshot.nics:
        return
    for verb, direction, way in (("received", "receive", "to"), ("sent", "transmit", "from")):
        for suffix, counter, help in NIC_COUNTERS:
            family = CounterMetricFamily(
                f"kvmmgr_nic_{direction}_{suffix}",
                help.format(verb=verb, way=way)
                + " Counted on its tap or macvtap, from the guest's side.",
                labels=["vm", "nic", "interface"],
            )
            for nic, counters in snapshot.nics:
                side = GUEST_SIDE[nic.kind][direction]
                family.add_metric(
                    [snapshot.vm, nic.name, nic.interface], counters[f"{side}_{counter}"]
                )
            yield family


def _startup(snapshot: Snapshot) -> Iterator[Metric]:
    if snapshot.record is None or not snapshot.record.steps:
        return
    family = GaugeMetricFamily(
        "kvmmgr_startup_step_seconds", "How long each step of the last start took, once done.",
        labels=["vm", "step"],
    )  # fmt: skip
    for step, seconds in snapshot.record.steps:
        family.add_metric([snapshot.vm, step], seconds)
    yield family


def _fetch(snapshot: Snapshot) -> Iterator[Metric]:
    fetch = snapshot.fetch
    if fetch is None:
        return
    yield _gauge(
        "kvmmgr_image_fetch_received_bytes", "Bytes of the base image received so far, while "
        "it is downloaded (by this pod or another sharing the cache).", snapshot.vm,
        fetch.received, image=fetch.image,
    )  # fmt: skip
    if fetch.size is not None:
        yield _gauge(
            "kvmmgr_image_fetch_size_bytes", "Bytes of the base image being downloaded, as "
            "the server announced them.", snapshot.vm, fetch.size, image=fetch.image,
        )  # fmt: skip
