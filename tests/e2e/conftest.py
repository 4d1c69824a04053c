"""The e2e suite: a real guest (podlab/guest, built once per session) booted by
`kvm-manager run` inside a pod namespace, under TCG."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from podlab import guest
from podlab.console import marker
from podlab.lab import KvmManager, PodLab

BOOT_TIMEOUT = 120.0  # typically 8-12 s under TCG; generous for a loaded CI machine
CGI_RETRIES = 4  # more tries of a CGI request that timed out


@pytest.fixture(scope="session")
def guest_image() -> Path:
    return guest.build()


@pytest.fixture
def lab(guest_image: Path, tmp_path: Path) -> Iterator[PodLab]:
    with PodLab(tmp_path, guest_image) as pod:
        yield pod


def boot(lab: PodLab, **env: str | None) -> KvmManager:
    """Start `kvm-manager run` and wait until the guest's services listen."""
    vm = lab.start(**env)
    vm.console.wait_for(r"^KVMTEST_READY ", BOOT_TIMEOUT)
    return vm


def guest_sh(lab: PodLab, command: str) -> str:
    """Run a shell command in the guest through its test-only CGI, via the pod IP. A request
    that times out is made again: under TCG on a loaded machine the guest's fork and exec of
    a CGI can take longer than the prober's 3 s (seen once in CI). Any answer is final."""
    url = f"http://{lab.net.pod_ip}/cgi-bin/sh?{quote(command)}"
    answer = lab.from_node.http(url)
    for _ in range(CGI_RETRIES):
        if answer["status"] is not None:
            break
        answer = lab.from_node.http(url)
    assert answer["status"] == 200, answer
    body: str = answer["body"]
    return body


def lease(vm: KvmManager) -> dict[str, str]:
    return marker(vm.console.wait_for(r"^KVMTEST_DHCP ", BOOT_TIMEOUT))
