"""The VM's life in its pod: a container restart converges, a shutdown is an ACPI power-off."""

from __future__ import annotations

from typing import Any

from kvmmgr.errors import EXIT_NOT_RUNNING, EXIT_OK
from podlab.console import marker
from podlab.lab import VM_IP, PodLab
from tests.e2e.conftest import BOOT_TIMEOUT, boot, guest_sh, lease
from tests.netns.snapshot import addresses, links, our_rules, processes


def _pod_network_state(lab: PodLab) -> dict[str, list[Any]]:
    pod = lab.net.pod
    return {
        "nat": our_rules(pod, "nat"),
        "filter": our_rules(pod, "filter"),
        "addresses": addresses(pod),
        "links": [(link["name"], link["kind"], link["master"], link["mtu"]) for link in links(pod)],
        "dnsmasq": [p for p in processes(pod) if p.startswith("dnsmasq")],
    }


def test_container_restart_brings_the_same_vm_back(lab: PodLab) -> None:
    vm = boot(lab)
    first_lease = lease(vm)
    first_mac = marker(vm.console.wait_for(r"^KVMTEST_LINK ", 5))["mac"]
    before = _pod_network_state(lab)
    assert len(before["dnsmasq"]) == 1
    guest_sh(lab, "echo kept-across-restarts > /mnt/disk/marker.txt && sync")

    vm.kill()  # the container dies: QEMU is killed, dnsmasq is left behind
    again = boot(lab)
    assert lease(again)["ip"] == first_lease["ip"] == VM_IP
    assert marker(again.console.wait_for(r"^KVMTEST_LINK ", 5))["mac"] == first_mac
    assert _pod_network_state(lab) == before  # same rules, addresses, links; one dnsmasq
    assert guest_sh(lab, "cat /mnt/disk/marker.txt") == "kept-across-restarts\n"
    assert "disk: reusing" in again.log.text


def test_shutdown_powers_the_guest_off_through_acpi(lab: PodLab) -> None:
    vm = boot(lab)
    status = lab.cli("status")
    assert (status.returncode, status.stdout.strip()) == (EXIT_OK, "running")

    done = lab.cli("shutdown", "--timeout", "60")
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert "powered off (ACPI)" in done.stdout
    vm.console.wait_for(r"^KVMTEST_POWEROFF ", 5)  # the guest's own ACPI handler ran
    assert vm.wait(BOOT_TIMEOUT) == 0  # QEMU, the container's main process, exits 0

    after = lab.cli("status")
    assert (after.returncode, after.stdout.strip()) == (EXIT_NOT_RUNNING, "not running")
