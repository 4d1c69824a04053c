"""The startup path, in order: observe and plan (read-only), then STEPS, each of which acts
and says what it did. Tests and benchmarks import STEPS; each step's result renders its log
line."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kvmmgr import pod, preflight
from kvmmgr.config import Settings
from kvmmgr.facts import PodFacts
from kvmmgr.guest import inputs, iso
from kvmmgr.guest.drive import DriveInputs
from kvmmgr.image import cache, overlay, usage
from kvmmgr.image.appliance import BaseFacts
from kvmmgr.image.disks import build_disks, claimed_bases
from kvmmgr.metrics import record
from kvmmgr.net import dnsmasq, iptables, links, nftables, podmemory
from kvmmgr.net.model import PodInterface
from kvmmgr.net.nics import NatLink, NicPlan
from kvmmgr.plan import Plan, make_plan
from kvmmgr.system import access
from kvmmgr.system.files import ensure_private_dir
from kvmmgr.vm import launch
from kvmmgr.webconsole import daemon

log = logging.getLogger("kvmmgr")

# Tests only: stop this process right after the named step, so that a test can SIGKILL it at
# that point and show that the next start converges (tests/e2e/test_restarts.py). A container's
# PID 1 cannot stop itself this way (the kernel ignores the signal): tests run it as a child.
PAUSE_AFTER = "KVMMGR_TEST_PAUSE_AFTER"


@dataclass(frozen=True)
class Context:
    """What the steps need besides the plan, and what the plan was made from."""

    settings: Settings
    detached: bool  # this process does not become QEMU afterwards (`setup`)
    inputs: DriveInputs
    extra_qemu_args: Sequence[str]


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Plan, Context], object]  # returns what it did; str() is the log line
    replans: bool = False  # what it did may change the plan (the base image is known)


def prepare(settings: Settings, extra_qemu_args: Sequence[str] = ()) -> Plan:
    """Observe the pod, read the inputs, plan. Changes nothing."""
    return _prepare(settings, extra_qemu_args)[0]


def replan(settings: Settings) -> Plan:
    """The plan of the VM that runs, made again from the same environment as a restart would
    make it (the interfaces it took come from RUN_DIR's memory of them), for `status` to
    check its parts against. Changes nothing. The drive's inputs are not read: no part
    depends on them, and a ConfigMap edited since the start must not fail a probe."""
    facts, base = _observe(settings)
    return make_plan(settings, facts, DriveInputs(None, None), (), base)


def _observe(settings: Settings) -> tuple[PodFacts, BaseFacts]:
    with timed("observe"):
        facts = pod.observe(settings, podmemory.load(settings.run_dir))
        image, name = settings.image, facts.hostname
        made_on = overlay.made_on(build_disks(image, name), image.image_dir)
        disks = build_disks(image, name, made_on=made_on)
        return facts, dataclasses.replace(cache.base_facts(disks), made_on=made_on)


def _prepare(settings: Settings, extra_qemu_args: Sequence[str]) -> tuple[Plan, Context]:
    facts, base = _observe(settings)
    with timed("plan"):
        given = settings.guest
        drive_inputs = (
            inputs.read_inputs(given.inputs) if given.drive_format else DriveInputs(None, None)
        )
        plan = make_plan(settings, facts, drive_inputs, extra_qemu_args, base)
        cache.check_available(plan.disks)
    return plan, Context(settings, False, drive_inputs, extra_qemu_args)


def setup(
    settings: Settings, extra_qemu_args: Sequence[str] = (), *, detached: bool = False
) -> Plan:
    """Everything but the exec. Every check comes before the first change. The plan QEMU
    runs: the first, or, when the base turned out to be an appliance, the one made again
    with what its OVF declares."""
    plan, context = _prepare(settings, extra_qemu_args)
    context = dataclasses.replace(context, detached=detached)
    with timed("preflight"):
        preflight.check(plan, volumes(settings))
    log_plan(plan)
    plan = apply(plan, context)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("memory: peak RSS %.1f MiB", peak_rss_mib())
    return plan


def apply(plan: Plan, context: Context) -> Plan:
    """The steps, in order. Each is idempotent: a second run converges to the same state.
    Each step's time goes to the startup record as it ends (RUN_DIR/startup.json)."""
    run_dir = context.settings.run_dir
    ensure_private_dir(run_dir)
    steps: tuple[tuple[str, float], ...] = ()
    record.forget(run_dir)  # the last start's; this one's is written as its steps end
    for step in STEPS:
        with timed(step.name) as elapsed:
            done = step.run(plan, context)
        log.info("%s: %s", step.name, done)
        if step.replans:
            plan = _with_the_base(plan, context)
        steps += ((step.name, elapsed.seconds),)
        record.write(run_dir, record.from_plan(plan, steps))
        if os.environ.get(PAUSE_AFTER) == step.name:
            log.warning("paused after %s (%s is a test hook)", step.name, PAUSE_AFTER)
            os.kill(os.getpid(), signal.SIGSTOP)  # for the test to kill us right here
    return plan


def _with_the_base(plan: Plan, context: Context) -> Plan:
    """A base fetched just now may be an appliance whose OVF says more (its hardware, its
    data disks): the plan is made again with it, and checked again."""
    base = dataclasses.replace(cache.base_facts(plan.disks), made_on=plan.base.made_on)
    if base == plan.base:
        return plan
    settings, before = context.settings, set(plan.notes)
    again = make_plan(settings, plan.pod, context.inputs, context.extra_qemu_args, base)
    preflight.check(again, volumes(settings))
    for note in again.notes:
        if note not in before:
            log.warning("%s", note)
    return again


# --- what each step did, rendered as its log line --------------------------------------------


@dataclass(frozen=True)
class Links:
    made: tuple[str, ...]  # each NIC's link, described
    sysctls: tuple[str, ...]

    def __str__(self) -> str:
        return "; ".join((*self.made, ", ".join(self.sysctls)) if self.sysctls else self.made)


@dataclass(frozen=True)
class Rules:
    rules: int
    chains: int
    forwarded: tuple[str, ...]  # pod address -> VM address, per NAT NIC
    kept: tuple[str, ...]

    def __str__(self) -> str:
        what = "; ".join(self.forwarded) or "no NAT"
        kept = ", ".join(self.kept) or "nothing"
        return (
            f"{self.rules} rules in {self.chains} chains: {what} (every protocol and port; "
            f"kept by the container: {kept})"
        )


@dataclass(frozen=True)
class Guard:
    interfaces: tuple[str, ...]  # empty: no NIC on the pod's own link, nothing to guard

    def __str__(self) -> str:
        if not self.interfaces:
            return "off (no NIC shares the pod's link, or NO_DHCP)"
        names = ", ".join(self.interfaces)
        return f"DHCP does not cross {names} (nftables table netdev kvmmgr)"


@dataclass(frozen=True)
class Dhcp:
    pid: int | None  # None: NO_DHCP
    leases: tuple[str, ...]
    dns: tuple[str, ...]
    search: tuple[str, ...]

    def __str__(self) -> str:
        if self.pid is None:
            return "off (NO_DHCP)"
        dns, search = ",".join(self.dns) or "none", ",".join(self.search) or "none"
        return f"dnsmasq pid {self.pid}: {', '.join(self.leases)}; dns {dns}, search {search}"


@dataclass(frozen=True)
class Drive:
    iso: Path | None  # None: CONFIG_DRIVE_FORMAT=none
    label: str = ""
    files: tuple[str, ...] = ()
    written: bool = False

    def __str__(self) -> str:
        if self.iso is None:
            return "none (CONFIG_DRIVE_FORMAT=none)"
        unchanged = "" if self.written else ", unchanged"
        return f"{self.iso} ({self.label}: {', '.join(self.files)}){unchanged}"


@dataclass(frozen=True)
class Vnc:
    enabled: bool
    password_file: Path | None

    def __str__(self) -> str:
        if not self.enabled:
            return "off (NO_VNC)"
        secret = self.password_file
        password = f"password in {secret} (0600)" if secret else "no password"
        return f"QEMU's display 0 on port 5900 of the pod's IPv4 addresses, {password}"


@dataclass(frozen=True)
class WebConsole:
    port: int | None  # None: WEB_CONSOLE_PORT unset
    pid: int | None = None

    def __str__(self) -> str:
        if self.port is None:
            return "off (WEB_CONSOLE_PORT unset)"
        return (
            f"noVNC on port {self.port} of the pod's IPv4 addresses (pid {self.pid}), the "
            "display's WebSocket at /websockify, behind VNC's password"
        )


# --- the steps -------------------------------------------------------------------------------


def _image(plan: Plan, context: Context) -> cache.BaseImage:
    disks, name = plan.disks, plan.vm.hostname
    claim = usage.Usage(name, str(disks.overlay), claimed_bases(disks), time.time())
    return cache.ensure_base(disks, cache.holder(name), claim)


def _disk(plan: Plan, context: Context) -> str:
    disk = overlay.ensure_overlay(plan.disks)
    if disk.rebased_from is not None:  # the old base is no longer the disk's: its claim goes
        claim = usage.Usage(plan.vm.hostname, str(disk.path), (disk.base.name,), time.time())
        usage.write(disk.base.parent, claim)
    done = [str(disk)]
    done += [f"data disk {said}" for said in overlay.ensure_data_disks(plan.disks)]
    done += filter(None, [launch.ensure_efi_vars(plan.qemu.firmware)])
    return "; ".join(done)


def _network(plan: Plan, context: Context) -> Links:
    # What the VM is about to take is written down first: a later start cannot observe it.
    podmemory.remember(context.settings.run_dir, _taken(plan.nics))
    links.apply_network(plan.nics, plan.sysctls)
    sysctls = tuple(f"{s.names[-1].replace('/', '.')}={s.value}" for s in plan.sysctls)
    return Links(tuple(nic.link.describe(nic) for nic in plan.nics), sysctls)


def _taken(nics: Sequence[NicPlan]) -> list[PodInterface]:
    return [nic.pod for nic in nics if nic.link.takes_pod_identity and not nic.pod.remembered]


def _firewall(plan: Plan, context: Context) -> Rules:
    iptables.apply_firewall(plan.firewall)
    forwarded = []
    for nic in plan.nics:
        if isinstance(nic.link, NatLink):
            pod6, vm6 = nic.link.pod_address6, nic.guest.address6
            also = f", {pod6.ip} -> {vm6.ip}" if pod6 and vm6 else ""
            forwarded.append(f"{nic.link.pod_address.ip} -> {nic.guest.address.ip}{also}")
    chains = plan.firewall.chains
    return Rules(
        sum(len(c.rules) for c in chains), len(chains), tuple(forwarded), plan.firewall.kept
    )


def _dhcp_guard(plan: Plan, context: Context) -> Guard:
    guard = plan.dhcp_guard
    if guard is None:
        return Guard(())
    nftables.apply_guard(guard)
    return Guard(tuple(iface.name for iface in guard.interfaces))


def _dhcp(plan: Plan, context: Context) -> Dhcp:
    dns = tuple(str(ns) for ns in plan.pod.dns.nameservers)
    if plan.dhcp is None:
        return Dhcp(None, (), dns, ())
    pid = dnsmasq.apply_dhcp(plan.dhcp, detached=context.detached)
    leases = tuple(
        f"{nic.guest.mac} -> {nic.guest.address.ip} on {nic.dhcp_link}" for nic in plan.nics
    )
    return Dhcp(pid, leases, dns, plan.pod.dns.search)


def _config_drive(plan: Plan, context: Context) -> Drive:
    drive = plan.config_drive
    if drive is None:
        return Drive(None)
    written = iso.write_iso(drive)
    return Drive(drive.iso, drive.label, tuple(f.path for f in drive.files), written)


def _vnc(plan: Plan, context: Context) -> Vnc:
    launch.write_vnc_password(plan.qemu, context.settings.vm.vnc_password)
    return Vnc(context.settings.vm.vnc, plan.qemu.vnc_password_file)


def _web_console(plan: Plan, context: Context) -> WebConsole:
    console = plan.web_console
    if console is None:
        return WebConsole(None)
    return WebConsole(console.port, daemon.apply_web_console(console, detached=context.detached))


def _qemu_access(plan: Plan, context: Context) -> access.Granted:
    qemu = plan.qemu
    return access.grant(qemu.files, qemu.user, qemu.groups, volumes(context.settings))


def volumes(settings: Settings) -> tuple[Path, ...]:
    """kvm-manager's own directories: it may open them to QEMU's group."""
    image = settings.image
    return (settings.run_dir, image.vm_dir, image.image_dir)


STEPS: tuple[Step, ...] = (
    Step("image", _image, replans=True),
    Step("disk", _disk),
    Step("network", _network),
    Step("firewall", _firewall),
    Step("dhcp-guard", _dhcp_guard),
    Step("dhcp", _dhcp),
    Step("config-drive", _config_drive),
    Step("vnc", _vnc),
    Step("web-console", _web_console),
    Step("qemu-access", _qemu_access),
)
STEP_NAMES = tuple(step.name for step in STEPS)


# --- logging ---------------------------------------------------------------------------------


def log_plan(plan: Plan) -> None:
    dns = plan.pod.dns
    log.info(
        "pod: %s, %d nameserver(s), %d search domain(s)",
        ", ".join(_describe_interface(nic) for nic in plan.nics),
        len(dns.nameservers) + len(dns.nameservers6),
        len(dns.search),
    )
    vm = plan.vm
    log.info(
        "vm: %s, %d MiB, %d vCPU, %s; %s",
        vm.hostname,
        vm.memory_mib,
        vm.cpus,
        vm.accel,
        "; ".join(_describe_nic(nic) for nic in plan.nics),
    )
    for note in plan.notes:
        log.warning("%s", note)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("plan: %s", json.dumps(plan.as_data(), sort_keys=True))


def _describe_interface(nic: NicPlan) -> str:
    iface = nic.pod
    addresses = ",".join(str(a) for a in (*iface.addresses, *iface.addresses6))
    remembered = ", as it was before the VM took it" if iface.remembered else ""
    return (
        f"{iface.name} {addresses} (mtu {iface.mtu}, mac {iface.mac}, gateway "
        f"{iface.gateway or 'none'}{remembered})"
    )


def _describe_nic(nic: NicPlan) -> str:
    guest = nic.guest
    six = f" {guest.address6}" if guest.address6 else ""
    via = f" via {guest.router}" if guest.router else ""
    return (
        f"nic{nic.index} {nic.mode} on {nic.pod.name}: {guest.address}{six}{via}, mac {guest.mac}"
    )


@dataclass
class Elapsed:
    seconds: float = 0.0  # set when the timed block ends


@contextmanager
def timed(name: str) -> Iterator[Elapsed]:
    """With DEBUG on, `timing: NAME 1.2 ms` (benchmarks/startup.py reads these lines)."""
    elapsed = Elapsed()
    start = time.perf_counter()
    yield elapsed
    elapsed.seconds = time.perf_counter() - start
    log.debug("timing: %s %.1f ms", name, elapsed.seconds * 1000)


def peak_rss_mib(status: Path = Path("/proc/self/status")) -> float:
    """This process's high-water mark of resident memory (VmHWM); 0 when /proc says nothing."""
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0
