"""dnsmasq started from its plan (dhcp.py), replacing any that an earlier start left."""

from __future__ import annotations

import logging
import os

from kvmmgr.errors import StepError
from kvmmgr.net.dhcp import LOG_TO_STDERR, DhcpPlan
from kvmmgr.system import proc
from kvmmgr.system.files import write_atomic

log = logging.getLogger(__name__)


def apply_dhcp(plan: DhcpPlan, *, detached: bool = False) -> int:
    """Replace any dnsmasq an earlier start left behind with one running this plan; its PID.
    `detached`: this process does not become QEMU (`setup`), so dnsmasq must not keep its
    stderr open: it logs to RUN_DIR/dnsmasq.log instead."""
    stop_dhcp(plan)
    log_file = f"log-facility={plan.config_file.with_name('dnsmasq.log')}"
    lines = [log_file if detached and line == LOG_TO_STDERR else line for line in plan.config]
    write_atomic(plan.config_file, "".join(f"{line}\n" for line in lines).encode())
    # dnsmasq forks once it is bound, its parent reporting startup errors by exit status;
    # the daemon keeps logging to our stderr, the container's log.
    proc.run(plan.argv, timeout=30, share_stderr=True)
    # By then it has made its lease and log files, 0644 whatever our umask (it sets its
    # own): owner-only, like everything in RUN_DIR. It rewrites them in place, modes kept.
    # Its pid file it gave to its own user (to remove it at exit): not ours to change.
    for made in plan.config_file.parent.glob("dnsmasq.*"):
        if made.stat().st_uid == os.geteuid():
            made.chmod(0o600)
    try:
        return int(plan.pid_file.read_text().strip())
    except (OSError, ValueError) as exc:
        raise StepError(f"dnsmasq started but {plan.pid_file} is unreadable: {exc}") from exc


def stop_dhcp(plan: DhcpPlan) -> None:
    """Stop every dnsmasq serving our configuration file. They are found through /proc rather
    than the PID file, which a crash may have left stale or never written."""
    pids = running(plan)
    if pids:
        log.debug("stopping dnsmasq left by an earlier start: %s", pids)
        proc.terminate(pids)
    plan.pid_file.unlink(missing_ok=True)


def running(plan: DhcpPlan) -> list[int]:
    """The live dnsmasq processes serving our configuration file. A zombie is not among them:
    it has no command line any more."""
    return proc.pids_with_argument("dnsmasq", f"--conf-file={plan.config_file}")
