"""The dnsmasq configuration: bridge only, DNS off, one MAC, every option the VM needs."""

from __future__ import annotations

from pathlib import Path

from tests.unit.factories import plan


def test_dnsmasq_configuration() -> None:
    dhcp = plan().dhcp
    assert dhcp is not None
    assert dhcp.config_file == Path("/run/test-kvmmgr/dnsmasq.conf")
    assert dhcp.argv == ("dnsmasq", "--conf-file=/run/test-kvmmgr/dnsmasq.conf")
    lines = dhcp.config
    mac = plan().vm.mac
    for expected in [
        "port=0",
        "user=root",
        "group=",
        "interface=kvmbr0",
        "bind-interfaces",
        "except-interface=lo",
        "dhcp-range=192.168.254.2,static,255.255.255.252,infinite",
        f"dhcp-host={mac},192.168.254.2,vm-0,infinite",
        "dhcp-option=option:router,192.168.254.1",
        "dhcp-option=option:dns-server,10.96.0.10,10.96.0.11",
        "dhcp-option=option:domain-search,default.svc.cluster.local,svc.cluster.local",
        "dhcp-option=option:mtu,1450",
        "dhcp-leasefile=/run/test-kvmmgr/dnsmasq.leases",
        "pid-file=/run/test-kvmmgr/dnsmasq.pid",
    ]:
        assert expected in lines
    assert "log-dhcp" not in lines
    # only the VM's MAC gets an address: one static range, one host
    assert sum(line.startswith("dhcp-range=") for line in lines) == 1
    assert sum(line.startswith("dhcp-host=") for line in lines) == 1


def test_debug_and_extra_options() -> None:
    dhcp = plan({"DEBUG": "1", "DNSMASQ_OPTS": "--dhcp-option=42,10.0.0.5"}).dhcp
    assert dhcp is not None
    assert "log-dhcp" in dhcp.config
    assert dhcp.argv[-1] == "--dhcp-option=42,10.0.0.5"


def test_pod_without_nameservers_offers_none() -> None:
    import dataclasses

    from kvmmgr.pod import PodDns
    from tests.unit.factories import pod_facts

    dhcp = plan(facts=pod_facts(dns=PodDns((), (), ()))).dhcp
    assert dhcp is not None
    assert "dhcp-option=option:dns-server" in dhcp.config  # empty: dnsmasq sends no DNS option
    assert not any("domain-search" in line for line in dhcp.config)
    assert dataclasses.is_dataclass(dhcp)
