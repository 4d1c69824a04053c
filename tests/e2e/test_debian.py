"""The real guest: Debian 12 with its own systemd, cloud-init 22.4, qemu-guest-agent and SSH
(podlab/debian, built once into a cache outside the clone), booted by `kvm-manager run` in a
pod namespace under TCG. Each class shares one boot (about 70 s) among its checks, which run
in the order written; the guest is looked at over SSH with a key that cloud-init installed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from kvmmgr.errors import EXIT_NOT_READY, EXIT_OK
from podlab import debian
from podlab.lab import NAMESERVERS, SEARCH, VM_GW, VM_IP, KvmManager, PodLab
from podlab.ssh import KeyPair, Ssh

RESPONDERS_LISTEN = (
    "for i in $(seq 200); do ss -Hltn sport = :80 | grep -q . && ss -Hlun sport = :7 | "
    "grep -q . && exit 0; sleep 0.5; done; systemctl status kvmtest-http kvmtest-udpecho; exit 1"
)
HOSTNAME = "debian-e2e"  # the metadata's, not the pod's (kvmtest-0)
# manage_etc_hosts: sudo looks its host name up, and the lab's pod nameservers never answer.
CLOUD_CONFIG = """#cloud-config
manage_etc_hosts: true
write_files:
  - path: /etc/kvmtest/written
    content: "written by write_files\\n"
runcmd:
  - [sh, -c, "echo runcmd $(cat /proc/sys/kernel/random/boot_id) >> /var/lib/kvmtest-runcmd"]
"""
DATA_DISK = "/dev/disk/by-id/virtio-kvmdata1"  # VM_DATA_DISKS' first disk, by its serial
# An appliance's data disk as user-data sets it up: made ext4 on the first boot that finds it
# blank (bootcmd runs at every boot), and put in fstab by label (mounts).
DATA_DISK_CONFIG = f"""bootcmd:
  - [sh, -c, "blkid {DATA_DISK} || mkfs.ext4 -q -L kvmdata {DATA_DISK}"]
mounts:
  - [LABEL=kvmdata, /data, ext4, "defaults,nofail", "0", "2"]
"""
SCRIPT = '#!/bin/sh\necho "script ran as $(id -un)" > /var/lib/kvmtest-script\n'


def user_data(data_disk: bool) -> str:
    """A #cloud-config and a shell script, as MIME multipart (cloud-init runs both)."""
    message = MIMEMultipart()
    config = CLOUD_CONFIG + (DATA_DISK_CONFIG if data_disk else "")
    message.attach(MIMEText(config, "cloud-config"))
    message.attach(MIMEText(SCRIPT, "x-shellscript"))
    return message.as_string()


@pytest.fixture(scope="session")
def debian_image() -> Path:
    return debian.build()


class Guest:
    """One Debian VM in its pod: started, cloud-init finished, SSH login working."""

    def __init__(self, lab: PodLab, keys: KeyPair, **env: str) -> None:
        self.lab, self.keys, self.env = lab, keys, env
        self.ssh = Ssh(lab.net.node, lab.net.pod_ip, keys)
        self.vm = self.start()

    def start(self, **more: str) -> KvmManager:
        vm = self.lab.start(VM_MEMORY=debian.MEMORY_MIB, **{**self.env, **more})
        self.datasource = vm.console.wait_for(debian.CLOUD_INIT_DONE, debian.BOOT_TIMEOUT)[1]
        self.ssh.wait(120)
        # cloud-init may finish before the test responders listen: Python starts slowly
        # under TCG. (`ss` is iproute2's.)
        self.ssh.run(RESPONDERS_LISTEN, timeout=120)
        return vm

    def restart(self, **more: str) -> None:
        """A container restart: QEMU is killed (the guest's disk was synced), then started."""
        self.ssh.run("sync")
        self.vm.kill()
        self.vm = self.start(**more)

    def sh(self, command: str) -> str:
        return self.ssh.run(command)


def _guest(lab: PodLab, tmp: Path, **env: str) -> Guest:
    keys = KeyPair.create(tmp)
    (lab.volumes / "metadata").write_text(
        yaml.safe_dump({"hostname": HOSTNAME, "public_keys": [keys.public], "role": "e2e"})
    )
    (lab.volumes / "userdata").write_text(user_data("VM_DATA_DISKS" in env))
    return Guest(lab, keys, **env)


