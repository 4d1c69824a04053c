"""`status`'s check, pure: each part of the VM as planned against what was seen of it. The
same checks against a real pod: tests/netns/test_health.py."""

from __future__ import annotations

import dataclasses
import json
from ipaddress import IPv4Interface
from typing import Any

from kvmmgr.health.check import Health, Part, Problem, Repair, check
from kvmmgr.health.seen import ANY_DEVICE, LinkSeen, Seen
from kvmmgr.net.firewall import Family
from kvmmgr.plan import Plan
from tests.unit.factories import plan

BRIDGE_INDEX = 5


def installed(planned: Plan) -> dict[Family, str]:
    """ip(6)tables-save's output with the planned rules in place, and a foreign one."""
    saved: dict[Family, list[str]] = {}
    for family, table in planned.firewall.tables:
        lines = saved.setdefault(family, [])
        lines += [f"*{table}", ":PREROUTING ACCEPT [0:0]", "-A PREROUTING -j FOREIGN"]
        lines += [*planned.firewall.save_lines(table, family), "COMMIT"]
    return {family: "\n".join(lines) + "\n" for family, lines in saved.items()}


def healthy(planned: Plan) -> Seen:
    """What a pod whose VM runs as planned (one NAT NIC) shows."""
    gateway = IPv4Interface("192.168.254.1/30")
    return Seen(
        links={
            "eth0": LinkSeen(2, "veth", None, True, True, frozenset()),
            "kvmbr0": LinkSeen(BRIDGE_INDEX, "bridge", None, True, True, frozenset({gateway})),
            "kvmtap0": LinkSeen(6, "tun", "kvmbr0", True, True, frozenset()),
        },
        sysctls={name: "1" for sysctl in planned.sysctls for name in sysctl.names},
        dnsmasq=(123,),
        dhcp_devices=frozenset({BRIDGE_INDEX}),
        firewall=installed(planned),
        guard=None,
    )


def problems(parts: tuple[Part, ...]) -> dict[str, list[tuple[str, bool]]]:
    return {p.name: [(q.what, q.heals) for q in p.problems] for p in parts if p.problems}


def test_a_vm_as_planned_has_no_problem_and_status_says_nothing_more() -> None:
    planned = plan()
    parts = check(planned, healthy(planned))
    assert {p.name: p.state for p in parts} == {
        "network": "ok",
        "firewall": "ok",
        "dhcp-guard": "off",  # NAT mode: DHCP never reaches the pod's link
        "dhcp": "ok",
        "web-console": "off",  # WEB_CONSOLE_PORT unset
    }
    assert Health(parts).lines() == [] and not Health(parts).failed


def test_a_web_console_whose_server_died_heals() -> None:
    planned = plan({"WEB_CONSOLE_PORT": "6080"})
    seen = dataclasses.replace(healthy(planned), web_console=(321,))
    assert {p.name: p.state for p in check(planned, seen)}["web-console"] == "ok"
    dead = dataclasses.replace(seen, web_console=())
    assert problems(check(planned, dead)) == {
        "web-console": [("the web console's server is not running", True)]
    }


def test_a_dead_dnsmasq_or_one_that_listens_elsewhere() -> None:
    planned = plan()
    seen = healthy(planned)
    dead = dataclasses.replace(seen, dnsmasq=())  # a zombie is not seen either
    assert problems(check(planned, dead)) == {"dhcp": [("dnsmasq is not running", True)]}
    twice = dataclasses.replace(seen, dnsmasq=(123, 456))
    (what, heals), *_ = problems(check(planned, twice))["dhcp"]
    assert what.startswith("2 dnsmasq processes serve") and heals
    # Bound to a bridge deleted since (and made again: another index), or to nothing.
    for devices in (frozenset({4}), frozenset({ANY_DEVICE}), frozenset()):
        elsewhere = dataclasses.replace(seen, dhcp_devices=devices)
        assert problems(check(planned, elsewhere)) == {
            "dhcp": [("dnsmasq does not listen on kvmbr0 (UDP port 67)", True)]
        }
    no_dhcp = plan({"NO_DHCP": "1"})
    parts = check(no_dhcp, dataclasses.replace(healthy(no_dhcp), dnsmasq=()))
    assert {p.name: p.state for p in parts}["dhcp"] == "off"


def flushed(saved: str, table: str) -> str:
    """As after `iptables -t TABLE -F`: no rule left in any chain of the table."""
    lines, current = [], None
    for line in saved.splitlines():
        current = line[1:] if line.startswith("*") else current
        if not (current == table and line.startswith("-A ")):
            lines.append(line)
    return "\n".join(lines) + "\n"


def test_a_flushed_table_is_named_chain_by_chain() -> None:
    planned = plan()
    seen = healthy(planned)
    nat_flushed = dataclasses.replace(seen, firewall={4: flushed(seen.firewall[4], "nat")})
    found = problems(check(planned, nat_flushed))["firewall"]
    assert found == [
        ("iptables nat: KVMMGR-DNAT-eth0 is empty or missing (2 rules planned)", True),
        ("iptables nat: KVMMGR-OUTPUT is empty or missing (1 rule planned)", True),
        ("iptables nat: KVMMGR-POSTROUTING is empty or missing (2 rules planned)", True),
        ("iptables nat: KVMMGR-PREROUTING is empty or missing (1 rule planned)", True),
        ("iptables nat: OUTPUT does not jump to KVMMGR-OUTPUT", True),
        ("iptables nat: POSTROUTING does not jump to KVMMGR-POSTROUTING", True),
        ("iptables nat: PREROUTING does not jump to KVMMGR-PREROUTING", True),
    ]


