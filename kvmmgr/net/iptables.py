"""The firewall plan installed with python-iptables (the legacy xtables backend), in a way a
re-run converges: our chains are flushed and filled again, table by table in one atomic
commit each; chains no longer planned are removed; each built-in chain keeps one jump to
ours; rules of other owners are left alone."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kvmmgr.errors import StepError
from kvmmgr.net.firewall import PREFIX, TABLE_NAMES, TABLES, Chain, Family, FirewallPlan, Rule
from kvmmgr.system.libload import load_iptc

XTABLES_LOCK = "/run/xtables.lock"  # the lock the iptables commands take; we take it too


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
