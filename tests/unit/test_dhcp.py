"""The dnsmasq configuration: every NIC of the VM, nothing else, every option it needs."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Interface
from pathlib import Path

from kvmmgr.net.dhcp import DhcpPlan
from kvmmgr.net.dhcpguard import GuardedInterface, build_guard
from kvmmgr.net.model import PodDns, Route
from kvmmgr.net.nics import MacvtapLink
from tests.unit.factories import interface, plan, pod_facts
from tests.unit.test_nics import SECONDARY


def dhcp(env: dict[str, str] | None = None, **facts: object) -> DhcpPlan:
    built = plan(env, pod_facts(**facts) if facts else None).dhcp
    assert built is not None
    return built


def test_dnsmasq_configuration() -> None:
    config = dhcp()
    assert config.config_file == Path("/run/test-kvmmgr/dnsmasq.conf")
    assert config.argv == ("dnsmasq", "--conf-file=/run/test-kvmmgr/dnsmasq.conf")
    mac = plan().nics[0].guest.mac
    for expected in [
        "port=0",
        "user=dnsmasq",
        "group=nogroup",
        "interface=kvmbr0",
        "bind-interfaces",
        "except-interface=lo",
        "dhcp-ignore=tag:!known",
        "dhcp-range=set:nic0,192.168.254.2,static,255.255.255.252,infinite",
        f"dhcp-host={mac},set:nic0,192.168.254.2,vm-0,infinite",
        "dhcp-option=tag:nic0,option:router,192.168.254.1",
        "dhcp-option=option:dns-server,10.96.0.10,10.96.0.11",
        "dhcp-option=option:domain-search,default.svc.cluster.local,svc.cluster.local",
        "dhcp-option=tag:nic0,option:mtu,1450",
        "dhcp-leasefile=/run/test-kvmmgr/dnsmasq.leases",
        "pid-file=/run/test-kvmmgr/dnsmasq.pid",
    ]:
        assert expected in config.config
    assert "log-dhcp" not in config.config
    assert not any(
        line.startswith("shared-network") or "enable-ra" in line for line in config.config
    )


def test_debug_and_extra_options() -> None:
    config = dhcp({"DEBUG": "1", "DNSMASQ_OPTS": "--dhcp-option=42,10.0.0.5"})
    assert "log-dhcp" in config.config
    assert config.argv[-1] == "--dhcp-option=42,10.0.0.5"


def test_pod_without_nameservers_offers_none() -> None:
    config = dhcp(dns=PodDns((), (), ()))
    assert "dhcp-option=option:dns-server" in config.config  # empty: dnsmasq sends no DNS
    assert not any("domain-search" in line for line in config.config)


def test_bridge_mode_serves_the_pod_subnet_from_a_link_local_address() -> None:
    config = dhcp({"NET_MODE": "bridge"})
    assert "shared-network=kvmbr0,10.244.1.7" in config.config
    assert "dhcp-range=set:nic0,10.244.1.7,static,255.255.255.0,infinite" in config.config
    assert "dhcp-option=tag:nic0,option:router,10.244.1.1" in config.config


def test_routed_cni_gets_classless_static_routes() -> None:
    calico = interface(
        address="10.244.7.3/32",
        gateway="169.254.1.1",
        routes=(Route(IPv4Network("169.254.1.1/32"), None),),
    )
    config = dhcp({"NET_MODE": "bridge"}, interfaces=(calico,))
    routes = "169.254.1.1/32,0.0.0.0,0.0.0.0/0,169.254.1.1"
    assert f"dhcp-option=tag:nic0,option:classless-static-route,{routes}" in config.config
    assert f"dhcp-option=tag:nic0,249,{routes}" in config.config


def test_a_nic_without_the_default_route_gets_no_router() -> None:
    config = dhcp({"ATTACH_IFACES": "eth0:nat net1:bridge"}, interfaces=(interface(), SECONDARY))
    assert "interface=kvmbr1" in config.config
    assert "dhcp-option=tag:nic1,option:router" in config.config  # empty: none
    assert (
        "dhcp-option=tag:nic1,option:classless-static-route,10.20.0.0/16,10.10.0.1" in config.config
    )


def test_dual_stack_nat_adds_router_advertisements_and_dhcpv6() -> None:
    dual = interface(
        addresses6=(IPv6Interface("fd00:10:244::10/64"),), gateway6=IPv6Address("fd00:10:244::1")
    )
    dns = PodDns((IPv4Address("10.96.0.10"),), ("svc.cluster.local",), (IPv6Address("fd00::53"),))
    config = dhcp(interfaces=(dual,), dns=dns)
    mac = plan(facts=pod_facts(interfaces=(dual,))).nics[0].guest.mac
    assert (
        f"dhcp-host={mac},set:nic0,192.168.254.2,[fd00:6b76:6d::2],vm-0,infinite" in config.config
    )
    assert "enable-ra" in config.config
    assert "dhcp-range=set:nic0v6,fd00:6b76:6d::2,fd00:6b76:6d::2,64,infinite" in config.config
    assert "dhcp-option=tag:nic0v6,option6:dns-server,[fd00::53]" in config.config


def test_search_domains_that_are_not_dns_names_are_left_out_of_both_families() -> None:
    dual = interface(
        addresses6=(IPv6Interface("fd00:10:244::10/64"),), gateway6=IPv6Address("fd00:10:244::1")
    )
    bad = ("x" * 64 + ".example", "bücher.example", "-lead.example")
    dns = PodDns((IPv4Address("10.96.0.10"),), bad, ())
    lines = dhcp(interfaces=(dual,), dns=dns).config
    assert not any("domain-search" in line or "domain-name" in line for line in lines)
    dns = PodDns((IPv4Address("10.96.0.10"),), (*bad, "svc.cluster.local"), ())
    lines = dhcp(interfaces=(dual,), dns=dns).config
    assert "dhcp-option=option:domain-search,svc.cluster.local" in lines
    assert "dhcp-option=tag:nic0v6,option6:domain-search,svc.cluster.local" in lines


def test_the_dhcp_guard_ruleset() -> None:
    guard = build_guard([GuardedInterface("eth0"), GuardedInterface("net1")])
    assert guard.ruleset.splitlines()[:2] == [
        "table netdev kvmmgr {}",
        "delete table netdev kvmmgr",
    ]
    for iface in ("eth0", "net1"):
        for hook in ("ingress", "egress"):
            assert (
                f'type filter hook {hook} device "{iface}" priority 0; policy accept;'
                in guard.ruleset
            )
    assert guard.ruleset.count("udp dport { 67, 68 } drop") == 4
    assert plan({"NET_MODE": "bridge"}).dhcp_guard == build_guard([GuardedInterface("eth0")])
    macvtap = plan({"NET_MODE": "macvtap"})
    nic = macvtap.nics[0]
    assert isinstance(nic.link, MacvtapLink)
    assert macvtap.dhcp_guard is not None
    inside = (
        f"ether saddr != {{ {nic.guest.mac}, {nic.link.server_mac} }} udp dport {{ 67, 68 }} drop"
    )
    assert inside in macvtap.dhcp_guard.ruleset  # only in: the server's answer to the VM
    assert macvtap.dhcp_guard.ruleset.count(inside) == 1
