"""The NAT rule set as data: exactly the rules we mean, in iptables-save syntax."""

from __future__ import annotations

from ipaddress import IPv4Address

from kvmmgr.config import PortSpec
from kvmmgr.firewall import FirewallPlan, build_firewall


def _rules(**changes: object) -> FirewallPlan:
    args: dict[str, object] = {
        "pod_iface": "eth0",
        "pod_ip": IPv4Address("10.244.1.7"),
        "vm_ip": IPv4Address("192.168.254.2"),
        "vm_gw": IPv4Address("192.168.254.1"),
        "bridge": "kvmbr0",
        "keep_vnc": True,
        "exclude": (),
    }
    args.update(changes)
    return build_firewall(**args)  # type: ignore[arg-type]


def test_default_rule_set() -> None:
    plan = _rules()
    assert plan.save_lines("nat") == [
        "-A PREROUTING -j KVMMGR-PREROUTING",
        "-A OUTPUT -j KVMMGR-OUTPUT",
        "-A POSTROUTING -j KVMMGR-POSTROUTING",
        "-A KVMMGR-PREROUTING -d 10.244.1.7/32 -i eth0 -j KVMMGR-DNAT",
        "-A KVMMGR-OUTPUT -d 127.0.0.1/32 -j KVMMGR-DNAT",
        "-A KVMMGR-DNAT -p tcp -m tcp --dport 5900 -j RETURN",
        "-A KVMMGR-DNAT -j DNAT --to-destination 192.168.254.2",
        "-A KVMMGR-POSTROUTING -s 192.168.254.2/32 -o eth0 -j SNAT --to-source 10.244.1.7",
        "-A KVMMGR-POSTROUTING -s 127.0.0.0/8 -d 192.168.254.2/32 -o kvmbr0"
        " -j SNAT --to-source 192.168.254.1",
    ]
    assert plan.save_lines("filter") == [
        "-A INPUT -j KVMMGR-INPUT",
        "-A FORWARD -j KVMMGR-FORWARD",
        "-A KVMMGR-INPUT -d 127.0.0.0/8 -i kvmbr0 -m conntrack ! --ctstate RELATED,ESTABLISHED"
        " -j DROP",
        "-A KVMMGR-INPUT -i kvmbr0 -p tcp -m tcp --dport 5900 -j DROP",
        "-A KVMMGR-FORWARD ! -s 192.168.254.2/32 -i kvmbr0 -j DROP",
    ]
    assert plan.kept == ("tcp/5900",)
    assert plan.tables == ("nat", "filter")


def test_the_dnat_covers_every_protocol() -> None:
    dnat = [line for line in _rules().save_lines("nat") if "-j DNAT" in line]
    assert dnat == ["-A KVMMGR-DNAT -j DNAT --to-destination 192.168.254.2"]  # no -p: all


def test_no_vnc_forwards_5900_too() -> None:
    plan = _rules(keep_vnc=False)
    assert not any("5900" in line for table in plan.tables for line in plan.save_lines(table))
    assert plan.kept == ()


def test_exclusions_come_before_the_dnat() -> None:
    plan = _rules(exclude=(PortSpec("udp", 5353, 5353), PortSpec("tcp", 8000, 8010)))
    dnat_chain = [line for line in plan.save_lines("nat") if line.startswith("-A KVMMGR-DNAT")]
    assert dnat_chain == [
        "-A KVMMGR-DNAT -p tcp -m tcp --dport 5900 -j RETURN",
        "-A KVMMGR-DNAT -p udp -m udp --dport 5353 -j RETURN",
        "-A KVMMGR-DNAT -p tcp -m tcp --dport 8000:8010 -j RETURN",
        "-A KVMMGR-DNAT -j DNAT --to-destination 192.168.254.2",
    ]
    assert plan.kept == ("tcp/5900", "udp/5353", "tcp/8000-8010")


def test_one_jump_per_builtin_chain() -> None:
    plan = _rules()
    hooks = [chain.hook for chain in plan.chains if chain.hook]
    assert len(hooks) == len(set(hooks))
    assert all(chain.name.startswith("KVMMGR-") for chain in plan.chains)
