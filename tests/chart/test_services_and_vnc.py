"""The VM's Service and its ports, VNC (on, off, its password always from a Secret), the
`helm test` hook and NOTES.txt."""

from __future__ import annotations

import json
from typing import Any

from tests.chart.render import (
    DEFAULT_VM,
    NAMESPACE,
    VALUE_SETS,
    Rendered,
    container,
    env,
    env_values,
    render,
    with_source,
)

DEFAULTS = render(VALUE_SETS["defaults"])
EVERYTHING = render(VALUE_SETS["everything"])


def service_ports(rendered: Rendered, name: str = DEFAULT_VM) -> list[dict[str, Any]]:
    ports: list[dict[str, Any]] = rendered.get("Service", name)["spec"]["ports"]
    return ports


def test_default_service_exposes_ssh_only() -> None:
    service = DEFAULTS.get("Service", DEFAULT_VM)
    assert service["spec"]["type"] == "ClusterIP"
    assert "clusterIP" not in service["spec"]  # not the headless one
    assert service_ports(DEFAULTS) == [
        {"name": "ssh", "port": 22, "targetPort": 22, "protocol": "TCP"}
    ]
    selector = DEFAULTS.statefulset()["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == selector


def test_service_ports_type_and_vnc_from_values() -> None:
    service = EVERYTHING.get("Service", DEFAULT_VM)
    assert service["spec"]["type"] == "NodePort"
    assert service["metadata"]["annotations"] == {"example.com/owner": "team-a"}
    assert service_ports(EVERYTHING) == [
        {"name": "rdp", "port": 3389, "targetPort": 3389, "protocol": "TCP", "nodePort": 30389},
        {"name": "snmp", "port": 161, "targetPort": 1161, "protocol": "UDP"},
        {"name": "vnc", "port": 5900, "targetPort": 5900, "protocol": "TCP"},
    ]
    declared = {
        (p["containerPort"], p["protocol"]) for p in container(EVERYTHING.statefulset())["ports"]
    }
    assert declared == {(3389, "TCP"), (1161, "UDP"), (5900, "TCP")}


def test_a_vms_entry_has_its_own_service_and_ports() -> None:
    two = render(VALUE_SETS["two-vms"])
    web = f"{DEFAULT_VM}-web"
    # A list in a vms entry replaces the top-level one: no ssh here.
    assert service_ports(two, web) == [
        {"name": "http", "port": 80, "targetPort": 80, "protocol": "TCP"}
    ]
    selector = two.get("Service", web)["spec"]["selector"]
    assert selector == two.statefulset(web)["spec"]["selector"]["matchLabels"]
    assert service_ports(two) == service_ports(DEFAULTS)


def test_vnc_port_only_when_asked_for_and_vnc_is_on() -> None:
    assert 5900 not in {p["port"] for p in service_ports(DEFAULTS)}
    on = render(VALUE_SETS["vnc-password-values"])
    assert {"name": "vnc", "port": 5900, "targetPort": 5900, "protocol": "TCP"} in service_ports(on)
    # Without VNC, 5900 belongs to the VM like any port: service.vnc adds nothing.
    off = render(VALUE_SETS["no-vnc"])
    assert 5900 not in {p["port"] for p in service_ports(off)}


def test_no_vnc() -> None:
    statefulset = render(VALUE_SETS["no-vnc"]).statefulset()
    assert env_values(statefulset)["NO_VNC"] == "true"
    assert "VNC_PASSWORD" not in env(statefulset)
    assert "NO_VNC" not in env(DEFAULTS.statefulset())


def test_vnc_password_from_values_goes_through_a_secret() -> None:
    rendered = render(VALUE_SETS["vnc-password-values"])
    secret = rendered.get("Secret", f"{DEFAULT_VM}-vnc")
    assert secret["stringData"] == {"password": "pa55word"}
    password = env(rendered.statefulset())["VNC_PASSWORD"]
    assert password == {
        "name": "VNC_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": f"{DEFAULT_VM}-vnc", "key": "password"}},
    }
    # Nowhere else: not as a plain value, not in a ConfigMap, not in an annotation.
    for manifest in rendered.manifests:
        if manifest is not secret:
            assert "pa55word" not in json.dumps(manifest), manifest["kind"]
    assert "pa55word" not in rendered.notes


def test_vnc_password_from_an_existing_secret() -> None:
    rendered = render(VALUE_SETS["vnc-password-secret"])
    password = env(rendered.statefulset())["VNC_PASSWORD"]
    assert password["valueFrom"] == {"secretKeyRef": {"name": "vm-vnc", "key": "pw"}}
    assert "value" not in password
    assert rendered.all("Secret") == []
    assert "ignored" not in json.dumps(rendered.manifests)


def test_helm_test_hook_connects_to_the_first_tcp_port() -> None:
    pod = DEFAULTS.get("Pod", f"{DEFAULT_VM}-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    (test,) = pod["spec"]["containers"]
    assert test["image"] == "busybox:1.36"
    script = test["command"][-1]
    assert f"nc -z -w 5 {DEFAULT_VM} 22" in script
    # The test pod must not be taken for a VM by the Service.
    selector = DEFAULTS.get("Service", DEFAULT_VM)["spec"]["selector"].items()
    assert not selector <= pod["metadata"]["labels"].items()
    other = EVERYTHING.get("Pod", f"{DEFAULT_VM}-test")["spec"]["containers"][0]
    assert other["image"] == "registry.example.com/busybox:1.37"
    assert f"nc -z -w 5 {DEFAULT_VM} 3389" in other["command"][-1]


def test_one_test_pod_per_vm_and_none_without_a_tcp_port() -> None:
    two = render(VALUE_SETS["two-vms"])
    assert sorted(two.names("Pod")) == sorted(f"{vm}-test" for vm in two.names("StatefulSet"))
    assert len(two.names("Pod")) == 3
    udp_only = {"service": {"ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}}
    assert render(with_source(udp_only)).all("Pod") == []
    no_ports = render(with_source({"service": {"ports": []}}))
    assert no_ports.names("Service") == [f"{DEFAULT_VM}-headless"]


def test_notes_explain_access_console_and_prerequisites() -> None:
    notes = DEFAULTS.notes
    for expected in (
        f"kubectl port-forward -n {NAMESPACE} pod/{DEFAULT_VM}-0 5900:5900",
        f"kubectl port-forward -n {NAMESPACE} pod/{DEFAULT_VM}-0 10022:22",
        f"kubectl logs -n {NAMESPACE} -f {DEFAULT_VM}-0",
        f"kubectl attach -it -n {NAMESPACE} {DEFAULT_VM}-0",
        f"{DEFAULT_VM}.{NAMESPACE}.svc",
        "--allowed-unsafe-sysctls=net.ipv4.ip_forward,net.ipv4.conf.all.route_localnet",
        "devices.kubevirt.io/kvm",
    ):
        assert expected in notes, expected
    assert "5900" not in render(VALUE_SETS["no-vnc"]).notes
    assert "privileged" in render(with_source({"devices": {"hostPath": True}})).notes
