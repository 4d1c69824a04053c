"""The VM's firewall: rules as data (pure), installed with python-iptables (legacy xtables).

Every rule lives in a chain of our own (`KVMMGR-*`); each built-in chain holds one jump to it.
Applying flushes our chains and fills them again, table by table in one commit each, so a
re-run replaces the rules instead of appending duplicates. Rules are written exactly as
`iptables-save` prints them, which keeps them readable and lets tests compare them verbatim.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kvmmgr.config import PortSpec
from kvmmgr.errors import StepError
from kvmmgr.libload import load_iptc
from kvmmgr.nics import NatLink, NicPlan

PREFIX = "KVMMGR-"
VNC_PORT = 5900
MULTIPORT_SLOTS = 15  # xt_multiport's limit per rule
XTABLES_LOCK = "/run/xtables.lock"  # the lock the iptables commands take; we take it too
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
    *, nics: Sequence[NicPlan], keep_vnc: bool, exclude: Sequence[PortSpec]
) -> FirewallPlan:
    """The rule set of every NIC: DNAT/SNAT for the NAT ones (IPv6 too on a dual-stack pod),
    and nothing but DHCP into the container from the VM's side in the other modes."""
    kept = ([PortSpec("tcp", VNC_PORT, VNC_PORT)] if keep_vnc else []) + list(exclude)
    rules = _Rules(_returns_for(kept), keep_vnc)
    nat = [(nic, nic.link) for nic in nics if isinstance(nic.link, NatLink)]
    for nic, link in nat:
        rules.nat4(nic, link)
        if link.gateway6 is not None and link.pod_address6 is not None and nic.guest.address6:
            rules.nat6(nic, link)
    if nat:
        rules.loopback(*nat[0])
    for nic in nics:
        if not isinstance(nic.link, NatLink):
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

    def __init__(self, returns: tuple[Rule, ...], keep_vnc: bool) -> None:
        self.returns = returns  # the kept ports: RETURN before the DNAT
        self.keep_vnc = keep_vnc
        self.hooked: dict[tuple[Family, str, str], list[Rule]] = {}
        self.own: list[Chain] = []

    def add(self, family: Family, table: str, hook: str, *rules: Rule) -> None:
        self.hooked.setdefault((family, table, hook), []).extend(rules)

    def nat4(self, nic: NicPlan, link: NatLink) -> None:
        iface, vm, pod = nic.pod.name, nic.guest.address.ip, link.pod_address.ip
        dnat = f"{PREFIX}DNAT-{iface}"
        self.add(4, "nat", "PREROUTING", f"-d {pod}/32 -i {iface} -j {dnat}")
        self.own.append(
            Chain(4, "nat", dnat, None, (*self.returns, f"-j DNAT --to-destination {vm}"))
        )
        self.add(4, "nat", "POSTROUTING", f"-s {vm}/32 -o {iface} -j SNAT --to-source {pod}")
        # route_localnet (needed for the loopback DNAT) would otherwise let the VM reach
        # services bound to the pod's 127.0.0.1: only replies may come in that way.
        established = "-m conntrack ! --ctstate RELATED,ESTABLISHED"
        self.add(4, "filter", "INPUT", f"-d 127.0.0.0/8 -i {link.bridge} {established} -j DROP")
        self._private_vnc(4, link.bridge)
        # DHCP's first messages come from no address at all; nothing else but VM_IP may.
        dhcp = f"-s 0.0.0.0/32 -i {link.bridge} -p udp -m udp --sport 68 --dport 67 -j RETURN"
        self._no_spoofing(4, link.bridge, f"{vm}/32", dhcp)

    def nat6(self, nic: NicPlan, link: NatLink) -> None:
        assert nic.guest.address6 is not None and link.pod_address6 is not None
        iface, vm, pod = nic.pod.name, nic.guest.address6.ip, link.pod_address6.ip
        dnat = f"{PREFIX}DNAT-{iface}"
        self.add(6, "nat", "PREROUTING", f"-d {pod}/128 -i {iface} -j {dnat}")
        self.own.append(
            Chain(6, "nat", dnat, None, (*self.returns, f"-j DNAT --to-destination {vm}"))
        )
        self.add(6, "nat", "POSTROUTING", f"-s {vm}/128 -o {iface} -j SNAT --to-source {pod}")
        self._private_vnc(6, link.bridge)
        # Link-local sources (neighbour discovery, router solicitations, DHCPv6) and the
        # unspecified one (duplicate address detection) are the VM's too.
        self._no_spoofing(
            6,
            link.bridge,
            f"{vm}/128",
            f"-s fe80::/10 -i {link.bridge} -j RETURN",
            f"-s ::/128 -i {link.bridge} -j RETURN",
        )

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

    def _private_vnc(self, family: Family, bridge: str) -> None:
        """QEMU's VNC listens on every pod address: it is for the pod's side, not the VM's."""
        if self.keep_vnc:
            self.add(
                family, "filter", "INPUT", f"-i {bridge} -p tcp -m tcp --dport {VNC_PORT} -j DROP"
            )

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


def apply_firewall(plan: FirewallPlan) -> None:
    """Install the plan: one atomic commit per table; chains no longer planned are removed
    (also from a table the plan no longer uses at all, such as ip6tables' after a pod lost
    its IPv6).

    IPv6 goes first, in a child process. xtables registers an extension's targets for the
    address family of the moment it is loaded (SNAT, DNAT: libxt_NAT.so), once per process:
    after IPv4 loaded them, python-iptables cannot find their IPv6 side, and reloading them
    is fatal. The child has loaded nothing yet. (The import itself loads no extension: it
    happens once, here, and the child inherits it.)"""
    load_iptc()
    if any(chain.family == 6 for chain in plan.chains) or _ip6_tables_in_use():
        _in_child(lambda: _apply_family(plan, 6))
    _apply_family(plan, 4)


