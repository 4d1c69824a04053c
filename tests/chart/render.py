"""Render the Helm chart offline (helm-python-sdk, no helm binary, no cluster) and look into
the manifests: the value sets every test module shares, and small accessors."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "kvm-manager"
CONFIGMAPS_DIR = ROOT / "configmaps"
KUBE_VERSION = "1.30.0"
RELEASE = "rel"
NAMESPACE = "vms"
DEFAULT_VM = "rel-kvm-manager"  # <release>-<chart>
SOURCE = "https://images.example.com/guest-12.qcow2"

Values = dict[str, Any]
Manifest = dict[str, Any]


def merged(base: Values, override: Values) -> Values:
    """`override` deep-merged over a copy of `base`, as Helm merges values files."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def with_source(override: Values | None = None) -> Values:
    """The smallest valid values (an image source), with `override` merged over them."""
    return merged({"vm": {"image": {"source": SOURCE}}}, override or {})


# The value sets linted, rendered and validated as a whole (test_render_valid) and looked
# into by the other modules.
VALUE_SETS: dict[str, Values] = {
    "defaults": with_source(),
    "two-vms": with_source(
        {
            "vms": {
                "web": {
                    "replicas": 3,
                    "vm": {"image": {"source": "https://images.example.com/web.qcow2.xz"}},
                    "disk": {"size": "40Gi", "storageClass": "fast"},
                    "resources": {"limits": {"cpu": 2, "memory": "4Gi"}},
                    "cloudInit": {"userdata": "#cloud-config\npackages: [nginx]\n"},
                    "extraEnv": [{"name": "POD_IFACE", "value": "net1"}],
                    "service": {"ports": [{"name": "http", "port": 80}]},
                },
                "db": {
                    "vm": {"image": {"source": "/image/db.raw", "target": "db.raw"}},
                    "cloudInit": {"metadata": {"role": "db"}, "format": "nocloud"},
                    "service": {"ports": [{"name": "postgres", "port": 5432}]},
                },
            }
        }
    ),
    "only-vms": with_source({"enabled": False, "vms": {"solo": {"replicas": 2}}}),
    "existing-objects": with_source(
        {
            "imageCache": {"existingClaim": "shared-images"},
            "cloudInit": {"existingConfigMap": "my-cloud-init", "existingSecret": "my-userdata"},
        }
    ),
    "no-vnc": with_source({"vnc": {"enabled": False}, "service": {"vnc": True}}),
    "web-console": with_source(
        {
            "vnc": {"password": "pa55word"},
            "webConsole": {"enabled": True},
            "vms": {
                "custom": {"webConsole": {"port": 8443}},
                "plain": {"webConsole": {"enabled": False}},
            },
        }
    ),
    "device-plugin": with_source(
        {"devices": {"tunResource": "squat.ai/tun", "vhostNetResource": "squat.ai/vhost-net"}}
    ),
    "network-modes": with_source(
        {
            "vm": {"netMode": "bridge", "attachIfaces": ["eth0", "net1:macvtap"], "ip6": "fd12::2"},
            "sysctls": {"enabled": True, "ipv6Forwarding": True},
            "securityContext": {"privileged": True},
            "vms": {"nat": {"vm": {"netMode": "nat", "attachIfaces": []}}},
        }
    ),
    "host-path-devices": with_source(
        {"devices": {"hostPath": True}, "securityContext": {"privileged": True}}
    ),
    "userdata-secret": with_source(
        {
            "cloudInit": {
                "userdata": "#cloud-config\npassword: s3cret\nchpasswd: {expire: false}\n",
                "userdataSecret": True,
                "metadata": {"role": "web", "public_keys": ["ssh-ed25519 AAAA test@example"]},
                "networkdata": '{"links": [], "networks": [], "services": []}',
                "vendordata": "#cloud-config\ntimezone: UTC\n",
            }
        }
    ),
    "vnc-password-values": with_source({"vnc": {"password": "pa55word"}, "service": {"vnc": True}}),
    "vnc-password-secret": with_source(
        {"vnc": {"passwordSecret": {"name": "vm-vnc", "key": "pw"}, "password": "ignored"}}
    ),
    "data-disks": with_source(
        {
            "disk": {"size": "40Gi"},
            "vm": {"dataDisks": [{"size": "10Gi"}, {"claim": {"size": "100Gi"}}]},
            "vms": {
                "legacy": {
                    "vm": {
                        "machine": "pc",
                        "diskBus": "ide",
                        "nicModel": "rtl8139",
                        "cpuModel": "pentium3",
                        "dataDisks": [
                            {"claim": {"size": "2Gi", "volumeMode": "Filesystem"}},
                            {"claim": {"size": "8Gi", "storageClass": "-"}},
                        ],
                    }
                }
            },
        }
    ),
    "metrics": with_source(
        {
            "metrics": {
                "enabled": True,
                "serviceMonitor": {
                    "enabled": True,
                    "interval": "1m",
                    "scrapeTimeout": "20s",
                    "labels": {"release": "prometheus"},
                },
            },
            "vnc": {"password": "pa55word"},
            "extraEnv": [{"name": "POD_IFACE", "value": "eth0"}],
            "vms": {
                "web": {
                    "metrics": {
                        "port": 9100,
                        "shareProcessNamespace": False,
                        "annotations": False,
                        "resources": {"limits": {"memory": "128Mi"}},
                        "serviceMonitor": {"enabled": False},
                    },
                    "service": {"ports": [{"name": "http", "port": 80}]},
                },
                "plain": {"metrics": {"enabled": False}},
            },
        }
    ),
    "everything": with_source(
        {
            "vm": {
                "image": {
                    "target": "guest.qcow2",
                    "sha256": "ab" * 32,
                    "retries": 0,
                    "caBundle": {"configMap": "corp-ca", "key": "root.pem"},
                },
                "accel": "tcg",
                "memory": "2G",
                "cpus": 2,
                "diskSize": "18G",
                "diskPolicy": "rebase",
                "mac": "52:54:00:12:34:56",
                "ip": "10.99.0.2",
                "gateway": "10.99.0.1",
                "natExclude": ["tcp/9100", "udp/5353"],
                "dhcp": False,
                "dnsmasqOpts": "--log-queries --dhcp-option=42,10.0.0.1",
                "readiness": "tcp:3389",
                "machine": "q35",
                "firmware": "uefi",
                "secureBoot": True,
                "balloon": True,
                "diskBus": "sata",
                "nicModel": "e1000e",
                "cpuModel": "Westmere",
                "serial": "CZC1234XYZ",
                "uuid": "4c4c4544-0042-3610-8030-b8c04f4d4b31",
                "dataDisks": [
                    {"size": "10G"},
                    {"path": "/vm/scratch.img"},
                    {"claim": {"size": "50Gi", "storageClass": "fast", "volumeMode": "Block"}},
                    {
                        "claim": {
                            "size": "5Gi",
                            "volumeMode": "Filesystem",
                            "accessModes": ["ReadWriteOncePod"],
                        }
                    },
                ],
            },
            "cloudInit": {"format": "nocloud", "metadata": {"role": "all"}},
            "debug": True,
            "extraEnv": [{"name": "POD_IFACE", "value": "eth1"}],
            "extraArgs": ["-device", "virtio-rng-pci"],
            "service": {
                "type": "NodePort",
                "annotations": {"example.com/owner": "team-a"},
                "ports": [
                    {"name": "rdp", "port": 3389, "nodePort": 30389},
                    {"name": "snmp", "port": 161, "targetPort": 1161, "protocol": "UDP"},
                ],
                "vnc": True,
            },
            "probes": {"startup": {"failureThreshold": 360}},
            "shutdownTimeoutSeconds": 120,
            "imagePullSecrets": [{"name": "regcred"}],
            "image": {"repository": "registry.example.com/kvm-manager", "tag": "0.2.0"},
            "serviceAccount": {"create": False, "name": "vm-runner"},
            "podAnnotations": {"example.com/note": "all values"},
            "podLabels": {"team": "a"},
            "podSecurityContext": {"fsGroup": 107},
            "nodeSelector": {"kvm": "true"},
            "tolerations": [{"key": "kvm", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {
                "podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 1,
                            "podAffinityTerm": {
                                "topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": {"team": "a"}},
                            },
                        }
                    ]
                }
            },
            "priorityClassName": "vm-critical",
            "disk": {"storageClass": "-", "accessModes": ["ReadWriteOncePod"]},
            "imageCache": {"storageClass": "nfs", "size": "200Gi"},
            "tests": {"image": {"repository": "registry.example.com/busybox", "tag": "1.37"}},
        }
    ),
}


