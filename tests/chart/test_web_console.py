"""The web console (webConsole.*): noVNC's page and WebSocket served by the VM's container on
WEB_CONSOLE_PORT, its container port and the port `web-console` of the VM's Service; refused
without VNC and on a port the pod needs for something else."""

from __future__ import annotations

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
    container,
    env,
    env_values,
    render,
    with_source,
)

DEFAULTS = render(VALUE_SETS["defaults"])
WEB_CONSOLE = render(VALUE_SETS["web-console"])
CUSTOM = f"{DEFAULT_VM}-custom"
PLAIN = f"{DEFAULT_VM}-plain"
ON = {"vnc": {"password": "pa55word"}, "webConsole": {"enabled": True}}


def service_ports(rendered: Rendered, name: str = DEFAULT_VM) -> list[dict[str, Any]]:
    ports: list[dict[str, Any]] = rendered.get("Service", name)["spec"]["ports"]
    return ports


def web_console_ports(statefulset: Manifest) -> list[dict[str, Any]]:
    return [p for p in container(statefulset).get("ports", []) if p["name"] == "web-console"]


def test_off_by_default() -> None:
    statefulset = DEFAULTS.statefulset()
    assert "WEB_CONSOLE_PORT" not in env(statefulset)
    assert web_console_ports(statefulset) == []
    assert "web-console" not in {p["name"] for p in service_ports(DEFAULTS)}
    assert "Web console" not in DEFAULTS.notes


def test_on_sets_the_env_the_container_port_and_the_service_port() -> None:
    statefulset = WEB_CONSOLE.statefulset()
    assert env_values(statefulset)["WEB_CONSOLE_PORT"] == "6080"
    assert "NO_VNC" not in env(statefulset)
    assert web_console_ports(statefulset) == [
        {"name": "web-console", "containerPort": 6080, "protocol": "TCP"}
    ]
    # One Service port serves both the page and its WebSocket, after service.ports.
    assert service_ports(WEB_CONSOLE) == [
        {"name": "ssh", "port": 22, "targetPort": 22, "protocol": "TCP"},
        {"name": "web-console", "port": 6080, "targetPort": 6080, "protocol": "TCP"},
    ]
    # Not on the headless Service (only the metrics port goes there).
    headless = WEB_CONSOLE.get("Service", f"{DEFAULT_VM}-headless")
    assert "ports" not in headless["spec"]


def test_a_custom_port() -> None:
    rendered = render(with_source(ON | {"webConsole": {"enabled": True, "port": 8080}}))
    statefulset = rendered.statefulset()
    assert env_values(statefulset)["WEB_CONSOLE_PORT"] == "8080"
    assert web_console_ports(statefulset)[0]["containerPort"] == 8080
    assert {"name": "web-console", "port": 8080, "targetPort": 8080, "protocol": "TCP"} in (
        service_ports(rendered)
    )
    assert "pod/rel-kvm-manager-0 8080:8080" in rendered.notes
    assert "http://localhost:8080/" in rendered.notes


def test_with_vnc_on_the_service_too() -> None:
    rendered = render(with_source(ON | {"service": {"vnc": True}}))
    assert [p["name"] for p in service_ports(rendered)] == ["ssh", "vnc", "web-console"]
    declared = {p["name"]: p["containerPort"] for p in container(rendered.statefulset())["ports"]}
    assert declared == {"ssh": 22, "vnc": 5900, "web-console": 6080}


def test_per_vm_overrides() -> None:
    # A vms entry inherits webConsole, may change its port, or turn it off.
    custom = WEB_CONSOLE.statefulset(CUSTOM)
    assert env_values(custom)["WEB_CONSOLE_PORT"] == "8443"
    assert web_console_ports(custom)[0]["containerPort"] == 8443
    assert {"name": "web-console", "port": 8443, "targetPort": 8443, "protocol": "TCP"} in (
        service_ports(WEB_CONSOLE, CUSTOM)
    )
    plain = WEB_CONSOLE.statefulset(PLAIN)
    assert "WEB_CONSOLE_PORT" not in env(plain)
    assert web_console_ports(plain) == []
    assert "web-console" not in {p["name"] for p in service_ports(WEB_CONSOLE, PLAIN)}
    # And the other way round: on for one entry only.
    rendered = render(
        with_source(
            {"vnc": {"password": "pa55word"}, "vms": {"web": {"webConsole": {"enabled": True}}}}
        )
    )
    assert "WEB_CONSOLE_PORT" not in env(rendered.statefulset())
    web = rendered.statefulset(f"{DEFAULT_VM}-web")
    assert env_values(web)["WEB_CONSOLE_PORT"] == "6080"