def _ip6_tables_in_use(names: Path = Path("/proc/net/ip6_tables_names")) -> bool:
    """Whether this network namespace has an ip6tables table that could hold chains of ours.
    The kernel makes a namespace's tables on first use, so a fresh pod has none and needs no
    IPv6 cleanup (nor the child process it costs). Unreadable: assume it has."""
    try:
        return bool(set(TABLE_NAMES) & set(names.read_text().split()))
    except OSError:
        return True


def _apply_family(plan: FirewallPlan, family: Family) -> None:
    iptc = load_iptc()

    with _xtables_lock():
        for table_family, table_name in TABLES:
            if table_family != family:
                continue
            chains = [c for c in plan.chains if (c.family, c.table) == (family, table_name)]
            try:
                table = (iptc.Table if family == 4 else iptc.Table6)(table_name)
            except iptc.IPTCError as exc:
                if not chains:
                    continue  # e.g. no ip6tables nat in this kernel, and nothing planned there
                raise StepError(f"cannot open the IPv{family} {table_name} table: {exc}") from exc
            table.autocommit = False
            table.refresh()
            try:
                _fill_table(iptc, table, chains, family)
                table.commit()
            except (iptc.IPTCError, iptc.xtables.XTablesError, ValueError) as exc:
                table.refresh()  # drop the uncommitted changes
                raise StepError(
                    f"could not install the IPv{family} {table_name} table rules: {exc}"
                ) from exc
            finally:
                table.autocommit = True


def _in_child(action: Callable[[], None]) -> None:
    """Run `action` in a forked child; its StepError comes back as ours."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and leave without running the parent's cleanup
        os.close(read)
        status = 0
        try:
            action()
        except StepError as exc:
            os.write(write, str(exc).encode())
            status = 1
        except BaseException as exc:
            os.write(write, f"{type(exc).__name__}: {exc}".encode())
            status = 1
        os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise StepError(message or f"the IPv6 firewall step failed (status {status})")


def _fill_table(iptc: Any, table: Any, chains: list[Chain], family: Family) -> None:
    planned = {chain.name for chain in chains}
    for chain in chains:  # all first: rules may jump to a chain planned after theirs
        if not table.is_chain(chain.name):
            table.create_chain(chain.name)
    for chain in chains:
        ours = iptc.Chain(table, chain.name)
        ours.flush()
        for tokens in chain.rules:
            ours.append_rule(_to_iptc(iptc, tokens, family))
    for chain in chains:
        if chain.hook:
            _ensure_single_jump(iptc, iptc.Chain(table, chain.hook), chain.name, family)
    # Chains of ours that the plan no longer has: unhook, flush, delete.
    stale = [c.name for c in table.chains if c.name.startswith(PREFIX) and c.name not in planned]
    for builtin in table.chains:
        if builtin.is_builtin():
            for rule in list(builtin.rules):
                if rule.target.name in stale:
                    builtin.delete_rule(rule)
    for name in stale:
        iptc.Chain(table, name).flush()
    for name in stale:
        table.delete_chain(name)


def _ensure_single_jump(iptc: Any, hook: Any, target: str, family: Family) -> None:
    jumps = [rule for rule in hook.rules if rule.target.name == target]
    plain = [rule for rule in jumps if _is_plain_jump(rule)]
    if len(jumps) == 1 and plain:
        return
    for rule in jumps:
        hook.delete_rule(rule)
    jump = _new_rule(iptc, family)
    jump.create_target(target)
    hook.insert_rule(jump)


ANY = {"0.0.0.0/0.0.0.0", "0.0.0.0/0", "::/0"}


def _is_plain_jump(rule: Any) -> bool:
    return bool(
        not rule.matches
        and rule.src in ANY
        and rule.dst in ANY
        and not rule.in_interface
        and not rule.out_interface
        and rule.protocol in {"ip", "ipv6", "all", None, ""}
    )


def _new_rule(iptc: Any, family: Family) -> Any:
    return iptc.Rule() if family == 4 else iptc.Rule6()


_RULE_FIELDS = {
    "-s": "src",
    "-d": "dst",
    "-i": "in_interface",
    "-o": "out_interface",
    "-p": "protocol",
}


def _to_iptc(iptc: Any, text: Rule, family: Family = 4) -> Any:
    """Translate one rule in ip(6)tables-save syntax into a python-iptables Rule(6)."""
    tokens = text.split()
    rule = _new_rule(iptc, family)
    current: Any = None  # the match or target that `--option value` pairs belong to
    negate = False
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "!":
            negate = True
            i += 1
            continue
        value = tokens[i + 1] if i + 1 < len(tokens) else ""
        has_value = value not in {"", "!"} and not value.startswith("-")
        prefix = "!" if negate else ""
        if token in _RULE_FIELDS:
            setattr(rule, _RULE_FIELDS[token], prefix + value)
        elif token == "-m":
            current = rule.create_match(value)
        elif token == "-j":
            current = rule.create_target(value)
        elif token.startswith("--") and current is not None:
            current.set_parameter(token[2:], prefix + value if has_value else "")
        else:
            raise ValueError(f"unsupported token {token!r} in rule {text!r}")
        negate = False
        i += 2 if (token in _RULE_FIELDS or token in {"-m", "-j"} or has_value) else 1
    return rule


@contextlib.contextmanager
def _xtables_lock() -> Iterator[None]:
    try:
        fd = os.open(XTABLES_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        yield  # no writable /run: nobody else can hold the lock either
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
