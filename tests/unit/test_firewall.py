"""The rule set as data: exactly the rules we mean, in ip(6)tables-save syntax."""

from __future__ import annotations

from ipaddress import IPv6Address, IPv6Interface

from kvmmgr.net.firewall import FirewallPlan
from tests.unit.factories import interface, plan, pod_facts
from tests.unit.test_nics import SECONDARY


def rules(env: dict[str, str] | None = None, **facts: object) -> FirewallPlan:
    return plan(env, pod_facts(**facts) if facts else None).firewall


def test_default_rule_set() -> None:
    firewall = rules()
    assert firewall.save_lines("nat") == [
        "-A PREROUTING -j KVMMGR-PREROUTING",
        "-A OUTPUT -j KVMMGR-OUTPUT",
        "-A POSTROUTING -j KVMMGR-POSTROUTING",
        "-A KVMMGR-PREROUTING -d 10.244.1.7/32 -i eth0 -j KVMMGR-DNAT-eth0",
        "-A KVMMGR-OUTPUT -d 127.0.0.1/32 -j KVMMGR-DNAT-eth0",
        "-A KVMMGR-POSTROUTING -s 192.168.254.2/32 -o eth0 -j SNAT --to-source 10.244.1.7",
        "-A KVMMGR-POSTROUTING -s 127.0.0.0/8 -d 192.168.254.2/32 -o kvmbr0"
        " -j SNAT --to-source 192.168.254.1",
        "-A KVMMGR-DNAT-eth0 -p tcp -m tcp --dport 5900 -j RETURN",
        "-A KVMMGR-DNAT-eth0 -j DNAT --to-destination 192.168.254.2",
    ]
    assert firewall.save_lines("filter") == [
        "-A INPUT -j KVMMGR-INPUT",
        "-A KVMMGR-INPUT -d 127.0.0.0/8 -i kvmbr0 -m conntrack ! --ctstate RELATED,ESTABLISHED"
        " -j DROP",
        "-A KVMMGR-INPUT -i kvmbr0 -p tcp -m tcp --dport 5900 -j DROP",
    ]
    assert firewall.save_lines("raw") == [  # before conntrack and NAT: no spoofed source
        "-A PREROUTING -j KVMMGR-PREROUTING",
        "-A KVMMGR-PREROUTING -s 0.0.0.0/32 -i kvmbr0 -p udp -m udp --sport 68 --dport 67"
        " -j RETURN",
        "-A KVMMGR-PREROUTING ! -s 192.168.254.2/32 -i kvmbr0 -j DROP",
    ]
    assert firewall.kept == ("tcp/5900",)
    assert firewall.tables == ((4, "raw"), (4, "nat"), (4, "filter"))


def test_the_dnat_covers_every_protocol() -> None:
    dnat = [line for line in rules().save_lines("nat") if "-j DNAT" in line]
    assert dnat == ["-A KVMMGR-DNAT-eth0 -j DNAT --to-destination 192.168.254.2"]  # no -p: all


def test_no_vnc_forwards_5900_too() -> None:
    firewall = rules({"NO_VNC": "1"})
    every = [
        line for family, table in firewall.tables for line in firewall.save_lines(table, family)
    ]
    assert not any("5900" in line for line in every)
    assert firewall.kept == ()


def test_the_web_console_and_metrics_ports_are_kept_like_vnc() -> None:
    firewall = rules({"WEB_CONSOLE_PORT": "6080", "METRICS_PORT": "9477"})
    assert firewall.kept == ("tcp/5900", "tcp/6080", "tcp/9477")
    lines = firewall.save_lines("nat") + firewall.save_lines("filter")
    assert "-A KVMMGR-DNAT-eth0 -p tcp -m multiport --dports 5900,6080,9477 -j RETURN" in lines
    for port in (5900, 6080, 9477):  # nor reachable from the VM
        assert f"-A KVMMGR-INPUT -i kvmbr0 -p tcp -m tcp --dport {port} -j DROP" in lines


def test_exclusions_come_before_the_dnat() -> None:
    firewall = rules({"NAT_EXCLUDE": "udp/5353 tcp/8000-8010"})
    chain = [line for line in firewall.save_lines("nat") if line.startswith("-A KVMMGR-DNAT")]
    assert chain == [
        "-A KVMMGR-DNAT-eth0 -p tcp -m multiport --dports 5900,8000:8010 -j RETURN",
        "-A KVMMGR-DNAT-eth0 -p udp -m udp --dport 5353 -j RETURN",
        "-A KVMMGR-DNAT-eth0 -j DNAT --to-destination 192.168.254.2",
    ]
    assert firewall.kept == ("tcp/5900", "udp/5353", "tcp/8000-8010")


def test_many_kept_ports_share_multiport_rules_of_15_slots() -> None:
    items = [f"tcp/{10000 + 2 * n}" for n in range(40)] + ["tcp/20000-20099", "udp/53"]
    firewall = rules({"NAT_EXCLUDE": " ".join(items)})
    returns = [line for line in firewall.save_lines("nat") if line.endswith("-j RETURN")]
    tcp = [line.split("--dports ")[1].split()[0].split(",") for line in returns if "-p tcp" in line]
    # 5900 and 40 ports (one slot each), then a range (two): 15 + 15 + 13 slots
    assert [len(ports) for ports in tcp] == [15, 15, 12]
    assert [port for ports in tcp for port in ports] == [
        "5900",
        *(str(10000 + 2 * n) for n in range(40)),
        "20000:20099",
    ]
    assert returns[-1] == "-A KVMMGR-DNAT-eth0 -p udp -m udp --dport 53 -j RETURN"