@pytest.fixture(scope="class")
def guest(
    request: pytest.FixtureRequest, debian_image: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Guest]:
    env: dict[str, str] = getattr(request.cls, "ENV", {})
    tmp = tmp_path_factory.mktemp(request.cls.__name__)
    with PodLab(tmp, debian_image) as lab:
        prepare = getattr(request.cls, "prepare", None)
        if prepare is not None:
            env = {**env, **prepare(lab)}
        yield _guest(lab, tmp, **env)


def assert_cloud_init_did_its_job(guest: Guest, datasource: str) -> None:
    """The datasource it picked, the metadata's host name, the key (the login proves it), the
    user-data's two parts, and a clean end."""
    assert guest.datasource.startswith(datasource), guest.datasource
    status = guest.sh("cloud-init status --long")
    assert "status: done" in status and datasource in status, status
    result = json.loads(guest.sh("cat /run/cloud-init/result.json"))["v1"]
    assert result["datasource"].startswith(datasource) and result["errors"] == [], result
    complaints = guest.sh("grep -E ' - .*\\[(WARNING|ERROR)\\]' /var/log/cloud-init.log || true")
    assert complaints == "", complaints
    assert guest.sh("hostname").strip() == HOSTNAME
    assert guest.keys.public in guest.sh("cat ~/.ssh/authorized_keys")
    assert guest.sh("cat /etc/kvmtest/written") == "written by write_files\n"
    assert len(guest.sh("cat /var/lib/kvmtest-runcmd").splitlines()) == 1
    assert guest.sh("cat /var/lib/kvmtest-script") == "script ran as root\n"


def assert_reachable_through_the_pod_ip(guest: Guest) -> None:
    lab = guest.lab
    page = lab.from_node.http(f"http://{lab.net.pod_ip}/")
    assert page["status"] == 200 and "kvmtest-debian" in page["body"], page
    assert lab.from_node.ping(lab.net.pod_ip)
    assert lab.from_node.udp(lab.net.pod_ip, 7)["reply"]


def nic(guest: Guest) -> dict[str, Any]:
    """The guest's view of its one NIC (by its MAC, whatever its name): `ip -j addr`."""
    found = [
        link for link in json.loads(guest.sh("ip -j addr show"))
        if link.get("link_type") == "ether"
    ]  # fmt: skip
    assert len(found) == 1, found
    link: dict[str, Any] = found[0]
    return link


def ipv4(link: dict[str, Any]) -> list[str]:
    return [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["family"] == "inet"]


def resolver(guest: Guest) -> tuple[list[str], list[str]]:
    """The nameservers and search domains of the guest's own resolver."""
    nameservers, search = [], []
    for line in guest.sh("cat /etc/resolv.conf").splitlines():
        words = line.split()
        if words[:1] == ["nameserver"]:
            nameservers.append(words[1])
        elif words[:1] == ["search"]:  # dhclient writes option 119's names absolute
            search = [domain.rstrip(".") for domain in words[1:]]
    return nameservers, search


