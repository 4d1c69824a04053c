"""The chart's rendered manifests as `podman kube play` (podman 4.3) takes them.

Each conversion is one entry of CONVERSIONS: what it changes, said in one line (the README's
"The chart, run by podman" lists the same lines), and the function that does it. Nothing else
changes: the container's env, args, securityContext, resources, probes, lifecycle and
volumeMounts stay as rendered, so that a chart the image disagrees with fails under podman too.

    play = convert(rendered_manifests, host_dir="/tmp/x")
    play.yaml()      # PersistentVolumeClaims, ConfigMaps and the Pod, for `podman kube play`
    play.secrets     # name -> data, for `podman secret create`
    play.devices     # host devices, for containers.conf's `devices`
    play.sysctls     # name=value, to set in the pod's network namespace
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

Manifest = dict[str, Any]

# What a device plugin gives a container for each resource the chart may request.
DEVICE_PLUGINS = {
    "devices.kubevirt.io/kvm": "/dev/kvm",
    "devices.kubevirt.io/tun": "/dev/net/tun",
    "devices.kubevirt.io/vhost-net": "/dev/vhost-net",
    "squat.ai/tun": "/dev/net/tun",
    "squat.ai/vhost-net": "/dev/vhost-net",
}
ANNOTATION_LIMIT = 63  # podman 4.3 holds annotation values to the label value limit
KINDS = ("StatefulSet", "PersistentVolumeClaim", "ConfigMap", "Secret")
ORDER = ("PersistentVolumeClaim", "ConfigMap", "Pod")  # of the documents played


@dataclass
class _Draft:
    """The documents being converted, and what leaves them for elsewhere."""

    docs: list[Manifest]
    host_dir: str
    secrets: dict[str, bytes] = field(default_factory=dict)
    devices: list[str] = field(default_factory=list)
    sysctls: list[str] = field(default_factory=list)

    def pods(self) -> list[Manifest]:
        return [d for d in self.docs if d["kind"] == "Pod"]


@dataclass(frozen=True)
class Conversion:
    description: str
    apply: Callable[[_Draft], bool]  # True when it changed something


@dataclass(frozen=True)
class Play:
    documents: tuple[Manifest, ...]
    secrets: dict[str, bytes]
    devices: tuple[str, ...]
    sysctls: tuple[str, ...]  # name=value, for the pod's network namespace
    conversions: tuple[str, ...]

    @property
    def pod(self) -> Manifest:
        (pod,) = (d for d in self.documents if d["kind"] == "Pod")
        return pod

    def container(self, name: str) -> dict[str, Any]:
        (found,) = (c for c in self.pod["spec"]["containers"] if c["name"] == name)
        return found  # type: ignore[no-any-return]

    def volumes(self) -> tuple[str, ...]:
        """The named volumes podman makes: one per claim, and one per ConfigMap."""
        return tuple(d["metadata"]["name"] for d in self.documents if d["kind"] != "Pod")

    def yaml(self) -> str:
        return yaml.safe_dump_all(self.documents, sort_keys=False)


def _only_what_podman_runs(draft: _Draft) -> bool:
    kept = [d for d in draft.docs if d["kind"] in KINDS]
    changed = len(kept) != len(draft.docs)
    draft.docs = kept
    return changed


def _first_pod(statefulset: Manifest) -> str:
    return f"{statefulset['metadata']['name']}-0"


def _claim_templates(draft: _Draft) -> bool:
    changed = False
    for statefulset in [d for d in draft.docs if d["kind"] == "StatefulSet"]:
        spec = statefulset["spec"]
        for template in spec.pop("volumeClaimTemplates", []):
            volume = template["metadata"]["name"]
            claim = f"{volume}-{_first_pod(statefulset)}"
            draft.docs.insert(0, _claim(claim, template))
            spec["template"]["spec"].setdefault("volumes", []).append(
                {"name": volume, "persistentVolumeClaim": {"claimName": claim}}
            )
            changed = True
    return changed


def _statefulset_to_pod(draft: _Draft) -> bool:
    changed = False
    for index, doc in enumerate(draft.docs):
        if doc["kind"] == "StatefulSet":
            name = _first_pod(doc)
            template = doc["spec"]["template"]
            metadata = {**template["metadata"], "name": name}
            spec = {**template["spec"], "hostname": name, "subdomain": doc["spec"]["serviceName"]}
            draft.docs[index] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": metadata,
                "spec": spec,
            }
            changed = True
    return changed


def _claim(name: str, template: Manifest) -> Manifest:
    metadata = {**template["metadata"], "name": name}
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata,
        "spec": template["spec"],
    }


def _projected_volumes(draft: _Draft) -> bool:
    changed = False
    for volume in _volumes(draft):
        if "projected" not in volume:
            continue
        sources = volume.pop("projected")["sources"]
        if len(sources) != 1:
            raise ValueError(
                f"volume {volume['name']}: a projection of {len(sources)} sources; podman 4.3 "
                "has no projected volumes, and only a single source converts"
            )
        ((kind, source),) = sources[0].items()
        if kind == "secret":  # a secret volume names its Secret secretName
            source = {"secretName": source["name"], **source}
            del source["name"]
        volume[kind] = source
        changed = True
    return changed


def _empty_dirs(draft: _Draft) -> bool:
    changed = False
    for pod in draft.pods():
        for volume in pod["spec"].get("volumes", []):
            if "emptyDir" in volume:
                del volume["emptyDir"]
                path = f"{draft.host_dir}/{pod['metadata']['name']}/{volume['name']}"
                volume["hostPath"] = {"path": path, "type": "DirectoryOrCreate"}
                changed = True
    return changed


def _long_annotations(draft: _Draft) -> bool:
    changed = False
    for pod in draft.pods():
        annotations = pod["metadata"].get("annotations", {})
        for key in [k for k, v in annotations.items() if len(str(v)) > ANNOTATION_LIMIT]:
            del annotations[key]
            changed = True
    return changed


def _restart_never(draft: _Draft) -> bool:
    for pod in draft.pods():
        pod["spec"]["restartPolicy"] = "Never"
    return bool(draft.pods())


def _secrets_to_podman(draft: _Draft) -> bool:
    secrets = [d for d in draft.docs if d["kind"] == "Secret"]
    for secret in secrets:
        data = dict(secret.get("data", {}))  # already base64
        for key, value in secret.get("stringData", {}).items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        draft.secrets[secret["metadata"]["name"]] = json.dumps(data).encode()
    draft.docs = [d for d in draft.docs if d["kind"] != "Secret"]
    return bool(secrets)


def _device_plugins(draft: _Draft) -> bool:
    for container in _containers(draft):
        for resource in container.get("resources", {}).get("limits", {}):
            device = DEVICE_PLUGINS.get(resource)
            if device and device not in draft.devices:
                draft.devices.append(device)
    return bool(draft.devices)


def _sysctls(draft: _Draft) -> bool:
    for pod in draft.pods():
        context = pod["spec"].get("securityContext", {})
        for sysctl in context.pop("sysctls", []):
            draft.sysctls.append(f"{sysctl['name']}={sysctl['value']}")
    return bool(draft.sysctls)


def _container_ports(draft: _Draft) -> bool:
    changed = False
    for container in _containers(draft):
        if container.pop("ports", None) is not None:
            changed = True
    return changed


def _volumes(draft: _Draft) -> Iterable[dict[str, Any]]:
    for pod in draft.pods():
        yield from pod["spec"].get("volumes", [])


def _containers(draft: _Draft) -> Iterable[dict[str, Any]]:
    for pod in draft.pods():
        yield from pod["spec"]["containers"]


CONVERSIONS: tuple[Conversion, ...] = (
    Conversion(
        "Services, ServiceAccounts and `helm test` pods are left out: podman has no such "
        "objects, and the test reaches the pod IP itself.",
        _only_what_podman_runs,
    ),
    Conversion(
        "Each volumeClaimTemplate `T` of a StatefulSet `<name>` becomes the "
        "PersistentVolumeClaim `T-<name>-0`, claimed by the pod's volume `T`, as the "
        "StatefulSet controller does; podman makes a named volume of each claim (the image "
        "cache's too).",
        _claim_templates,
    ),
    Conversion(
        "A StatefulSet becomes its first pod, `<name>-0`, from its pod template, with "
        "`hostname: <name>-0` and `subdomain: <serviceName>`, as the StatefulSet controller "
        "makes it.",
        _statefulset_to_pod,
    ),
    Conversion(
        "A projected volume of one source becomes a volume of that source (configMap or "
        "secret), with the same name, items and `optional`: podman 4.3 has no projected "
        "volumes.",
        _projected_volumes,
    ),
    Conversion(
        "An emptyDir becomes a hostPath directory of the test's (`DirectoryOrCreate`): podman "
        "4.3 makes an emptyDir a named volume shared by every pod with a volume of that name.",
        _empty_dirs,
    ),
    Conversion(
        "Pod annotations longer than 63 characters (`checksum/cloud-init`) are left out: "
        "podman 4.3 refuses them, holding annotations to the label limit.",
        _long_annotations,
    ),
    Conversion(
        "`restartPolicy: Never`: the test plays the pod's deletion (the preStop command, then "
        "the container's end), after which a kubelet restarts nothing and podman would.",
        _restart_never,
    ),
    Conversion(
        "Each Secret becomes a podman secret of the same name (`podman secret create`) holding "
        "its keys as JSON with base64 values: podman 4.3 stores a Secret document as YAML, "
        "which its own `secretKeyRef` cannot read.",
        _secrets_to_podman,
    ),
    Conversion(
        "Device-plugin resources in the limits (`devices.kubevirt.io/tun`, `.../kvm`) stand "
        "for their devices, which containers.conf's `devices` gives every container: podman "
        "has no device plugins (the limits stay, ignored).",
        _device_plugins,
    ),
    Conversion(
        "Container ports are left out: podman 4.3 publishes each on the node as a hostPort, "
        "which only its own networks can do (in Kubernetes they only inform; the pod IP "
        "answers on every port).",
        _container_ports,
    ),
    Conversion(
        "The pod's `securityContext.sysctls` are set by the test in the pod's network "
        "namespace before its containers start, as a runtime sets them in a pod sandbox: "
        "podman 4.3's kube play sets none.",
        _sysctls,
    ),
)


def convert(manifests: Iterable[Manifest], host_dir: str) -> Play:
    """The documents `podman kube play` takes, and the conversions that made them. The
    manifests themselves are left as they are; `host_dir` holds the emptyDir directories."""
    draft = _Draft(copy.deepcopy(list(manifests)), host_dir)
    applied = tuple(c.description for c in CONVERSIONS if c.apply(draft))
    documents = sorted(draft.docs, key=lambda d: ORDER.index(d["kind"]))  # what the pod uses first
    return Play(
        tuple(documents), draft.secrets, tuple(draft.devices), tuple(draft.sysctls), applied
    )
