"""The chart's network values: modes, attached interfaces, IPv6, and what macvtap needs."""

from __future__ import annotations

import helm_python as helm
import pytest

from tests.chart.render import (
    DEFAULT_VM,
    chart,
    container,
    env_values,
    pod_spec,
    render,
    with_source,
)


def test_nat_by_default_sets_no_network_variables() -> None:
    env = env_values(render(with_source()).statefulset())
    assert not {"NET_MODE", "ATTACH_IFACES", "SELECTED_NETWORK", "VM_IP6"} & set(env)


def test_modes_interfaces_and_ipv6_reach_the_environment() -> None:
    values = with_source(
        {
            "vm": {
                "netMode": "bridge",
                "attachIfaces": ["eth0", "net1:nat"],
                "selectedNetwork": "10.244.0.0/16",
                "ip6": "fd12:3456::2",
            }
        }
    )
    env = env_values(render(values).statefulset())
    assert env["NET_MODE"] == "bridge"
    assert env["ATTACH_IFACES"] == "eth0 net1:nat"
    assert (env["SELECTED_NETWORK"], env["VM_IP6"]) == ("10.244.0.0/16", "fd12:3456::2")


@pytest.mark.parametrize(
    ("vm", "mknod"),
    [
        ({"netMode": "macvtap"}, True),
        ({"attachIfaces": ["eth0", "net1:macvtap"]}, True),
        ({"netMode": "macvtap", "attachIfaces": ["eth0:nat"]}, False),
        ({"netMode": "bridge"}, False),
    ],
)
def test_macvtap_adds_mknod_and_nothing_else(vm: dict[str, object], mknod: bool) -> None:
    capabilities = container(render(with_source({"vm": vm})).statefulset())["securityContext"][
        "capabilities"
    ]
    assert ("MKNOD" in capabilities["add"]) is mknod
    assert capabilities["drop"] == ["ALL"]


def test_macvtap_in_one_vm_only_touches_that_vm() -> None:
    values = with_source({"vms": {"tap": {"vm": {"netMode": "macvtap"}}}})
    rendered = render(values)
    caps = {
        name: container(rendered.statefulset(name))["securityContext"]["capabilities"]["add"]
        for name in (DEFAULT_VM, f"{DEFAULT_VM}-tap")
    }
    assert "MKNOD" not in caps[DEFAULT_VM] and "MKNOD" in caps[f"{DEFAULT_VM}-tap"]


def test_ipv6_forwarding_sysctl_is_opt_in() -> None:
    def sysctls(values: dict[str, object]) -> list[str]:
        context = pod_spec(render(values).statefulset())["securityContext"]
        return [s["name"] for s in context["sysctls"]]

    assert "net.ipv6.conf.all.forwarding" not in sysctls(with_source())
    on = with_source({"sysctls": {"enabled": True, "ipv6Forwarding": True}})
    assert "net.ipv6.conf.all.forwarding" in sysctls(on)


@pytest.mark.parametrize(
    "bad",
    [
        {"vm": {"netMode": "tun"}},
        {"vm": {"attachIfaces": ["eth0:vxlan"]}},
        {"vm": {"attachIfaces": "all"}},
    ],
)
def test_the_schema_refuses_bad_network_values(bad: dict[str, object]) -> None:
    with pytest.raises(helm.HelmValuesError):
        chart().validate_schema(with_source(bad))
