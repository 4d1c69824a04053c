"""The startup path, in order: observe and plan (read-only), then each step that acts."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence

from kvmmgr import configdrive, dhcp, firewall, image, network, pod, preflight, qemu
from kvmmgr.config import Settings
from kvmmgr.files import ensure_private_dir
from kvmmgr.plan import BRIDGE, Plan, make_plan

log = logging.getLogger("kvmmgr")


def prepare(
    settings: Settings, extra_qemu_args: Sequence[str] = (), *, exec_qemu: bool = True
) -> Plan:
    """Steps 1-3: observe the pod, read the inputs, plan. Changes nothing."""
    facts = pod.observe(settings, BRIDGE)
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
    preflight.check(plan)
    log_plan(plan)
    apply(plan, settings)
    return plan


def log_plan(plan: Plan) -> None:
    iface = plan.pod.interface
    log.info(
        "pod: %s on %s (mtu %d, mac %s), gateway %s, %d nameserver(s), %d search domain(s)",
        plan.pod_ip,
        iface.name,
        iface.mtu,
        iface.mac,
        plan.pod.routes.gateway,
        len(plan.pod.dns.nameservers),
        len(plan.pod.dns.search),
    )
    vm = plan.vm
    log.info(
        "vm: %s, %s/30 via %s, mac %s, %d MiB, %d vCPU, %s",
        vm.hostname,
        vm.ip,
        vm.gateway,
        vm.mac,
        vm.memory_mib,
        vm.cpus,
        vm.accel,
    )
    for note in plan.notes:
        log.warning("%s", note)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("plan: %s", json.dumps(plan.as_data(), sort_keys=True))


def apply(plan: Plan, settings: Settings) -> None:
    """Steps 4-8. Each is idempotent: a second run converges to the same state."""
    ensure_private_dir(settings.run_dir)
    _step("image", lambda: image.ensure_base(plan.disks, image.holder(plan.vm.hostname)))
    _step("disk", lambda: image.ensure_overlay(plan.disks))
    _step("network", lambda: _network(plan))
    _step("firewall", lambda: _firewall(plan))
    _step("dhcp", lambda: _dhcp(plan))
    _step("config-drive", lambda: _config_drive(plan))
    qemu.write_vnc_password(plan.qemu, settings.vnc_password)


def _step(name: str, action: Callable[[], str]) -> None:
    log.info("%s: %s", name, action())


def _network(plan: Plan) -> str:
    network.apply_network(plan.network)
    net = plan.network
    return f"bridge {net.bridge} {net.gateway}, tap {net.tap}, mtu {net.mtu}, forwarding on"


def _firewall(plan: Plan) -> str:
    firewall.apply_firewall(plan.firewall)
    rules = sum(len(chain.rules) for chain in plan.firewall.chains)
    kept = ", ".join(plan.firewall.kept) or "nothing"
    return (
        f"{rules} rules in {len(plan.firewall.chains)} chains: {plan.pod_ip.ip} -> {plan.vm.ip} "
        f"(every protocol and port; kept by the container: {kept}), SNAT {plan.vm.ip} -> "
        f"{plan.pod_ip.ip}, 127.0.0.1 -> {plan.vm.ip}"
    )


def _dhcp(plan: Plan) -> str:
    if plan.dhcp is None:
        return "off (NO_DHCP)"
    pid = dhcp.apply_dhcp(plan.dhcp)
    dns = ",".join(str(ns) for ns in plan.pod.dns.nameservers) or "none"
    return (
        f"dnsmasq pid {pid} on {plan.network.bridge}: {plan.vm.mac} -> {plan.vm.ip}, "
        f"dns {dns}, search {','.join(plan.pod.dns.search) or 'none'}, mtu {plan.network.mtu}"
    )


def _config_drive(plan: Plan) -> str:
    drive = plan.config_drive
    if drive is None:
        return "none (CONFIG_DRIVE_FORMAT=none)"
    written = configdrive.write_iso(drive)
    files = ", ".join(f.path for f in drive.files)
    return f"{drive.iso} ({drive.label}: {files}){'' if written else ', unchanged'}"
