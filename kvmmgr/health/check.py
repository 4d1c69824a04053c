"""The VM's parts as planned, against what `status` found of them (seen.py): each part's
problems, and whether the startup step that made the part, run again, restores it in place
without touching the VM. Pure.

A part is named after its step: network (links, addresses, sysctls), firewall, dhcp-guard,
dhcp, web-console. QEMU itself is not a part: without it there is nothing to check, and
nothing to mend.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv6Interface
from typing import Any, assert_never

from kvmmgr.health.seen import ANY_DEVICE, LinkSeen, Seen
from kvmmgr.net.dhcp import DhcpPlan
from kvmmgr.net.dhcpguard import HOOKS, TABLE, GuardPlan, chain_name
from kvmmgr.net.firewall import PREFIX, Family, FirewallPlan
from kvmmgr.net.nics import BridgeLink, MacvtapLink, NatLink, NicPlan
from kvmmgr.plan import Plan


@dataclass(frozen=True)
class Problem:
    what: str
    heals: bool = True  # the part's step, run again, mends it while the VM runs


@dataclass(frozen=True)
class Repair:
    found: tuple[Problem, ...]  # what was wrong before
    done: str | None  # what the step did (its log line); None: it failed
    error: str | None = None


@dataclass(frozen=True)
class Part:
    name: str  # the startup step that makes it
    planned: bool
    problems: tuple[Problem, ...] = ()
    repair: Repair | None = None  # what `status --repair` did for it

    @property
    def state(self) -> str:
        if not self.planned:
            return "off"
        if self.problems:
            return "failed"
        return "repaired" if self.repair else "ok"

    @property
    def heals(self) -> bool:
        return all(problem.heals for problem in self.problems)

    def as_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"state": self.state}
        if self.problems:
            data.update(problems=[p.what for p in self.problems], heals=self.heals)
        if self.repair:
            found = [p.what for p in self.repair.found]
            data["repair"] = {"found": found, "done": self.repair.done, "error": self.repair.error}
        return data

    def lines(self) -> list[str]:
        """Nothing for a part that is as planned: `status` stays one word when all is well."""
        lines = []
        if self.repair:
            found = "; ".join(p.what for p in self.repair.found)
            done = self.repair.done or f"failed: {self.repair.error}"
            lines.append(f"{self.name}: repaired ({found}): {done}")
        for problem in self.problems:
            restart = "" if problem.heals else " (needs a container restart)"
            lines.append(f"{self.name}: {problem.what}{restart}")
        return lines


@dataclass(frozen=True)
class Health:
    parts: tuple[Part, ...] | None  # None: not checked
    unchecked: str | None = None  # why not

    @property
    def failed(self) -> bool:
        return any(part.state == "failed" for part in self.parts or ())

    def as_data(self) -> dict[str, Any]:
        parts = {p.name: p.as_data() for p in self.parts} if self.parts is not None else None
        return {"parts": parts, "unchecked": self.unchecked}

    def lines(self) -> list[str]:
        return [line for part in self.parts or () for line in part.lines()]


def check(plan: Plan, seen: Seen) -> tuple[Part, ...]:
    """Every part, in the order of the steps that make them. Asked only while QEMU runs."""
    guard, dhcp, firewall = plan.dhcp_guard, plan.dhcp, plan.firewall
    return (
        Part("network", True, (*_links(plan.nics, seen.links), *_sysctls(plan, seen.sysctls))),
        Part("firewall", bool(firewall.chains), tuple(_firewall(firewall, seen.firewall))),
        Part("dhcp-guard", guard is not None, tuple(_guard(guard, seen.guard)) if guard else ()),
        Part("dhcp", dhcp is not None, tuple(_dhcp(dhcp, plan.nics, seen)) if dhcp else ()),
        Part("web-console", plan.web_console is not None, tuple(_web_console(plan, seen))),
    )


# --- network ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Wanted:
    name: str
    kind: str | None  # None: the pod's own interface, whatever it is
    master: str | None = None
    addresses: tuple[IPv4Interface | IPv6Interface, ...] = ()
    remade: bool = True  # made again when missing; not a device QEMU holds, nor the pod's

    @property
    def held_by_qemu(self) -> bool:
        return self.kind in {"tun", "macvtap"}


def _wanted(nic: NicPlan) -> tuple[_Wanted, ...]:
    match nic.link:
        case NatLink() as link:
            six = (link.gateway6,) if link.gateway6 else ()
            bridge = _Wanted(link.bridge, "bridge", addresses=(link.gateway, *six))
            return bridge, _Wanted(link.tap, "tun", link.bridge, remade=False)
        case BridgeLink() as link:
            bridge = _Wanted(link.bridge, "bridge", addresses=(link.server,))
            tap = _Wanted(link.tap, "tun", link.bridge, remade=False)
            return bridge, tap, _Wanted(nic.pod.name, None, link.bridge, remade=False)
        case MacvtapLink() as link:
            server = _Wanted(link.server_link, "macvlan", addresses=(link.server,))
            return _Wanted(link.macvtap, "macvtap", remade=False), server
        case unknown:
            assert_never(unknown)


def _links(nics: Iterable[NicPlan], links: Mapping[str, LinkSeen]) -> Iterator[Problem]:
    for nic in nics:
        for wanted in _wanted(nic):
            yield from _link(wanted, links.get(wanted.name))


def _link(wanted: _Wanted, seen: LinkSeen | None) -> Iterator[Problem]:
    name = wanted.name
    if seen is None:
        gone = ": the VM's NIC went with it" if wanted.held_by_qemu else ""
        yield Problem(f"{name} is missing{gone}", heals=wanted.remade)
        return
    if wanted.kind and seen.kind != wanted.kind:
        kind = seen.kind or "device of another kind"
        yield Problem(f"{name} is a {kind}, not a {wanted.kind}", heals=False)
        return
    if wanted.master and seen.master != wanted.master:
        elsewhere = f" (but of {seen.master})" if seen.master else ""
        yield Problem(f"{name} is not a port of {wanted.master}{elsewhere}")
    if not seen.up:
        yield Problem(f"{name} is down")
    if wanted.kind == "tun" and not seen.carrier:  # a tap has carrier while QEMU holds it
        yield Problem(f"{name} has no carrier: QEMU no longer holds it", heals=False)
    for address in wanted.addresses:
        if address not in seen.addresses:
            yield Problem(f"{name} lacks its address {address}")


def _sysctls(plan: Plan, seen: Mapping[str, str | None]) -> Iterator[Problem]:
    for sysctl in plan.sysctls:
        values = [seen.get(name) for name in sysctl.names]
        if sysctl.value not in values:  # as the step: any of the names may hold it
            shown = "unreadable" if values[0] is None else values[0]
            yield Problem(f"{sysctl.names[0].replace('/', '.')} is {shown}, not {sysctl.value}")


# --- firewall --------------------------------------------------------------------------------


def _firewall(plan: FirewallPlan, saved: Mapping[Family, str]) -> Iterator[Problem]:
    """Compared as the tests compare them: our lines of ip(6)tables-save, chain by chain, in
    order (a built-in chain's part is its jumps to ours)."""
    for family, table in plan.tables:
        label = f"{'iptables' if family == 4 else 'ip6tables'} {table}"
        planned = _by_chain(plan.save_lines(table, family))
        installed = _by_chain(our_lines(saved.get(family, ""), table))
        for chain in sorted(planned.keys() | installed.keys()):
            wanted, found = planned.get(chain, []), installed.get(chain, [])
            if wanted != found:
                yield Problem(f"{label}: {_difference(chain, wanted, found)}")


def our_lines(saved: str, table: str) -> list[str]:
    """The lines of one table of ip(6)tables-save's output that jump to or live in our chains."""
    lines, current = [], None
    for line in saved.splitlines():
        if line.startswith("*"):
            current = line[1:]
        elif current == table and line.startswith("-A ") and PREFIX in line:
            lines.append(line)
    return lines


def _by_chain(lines: Iterable[str]) -> dict[str, list[str]]:
    chains: dict[str, list[str]] = {}
    for line in lines:
        _, chain, rule = line.split(" ", 2)
        chains.setdefault(chain, []).append(rule)
    return chains


def _difference(chain: str, wanted: list[str], found: list[str]) -> str:
    if not wanted:
        return f"{chain} holds {_rules(len(found))} of ours, none planned"
    if not found and not chain.startswith(PREFIX):
        return f"{chain} does not jump to {', '.join(r.split()[-1] for r in wanted)}"
    if not found:
        return f"{chain} is empty or missing ({_rules(len(wanted))} planned)"
    if len(found) != len(wanted):
        return f"{chain} holds {_rules(len(found))} of ours, not the {len(wanted)} planned"
    return f"{chain}'s rules are not the planned ones"


def _rules(count: int) -> str:
    return f"{count} rule{'' if count == 1 else 's'}"


# --- DHCP guard ------------------------------------------------------------------------------


def _guard(plan: GuardPlan, listed: str | None) -> Iterator[Problem]:
    """Each planned chain on its hook, dropping DHCP: what an `nft delete table`, a flush or
    a deleted chain takes away."""
    items = json.loads(listed or "{}").get("nftables", [])
    if not any(item.get("table", {}).get("name") == TABLE for item in items):
        yield Problem(f"the nftables table netdev {TABLE} is missing")
        return
    chains = {c["name"]: c for i in items if (c := i.get("chain")) and c.get("table") == TABLE}
    dropping = {
        rule.get("chain")
        for item in items
        if (rule := item.get("rule")) and rule.get("table") == TABLE
        if any("drop" in expression for expression in rule.get("expr", ()))
    }
    for iface in plan.interfaces:
        for hook in HOOKS:
            name = chain_name(hook, iface)
            if chains.get(name, {}).get("hook") != hook:
                yield Problem(f"netdev {TABLE}: chain {name} is missing")
            elif name not in dropping:
                yield Problem(f"netdev {TABLE}: chain {name} drops nothing")


# --- DHCP ------------------------------------------------------------------------------------


def _dhcp(plan: DhcpPlan, nics: tuple[NicPlan, ...], seen: Seen) -> Iterator[Problem]:
    """One live dnsmasq (a zombie is none: observe.py does not count it), listening where
    the VM asks: dnsmasq binds its DHCP socket to the one interface it serves, or to none
    when it serves several."""
    if not seen.dnsmasq:
        yield Problem("dnsmasq is not running")
        return
    if len(seen.dnsmasq) > 1:
        pids = ", ".join(map(str, seen.dnsmasq))
        yield Problem(f"{len(seen.dnsmasq)} dnsmasq processes serve {plan.config_file} ({pids})")
    served = [nic.dhcp_link for nic in nics]
    if len(served) > 1:
        if ANY_DEVICE not in seen.dhcp_devices:
            yield Problem("dnsmasq does not listen on UDP port 67")
        return
    link = seen.links.get(served[0])
    if link is None or link.index not in seen.dhcp_devices:
        yield Problem(f"dnsmasq does not listen on {served[0]} (UDP port 67)")


# --- web console -----------------------------------------------------------------------------


def _web_console(plan: Plan, seen: Seen) -> Iterator[Problem]:
    """One live server; QEMU's WebSocket behind it is QEMU's own, up while QEMU is."""
    if plan.web_console is None:
        return
    if not seen.web_console:
        yield Problem("the web console's server is not running")
    elif len(seen.web_console) > 1:
        pids = ", ".join(map(str, seen.web_console))
        yield Problem(f"{len(seen.web_console)} web console servers run ({pids})")
