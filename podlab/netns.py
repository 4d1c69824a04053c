"""Network namespaces that stand in for a Kubernetes node and pod.

Every namespace the lab makes is named `kvmt-<pid>-<n>-<role>`: unique per run, and
recognisable afterwards, so that leftovers of a run that was killed can be swept away.
Deleting a namespace first kills every process inside it (dnsmasq, QEMU, servers).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREFIX = "kvmt-"
NETNS_DIR = Path("/run/netns")
_counter = itertools.count()
_NAME_RE = re.compile(rf"^{PREFIX}(\d+)-\d+-[a-z]+$")


def sh(
    *argv: str, check: bool = True, timeout: float = 30, env: Mapping[str, str] | None = None
) -> str:
    """Run a command (never through a shell); its stdout. Failures carry stderr."""
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Namespace:
    name: str

    @classmethod
    def create(cls, role: str) -> Namespace:
        ns = cls(f"{PREFIX}{os.getpid()}-{next(_counter)}-{role}")
        sh("ip", "netns", "add", ns.name)
        ns.ip("link", "set", "lo", "up")
        return ns

    def argv(self, *command: str) -> list[str]:
        """`command` run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *command]

    def run(
        self,
        *command: str,
        check: bool = True,
        timeout: float = 30,
        env: Mapping[str, str] | None = None,
    ) -> str:
        return sh(*self.argv(*command), check=check, timeout=timeout, env=env)

    def ip(self, *args: str) -> str:
        return sh("ip", "-n", self.name, *args)

    def popen(
        self, command: Sequence[str], env: Mapping[str, str] | None = None, **kwargs: object
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv(*command), env=env, **kwargs)  # type: ignore[call-overload, no-any-return]

    def pids(self) -> list[int]:
        """Every process whose network namespace is this one."""
        try:
            ours = os.stat(NETNS_DIR / self.name)
        except FileNotFoundError:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                theirs = os.stat(entry / "ns" / "net")
            except OSError:
                continue
            if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
                found.append(int(entry.name))
        return found

    def delete(self) -> None:
        """Kill what runs inside, then remove the namespace (its links go with it)."""
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        sh("ip", "netns", "del", self.name, check=False)


def sweep_stale() -> list[str]:
    """Remove lab namespaces whose creating process is gone (a run that was killed)."""
    removed = []
    for line in sh("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NAME_RE.match(name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            Namespace(name).delete()
            removed.append(name)
    return removed


@dataclass(frozen=True)
class PodNetwork:
    """A "node" and a "pod" namespace joined by a veth, as a CNI plugin would leave them:
    the pod's `eth0` holds the pod IP with a default route via the node. Variants:
    - routed: as Calico does it, a /32 pod address and a default route via 169.254.1.1 on-link,
      which the node answers for by proxy ARP;
    - dual_stack: IPv6 too, with a default route via the node;
    - secondary: a second network on `net1` (a Multus attachment), to a second node link."""

    node: Namespace
    pod: Namespace
    node_ip: str = "10.244.0.1"
    pod_ip: str = "10.244.0.10"
    prefix: int = 24
    mtu: int = 1450  # an overlay network's MTU: not the default, so it is seen to travel
    routed: bool = False
    dual_stack: bool = False
    secondary: bool = False
    node_ip6: str = "fd00:10:244::1"
    pod_ip6: str = "fd00:10:244::10"
    net1_node_ip: str = "10.10.0.1"
    net1_pod_ip: str = "10.10.0.5"

    ROUTED_GATEWAY = "169.254.1.1"

    @classmethod
    def create(cls, **options: Any) -> PodNetwork:
        node = Namespace.create("node")
        try:
            pod = Namespace.create("pod")
        except BaseException:
            node.delete()
            raise
        net = cls(node, pod, **options)
        try:
            net._wire()
        except BaseException:
            net.delete()
            raise
        return net

    def _wire(self) -> None:
        mtu = str(self.mtu)
        self.pod.ip(
            "link", "add", "eth0", "mtu", mtu, "type", "veth",
            "peer", "name", "veth0", "mtu", mtu, "netns", self.node.name,
        )  # fmt: skip
        self.node.ip("link", "set", "veth0", "up")
        self.pod.ip("link", "set", "eth0", "up")
        if self.routed:
            self._wire_routed()
        else:
            self.node.ip("addr", "add", f"{self.node_ip}/{self.prefix}", "dev", "veth0")
            self.pod.ip("addr", "add", f"{self.pod_ip}/{self.prefix}", "dev", "eth0")
            self.pod.ip("route", "add", "default", "via", self.node_ip)
        if self.dual_stack:
            self.node.ip("-6", "addr", "add", f"{self.node_ip6}/64", "dev", "veth0", "nodad")
            self.pod.ip("-6", "addr", "add", f"{self.pod_ip6}/64", "dev", "eth0", "nodad")
            self.pod.ip("-6", "route", "add", "default", "via", self.node_ip6)
        if self.secondary:
            peer = ("peer", "name", "veth1", "netns", self.node.name)
            self.pod.ip("link", "add", "net1", "type", "veth", *peer)
            self.node.ip("addr", "add", f"{self.net1_node_ip}/24", "dev", "veth1")
            self.pod.ip("addr", "add", f"{self.net1_pod_ip}/24", "dev", "net1")
            self.node.ip("link", "set", "veth1", "up")
            self.pod.ip("link", "set", "net1", "up")

    def _wire_routed(self) -> None:
        """The pod: its address alone (/32) and 169.254.1.1 on-link. The node: a route to the
        pod's address and proxy ARP on the veth. Proxy ARP answers for addresses the node
        routes elsewhere, so the node gets an uplink with a default route too."""
        gateway = self.ROUTED_GATEWAY
        self.pod.ip("addr", "add", f"{self.pod_ip}/32", "dev", "eth0")
        self.pod.ip("route", "add", f"{gateway}/32", "dev", "eth0", "scope", "link")
        self.pod.ip("route", "add", "default", "via", gateway, "dev", "eth0", "onlink")
        self.node.ip("addr", "add", f"{self.node_ip}/32", "dev", "veth0")
        self.node.ip("route", "add", f"{self.pod_ip}/32", "dev", "veth0")
        self.node.run("sysctl", "-q", "-w", "net.ipv4.conf.veth0.proxy_arp=1")
        self.node.ip("link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
        self.node.ip("addr", "add", "169.254.99.1/30", "dev", "uplink0")
        self.node.ip("link", "set", "uplink0", "up")
        self.node.ip("link", "set", "uplink1", "up")
        self.node.ip("route", "add", "default", "via", "169.254.99.2")

    def delete(self) -> None:
        self.pod.delete()
        self.node.delete()
