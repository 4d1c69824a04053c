"""The metrics sidecar (`metrics.*`): off by default without a trace; on, a second container
running `kvm-manager metrics` with the VM container's environment, RUN_DIR and a read-only image
cache, no capability; METRICS_PORT kept by the VM container; the headless Service's port, the
scrape annotations, the pod's shared process namespace and the ServiceMonitor."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from tests.chart.render import (
    CHART_DIR,
    DEFAULT_VM,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    Manifest,
    Rendered,
    Values,
    chart,
    pod_spec,
    render,
    with_source,
)

METRICS = render(VALUE_SETS["metrics"])
WEB = f"{DEFAULT_VM}-web"  # metrics on port 9100, no shared PID namespace, no annotations
PLAIN = f"{DEFAULT_VM}-plain"  # metrics switched off by its vms entry
SCRAPE_ANNOTATIONS = ("prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path")
# The Prometheus Operator CRD's pattern for a Duration.
DURATION = re.compile(
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)


def containers(statefulset: Manifest) -> dict[str, dict[str, Any]]:
    """The pod's containers by name, in order."""
    return {c["name"]: c for c in pod_spec(statefulset)["containers"]}


def vm_and_sidecar(name: str = DEFAULT_VM) -> tuple[dict[str, Any], dict[str, Any]]:
    found = containers(METRICS.statefulset(name))
    assert list(found) == ["kvm-manager", "metrics"]
    return found["kvm-manager"], found["metrics"]


def metrics_port(container: dict[str, Any]) -> str:
    (value,) = [e["value"] for e in container["env"] if e["name"] == "METRICS_PORT"]
    assert isinstance(value, str)
    return value


def pod_annotations(statefulset: Manifest) -> dict[str, str]:
    found: dict[str, str] = statefulset["spec"]["template"]["metadata"]["annotations"]
    return found


def headless(rendered: Rendered, name: str = DEFAULT_VM) -> Manifest:
    return rendered.get("Service", f"{name}-headless")


def off_everywhere(rendered: Rendered, name: str) -> None:
    statefulset = rendered.statefulset(name)
    (only,) = containers(statefulset).values()
    assert only["name"] == "kvm-manager"
    assert "METRICS_PORT" not in {e["name"] for e in only["env"]}
    assert "shareProcessNamespace" not in pod_spec(statefulset)
    marks = set(SCRAPE_ANNOTATIONS) | {"kubectl.kubernetes.io/default-container"}
    assert not marks & set(pod_annotations(statefulset))
    service = headless(rendered, name)
    assert "ports" not in service["spec"]
    assert "kvm-manager/metrics" not in service["metadata"]["labels"]
    for manifest in rendered.all("Service"):
        if manifest["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"]:
            assert "metrics" not in {p["name"] for p in manifest["spec"].get("ports", [])}


@pytest.mark.parametrize("values", ["defaults", "two-vms", "everything"])
def test_off_by_default_without_a_trace(values: str) -> None:
    rendered = render(VALUE_SETS[values])
    for name in rendered.names("StatefulSet"):
        off_everywhere(rendered, name)
    assert rendered.all("ServiceMonitor") == []
    assert "Metrics" not in rendered.notes


def test_a_vms_entry_can_switch_it_off() -> None:
    off_everywhere(METRICS, PLAIN)
    assert PLAIN not in METRICS.names("ServiceMonitor")


def test_the_sidecar_runs_kvm_manager_metrics_from_the_same_image() -> None:
    vm, sidecar = vm_and_sidecar()
    # The image's entrypoint is kvm-manager: the VM container's args are `run`.
    assert (vm["args"], sidecar["args"]) == (["run"], ["metrics"])
    assert "command" not in vm and "command" not in sidecar
    assert (sidecar["image"], sidecar["imagePullPolicy"]) == (vm["image"], vm["imagePullPolicy"])
    assert sidecar["ports"] == [{"name": "metrics", "containerPort": 9477, "protocol": "TCP"}]
    # The VM container declares only the VM's ports; the console stays the VM container's.
    assert 9477 not in {p["containerPort"] for p in vm.get("ports", [])}
    assert "stdin" not in sidecar and "tty" not in sidecar
    template = METRICS.statefulset()["spec"]["template"]["metadata"]
    assert template["annotations"]["kubectl.kubernetes.io/default-container"] == "kvm-manager"