@cache
def chart() -> helm.Chart:
    """The chart, loaded once per test session (a Chart is immutable)."""
    return helm.Chart.load(CHART_DIR)


class Rendered:
    """One rendering of the chart: its manifests, parsed, and NOTES.txt."""

    def __init__(self, files: dict[str, str]) -> None:
        self.notes = ""
        self.manifests: list[Manifest] = []
        for path, text in sorted(files.items()):
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            self.manifests += [doc for doc in yaml.safe_load_all(text) if doc]

    def all(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def names(self, kind: str) -> list[str]:
        return [m["metadata"]["name"] for m in self.all(kind)]

    def get(self, kind: str, name: str) -> Manifest:
        found = [m for m in self.all(kind) if m["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind} {name}: found {len(found)} of {self.names(kind)}"
        return found[0]

    def statefulset(self, name: str = DEFAULT_VM) -> Manifest:
        return self.get("StatefulSet", name)


def render(values: Values) -> Rendered:
    return Rendered(chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True))


def pod_spec(statefulset: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = statefulset["spec"]["template"]["spec"]
    return spec


def container(statefulset: Manifest) -> dict[str, Any]:
    containers = pod_spec(statefulset)["containers"]
    assert [c["name"] for c in containers] == ["kvm-manager"]
    found: dict[str, Any] = containers[0]
    return found


def env(statefulset: Manifest) -> dict[str, dict[str, Any]]:
    """Environment variables by name (the last entry of a name wins, as in Kubernetes)."""
    return {item["name"]: item for item in container(statefulset)["env"]}


def env_values(statefulset: Manifest) -> dict[str, str]:
    """The plain values only (variables from secrets and the like are left out)."""
    return {name: item["value"] for name, item in env(statefulset).items() if "value" in item}


def mounts(statefulset: Manifest) -> dict[str, dict[str, Any]]:
    """Volume mounts by mount path."""
    return {m["mountPath"]: m for m in container(statefulset)["volumeMounts"]}


def volumes(statefulset: Manifest) -> dict[str, dict[str, Any]]:
    """Pod volumes by name."""
    return {v["name"]: v for v in pod_spec(statefulset)["volumes"]}


def mounted_volume(statefulset: Manifest, path: str) -> dict[str, Any]:
    """The pod volume behind the mount at `path`."""
    return volumes(statefulset)[mounts(statefulset)[path]["name"]]
