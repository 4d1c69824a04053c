"""What was observed of the pod (pod.py), as data: the input of the plan, with the settings."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network

from kvmmgr.net.model import PodDns, PodInterface

KVM = "/dev/kvm"
TUN = "/dev/net/tun"  # opened by kvm-manager only, for the taps it hands QEMU
VHOST_NET = "/dev/vhost-net"


@dataclass(frozen=True)
class Limits:
    memory_mib: int | None
    cpus: int | None


@dataclass(frozen=True)
class Devices:
    kvm: bool  # /dev/kvm opens and the CPU advertises vmx/svm
    vhost_net: bool  # /dev/vhost-net opens; QEMU 7.2 crashes when asked for vhost without it
    # How QEMU, which is not root, may open each device that opens: the group its mode lets
    # read and write it (QEMU joins it); absent: everyone may; in root_only: nobody but root.
    groups: tuple[tuple[str, int], ...] = ()
    root_only: tuple[str, ...] = ()

    def group_of(self, device: str) -> int | None:
        return dict(self.groups).get(device)


@dataclass(frozen=True)
class Identity:
    """Who QEMU runs as: QEMU_USER, looked up in the container's /etc/passwd."""

    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class PodFacts:
    hostname: str
    interfaces: tuple[PodInterface, ...]  # the ones given to the VM, in order
    networks: tuple[IPv4Network, ...]  # every IPv4 subnet and route of the pod: the VM's avoid them
    dns: PodDns
    limits: Limits
    devices: Devices
    qemu_user: Identity
