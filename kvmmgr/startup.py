"""The startup path, in order: observe and plan (read-only), then each step that acts."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from kvmmgr import (
    configdrive,
    dhcp,
    dhcpguard,
    firewall,
    image,
    network,
    pod,
    podmemory,
    preflight,
    qemu,
)
from kvmmgr.config import Settings
from kvmmgr.dhcpguard import GuardPlan
from kvmmgr.files import ensure_private_dir
from kvmmgr.nics import BridgeLink, NatLink, NicPlan
from kvmmgr.plan import Plan, make_plan

log = logging.getLogger("kvmmgr")

# Tests only: stop this process right after the named step, so that a test can SIGKILL it at
# that point and show that the next start converges (tests/e2e/test_restarts.py). A container's
# PID 1 cannot stop itself this way (the kernel ignores the signal): tests run it as a child.
PAUSE_AFTER = "KVMMGR_TEST_PAUSE_AFTER"


def prepare(
    settings: Settings, extra_qemu_args: Sequence[str] = (), *, exec_qemu: bool = True
) -> Plan:
    """Steps 1-3: observe the pod, read the inputs, plan. Changes nothing."""
    with timed("observe"):
        facts = pod.observe(settings, podmemory.load(settings.run_dir))
    with timed("plan"):
        inputs = (
            configdrive.read_inputs(settings.drive_inputs)
            if settings.config_drive_format is not None
            else configdrive.DriveInputs(None, None)
        )
        plan = make_plan(settings, facts, inputs, extra_qemu_args, exec_qemu=exec_qemu)
        image.check_available(plan.disks)
    return plan


def setup(
    settings: Settings, extra_qemu_args: Sequence[str] = (), *, exec_qemu: bool = True
) -> Plan:
    """Steps 1-8: everything but the exec. Every check comes before the first change."""
    plan = prepare(settings, extra_qemu_args, exec_qemu=exec_qemu)
    with timed("preflight"):
        preflight.check(plan)
    log_plan(plan)
    apply(plan, settings)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("memory: peak RSS %.1f MiB", peak_rss_mib())
    return plan


def peak_rss_mib(status: Path = Path("/proc/self/status")) -> float:
    """This process's high-water mark of resident memory (VmHWM); 0 when /proc says nothing."""
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


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


def apply(plan: Plan, settings: Settings) -> None:
    """Steps 4-8. Each is idempotent: a second run converges to the same state."""
    ensure_private_dir(settings.run_dir)
    _step("image", lambda: image.ensure_base(plan.disks, image.holder(plan.vm.hostname)))
    _step("disk", lambda: image.ensure_overlay(plan.disks))
    # What the VM is about to take is written down first: a later start cannot observe it.
    taken = [nic.pod for nic in plan.nics if nic.mode != "nat" and not nic.pod.remembered]
    podmemory.remember(settings.run_dir, taken)
    _step("network", lambda: _network(plan))
    _step("firewall", lambda: _firewall(plan))
    guard = plan.dhcp_guard
    if guard is not None:
        _step("dhcp-guard", lambda: _guard(guard))
    _step("dhcp", lambda: _dhcp(plan))
    _step("config-drive", lambda: _config_drive(plan))
    _step("vnc", lambda: _vnc(plan, settings))


def _step(name: str, action: Callable[[], str]) -> None:
    with timed(name):
        what = action()
    log.info("%s: %s", name, what)
    if os.environ.get(PAUSE_AFTER) == name:
        log.warning("paused after %s (%s is a test hook)", name, PAUSE_AFTER)
        os.kill(os.getpid(), signal.SIGSTOP)  # for the test to kill us right here


@contextmanager
def timed(name: str) -> Iterator[None]:
    """With DEBUG on, `timing: NAME 1.2 ms` (benchmarks/startup.py reads these lines)."""
    start = time.perf_counter()
    yield
    log.debug("timing: %s %.1f ms", name, (time.perf_counter() - start) * 1000)


def _network(plan: Plan) -> str:
    network.apply_network(plan.network)
    made = []
    for nic in plan.nics:
        link = nic.link
        if isinstance(link, NatLink):
            six = f" {link.gateway6}" if link.gateway6 else ""
            made.append(f"bridge {link.bridge} {link.gateway}{six} with tap {link.tap}")
        elif isinstance(link, BridgeLink):
            made.append(
                f"bridge {link.bridge} {link.server} with {nic.pod.name} and tap {link.tap}"
            )
        else:
            made.append(
                f"macvtap {link.macvtap} on {nic.pod.name}, {link.server_link} {link.server}"
            )
    sysctls = ", ".join(f"{s.names[-1].replace('/', '.')}={s.value}" for s in plan.network.sysctls)
    return "; ".join(made) + (f"; {sysctls}" if sysctls else "")


def _firewall(plan: Plan) -> str:
    firewall.apply_firewall(plan.firewall)
    rules = sum(len(chain.rules) for chain in plan.firewall.chains)
    forwarded = [
        f"{nic.link.pod_address.ip} -> {nic.guest.address.ip}"
        + (
            f", {nic.link.pod_address6.ip} -> {nic.guest.address6.ip}"
            if nic.guest.address6 and nic.link.pod_address6
            else ""
        )
        for nic in plan.nics
        if isinstance(nic.link, NatLink)
    ]
    kept = ", ".join(plan.firewall.kept) or "nothing"
    what = "; ".join(forwarded) if forwarded else "no NAT"
    return (
        f"{rules} rules in {len(plan.firewall.chains)} chains: {what} (every protocol and port; "
        f"kept by the container: {kept})"
    )


def _guard(guard: GuardPlan) -> str:
    dhcpguard.apply_guard(guard)
    names = ", ".join(iface.name for iface in guard.interfaces)
    return f"DHCP does not cross {names} (nftables table netdev kvmmgr)"


def _dhcp(plan: Plan) -> str:
    if plan.dhcp is None:
        return "off (NO_DHCP)"
    pid = dhcp.apply_dhcp(plan.dhcp)
    dns = ",".join(str(ns) for ns in plan.pod.dns.nameservers) or "none"
    leases = ", ".join(
        f"{nic.guest.mac} -> {nic.guest.address.ip} on {nic.dhcp_link}" for nic in plan.nics
    )
    return (
        f"dnsmasq pid {pid}: {leases}; dns {dns}, search {','.join(plan.pod.dns.search) or 'none'}"
    )


def _vnc(plan: Plan, settings: Settings) -> str:
    qemu.write_vnc_password(plan.qemu, settings.vnc_password)
    if not settings.vnc:
        return "off (NO_VNC)"
    secret = plan.qemu.vnc_password_file
    password = f"password in {secret} (0600)" if secret else "no password"
    return f"QEMU's display 0 on port 5900 of the pod's IPv4 addresses, {password}"


def _config_drive(plan: Plan) -> str:
    drive = plan.config_drive
    if drive is None:
        return "none (CONFIG_DRIVE_FORMAT=none)"
    written = configdrive.write_iso(drive)
    files = ", ".join(f.path for f in drive.files)
    return f"{drive.iso} ({drive.label}: {files}){'' if written else ', unchanged'}"
