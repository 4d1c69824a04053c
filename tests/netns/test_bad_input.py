"""Bad input in a real pod: one line on stderr naming what is wrong, exit status 2, and the
pod exactly as it was (links, addresses, routes, rules, sysctls, processes, files)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from kvmmgr.errors import EXIT_CONFIG
from podlab.lab import KVM_MANAGER, PodLab
from tests.netns.snapshot import pod_state


def _no_address_interface(lab: PodLab) -> None:
    lab.net.pod.ip("link", "add", "net1", "type", "veth", "peer", "name", "net1-peer")


def _route_over_the_vm_network(lab: PodLab) -> None:
    lab.net.pod.ip("route", "add", "192.168.0.0/16", "via", lab.net.node_ip)


def _invalid_metadata(lab: PodLab) -> None:
    (lab.volumes / "metadata").write_text("role: db\nname: a: b\nzone: x\n")


def _second_address(lab: PodLab) -> None:
    lab.net.pod.ip("addr", "add", "10.244.0.11/24", "dev", "eth0")


@dataclass(frozen=True)
class Case:
    name: str
    env: dict[str, str | None]
    says: str  # a fragment of the one line on stderr
    prepare: Callable[[PodLab], None] | None = None
    wrapper: tuple[str, ...] = field(default=())


CASES = [
    Case("unparsable VM_IP", {"VM_IP": "192.168.254.256"}, "VM_IP='192.168.254.256'"),
    Case("VM_IP not a usable /30 host", {"VM_IP": "192.168.254.3"}, "usable host of its /30"),
    Case("VM_GW outside the /30", {"VM_GW": "192.168.254.9"}, "VM_GW='192.168.254.9'"),
    Case(
        "/30 inside the pod subnet",
        {"VM_IP": "10.244.0.6", "VM_GW": "10.244.0.5"},
        "overlaps the pod's network on eth0 10.244.0.0/24",
    ),
    Case(
        "/30 under a pod route",
        {},
        "overlaps a route of the pod 192.168.0.0/16",
        _route_over_the_vm_network,
    ),
    Case("bad MAC", {"VM_MAC": "52:54:00:xx:00:01"}, "VM_MAC='52:54:00:xx:00:01'"),
    Case("multicast MAC", {"VM_MAC": "03:00:00:00:00:01"}, "a unicast MAC"),
    Case("zero memory", {"VM_MEMORY": "0"}, "VM_MEMORY='0'"),
    Case("negative CPUs", {"VM_CPUS": "-2"}, "VM_CPUS='-2'"),
    Case("CPUs not a number", {"VM_CPUS": "four"}, "VM_CPUS='four'"),
    Case("unknown accelerator", {"VM_ACCEL": "hvf"}, "VM_ACCEL='hvf'"),
    Case("KVM asked for but not usable", {"VM_ACCEL": "kvm"}, "VM_ACCEL='kvm'"),
    Case("bad NAT_EXCLUDE item", {"NAT_EXCLUDE": "tcp/9100 udp/x"}, "NAT_EXCLUDE='udp/x'"),
    Case("boolean neither true nor false", {"NO_DHCP": "sometimes"}, "NO_DHCP='sometimes'"),
    Case("missing pod interface", {"POD_IFACE": "eth9"}, "POD_IFACE='eth9'"),
    Case(
        "pod interface without IPv4",
        {"POD_IFACE": "net1"},
        "an interface with an IPv4 address",
        _no_address_interface,
    ),
    Case("POD_IP not on the interface", {"POD_IP": "10.244.0.99"}, "POD_IP='10.244.0.99'"),
    Case(
        "POD_IP picks one of two addresses, VM_IP is bad",
        {"POD_IP": "10.244.0.11", "VM_IP": "10.244.0.2", "VM_GW": "10.244.0.1"},
        "overlaps the pod's network",
        _second_address,
    ),
    Case("missing resolv.conf", {"RESOLV_CONF": "/nonexistent/resolv.conf"}, "no such file"),
    Case("invalid metadata YAML", {}, "metadata line 2: invalid YAML", _invalid_metadata),
    Case("missing local image", {"IMG_SOURCE": "/nonexistent/base.qcow2"}, "IMG_SOURCE="),
    Case("no image at all", {"IMG_SOURCE": None}, "IMG_SOURCE is not set"),
    Case("relative RUN_DIR", {"RUN_DIR": "run"}, "RUN_DIR='run'"),
    Case("VNC password too long", {"VNC_PASSWORD": "far-too-long"}, "VNC_PASSWORD has 12 bytes"),
    *(
        Case(
            f"no {cap} capability",
            {},
            f"the {cap} capability is missing",
            wrapper=("setpriv", f"--inh-caps=-{cap.lower()}", f"--bounding-set=-{cap.lower()}"),
        )
        for cap in ("NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE")
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(lab: PodLab, case: Case) -> None:
    if case.prepare:
        case.prepare(lab)
    before = pod_state(lab)
    if case.wrapper:
        done = subprocess.run(
            lab.net.pod.argv(*case.wrapper, KVM_MANAGER, "setup"),
            env=lab.env(**case.env),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    else:
        done = lab.cli("setup", **case.env)
    lines = done.stderr.splitlines()
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("kvm-manager: ")
    assert case.says in lines[0]
    assert done.stdout == ""
    assert pod_state(lab) == before
