"""Keep DHCP inside the pod in bridge and macvtap modes.

There the pod interface is on the same layer 2 as the VM: without a guard, the container's
DHCP server would see requests from the whole pod network and its replies would leave the
pod, and the VM's own requests would reach other DHCP servers. An nftables table of the netdev
family drops DHCP (UDP ports 67 and 68) crossing each such interface, in and out: its hooks sit
on the device itself, so they also see what is bridged through it or sent by a macvlan on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvmmgr import proc
from kvmmgr.errors import StepError

TABLE = "kvmmgr"


@dataclass(frozen=True)
class GuardPlan:
    interfaces: tuple[str, ...]
    ruleset: str  # for `nft -f -`: replaces the table whole, in one transaction


def build_guard(interfaces: Sequence[str]) -> GuardPlan:
    chains = []
    for iface in interfaces:
        for hook in ("ingress", "egress"):
            chains.append(
                f"  chain {hook}-{iface} {{\n"
                f'    type filter hook {hook} device "{iface}" priority 0; policy accept;\n'
                "    udp dport { 67, 68 } drop\n"
                "  }"
            )
    ruleset = (
        f"table netdev {TABLE} {{}}\n"  # so that the delete below never fails
        f"delete table netdev {TABLE}\n"
        f"table netdev {TABLE} {{\n" + "\n".join(chains) + "\n}\n"
    )
    return GuardPlan(tuple(interfaces), ruleset)


def apply_guard(plan: GuardPlan) -> None:
    try:
        proc.run(["nft", "-f", "-"], stdin=plan.ruleset)
    except StepError as exc:
        raise StepError(f"could not keep DHCP inside the pod with nftables: {exc}") from exc
