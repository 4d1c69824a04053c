"""The VM's firewall as data: chains and rules for every NIC. Pure.

Every rule lives in a chain of our own (`KVMMGR-*`); each built-in chain holds one jump to it.
Rules are written exactly as `iptables-save` prints them, which keeps them readable and lets
tests compare them verbatim. iptables.py installs them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from kvmmgr.net.model import PortSpec
from kvmmgr.net.nics import NatLink, NicPlan

PREFIX = "KVMMGR-"
MULTIPORT_SLOTS = 15  # xt_multiport's limit per rule
Family = Literal[4, 6]
TABLE_NAMES = ("raw", "nat", "filter")  # in the order packets meet them
TABLES: tuple[tuple[Family, str], ...] = tuple(
    (family, table) for family in (4, 6) for table in TABLE_NAMES
)

Rule = str  # in iptables-save syntax; no value holds a space


@dataclass(frozen=True)
class Chain:
    family: Family  # iptables (4) or ip6tables (6)
    table: str
    name: str
    hook: str | None  # the built-in chain that jumps here; None for a chain only we jump to
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class FirewallPlan:
    chains: tuple[Chain, ...]
    kept: tuple[str, ...]  # what is not forwarded to the VM, e.g. tcp/5900

    @property
    def tables(self) -> tuple[tuple[Family, str], ...]:
        return tuple(dict.fromkeys((chain.family, chain.table) for chain in self.chains))

    def save_lines(self, table: str, family: Family = 4) -> list[str]:
        """Our part of `ip(6)tables-save -t TABLE`, in the order it prints it."""
        chains = [c for c in self.chains if (c.family, c.table) == (family, table)]
        jumps = [f"-A {c.hook} -j {c.name}" for c in chains if c.hook]
        rules = [f"-A {c.name} {rule}" for c in chains for rule in c.rules]
        return jumps + rules


def build_firewall(
    *, nics: Sequence[NicPlan], private: Sequence[int], exclude: Sequence[PortSpec]
) -> FirewallPlan:
    """The rule set of every NIC: DNAT/SNAT for the NAT ones (IPv6 too on a dual-stack pod),
    and nothing but DHCP into the container from the VM's side in the other modes.
    `private`: the TCP ports of the container's own services (VNC, the web console, the
    metrics sidecar): for the pod's side, neither forwarded to the VM nor reachable from it."""
    kept = [PortSpec("tcp", port, port) for port in private] + list(exclude)
    rules = _Rules(_returns_for(kept), tuple(private))
    nat = [(nic, nic.link) for nic in nics if isinstance(nic.link, NatLink)]
    for nic, link in nat:
        rules.nat4(nic, link)
        if link.gateway6 is not None and link.pod_address6 is not None and nic.guest.address6:
            rules.nat6(nic, link)
    if nat:
        rules.loopback(*nat[0])
    for nic in nics:
        if nic.link.takes_pod_identity:
            # The container is only the VM's DHCP server here.
            rules.add(
                4, "filter", "INPUT", f"-i {nic.dhcp_link} -p udp -m udp --dport 67 -j RETURN"
            )
            rules.add(4, "filter", "INPUT", f"-i {nic.dhcp_link} -j DROP")
    return FirewallPlan(rules.chains(), tuple(str(spec) for spec in kept))