def test_one_jump_per_builtin_chain() -> None:
    firewall = rules()
    hooks = [(c.family, c.table, c.hook) for c in firewall.chains if c.hook]
    assert len(hooks) == len(set(hooks))
    assert all(chain.name.startswith("KVMMGR-") for chain in firewall.chains)


def test_two_nat_nics_each_with_their_dnat_and_snat() -> None:
    firewall = rules({"ATTACH_IFACES": "eth0 net1"}, interfaces=(interface(), SECONDARY))
    nat = firewall.save_lines("nat")
    assert "-A KVMMGR-PREROUTING -d 10.10.0.5/32 -i net1 -j KVMMGR-DNAT-net1" in nat
    assert "-A KVMMGR-DNAT-net1 -j DNAT --to-destination 192.168.254.6" in nat
    assert "-A KVMMGR-POSTROUTING -s 192.168.254.6/32 -o net1 -j SNAT --to-source 10.10.0.5" in nat
    assert "-A KVMMGR-OUTPUT -d 127.0.0.1/32 -j KVMMGR-DNAT-eth0" in nat  # the first NIC's
    assert "-A KVMMGR-PREROUTING ! -s 192.168.254.6/32 -i kvmbr1 -j DROP" in firewall.save_lines(
        "raw"
    )


def test_ipv6_nat_on_a_dual_stack_pod() -> None:
    dual = interface(
        addresses6=(IPv6Interface("fd00:10:244::10/64"),), gateway6=IPv6Address("fd00:10:244::1")
    )
    firewall = rules({"NAT_EXCLUDE": "udp/5353"}, interfaces=(dual,))
    assert (6, "nat") in firewall.tables and (6, "filter") in firewall.tables
    assert firewall.save_lines("nat", 6) == [
        "-A PREROUTING -j KVMMGR-PREROUTING",
        "-A POSTROUTING -j KVMMGR-POSTROUTING",
        "-A KVMMGR-PREROUTING -d fd00:10:244::10/128 -i eth0 -j KVMMGR-DNAT-eth0",
        "-A KVMMGR-POSTROUTING -s fd00:6b76:6d::2/128 -o eth0 -j SNAT --to-source fd00:10:244::10",
        "-A KVMMGR-DNAT-eth0 -p tcp -m tcp --dport 5900 -j RETURN",
        "-A KVMMGR-DNAT-eth0 -p udp -m udp --dport 5353 -j RETURN",
        "-A KVMMGR-DNAT-eth0 -j DNAT --to-destination fd00:6b76:6d::2",
    ]
    assert firewall.save_lines("raw", 6) == [
        "-A PREROUTING -j KVMMGR-PREROUTING",
        "-A KVMMGR-PREROUTING -s fe80::/10 -i kvmbr0 -j RETURN",
        "-A KVMMGR-PREROUTING -s ::/128 -i kvmbr0 -j RETURN",
        "-A KVMMGR-PREROUTING ! -s fd00:6b76:6d::2/128 -i kvmbr0 -j DROP",
    ]


def test_bridge_mode_has_no_nat_and_only_dhcp_into_the_container() -> None:
    firewall = rules({"NET_MODE": "bridge"})
    assert firewall.tables == ((4, "filter"),)
    assert firewall.save_lines("filter") == [
        "-A INPUT -j KVMMGR-INPUT",
        "-A KVMMGR-INPUT -i kvmbr0 -p udp -m udp --dport 67 -j RETURN",
        "-A KVMMGR-INPUT -i kvmbr0 -j DROP",
    ]
    macvtap = rules({"NET_MODE": "macvtap"}).save_lines("filter")
    assert "-A KVMMGR-INPUT -i kvmdhcp0 -j DROP" in macvtap


def test_the_metrics_port_is_kept_like_vnc() -> None:
    """METRICS_PORT: the metrics sidecar's port is the pod's, not the VM's, and the VM cannot
    reach it from its side of the bridge."""
    firewall = rules({"METRICS_PORT": "9477"})
    assert firewall.kept == ("tcp/5900", "tcp/9477")
    assert "-A KVMMGR-DNAT-eth0 -p tcp -m multiport --dports 5900,9477 -j RETURN" in (
        firewall.save_lines("nat")
    )
    assert firewall.save_lines("filter")[-2:] == [
        "-A KVMMGR-INPUT -i kvmbr0 -p tcp -m tcp --dport 5900 -j DROP",
        "-A KVMMGR-INPUT -i kvmbr0 -p tcp -m tcp --dport 9477 -j DROP",
    ]
    alone = rules({"METRICS_PORT": "9477", "NO_VNC": "1"})
    assert alone.kept == ("tcp/9477",)
    assert "-A KVMMGR-DNAT-eth0 -p tcp -m tcp --dport 9477 -j RETURN" in alone.save_lines("nat")


def test_without_metrics_port_nothing_changes() -> None:
    assert rules({"METRICS_PORT": ""}) == rules()
