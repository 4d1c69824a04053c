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

TABLE = "kvmmgr"
HOOKS = ("ingress", "egress")


@dataclass(frozen=True)
class GuardedInterface:
    name: str
    # Frames from these MACs may carry DHCP in: a macvlan sends a frame to a sibling (the
    # DHCP server's answer to the VM's macvtap) through the lower device's receive path.
    inside: tuple[str, ...] = ()


@dataclass(frozen=True)
class GuardPlan:
    interfaces: tuple[GuardedInterface, ...]
    ruleset: str  # for `nft -f -`: replaces the table whole, in one transaction


def chain_name(hook: str, iface: GuardedInterface) -> str:
    return f"{hook}-{iface.name}"


def build_guard(interfaces: Sequence[GuardedInterface]) -> GuardPlan:
    chains = []
    for iface in interfaces:
        for hook in HOOKS:
            match = ""
            if hook == "ingress" and iface.inside:
                match = "ether saddr != { " + ", ".join(iface.inside) + " } "
            chains.append(
                f"  chain {chain_name(hook, iface)} {{\n"
                f'    type filter hook {hook} device "{iface.name}" priority 0; policy accept;\n'
                f"    {match}udp dport {{ 67, 68 }} drop\n"
                "  }"
            )
    ruleset = (
        f"table netdev {TABLE} {{}}\n"  # so that the delete below never fails
        f"delete table netdev {TABLE}\n"
        f"table netdev {TABLE} {{\n" + "\n".join(chains) + "\n}\n"
    )
    return GuardPlan(tuple(interfaces), ruleset)