@pytest.mark.parametrize(("name", "port"), [(DEFAULT_VM, "9477"), (WEB, "9100")])
def test_the_same_environment_in_both_containers_with_metrics_port(name: str, port: str) -> None:
    vm, sidecar = vm_and_sidecar(name)
    # The same list, in the same order, but for the VNC password, which no metric needs.
    assert "VNC_PASSWORD" in [e["name"] for e in vm["env"]]
    assert sidecar["env"] == [e for e in vm["env"] if e["name"] != "VNC_PASSWORD"]
    assert metrics_port(vm) == port
    names = [e["name"] for e in vm["env"]]
    assert {"IMAGE_DIR", "RUN_DIR", "VM_DIR", "IMG_SOURCE", "POD_IFACE"} <= set(names)
    # extraEnv comes last, after METRICS_PORT ("later entries win"; METRICS_PORT is refused
    # there, see below).
    assert names[-2:] == ["METRICS_PORT", "POD_IFACE"]


def test_run_dir_shared_and_the_image_cache_read_only() -> None:
    statefulset = METRICS.statefulset()
    vm, sidecar = vm_and_sidecar()
    env = {e["name"]: e.get("value") for e in vm["env"]}
    vm_mounts = {m["name"]: m for m in vm["volumeMounts"]}
    assert sidecar["volumeMounts"] == [
        {"name": "run", "mountPath": env["RUN_DIR"]},
        {"name": "image-cache", "mountPath": env["IMAGE_DIR"], "readOnly": True},
    ]
    # The same volumes, at the same paths as in the VM container (there read-write).
    for mount in sidecar["volumeMounts"]:
        assert vm_mounts[mount["name"]]["mountPath"] == mount["mountPath"]
        assert "readOnly" not in vm_mounts[mount["name"]]
    volumes = {v["name"]: v for v in pod_spec(statefulset)["volumes"]}
    assert volumes["run"]["emptyDir"]["medium"] == "Memory"
    assert "persistentVolumeClaim" in volumes["image-cache"]


def test_the_sidecar_is_root_without_a_single_capability() -> None:
    for name in (DEFAULT_VM, WEB):
        _, sidecar = vm_and_sidecar(name)
        assert sidecar["securityContext"] == {
            "runAsUser": 0,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "seccompProfile": {"type": "RuntimeDefault"},
            "capabilities": {"drop": ["ALL"]},
        }
    # Not even when the VM container is privileged.
    privileged = render(
        with_source({"metrics": {"enabled": True}, "securityContext": {"privileged": True}})
    )
    sidecar = containers(privileged.statefulset())["metrics"]
    assert "privileged" not in sidecar["securityContext"]


def test_resources_and_a_cheap_liveness_probe_only() -> None:
    _, sidecar = vm_and_sidecar()
    assert sidecar["resources"] == {
        "requests": {"cpu": "10m", "memory": "32Mi"},
        "limits": {"memory": "64Mi"},
    }
    # A vms entry merges its resources over the defaults, key by key.
    assert vm_and_sidecar(WEB)[1]["resources"]["limits"] == {"memory": "128Mi"}
    assert sidecar["livenessProbe"] == {
        "httpGet": {"path": "/metrics", "port": "metrics"},
        "periodSeconds": 30,
        "timeoutSeconds": 10,
        "failureThreshold": 3,
    }
    # The pod's readiness stays the VM's alone.
    assert "readinessProbe" not in sidecar and "startupProbe" not in sidecar