class TestConfigDriveWithDhcp:
    """The default: a config-2 drive, DHCP on, a data disk. Then a container restart, then a
    shutdown."""

    ENV: ClassVar[dict[str, str]] = {"VM_DATA_DISKS": "1G"}

    def test_cloud_init_reads_the_config_drive(self, guest: Guest) -> None:
        assert_cloud_init_did_its_job(guest, "DataSourceConfigDrive")
        assert "source=/dev/sr0" in guest.datasource

    def test_the_guest_takes_the_pod_s_network_settings_over_dhcp(self, guest: Guest) -> None:
        link = nic(guest)
        assert ipv4(link) == [f"{VM_IP}/30"]
        assert link["mtu"] == guest.lab.net.mtu
        assert link["ifname"].startswith("en")  # a predictable name: matched by MAC, not eth0
        assert guest.sh("ip route show default").split()[:3] == ["default", "via", VM_GW]
        assert resolver(guest) == (list(NAMESERVERS), list(SEARCH))
        assert "DHCPACK" in guest.sh("journalctl -b --no-pager -o cat | grep -i dhc || true")
        assert_reachable_through_the_pod_ip(guest)

    def test_status_shows_what_the_guest_agent_says(self, guest: Guest) -> None:
        done = guest.lab.cli("status", "--json")
        assert done.returncode == EXIT_OK, done.stderr
        status = json.loads(done.stdout)
        assert (status["state"], status["agent"]) == ("running", "answers")
        os_info = status["guest"]["os"]
        assert os_info["id"] == "debian" and os_info["version"].startswith("12")
        assert status["guest"]["hostname"] == HOSTNAME
        addresses = [a for i in status["guest"]["interfaces"] for a in i["addresses"]]
        assert f"{VM_IP}/30" in addresses
        text = guest.lab.cli("status").stdout
        assert text.startswith("running\nguest agent: answers") and HOSTNAME in text

    @pytest.mark.parametrize(
        ("readiness", "status"),
        [("qemu", EXIT_OK), ("agent", EXIT_OK), ("tcp:22", EXIT_OK), ("tcp:81", EXIT_NOT_READY)],
    )
    def test_readiness(self, guest: Guest, readiness: str, status: int) -> None:
        done = guest.lab.cli("status", "--ready", READINESS=readiness)
        assert done.returncode == status, done.stdout + done.stderr

    def test_user_data_made_a_filesystem_on_the_data_disk(self, guest: Guest) -> None:
        assert int(guest.sh(f"lsblk -bdno SIZE {DATA_DISK}")) == 1 << 30
        mounted = guest.sh("findmnt -no SOURCE,FSTYPE,LABEL /data").split()
        assert mounted[1:] == ["ext4", "kvmdata"], mounted
        assert "LABEL=kvmdata" in guest.sh("cat /etc/fstab")

    def test_a_container_restart_keeps_the_instance_and_its_data(self, guest: Guest) -> None:
        instance = guest.sh("cat /var/lib/cloud/data/instance-id")
        boot_id = guest.sh("cat /proc/sys/kernel/random/boot_id")
        guest.sh("echo kept | sudo tee /var/lib/kvmtest-data /data/kept >/dev/null")
        size = int(guest.sh("df -B1 --output=size / | tail -1"))
        guest.restart(VM_DISK_SIZE="3G")  # raised at this start: the disk grows
        assert guest.sh("cat /proc/sys/kernel/random/boot_id") != boot_id  # a new boot...
        assert guest.sh("cat /var/lib/cloud/data/instance-id") == instance  # ...same instance
        assert len(guest.sh("cat /var/lib/kvmtest-runcmd").splitlines()) == 1  # no rerun
        assert guest.sh("cat /var/lib/kvmtest-data") == "kept\n"
        assert guest.sh("cat /data/kept") == "kept\n"  # the data disk, mounted by fstab
        assert "disk: reusing" in guest.vm.log.text and "(grown from 2.0 GiB to 3.0 GiB)" in (
            guest.vm.log.text
        )
        assert int(guest.sh("lsblk -bdno SIZE /dev/vda")) == 3 << 30
        grown = int(guest.sh("df -B1 --output=size / | tail -1"))
        assert grown > size + (800 << 20), (size, grown)  # growpart and resize2fs ran

    def test_shutdown_through_the_guest_agent(self, guest: Guest) -> None:
        done = guest.lab.cli("shutdown", "--timeout", "120")
        assert done.returncode == EXIT_OK, done.stdout + done.stderr
        assert "powered off (guest agent)" in done.stdout
        assert guest.vm.wait(60) == 0
        guest.vm.console.wait_for(r"reboot: Power down", 5)  # systemd's clean end


