"""Fixtures for the network-namespace suite: a fresh pod per test, always removed."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from podlab.lab import PodLab


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[PodLab]:
    """A node and a pod namespace, the pod's volumes, and a small blank qcow2 base image served
    over HTTP from the node (nothing boots in this suite)."""
    image = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    with PodLab(tmp_path / "lab", image) as pod:
        yield pod