def test_a_shared_process_namespace_unless_turned_off() -> None:
    assert pod_spec(METRICS.statefulset())["shareProcessNamespace"] is True
    assert "shareProcessNamespace" not in pod_spec(METRICS.statefulset(WEB))


def test_scrape_annotations_unless_turned_off() -> None:
    own = pod_annotations(METRICS.statefulset())
    assert {k: own[k] for k in SCRAPE_ANNOTATIONS} == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9477",
        "prometheus.io/path": "/metrics",
    }
    web = pod_annotations(METRICS.statefulset(WEB))
    assert not set(SCRAPE_ANNOTATIONS) & set(web)
    assert web["kubectl.kubernetes.io/default-container"] == "kvm-manager"
    # podAnnotations win over the chart's.
    values = {"metrics": {"enabled": True}, "podAnnotations": {"prometheus.io/scrape": "false"}}
    mine = pod_annotations(render(with_source(values)).statefulset())
    assert (mine["prometheus.io/scrape"], mine["prometheus.io/port"]) == ("false", "9477")


@pytest.mark.parametrize(("name", "port"), [(DEFAULT_VM, 9477), (WEB, 9100)])
def test_the_port_is_on_the_headless_service_only(name: str, port: int) -> None:
    service = headless(METRICS, name)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": port, "targetPort": port, "protocol": "TCP"}
    ]
    assert service["metadata"]["labels"]["kvm-manager/metrics"] == "true"
    # Not on the VM's own Service, which may be a NodePort or LoadBalancer.
    ports = METRICS.get("Service", name)["spec"]["ports"]
    assert "metrics" not in {p["name"] for p in ports}
    assert port not in {p["port"] for p in ports}
    # Everything that names the port follows the one value.
    vm, sidecar = vm_and_sidecar(name)
    assert metrics_port(vm) == metrics_port(sidecar) == str(port)
    assert sidecar["ports"][0]["containerPort"] == port
    if name == DEFAULT_VM:
        assert pod_annotations(METRICS.statefulset(name))["prometheus.io/port"] == str(port)


def test_the_service_monitor_scrapes_the_headless_service() -> None:
    assert METRICS.names("ServiceMonitor") == [DEFAULT_VM]  # web and plain have none
    monitor = METRICS.get("ServiceMonitor", DEFAULT_VM)
    labels = METRICS.statefulset()["metadata"]["labels"]
    selector = METRICS.statefulset()["spec"]["selector"]["matchLabels"]
    assert monitor == {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": DEFAULT_VM, "labels": {**labels, "release": "prometheus"}},
        "spec": {
            "selector": {"matchLabels": {**selector, "kvm-manager/metrics": "true"}},
            "namespaceSelector": {"matchNames": [NAMESPACE]},
            "endpoints": [
                {
                    "port": "metrics",
                    "path": "/metrics",
                    "scheme": "http",
                    "interval": "1m",
                    "scrapeTimeout": "20s",
                }
            ],
        },
    }
    for field in ("interval", "scrapeTimeout"):
        assert DURATION.match(monitor["spec"]["endpoints"][0][field])
    # Of all the release's Services, it selects exactly the VM's headless one, which has the
    # endpoint's port; so each pod is scraped once.
    wanted = monitor["spec"]["selector"]["matchLabels"].items()
    chosen = [s for s in METRICS.all("Service") if wanted <= s["metadata"]["labels"].items()]
    assert chosen == [headless(METRICS)]
    assert "metrics" in {p["name"] for p in chosen[0]["spec"]["ports"]}
    assert chosen[0]["spec"]["selector"] == selector