class TestNoCloudWithALargerDisk:
    """A cidata drive; the disk made larger than the base at creation; ACPI shutdown."""

    ENV: ClassVar[dict[str, str]] = {"CONFIG_DRIVE_FORMAT": "nocloud", "VM_DISK_SIZE": "4G"}

    def test_cloud_init_reads_the_nocloud_drive(self, guest: Guest) -> None:
        assert_cloud_init_did_its_job(guest, "DataSourceNoCloud")

    def test_dhcp_gives_the_pod_s_settings(self, guest: Guest) -> None:
        assert ipv4(nic(guest)) == [f"{VM_IP}/30"]
        assert resolver(guest) == (list(NAMESERVERS), list(SEARCH))
        assert_reachable_through_the_pod_ip(guest)

    def test_the_root_filesystem_grew_to_the_disk(self, guest: Guest) -> None:
        assert int(guest.sh("lsblk -bdno SIZE /dev/vda")) == 4 << 30
        assert int(guest.sh("df -B1 --output=size / | tail -1")) > 3.5 * (1 << 30)

    def test_resize_grows_the_disk_under_the_running_guest(self, guest: Guest) -> None:
        before = int(guest.sh("df -B1 --output=size / | tail -1"))
        # `kubectl exec POD -c vm -- kvm-manager resize --size 5G`: the container's env
        done = guest.lab.cli("resize", "--size", "5G", VM_DISK_SIZE="4G")
        assert done.returncode == EXIT_OK, done.stdout + done.stderr
        assert "grown from 4.0 GiB to 5.0 GiB; the guest sees it now" in done.stdout
        sectors = (5 << 30) // 512  # the kernel takes virtio's config change on a workqueue
        seen = f"[ $(cat /sys/block/vda/size) = {sectors} ]"
        guest.sh(f"for i in $(seq 50); do {seen} && break; sleep 0.2; done")
        assert int(guest.sh("lsblk -bdno SIZE /dev/vda")) == 5 << 30
        assert guest.sh("findmnt -no SOURCE /").strip() == "/dev/vda1"  # podlab/debian: one
        guest.sh("sudo growpart /dev/vda 1 && sudo resize2fs /dev/vda1")  # partition, ext4
        grown = int(guest.sh("df -B1 --output=size / | tail -1"))
        assert grown - before > 0.95 * (1 << 30), (before, grown)

    def test_shutdown_through_acpi_when_the_guest_runs_no_agent(self, guest: Guest) -> None:
        guest.sh("sudo systemctl stop qemu-guest-agent")
        assert json.loads(guest.lab.cli("status", "--json").stdout)["agent"] == "absent"
        done = guest.lab.cli("shutdown", "--timeout", "120")
        assert done.returncode == EXIT_OK, done.stdout + done.stderr
        assert "powered off (ACPI)" in done.stdout
        assert guest.vm.wait(60) == 0


class TestStaticNetworkWithoutDhcp:
    """NO_DHCP: no dnsmasq; the guest configures itself from the drive's network data."""

    ENV: ClassVar[dict[str, str]] = {"NO_DHCP": "1"}

    def test_the_guest_configures_itself_from_the_drive(self, guest: Guest) -> None:
        assert "dhcp: off (NO_DHCP)" in guest.vm.log.text
        link = nic(guest)
        assert ipv4(link) == [f"{VM_IP}/30"] and link["mtu"] == guest.lab.net.mtu
        assert guest.sh("ip route show default").split()[:3] == ["default", "via", VM_GW]
        assert "inet static" in guest.sh("cat /etc/network/interfaces.d/50-cloud-init")
        assert_reachable_through_the_pod_ip(guest)


class TestUsersNetworkConfig:
    """NO_DHCP with the user's own network-config (NETWORKDATA_PATH) instead of ours."""

    ENV: ClassVar[dict[str, str]] = {"NO_DHCP": "1", "CONFIG_DRIVE_FORMAT": "nocloud"}

    @staticmethod
    def prepare(lab: PodLab) -> dict[str, str]:
        theirs = {
            "version": 2,
            "ethernets": {
                "lan0": {
                    "match": {"macaddress": "8e:61:d0:0d:8f:94"},  # kvmtest-0's derived MAC
                    "set-name": "lan0",
                    "addresses": [f"{VM_IP}/30"],
                    "gateway4": VM_GW,
                }
            },
        }
        path = lab.volumes / "networkdata"
        path.write_text(yaml.safe_dump(theirs))
        return {"NETWORKDATA_PATH": str(path)}

    def test_the_guest_takes_the_user_s_network_config(self, guest: Guest) -> None:
        link = nic(guest)
        assert link["ifname"] == "lan0" and ipv4(link) == [f"{VM_IP}/30"]
        assert_reachable_through_the_pod_ip(guest)