class _Rules:
    """Rules collected per built-in chain (each gets one KVMMGR- chain), plus the DNAT
    chains the hooks jump to."""

    HOOK_ORDER = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")

    def __init__(self, returns: tuple[Rule, ...], private: tuple[int, ...]) -> None:
        self.returns = returns  # the kept ports: RETURN before the DNAT
        self.private = private  # TCP ports of the container's own services
        self.hooked: dict[tuple[Family, str, str], list[Rule]] = {}
        self.own: list[Chain] = []

    def add(self, family: Family, table: str, hook: str, *rules: Rule) -> None:
        self.hooked.setdefault((family, table, hook), []).extend(rules)

    def nat4(self, nic: NicPlan, link: NatLink) -> None:
        vm = nic.guest.address.ip
        self._one_to_one(4, nic.pod.name, f"{link.pod_address.ip}/32", f"{vm}/32")
        # route_localnet (needed for the loopback DNAT) would otherwise let the VM reach
        # services bound to the pod's 127.0.0.1: only replies may come in that way.
        established = "-m conntrack ! --ctstate RELATED,ESTABLISHED"
        self.add(4, "filter", "INPUT", f"-d 127.0.0.0/8 -i {link.bridge} {established} -j DROP")
        self._private_ports(4, link.bridge)
        # DHCP's first messages come from no address at all; nothing else but VM_IP may.
        dhcp = f"-s 0.0.0.0/32 -i {link.bridge} -p udp -m udp --sport 68 --dport 67 -j RETURN"
        self._no_spoofing(4, link.bridge, f"{vm}/32", dhcp)

    def nat6(self, nic: NicPlan, link: NatLink) -> None:
        assert nic.guest.address6 is not None and link.pod_address6 is not None
        vm = nic.guest.address6.ip
        self._one_to_one(6, nic.pod.name, f"{link.pod_address6.ip}/128", f"{vm}/128")
        self._private_ports(6, link.bridge)
        # Link-local sources (neighbour discovery, router solicitations, DHCPv6) and the
        # unspecified one (duplicate address detection) are the VM's too.
        self._no_spoofing(
            6,
            link.bridge,
            f"{vm}/128",
            f"-s fe80::/10 -i {link.bridge} -j RETURN",
            f"-s ::/128 -i {link.bridge} -j RETURN",
        )

    def _one_to_one(self, family: Family, iface: str, pod: str, vm: str) -> None:
        """What arrives on `iface` for the pod's address goes to the VM (but the kept
        ports); what the VM sends out of it leaves from the pod's address."""
        dnat = f"{PREFIX}DNAT-{iface}"
        self.add(family, "nat", "PREROUTING", f"-d {pod} -i {iface} -j {dnat}")
        to_vm = f"-j DNAT --to-destination {vm.partition('/')[0]}"
        self.own.append(Chain(family, "nat", dnat, None, (*self.returns, to_vm)))
        pod_ip = pod.partition("/")[0]
        self.add(family, "nat", "POSTROUTING", f"-s {vm} -o {iface} -j SNAT --to-source {pod_ip}")

    def loopback(self, nic: NicPlan, link: NatLink) -> None:
        """`kubectl port-forward` connects to 127.0.0.1 inside the pod: that is this NIC's VM
        too. Loopback-sourced packets cannot leave the pod: the VM sees its gateway instead."""
        self.add(4, "nat", "OUTPUT", f"-d 127.0.0.1/32 -j {PREFIX}DNAT-{nic.pod.name}")
        vm, gateway = nic.guest.address.ip, link.gateway.ip
        masquerade = f"-s 127.0.0.0/8 -d {vm}/32 -o {link.bridge} -j SNAT --to-source {gateway}"
        self.add(4, "nat", "POSTROUTING", masquerade)

    def _no_spoofing(self, family: Family, bridge: str, own: str, *allowed: Rule) -> None:
        """The VM sends from its own address only. In the raw table, before connection
        tracking and NAT see the packet, whether it is going out or to the pod itself."""
        self.add(family, "raw", "PREROUTING", *allowed, f"! -s {own} -i {bridge} -j DROP")

    def _private_ports(self, family: Family, bridge: str) -> None:
        """QEMU's VNC, the web console and the metrics sidecar listen on every pod address:
        they are for the pod's side, not the VM's."""
        for port in self.private:
            self.add(family, "filter", "INPUT", f"-i {bridge} -p tcp -m tcp --dport {port} -j DROP")

    def chains(self) -> tuple[Chain, ...]:
        """By family and table, hooked chains in hook order, then the DNAT chains."""
        hooked = [
            Chain(family, table, f"{PREFIX}{hook}", hook, tuple(rules))
            for (family, table, hook), rules in self.hooked.items()
        ]
        order = {hook: n for n, hook in enumerate(self.HOOK_ORDER)}
        hooked.sort(key=lambda c: (c.family, TABLE_NAMES.index(c.table), order[c.hook or ""]))
        own = sorted(self.own, key=lambda c: (c.family, c.name))
        return tuple(hooked + own)


def _returns_for(kept: Sequence[PortSpec]) -> tuple[Rule, ...]:
    """RETURN rules for the kept ports, by protocol: a protocol with one item gets a plain
    rule; more share multiport rules, so 500 kept ports cost 34 rules rather than 500 (each
    rule costs time at every start, and every new connection walks them)."""
    by_protocol: dict[str, list[PortSpec]] = {}
    for spec in kept:
        by_protocol.setdefault(spec.protocol, []).append(spec)
    rules: list[Rule] = []
    for protocol, specs in by_protocol.items():
        if len(specs) == 1:
            rules.append(f"-p {protocol} -m {protocol} --dport {_ports(specs[0])} -j RETURN")
            continue
        for chunk in _multiport_chunks(specs):
            ports = ",".join(_ports(spec) for spec in chunk)
            rules.append(f"-p {protocol} -m multiport --dports {ports} -j RETURN")
    return tuple(rules)


def _multiport_chunks(specs: Sequence[PortSpec]) -> Iterator[list[PortSpec]]:
    """The multiport match takes 15 ports a rule, a range counting as two."""
    chunk: list[PortSpec] = []
    used = 0
    for spec in specs:
        slots = 1 if spec.first == spec.last else 2
        if used + slots > MULTIPORT_SLOTS:
            yield chunk
            chunk, used = [], 0
        chunk.append(spec)
        used += slots
    yield chunk


def _ports(spec: PortSpec) -> str:
    return str(spec.first) if spec.first == spec.last else f"{spec.first}:{spec.last}"