def test_service_monitor_defaults_and_empty_durations() -> None:
    values = {"metrics": {"enabled": True, "serviceMonitor": {"enabled": True}}}
    (endpoint,) = render(with_source(values)).get("ServiceMonitor", DEFAULT_VM)["spec"]["endpoints"]
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("30s", "10s")
    empty = {"enabled": True, "interval": "", "scrapeTimeout": ""}
    values = {"metrics": {"enabled": True, "serviceMonitor": empty}}
    (endpoint,) = render(with_source(values)).get("ServiceMonitor", DEFAULT_VM)["spec"]["endpoints"]
    assert endpoint == {"port": "metrics", "path": "/metrics", "scheme": "http"}
    # No sidecar, no ServiceMonitor, whatever serviceMonitor.enabled says.
    values = {"metrics": {"serviceMonitor": {"enabled": True}}}
    assert render(with_source(values)).all("ServiceMonitor") == []


def test_notes_tell_how_to_reach_the_metrics() -> None:
    assert f"pod/{DEFAULT_VM}-0 9477:9477" in METRICS.notes
    assert f"pod/{WEB}-0 9100:9100" in METRICS.notes
    assert f"pod/{PLAIN}-0 9" not in METRICS.notes


@pytest.mark.parametrize(
    ("metrics", "where"),
    [
        ({"port": 5900}, "/metrics/port"),
        ({"port": 0}, "/metrics/port"),
        ({"port": 65536}, "/metrics/port"),
        ({"port": "9477"}, "/metrics/port"),
        ({"enabled": "yes"}, "/metrics/enabled"),
        ({"prot": 9100}, "prot"),
        ({"serviceMonitor": {"intervall": "30s"}}, "intervall"),
        ({"serviceMonitor": {"interval": "30 seconds"}}, "/metrics/serviceMonitor/interval"),
        ({"serviceMonitor": {"scrapeTimeout": "1s1m"}}, "/metrics/serviceMonitor/scrapeTimeout"),
        ({"serviceMonitor": {"labels": {"release": 1}}}, "/metrics/serviceMonitor/labels/release"),
        ({"resources": {"limit": {"memory": "64Mi"}}}, "limit"),
    ],
)
def test_bad_values_are_refused_by_the_schema(metrics: Values, where: str) -> None:
    # The same at the top level and in a vms entry.
    for values, prefix in (
        ({"metrics": metrics}, "/metrics"),
        ({"vms": {"web": {"metrics": metrics}}}, "/vms/web/metrics"),
    ):
        with pytest.raises(helm.HelmValuesError) as caught:
            chart().validate_schema(with_source(values))
        assert where.replace("/metrics", prefix, 1) in str(caught.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"service": {"ports": [{"name": "exporter", "port": 80, "targetPort": 9477}]}},
            r"metrics\.port 9477 is also the target of service port exporter",
        ),
        (
            {"vms": {"web": {"metrics": {"port": 22}}}},
            rf"VM {WEB}: metrics\.port 22 is also the target of service port ssh",
        ),
        (
            {"extraEnv": [{"name": "METRICS_PORT", "value": "9100"}]},
            r"set metrics\.port, not METRICS_PORT in extraEnv",
        ),
    ],
)
def test_a_port_the_vm_needs_is_refused(values: Values, message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(with_source({"metrics": {"enabled": True}, **values}))
    # A UDP port of the same number goes to the VM without a clash.
    udp = {"service": {"ports": [{"name": "dns", "port": 9477, "protocol": "UDP"}]}}
    render(with_source({"metrics": {"enabled": True}, **udp}))


def test_the_templates_refuse_vnc_s_port_without_the_schema(tmp_path: Path) -> None:
    # `helm install --skip-schema-validation` still meets the templates' own check.
    copy = tmp_path / "kvm-manager"
    shutil.copytree(CHART_DIR, copy)
    (copy / "values.schema.json").unlink()
    unchecked = helm.Chart.load(copy)
    values = with_source({"metrics": {"enabled": True, "port": 5900}})
    with pytest.raises(helm.HelmRenderError, match=r"metrics\.port 5900 is TCP 5900 of the pod"):
        unchecked.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
