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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from kvmmgr.config import PortSpec
from kvmmgr.errors import StepError

PREFIX = "KVMMGR-"
DNAT_CHAIN = PREFIX + "DNAT"
VNC_PORT = 5900
XTABLES_LOCK = "/run/xtables.lock"  # the lock the iptables commands take; we take it too

Rule = str  # in iptables-save syntax; no value holds a space


@dataclass(frozen=True)
class Chain:
    table: str
    name: str
    hook: str | None  # the built-in chain that jumps here; None for a chain only we jump to
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class FirewallPlan:
    chains: tuple[Chain, ...]
    kept: tuple[str, ...]  # what is not forwarded to the VM, e.g. tcp/5900

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(chain.table for chain in self.chains))

    def save_lines(self, table: str) -> list[str]:
        """Our part of `iptables-save -t TABLE`, in the order iptables-save prints it."""
        chains = [chain for chain in self.chains if chain.table == table]
        jumps = [f"-A {c.hook} -j {c.name}" for c in chains if c.hook]
        rules = [f"-A {c.name} {rule}" for c in chains for rule in c.rules]
        return jumps + rules


def build_firewall(
    *,
    pod_iface: str,
    pod_ip: IPv4Address,
    vm_ip: IPv4Address,
    vm_gw: IPv4Address,
    bridge: str,
    keep_vnc: bool,
    exclude: Sequence[PortSpec],
) -> FirewallPlan:
    """The whole rule set for NAT mode."""
    vm = f"{vm_ip}/32"
    kept = ([PortSpec("tcp", VNC_PORT, VNC_PORT)] if keep_vnc else []) + list(exclude)
    filter_input = [
        # route_localnet (needed for the loopback DNAT) would otherwise let the VM reach
        # services bound to the pod's 127.0.0.1: only replies may come in that way.
        f"-d 127.0.0.0/8 -i {bridge} -m conntrack ! --ctstate RELATED,ESTABLISHED -j DROP",
    ]
    if keep_vnc:
        # QEMU's VNC listens on every pod address; it is for the pod's side, not the VM's.
        filter_input.append(f"-i {bridge} -p tcp -m tcp --dport {VNC_PORT} -j DROP")
    chains = [
        Chain("nat", PREFIX + "PREROUTING", "PREROUTING", (
            f"-d {pod_ip}/32 -i {pod_iface} -j {DNAT_CHAIN}",
        )),
        # `kubectl port-forward` connects to 127.0.0.1 inside the pod: that is the VM too.
        Chain("nat", PREFIX + "OUTPUT", "OUTPUT", (
            f"-d 127.0.0.1/32 -j {DNAT_CHAIN}",
        )),
        Chain("nat", DNAT_CHAIN, None, (
            *(_return_for(spec) for spec in kept),
            f"-j DNAT --to-destination {vm_ip}",
        )),
        Chain("nat", PREFIX + "POSTROUTING", "POSTROUTING", (
            f"-s {vm} -o {pod_iface} -j SNAT --to-source {pod_ip}",
            # Loopback-sourced packets cannot leave the pod: the VM sees its gateway instead.
            f"-s 127.0.0.0/8 -d {vm} -o {bridge} -j SNAT --to-source {vm_gw}",
        )),
        Chain("filter", PREFIX + "INPUT", "INPUT", tuple(filter_input)),
        Chain("filter", PREFIX + "FORWARD", "FORWARD", (
            # The VM may only send from its own address.
            f"! -s {vm} -i {bridge} -j DROP",
        )),
    ]  # fmt: skip
    return FirewallPlan(tuple(chains), tuple(str(spec) for spec in kept))


def _return_for(spec: PortSpec) -> Rule:
    ports = str(spec.first) if spec.first == spec.last else f"{spec.first}:{spec.last}"
    return f"-p {spec.protocol} -m {spec.protocol} --dport {ports} -j RETURN"


def apply_firewall(plan: FirewallPlan) -> None:
    """Install the plan: one atomic commit per table; chains no longer planned are removed."""
    import iptc  # imported here: its import probes the system and takes a fraction of a second

    with _xtables_lock():
        for table_name in plan.tables:
            chains = [chain for chain in plan.chains if chain.table == table_name]
            table = iptc.Table(table_name)
            table.autocommit = False
            table.refresh()
            try:
                _fill_table(iptc, table, chains)
                table.commit()
            except (iptc.IPTCError, iptc.xtables.XTablesError, ValueError) as exc:
                table.refresh()  # drop the uncommitted changes
                raise StepError(f"could not install the {table_name} table rules: {exc}") from exc
            finally:
                table.autocommit = True


def _fill_table(iptc: Any, table: Any, chains: list[Chain]) -> None:
    planned = {chain.name for chain in chains}
    for chain in chains:  # all first: rules may jump to a chain planned after theirs
        if not table.is_chain(chain.name):
            table.create_chain(chain.name)
    for chain in chains:
        ours = iptc.Chain(table, chain.name)
        ours.flush()
        for tokens in chain.rules:
            ours.append_rule(_to_iptc(iptc, tokens))
    for chain in chains:
        if chain.hook:
            _ensure_single_jump(iptc, iptc.Chain(table, chain.hook), chain.name)
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


def _ensure_single_jump(iptc: Any, hook: Any, target: str) -> None:
    jumps = [rule for rule in hook.rules if rule.target.name == target]
    plain = [rule for rule in jumps if _is_plain_jump(rule)]
    if len(jumps) == 1 and plain:
        return
    for rule in jumps:
        hook.delete_rule(rule)
    jump = iptc.Rule()
    jump.create_target(target)
    hook.insert_rule(jump)


def _is_plain_jump(rule: Any) -> bool:
    return bool(
        not rule.matches
        and rule.src in {"0.0.0.0/0.0.0.0", "0.0.0.0/0"}
        and rule.dst in {"0.0.0.0/0.0.0.0", "0.0.0.0/0"}
        and not rule.in_interface
        and not rule.out_interface
        and rule.protocol in {"ip", "all", None, ""}
    )


_RULE_FIELDS = {
    "-s": "src",
    "-d": "dst",
    "-i": "in_interface",
    "-o": "out_interface",
    "-p": "protocol",
}


def _to_iptc(iptc: Any, text: Rule) -> Any:
    """Translate one rule in iptables-save syntax into a python-iptables Rule."""
    tokens = text.split()
    rule = iptc.Rule()
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
