"""The `kvm-manager` command: argument parsing, subcommands, exit statuses."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kvmmgr import __version__
from kvmmgr.errors import (
    EXIT_DEGRADED,
    EXIT_NOT_READY,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    ConfigError,
    KvmManagerError,
    PreconditionError,
)

if TYPE_CHECKING:
    from kvmmgr.config import Settings
    from kvmmgr.health.check import Health
    from kvmmgr.plan import Plan

log = logging.getLogger("kvmmgr")

COMMANDS = (
    "run", "plan", "setup", "fetch", "status", "shutdown", "metrics", "cache", "rebase", "resize",
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    args, extra = _split_extra(args)
    if not args or args[0] not in (*COMMANDS, "-h", "--help", "--version"):
        args.insert(0, "run")  # `kvm-manager` alone, or `kvm-manager -- QEMU_ARGS`
    options = _parser().parse_args(args)
    if extra and options.command not in {"run", "setup", "plan"}:
        _parser().error(f"{options.command} takes no QEMU arguments after --")
    _setup_logging(os.environ.get("DEBUG", "").strip().lower() in {"1", "true", "yes"})
    try:
        status: int = options.handler(options, extra)
    except ConfigError as exc:
        print(f"kvm-manager: configuration error: {exc}", file=sys.stderr)
        return exc.exit_status
    except PreconditionError as exc:
        print(f"kvm-manager: the pod is not ready for the VM: {exc}", file=sys.stderr)
        return exc.exit_status
    except KvmManagerError as exc:
        print(f"kvm-manager: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130
    return status


def _split_extra(args: list[str]) -> tuple[list[str], list[str]]:
    if "--" in args:
        at = args.index("--")
        return args[:at], args[at + 1 :]
    return args, []


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvm-manager",
        description="Run a VM inside this pod, as if the VM were the pod. "
        "Configured by environment variables (see the README).",
    )
    parser.add_argument("--version", action="version", version=f"kvm-manager {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="the whole startup path, then exec QEMU (default)")
    run.set_defaults(handler=_run)
    plan = commands.add_parser("plan", help="observe and plan; print the plan, change nothing")
    plan.add_argument("--json", action="store_true", help="the complete plan as JSON")
    plan.set_defaults(handler=_plan)
    setup = commands.add_parser("setup", help="every step but the exec; print QEMU's argv")
    setup.add_argument("--json", action="store_true", help="QEMU's argv as a JSON list")
    setup.set_defaults(handler=_setup)
    fetch = commands.add_parser("fetch", help="only make sure the base image is present")
    fetch.set_defaults(handler=_fetch)
    status = commands.add_parser(
        "status",
        help="exit 0 when the VM is running and every part it depends on is as planned "
        "(asks QMP, and the guest agent)",
    )
    status.add_argument("--json", action="store_true", help="the status as a JSON object")
    status.add_argument(
        "--ready", action="store_true", help="exit 0 only when the VM is ready (READINESS)"
    )
    status.add_argument(
        "--repair",
        action="store_true",
        help="first restore in place the parts that heal (the liveness probe does this)",
    )
    status.set_defaults(handler=_status)
    shutdown = commands.add_parser(
        "shutdown", help="power off (guest agent, then ACPI), hard quit after a timeout"
    )
    shutdown.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to wait for the guest to power off (default 60)",
    )
    shutdown.set_defaults(handler=_shutdown)
    _day_two_commands(commands)
    return parser


def _day_two_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    metrics = commands.add_parser(
        "metrics", help="serve the VM's Prometheus metrics on /metrics (a sidecar's command)"
    )
    metrics.add_argument(
        "--port", type=int, default=None, help="TCP port (default: METRICS_PORT, else 9477)"
    )
    metrics.set_defaults(handler=_metrics)
    cache = commands.add_parser("cache", help="the shared image cache: list or prune its bases")
    what = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    listing = what.add_parser("list", help="each base: size, sha256, source, the VMs on it")
    listing.add_argument("--json", action="store_true", help="as one JSON object")
    listing.set_defaults(handler=_cache_list)
    prune = what.add_parser(
        "prune", help="remove the bases no VM disk uses, and leftover work files"
    )
    prune.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    prune.set_defaults(handler=_cache_prune)
    rebase = commands.add_parser(
        "rebase",
        help="move the VM's stopped disk onto the base IMG_SOURCE/IMG_TARGET name (fetched if "
        "need be), the guest seeing the same disk",
    )
    rebase.set_defaults(handler=_rebase)
    resize = commands.add_parser(
        "resize", help="grow the running VM's disk to VM_DISK_SIZE (or --size), over QMP"
    )
    resize.add_argument(
        "--size", default=None, help="the new size, e.g. 20G (default: VM_DISK_SIZE)"
    )
    resize.set_defaults(handler=_resize)


def _setup_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("kvm-manager: %(message)s"))
    root = logging.getLogger("kvmmgr")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False


def _run(options: argparse.Namespace, extra: list[str]) -> int:
    from kvmmgr import startup
    from kvmmgr.vm import launch

    plan = startup.setup(_settings(), extra)
    log.info("qemu: exec %s", " ".join(plan.qemu.argv))
    sys.stdout.flush()
    sys.stderr.flush()
    launch.exec_qemu(plan.qemu)
    return EXIT_OK  # not reached: exec_qemu replaces this process or raises


def _plan(options: argparse.Namespace, extra: list[str]) -> int:
    from kvmmgr import startup

    plan = startup.prepare(_settings(), extra)
    if options.json:
        sys.stdout.write(plan.to_json())
        return EXIT_OK
    startup.log_plan(plan)
    print(_describe(plan))
    return EXIT_OK


def _setup(options: argparse.Namespace, extra: list[str]) -> int:
    import json

    from kvmmgr import startup

    plan = startup.setup(_settings(), extra, detached=True)
    if options.json:
        print(json.dumps(list(plan.qemu.argv)))
    else:
        print(" ".join(plan.qemu.argv))
    return EXIT_OK


def _fetch(options: argparse.Namespace, extra: list[str]) -> int:
    from kvmmgr import pod
    from kvmmgr.image import cache
    from kvmmgr.image.disks import build_disks

    settings = _settings()
    hostname = pod.hostname(settings)
    disks = build_disks(settings.image, hostname)
    cache.check_available(disks)
    log.info("image: %s", cache.ensure_base(disks, holder=cache.holder(hostname)))
    return EXIT_OK


def _status(options: argparse.Namespace, extra: list[str]) -> int:
    import json

    from kvmmgr.config import load_readiness
    from kvmmgr.vm import control

    if options.ready:
        readiness = load_readiness(os.environ)
        status, unready = control.check_ready(_run_dir(), readiness)
    else:
        status, unready = control.vm_status(_run_dir()), None
    health = _health(options.repair, status.state)
    if options.json:
        data = status.as_data() | health.as_data()
        if options.ready:
            data.update(readiness=str(readiness), ready=unready is None, why_not=unready)
        print(json.dumps(data, sort_keys=True))
    else:
        lines = status.lines() + health.lines()
        if options.ready:
            lines.append(f"not ready: {unready}" if unready else f"ready ({readiness})")
        print("\n".join(lines))
    if status.state != "running":
        return EXIT_NOT_RUNNING
    if health.failed:
        return EXIT_DEGRADED
    return EXIT_NOT_READY if unready else EXIT_OK


def _health(repair: bool, qemu_state: str | None) -> Health:
    """The parts of a running VM against its plan, made again from the container's
    environment (a probe has it). Without QEMU there is nothing to check or mend; without a
    plan (a QEMU that kvm-manager did not start), QEMU alone is asked."""
    from kvmmgr.health.check import Health, check

    if qemu_state != "running":
        return Health(None, f"QEMU is {qemu_state or 'not running'}")
    from kvmmgr import startup
    from kvmmgr.health.observe import observe

    try:
        settings = _settings()
        plan = startup.replan(settings)
    except (ConfigError, PreconditionError) as exc:
        log.warning("the VM's parts are not checked: no plan (%s)", exc)
        return Health(None, f"no plan: {exc}")
    parts = check(plan, observe(plan))
    if repair and any(part.problems and part.heals for part in parts):
        from kvmmgr.health.repair import repair as mend

        parts = mend(plan, settings)
    return Health(parts)


def _shutdown(options: argparse.Namespace, extra: list[str]) -> int:
    from kvmmgr.vm.control import shutdown_vm

    status, what = shutdown_vm(_run_dir(), options.timeout)
    print(what)
    return status


def _metrics(options: argparse.Namespace, extra: list[str]) -> int:
    from kvmmgr.metrics import server

    return server.main(os.environ, options.port)


def _cache_list(options: argparse.Namespace, extra: list[str]) -> int:
    from kvmmgr.image import inventory

    return inventory.list_command(os.environ, as_json=options.json)


def _cache_prune(options: argparse.Namespace, extra: list[str]) -> int:
    from kvmmgr.image import inventory

    return inventory.prune_command(os.environ, dry_run=options.dry_run)


def _rebase(options: argparse.Namespace, extra: list[str]) -> int:
    from kvmmgr.image import rebase

    return rebase.main(_settings())


def _resize(options: argparse.Namespace, extra: list[str]) -> int:
    from kvmmgr.vm import resize

    return resize.main(os.environ, options.size)


def _settings() -> Settings:
    """The configuration. The VNC password then leaves the environment, so that no process
    started from here (dnsmasq, qemu-img, QEMU itself) carries it in /proc/PID/environ."""
    from kvmmgr.config import load_settings

    settings = load_settings(os.environ)
    os.environ.pop("VNC_PASSWORD", None)
    return settings


def _run_dir() -> Path:
    """status and shutdown need only RUN_DIR (and `status --ready` READINESS): they must work
    whatever else is configured."""
    from kvmmgr.config import run_dir_of

    return run_dir_of(os.environ)


def _describe(plan: Plan) -> str:
    lines = [f"disk: {plan.disks.overlay} on {plan.disks.base}"]
    for family, table in plan.firewall.tables:
        lines.append(f"firewall (IPv{family} {table}):")
        lines += [f"  {line}" for line in plan.firewall.save_lines(table, family)]
    if plan.dhcp_guard:
        lines.append("dhcp guard (nft -f):")
        lines += [f"  {line}" for line in plan.dhcp_guard.ruleset.splitlines()]
    if plan.dhcp:
        lines.append(f"dhcp: {plan.dhcp.config_file}")
        lines += [f"  {line}" for line in plan.dhcp.config[1:]]
    if plan.config_drive:
        lines.append(f"config drive: {plan.config_drive.iso} ({plan.config_drive.label})")
        lines += [f"  {f.path} ({len(f.data)} bytes)" for f in plan.config_drive.files]
    lines.append("qemu: " + " ".join(plan.qemu.argv))
    return "\n".join(lines)
