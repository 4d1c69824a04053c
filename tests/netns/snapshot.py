"""The observable state of a pod, as plain data, so that two moments can be compared whole:
links, addresses, routes, iptables (legacy, as python-iptables writes), sysctls, processes,
and the files of the pod's volumes."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kvmmgr.health.check import our_lines
from kvmmgr.image import usage
from kvmmgr.net.firewall import Chain, Family, FirewallPlan
from podlab.lab import PodLab
from podlab.netns import Namespace

# The PID of the dnsmasq that replaced the last one, and its log (appended to at each start).
VOLATILE_FILES = {"dnsmasq.pid", "dnsmasq.log", "startup.json"}  # startup: its steps' times


def links(ns: Namespace) -> list[dict[str, Any]]:
    found = []
    for link in json.loads(ns.ip("-d", "-j", "link", "show")):
        found.append(
            {
                "name": link["ifname"],
                "kind": link.get("linkinfo", {}).get("info_kind"),
                "mtu": link["mtu"],
                "master": link.get("master"),
                "up": "UP" in link["flags"],
                "mac": link.get("address"),
            }
        )
    return sorted(found, key=lambda link: link["name"])


def addresses(ns: Namespace) -> list[str]:
    found = []
    for link in json.loads(ns.ip("-j", "addr", "show")):
        for info in link.get("addr_info", []):
            if info["family"] == "inet":
                found.append(f"{link['ifname']} {info['local']}/{info['prefixlen']}")
    return sorted(found)


def routes(ns: Namespace) -> list[str]:
    """Routes without the `linkdown` flag: carrier comes and goes with QEMU, not with us."""
    return sorted(line.replace(" linkdown", "").strip() for line in ns.ip("route").splitlines())


def iptables(ns: Namespace) -> list[str]:
    """iptables-legacy-save without comments and counters."""
    lines = []
    for line in ns.run("iptables-legacy-save").splitlines():
        if line.startswith("#"):
            continue
        lines.append(re.sub(r"\[\d+:\d+\]", "[0:0]", line))
    return lines


def our_rules(ns: Namespace, table: str) -> list[str]:
    """The rules of one table that jump to or live in kvm-manager's chains (as `status`
    reads them)."""
    return our_lines("\n".join(iptables(ns)), table)


def planned_rules(plan: dict[str, Any], table: str, family: Family = 4) -> list[str]:
    """The rules of one table as `plan --json` plans them, in our_rules' form, sorted."""
    chains = tuple(
        Chain(c["family"], c["table"], c["name"], c["hook"], tuple(c["rules"]))
        for c in plan["firewall"]["chains"]
    )
    return sorted(FirewallPlan(chains, ()).save_lines(table, family))


def sysctls(ns: Namespace, *names: str) -> dict[str, str]:
    return {
        name: ns.run("cat", f"/proc/sys/{name.replace('.', '/')}", check=False).strip()
        for name in names
    }


def processes(ns: Namespace) -> list[str]:
    """Command lines of every process in the namespace (PIDs left out: they change)."""
    found = []
    for _, argv in _argvs(ns):
        if argv and argv[0]:
            found.append(" ".join(a.decode() for a in argv if a))
    return sorted(found)


def pids_of(ns: Namespace, program: str) -> list[int]:
    """The live processes of `program` in the namespace (a zombie has no command line)."""
    return [pid for pid, argv in _argvs(ns) if argv[0] == program.encode()]


def _argvs(ns: Namespace) -> Iterator[tuple[int, list[bytes]]]:
    for pid in ns.pids():
        try:
            yield pid, Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # exited meanwhile


def files(root: Path) -> dict[str, str]:
    """Each file under `root`: mode, and a digest of its content (but for VOLATILE_FILES)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_socket() or path.is_dir():
            continue
        mode = oct(path.stat().st_mode & 0o777)
        if path.name in VOLATILE_FILES:
            found[str(path.relative_to(root))] = mode
        else:
            digest = hashlib.sha256(_stable(path)).hexdigest()[:16]
            found[str(path.relative_to(root))] = f"{mode} {digest}"
    return found


def _stable(path: Path) -> bytes:
    """The file's content; of a VM's claim in the cache, all but the time of its last start."""
    if path.parent.name != usage.FOLDER:
        return path.read_bytes()
    claim = json.loads(path.read_bytes())
    claim.pop("last_started")
    return json.dumps(claim, sort_keys=True).encode()


def pod_state(lab: PodLab) -> dict[str, Any]:
    pod = lab.net.pod
    return {
        "links": links(pod),
        "addresses": addresses(pod),
        "routes": routes(pod),
        "iptables": iptables(pod),
        "sysctls": sysctls(pod, "net.ipv4.ip_forward", "net.ipv4.conf.all.route_localnet"),
        "processes": processes(pod),
        "volumes": files(lab.volumes),
    }
