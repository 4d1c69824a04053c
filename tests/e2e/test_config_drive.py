"""The config drive in its other format: NoCloud (label cidata) reaches the guest too."""

from __future__ import annotations

import yaml

from podlab.console import marker
from podlab.lab import HOSTNAME, PodLab
from tests.e2e.conftest import boot


def test_nocloud_drive_reaches_the_guest(lab: PodLab) -> None:
    vm = boot(lab, CONFIG_DRIVE_FORMAT="nocloud")
    assert marker(vm.console.wait_for(r"^KVMTEST_CFGDRIVE ", 5))["label"] == "cidata"
    assert marker(vm.console.wait_for(r"^KVMTEST_USERDATA_DONE ", 30))["rc"] == "0"
    ran = lab.from_node.http(f"http://{lab.net.pod_ip}/userdata.txt")
    assert ran["body"] == f"written-by-user-data on {HOSTNAME}\n"
    meta = lab.from_node.http(f"http://{lab.net.pod_ip}/cfg/meta-data")["body"]
    assert f"local-hostname: {HOSTNAME}" in meta and "role: e2e" in meta
    # The network config names the guest's own NIC by MAC, and tells it to ask DHCP.
    mac = marker(vm.console.wait_for(r"^KVMTEST_LINK ", 5))["mac"]
    network = yaml.safe_load(
        lab.from_node.http(f"http://{lab.net.pod_ip}/cfg/network-config")["body"]
    )
    eth0 = network["ethernets"]["eth0"]
    assert eth0["match"] == {"macaddress": mac}
    assert eth0["dhcp4"] is True and eth0["mtu"] == lab.net.mtu
