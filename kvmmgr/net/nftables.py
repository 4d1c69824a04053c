"""The DHCP guard (dhcpguard.py) installed with nft, in one transaction."""

from __future__ import annotations

from kvmmgr.errors import StepError
from kvmmgr.net.dhcpguard import GuardPlan
from kvmmgr.system import proc


def apply_guard(plan: GuardPlan) -> None:
    try:
        proc.run(["nft", "-f", "-"], stdin=plan.ruleset)
    except StepError as exc:
        raise StepError(f"could not keep DHCP inside the pod with nftables: {exc}") from exc
