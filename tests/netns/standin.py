"""A namespace standing in for the VM: a veth on the pod's bridge where QEMU's tap would be,
carrying the VM's MAC (and, once configured, VM_IP), with servers that say whom they saw."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from podlab.lab import VM_GW, VM_IP, PodLab, Prober
from podlab.netns import Namespace


class StandIn:
    def __init__(self, lab: PodLab, mac: str) -> None:
        self.ns = Namespace.create("vm")
        self.probe = Prober(self.ns)
        self.servers: list[subprocess.Popen[bytes]] = []
        try:
            # The pod's end joins the bridge where QEMU's tap would be.
            self.ns.ip(
                "link", "add", "eth0", "address", mac, "type", "veth",
                "peer", "name", "kvmvm0", "netns", lab.net.pod.name,
            )  # fmt: skip
            lab.net.pod.ip("link", "set", "kvmvm0", "master", "kvmbr0", "up")
            self.ns.ip("link", "set", "eth0", "up")
        except BaseException:
            self.close()
            raise

    def configure(self) -> None:
        """Address and route as the guest would take them from DHCP."""
        self.ns.ip("addr", "add", f"{VM_IP}/30", "dev", "eth0")
        self.ns.ip("route", "add", "default", "via", VM_GW)

    def serve(self, *ports: int) -> None:
        self.servers.append(self.probe.server("serve", "standin", *map(str, ports)))

    def close(self) -> None:
        for server in self.servers:
            server.kill()
            server.wait()
        self.ns.delete()


def set_up(lab: PodLab, **env: str) -> str:
    """`kvm-manager setup` in the pod; the MAC the VM would have."""
    done = lab.cli("setup", **env)
    assert done.returncode == 0, done.stderr
    plan = json.loads(lab.cli("plan", "--json", **env).stdout)
    mac: str = plan["nics"][0]["guest"]["mac"]
    return mac


UDHCPC_SCRIPT = """#!/bin/sh
[ "$1" = bound ] && echo "LEASE ip=$ip subnet=$subnet router=$router dns=$dns \
search=$search domain=$domain mtu=$mtu hostname=$hostname lease=$lease"
exit 0
"""


def udhcpc_script(directory: Path) -> Path:
    """udhcpc's script: print the lease as one LEASE line, configure nothing."""
    script = directory / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    return script


def udhcpc(ns: Namespace, script: Path, iface: str = "eth0") -> str:
    """Ask for a lease on `iface` (3 tries, 1 s apart); the LEASE line, if one came."""
    argv = ns.argv(
        "busybox", "udhcpc", "-i", iface, "-n", "-q", "-f", "-t", "3", "-T", "1",
        "-O", "search", "-O", "mtu", "-O", "hostname", "-s", str(script),
    )  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    return done.stdout