def test_notes_tell_how_to_reach_it() -> None:
    notes = WEB_CONSOLE.notes
    assert (
        f"kubectl port-forward -n {NAMESPACE} pod/{DEFAULT_VM}-0 6080:6080"
        "   # then open http://localhost:6080/"
    ) in notes
    assert f"pod/{CUSTOM}-0 8443:8443" in notes
    assert f"pod/{PLAIN}-0 6080:6080" not in notes
    assert "Web console (noVNC, behind the VNC password)" in notes
    open_console = render(with_source({"webConsole": {"enabled": True}}))
    assert "Web console (noVNC, without a password)" in open_console.notes
    # A privileged port is forwarded from an unprivileged local one, as for the VM's ports.
    low = render(with_source(ON | {"webConsole": {"enabled": True, "port": 80}}))
    assert f"pod/{DEFAULT_VM}-0 10080:80   # then open http://localhost:10080/" in low.notes


@pytest.mark.parametrize(
    "values",
    [
        {"vnc": {"enabled": False}, "webConsole": {"enabled": True}},
        {"vnc": {"enabled": False}, "vms": {"web": {"webConsole": {"enabled": True}}}},
        {"webConsole": {"enabled": True}, "vms": {"web": {"vnc": {"enabled": False}}}},
    ],
)
def test_refused_without_vnc(values: Values) -> None:
    chart().validate_schema(with_source(values))  # per VM: the templates check the merge
    with pytest.raises(helm.HelmRenderError, match=r"webConsole\.enabled needs vnc\.enabled"):
        render(with_source(values))
    # Off, VNC off is fine.
    render(with_source({"vnc": {"enabled": False}, "webConsole": {"enabled": False}}))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"metrics": {"enabled": True, "port": 6080}},
            r"webConsole\.port 6080 is also metrics\.port",
        ),
        (
            {"service": {"ports": [{"name": "http", "port": 80, "targetPort": 6080}]}},
            r"webConsole\.port 6080 is also the target of service port http",
        ),
        (
            {"vms": {"web": {"webConsole": {"port": 22}}}},
            rf"VM {DEFAULT_VM}-web: webConsole\.port 22 is also the target of service port ssh",
        ),
        (
            {"service": {"ports": [{"name": "web-console", "port": 8000}]}},
            r"service port name web-console is the web console's",
        ),
        (
            {"extraEnv": [{"name": "WEB_CONSOLE_PORT", "value": "7000"}]},
            r"set webConsole\.port, not WEB_CONSOLE_PORT in extraEnv",
        ),
    ],
)
def test_a_port_the_pod_needs_is_refused(values: Values, message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(with_source(ON | values))
    # A UDP port of the same number goes to the VM without a clash.
    udp = {"service": {"ports": [{"name": "dns", "port": 6080, "protocol": "UDP"}]}}
    render(with_source(ON | udp))


@pytest.mark.parametrize(
    ("web_console", "where"),
    [
        ({"port": 0}, "/webConsole/port"),
        ({"port": 65536}, "/webConsole/port"),
        ({"port": 5900}, "/webConsole/port"),
        ({"port": "6080"}, "/webConsole/port"),
        ({"enabled": "yes"}, "/webConsole/enabled"),
        ({"prot": 6080}, "prot"),
    ],
)
def test_bad_values_are_refused_by_the_schema(web_console: Values, where: str) -> None:
    # The same at the top level and in a vms entry.
    for values, prefix in (
        ({"webConsole": web_console}, "/webConsole"),
        ({"vms": {"web": {"webConsole": web_console}}}, "/vms/web/webConsole"),
    ):
        with pytest.raises(helm.HelmValuesError) as caught:
            chart().validate_schema(with_source(values))
        assert where.replace("/webConsole", prefix, 1) in str(caught.value)


def test_the_templates_refuse_vnc_s_port_without_the_schema(tmp_path: Path) -> None:
    # `helm install --skip-schema-validation` still meets the templates' own check.
    copy = tmp_path / "kvm-manager"
    shutil.copytree(CHART_DIR, copy)
    (copy / "values.schema.json").unlink()
    unchecked = helm.Chart.load(copy)
    values = with_source(ON | {"webConsole": {"enabled": True, "port": 5900}})
    with pytest.raises(helm.HelmRenderError, match=r"webConsole\.port 5900 is QEMU's VNC"):
        unchecked.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
