"""Fixtures for the network-namespace suite: a fresh pod per test, always removed."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from podlab.lab import PodLab
from tests.netns.standin import StandIn, set_up


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[PodLab]:
    """A node and a pod namespace, the pod's volumes, and a small blank qcow2 base image served
    over HTTP from the node (nothing boots in this suite)."""
    image = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    with PodLab(tmp_path / "lab", image) as pod:
        yield pod


@pytest.fixture
def standin(lab: PodLab) -> Iterator[StandIn]:
    """After `setup` (NAT_EXCLUDE=tcp/9100), a stand-in VM with VM_IP, serving TCP and UDP on
    80, 7, 5900 and 9100."""
    standin = StandIn(lab, set_up(lab, NAT_EXCLUDE="tcp/9100"))
    try:
        standin.configure()
        standin.serve(80, 7, 5900, 9100)
        yield standin
    finally:
        standin.close()
