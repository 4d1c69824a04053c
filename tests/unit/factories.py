"""Plain builders of Settings and PodFacts for the pure tests: no kernel, no files."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from kvmmgr.config import Settings, load_settings
from kvmmgr.facts import Devices, Identity, Limits, PodFacts
from kvmmgr.guest.drive import DriveInputs
from kvmmgr.net.model import PodDns, PodInterface, Route
from kvmmgr.plan import Plan, make_plan

BASE_ENV: Mapping[str, str] = {
    "IMG_SOURCE": "http://images.example/base.qcow2",
    "HOSTNAME": "vm-0",
    "RUN_DIR": "/run/test-kvmmgr",
}


def settings(**env: str) -> Settings:
    return load_settings({**BASE_ENV, **env})


def interface(
    name: str = "eth0",
    address: str = "10.244.1.7/24",
    gateway: str | None = "10.244.1.1",
    routes: tuple[Route, ...] = (),
    **changes: Any,
) -> PodInterface:
    default = (Route(IPv4Network("0.0.0.0/0"), IPv4Address(gateway)),) if gateway else ()
    built = PodInterface(
        name=name,
        index=2,
        addresses=(IPv4Interface(address),),
        addresses6=(),
        mac="0a:58:0a:f4:01:07",
        mtu=1450,
        routes=routes + default,
        gateway6=None,
    )
    return dataclasses.replace(built, **changes)


def pod_facts(**changes: Any) -> PodFacts:
    facts = PodFacts(
        hostname="vm-0",
        interfaces=(interface(),),
        networks=(IPv4Network("10.244.0.0/16"), IPv4Network("10.244.1.0/24")),
        dns=PodDns(
            nameservers=(IPv4Address("10.96.0.10"), IPv4Address("10.96.0.11")),
            search=("default.svc.cluster.local", "svc.cluster.local"),
            nameservers6=(),
        ),
        limits=Limits(memory_mib=None, cpus=None),
        devices=Devices(kvm=False, vhost_net=False),
        qemu_user=Identity("kvmmgr-qemu", 10107, 10107),
    )
    return dataclasses.replace(facts, **changes)


def plan(
    env: Mapping[str, str] | None = None,
    facts: PodFacts | None = None,
    inputs: DriveInputs | None = None,
    extra: tuple[str, ...] = (),
) -> Plan:
    return make_plan(
        settings(**(env or {})),
        facts or pod_facts(),
        inputs or DriveInputs(userdata=b"#!/bin/sh\necho hi\n", metadata={"role": "db"}),
        extra,
    )
