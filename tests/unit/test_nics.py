"""The VM's NICs as planned from the pod's interfaces, in each mode."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface

import pytest

from kvmmgr.errors import ConfigError
from kvmmgr.net.model import Route, derive_mac
from kvmmgr.net.nics import BridgeLink, MacvtapLink, NatLink, NicPlan
from tests.unit.factories import interface, plan, pod_facts

CALICO_GATEWAY = IPv4Address("169.254.1.1")
SECONDARY = interface(
    "net1",
    "10.10.0.5/24",
    gateway=None,
    routes=(Route(IPv4Network("10.20.0.0/16"), IPv4Address("10.10.0.1")),),
    index=3,
    mac="0a:58:0a:0a:00:05",
)


def nics(env: dict[str, str] | None = None, **facts: object) -> tuple[NicPlan, ...]:
    return plan(env, pod_facts(**facts) if facts else None).nics


def test_nat_nic() -> None:
    (nic,) = nics()
    assert nic.mode == "nat" and nic.pod.name == "eth0"
    assert nic.guest.address == IPv4Interface("192.168.254.2/30")
    assert nic.guest.router == IPv4Address("192.168.254.1")
    assert nic.guest.routes == () and nic.guest.mtu == 1450
    assert nic.guest.mac == derive_mac("vm-0")
    assert isinstance(nic.link, NatLink)
    assert (nic.link.bridge, nic.link.tap) == ("kvmbr0", "kvmtap0")
    assert nic.link.pod_address == IPv4Interface("10.244.1.7/24")
    assert nic.guest.address6 is None and nic.link.gateway6 is None


def test_pod_ip_and_selected_network_pick_among_addresses() -> None:
    many = interface(addresses=(IPv4Interface("10.244.1.7/24"), IPv4Interface("172.16.0.9/24")))
    assert nics(interfaces=(many,))[0].link.pod_address == IPv4Interface("10.244.1.7/24")  # type: ignore[union-attr]
    picked = nics({"POD_IP": "172.16.0.9"}, interfaces=(many,))[0]
    assert picked.link.pod_address == IPv4Interface("172.16.0.9/24")  # type: ignore[union-attr]
    selected = nics({"SELECTED_NETWORK": "172.16.0.0/16"}, interfaces=(many,))[0]
    assert selected.link.pod_address == IPv4Interface("172.16.0.9/24")  # type: ignore[union-attr]
    noted = plan({"SELECTED_NETWORK": "192.0.2.0/24"}, pod_facts(interfaces=(many,)))
    assert any("SELECTED_NETWORK 192.0.2.0/24 holds no address of eth0" in n for n in noted.notes)


def test_pod_ip_that_is_on_no_interface() -> None:
    with pytest.raises(ConfigError, match=r"POD_IP='10.244.1.9': expected one of the addresses"):
        plan({"POD_IP": "10.244.1.9"})


def test_vm_network_overlapping_the_pod_subnet_or_a_route() -> None:
    with pytest.raises(
        ConfigError, match=r"VM_IP='10.244.1.2'.*overlaps the pod's network on eth0"
    ):
        plan({"VM_IP": "10.244.1.2", "VM_GW": "10.244.1.1"})
    routed = pod_facts(networks=(IPv4Network("192.168.0.0/16"),))
    with pytest.raises(ConfigError, match=r"overlaps a route of the pod 192.168.0.0/16"):
        plan(facts=routed)


def test_bridge_nic_takes_the_pod_identity() -> None:
    (nic,) = nics({"NET_MODE": "bridge"})
    assert nic.mode == "bridge"
    assert nic.guest.address == IPv4Interface("10.244.1.7/24")
    assert nic.guest.mac == "0a:58:0a:f4:01:07"  # the pod's own
    assert nic.guest.router == IPv4Address("10.244.1.1")
    assert nic.guest.routes == ()  # the router alone does: no option 121
    assert isinstance(nic.link, BridgeLink)
    assert nic.link.server == IPv4Interface("169.254.75.10/32")
    assert (nic.dhcp_link, nic.link.server) == ("kvmbr0", IPv4Interface("169.254.75.10/32"))


def test_routed_cni_address_gets_classless_routes() -> None:
    calico = interface(
        address="10.244.7.3/32",
        gateway=str(CALICO_GATEWAY),
        routes=(Route(IPv4Network("169.254.1.1/32"), None),),
    )
    for mode in ("bridge", "macvtap"):
        (nic,) = nics({"NET_MODE": mode}, interfaces=(calico,))
        assert nic.guest.address == IPv4Interface("10.244.7.3/32")
        assert nic.guest.router == CALICO_GATEWAY
        assert nic.guest.routes == (
            Route(IPv4Network("169.254.1.1/32"), None),
            Route(IPv4Network("0.0.0.0/0"), CALICO_GATEWAY),
        )
    # NAT mode does not care: the VM's /30 and gateway are kvm-manager's own.
    (nat,) = nics(interfaces=(calico,))
    assert nat.guest.routes == () and nat.guest.router == IPv4Address("192.168.254.1")


def test_macvtap_nic() -> None:
    (nic,) = nics({"NET_MODE": "macvtap"})
    assert isinstance(nic.link, MacvtapLink)
    assert (nic.link.macvtap, nic.link.server_link, nic.link.fd) == ("kvmvtap0", "kvmdhcp0", 100)
    assert nic.dhcp_link == "kvmdhcp0" and nic.guest.mac == "0a:58:0a:f4:01:07"


def test_vm_mac_is_not_used_when_the_vm_takes_the_pods() -> None:
    p = plan({"NET_MODE": "bridge", "VM_MAC": "52:54:00:00:00:01"})
    assert p.nics[0].guest.mac == "0a:58:0a:f4:01:07"
    assert any("VM_MAC is not used" in note for note in p.notes)


def test_two_interfaces_each_in_its_mode() -> None:
    first, second = nics(
        {"ATTACH_IFACES": "eth0:nat net1:bridge"}, interfaces=(interface(), SECONDARY)
    )
    assert (first.mode, second.mode) == ("nat", "bridge")
    assert first.guest.router == IPv4Address("192.168.254.1")  # the default route's NIC
    assert second.guest.router is None  # no second default route
    assert second.guest.address == IPv4Interface("10.10.0.5/24")
    assert second.guest.routes == SECONDARY.routes  # what net1 reaches, via option 121
    assert isinstance(second.link, BridgeLink) and second.link.bridge == "kvmbr1"
    assert second.link.server == IPv4Interface("169.254.75.11/32")


def test_two_nat_nics_have_a_30_each_and_stable_macs() -> None:
    first, second = nics({"ATTACH_IFACES": "eth0 net1"}, interfaces=(interface(), SECONDARY))
    assert second.guest.address == IPv4Interface("192.168.254.6/30")
    assert isinstance(second.link, NatLink)
    assert second.link.gateway == IPv4Interface("192.168.254.5/30")
    assert second.guest.mac == derive_mac("vm-0/net1") != first.guest.mac
    assert second.guest.router is None
    assert second.guest.routes == (
        Route(IPv4Network("10.20.0.0/16"), IPv4Address("192.168.254.5")),
    )


def test_dual_stack_nat_gives_the_vm_an_ipv6_address() -> None:
    dual = interface(
        addresses6=(IPv6Interface("fd00:10:244::10/64"),), gateway6=IPv6Address("fd00:10:244::1")
    )
    (nic,) = nics(interfaces=(dual,))
    assert nic.guest.address6 == IPv6Interface("fd00:6b76:6d::2/64")
    assert isinstance(nic.link, NatLink)
    assert nic.link.gateway6 == IPv6Interface("fd00:6b76:6d::1/64")
    assert nic.link.pod_address6 == IPv6Interface("fd00:10:244::10/64")
    custom = nics({"VM_IP6": "fd12:3456::42"}, interfaces=(dual,))[0]
    assert custom.guest.address6 == IPv6Interface("fd12:3456::42/64")


def test_remembered_interfaces_keep_their_identity() -> None:
    remembered = dataclasses.replace(interface(), remembered=True)
    (nic,) = nics({"NET_MODE": "bridge"}, interfaces=(remembered,))
    assert nic.pod.remembered and nic.guest.address == IPv4Interface("10.244.1.7/24")
