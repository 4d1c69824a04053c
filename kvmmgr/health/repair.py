"""`status --repair`: each part that heals in place made again by the startup step that made
it. The steps converge, so this touches neither the VM nor what is still right: links are
reused and corrected (QEMU keeps its tap), our chains refilled in one commit per table, the
guard's table replaced whole, dnsmasq replaced. A part with a problem that needs a restart
(QEMU's own device gone) is left as it is: the probe fails, and the restart converges."""

from __future__ import annotations

import dataclasses
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kvmmgr.config import Settings
from kvmmgr.errors import KvmManagerError
from kvmmgr.guest.drive import DriveInputs
from kvmmgr.health.check import Part, Repair, check
from kvmmgr.health.observe import observe
from kvmmgr.plan import Plan


def repair(plan: Plan, settings: Settings) -> tuple[Part, ...]:
    """Every part as it is once the ones that heal are mended, each with what was done."""
    from kvmmgr import startup  # the steps: most of kvm-manager, needed only now

    # dnsmasq, started from here (a probe), must not keep our output open: it logs to a file.
    context = startup.Context(settings, True, DriveInputs(None, None), ())
    done: dict[str, Repair] = {}
    with _one_at_a_time(settings.run_dir):  # found again here: another may have just mended it
        found = check(plan, observe(plan))
        broken = {part.name: part for part in found if part.problems and part.heals}
        if not broken:
            return found
        for step in startup.STEPS:  # in their order: links before dnsmasq binds to them
            part = broken.get(step.name)
            if part is None:
                continue
            try:
                done[step.name] = Repair(part.problems, str(step.run(plan, context)))
            except (KvmManagerError, OSError) as exc:
                done[step.name] = Repair(part.problems, None, str(exc))
        after = check(plan, observe(plan))
    return tuple(dataclasses.replace(part, repair=done.get(part.name)) for part in after)


@contextmanager
def _one_at_a_time(run_dir: Path) -> Iterator[None]:
    """A lock on RUN_DIR itself: two repairs at once would each replace dnsmasq."""
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