def test_rules_out_of_order_or_foreign_to_the_plan() -> None:
    planned = plan()
    seen = healthy(planned)
    saved = seen.firewall[4]
    dnat = [line for line in saved.splitlines() if line.startswith("-A KVMMGR-DNAT-eth0")]
    swapped = saved.replace(f"{dnat[0]}\n{dnat[1]}", f"{dnat[1]}\n{dnat[0]}")
    stray = saved.replace("*nat\n", "*nat\n-A POSTROUTING -j KVMMGR-OLD\n")
    assert problems(check(planned, dataclasses.replace(seen, firewall={4: swapped}))) == {
        "firewall": [("iptables nat: KVMMGR-DNAT-eth0's rules are not the planned ones", True)]
    }
    assert problems(check(planned, dataclasses.replace(seen, firewall={4: stray}))) == {
        "firewall": [
            ("iptables nat: POSTROUTING holds 2 rules of ours, not the 1 planned", True),
        ]
    }


def test_the_tap_and_its_bridge() -> None:
    planned = plan()
    seen = healthy(planned)

    def with_tap(**changes: Any) -> Seen:
        links = dict(seen.links)
        links["kvmtap0"] = dataclasses.replace(links["kvmtap0"], **changes)
        return dataclasses.replace(seen, links=links)

    assert problems(check(planned, with_tap(master=None, up=False))) == {
        "network": [("kvmtap0 is not a port of kvmbr0", True), ("kvmtap0 is down", True)]
    }
    # What QEMU holds cannot be given back to it: a restart.
    assert problems(check(planned, with_tap(carrier=False))) == {
        "network": [("kvmtap0 has no carrier: QEMU no longer holds it", False)]
    }
    gone = dataclasses.replace(seen, links={k: v for k, v in seen.links.items() if k != "kvmtap0"})
    parts = check(planned, gone)
    assert problems(parts) == {
        "network": [("kvmtap0 is missing: the VM's NIC went with it", False)]
    }
    assert Health(parts).lines() == [
        "network: kvmtap0 is missing: the VM's NIC went with it (needs a container restart)"
    ]
    bridge = dataclasses.replace(seen.links["kvmbr0"], addresses=frozenset(), up=False)
    emptied = dataclasses.replace(seen, links={**seen.links, "kvmbr0": bridge})
    assert problems(check(planned, emptied)) == {
        "network": [("kvmbr0 is down", True), ("kvmbr0 lacks its address 192.168.254.1/30", True)]
    }


def test_a_sysctl_turned_off() -> None:
    planned = plan()
    seen = healthy(planned)
    off = dataclasses.replace(seen, sysctls={**seen.sysctls, "net/ipv4/ip_forward": "0"})
    assert problems(check(planned, off)) == {"network": [("net.ipv4.ip_forward is 0, not 1", True)]}
    # route_localnet: the bridge's own or the `all` one, as the step sets it.
    either = dataclasses.replace(
        seen, sysctls={**seen.sysctls, "net/ipv4/conf/kvmbr0/route_localnet": None}
    )
    assert problems(check(planned, either)) == {}


def nft(*chains: tuple[str, str, bool]) -> str:
    """`nft -j list ruleset netdev` with our table and these chains (name, hook, drops)."""
    items: list[dict[str, Any]] = [{"metainfo": {"version": "1.0.6"}}]
    items.append({"table": {"family": "netdev", "name": "kvmmgr", "handle": 2}})
    for name, hook, drops in chains:
        items.append({"chain": {"table": "kvmmgr", "name": name, "hook": hook, "prio": 0}})
        match = {"match": {"op": "==", "left": {"payload": {"protocol": "udp"}}, "right": 67}}
        rule = [match, {"drop": None}] if drops else [match]
        items.append({"rule": {"table": "kvmmgr", "chain": name, "expr": rule}})
    return json.dumps({"nftables": items})


def test_the_dhcp_guard_of_the_identity_modes() -> None:
    planned = plan({"NET_MODE": "bridge"})
    assert planned.dhcp_guard is not None
    seen = dataclasses.replace(healthy(planned), firewall=installed(planned))

    def guard(listed: str) -> list[tuple[str, bool]]:
        parts = check(planned, dataclasses.replace(seen, guard=listed))
        return problems(parts).get("dhcp-guard", [])

    assert guard(nft(("ingress-eth0", "ingress", True), ("egress-eth0", "egress", True))) == []
    assert guard(json.dumps({"nftables": [{"metainfo": {}}]})) == [
        ("the nftables table netdev kvmmgr is missing", True)
    ]
    assert guard(nft(("ingress-eth0", "ingress", True), ("egress-eth0", "egress", False))) == [
        ("netdev kvmmgr: chain egress-eth0 drops nothing", True)
    ]
    assert guard(nft(("ingress-eth0", "ingress", True))) == [
        ("netdev kvmmgr: chain egress-eth0 is missing", True)
    ]


def test_what_status_says_of_a_repair() -> None:
    found = (Problem("dnsmasq is not running"),)
    mended = Part("dhcp", True, (), Repair(found, "dnsmasq pid 7: ..."))
    failed = Part("dhcp", True, found, Repair(found, None, "dnsmasq exited with status 2"))
    assert mended.state == "repaired" and failed.state == "failed"
    assert Health((mended,)).lines() == [
        "dhcp: repaired (dnsmasq is not running): dnsmasq pid 7: ..."
    ]
    assert Health((failed,)).failed
    assert Health((failed,)).as_data() == {
        "parts": {
            "dhcp": {
                "state": "failed",
                "problems": ["dnsmasq is not running"],
                "heals": True,
                "repair": {
                    "found": ["dnsmasq is not running"],
                    "done": None,
                    "error": "dnsmasq exited with status 2",
                },
            }
        },
        "unchecked": None,
    }
