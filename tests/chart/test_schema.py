"""values.schema.json: it covers every value, refuses typos and wrong types, and a missing
image source stops the rendering with a clear message."""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.chart.render import CHART_DIR, VALUE_SETS, Values, chart, render, with_source

SCHEMA: dict[str, Any] = json.loads((CHART_DIR / "values.schema.json").read_text())


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    """`node` with its $ref (local #/$defs/... only) merged in."""
    ref = node.get("$ref")
    if ref is None:
        return node
    target: dict[str, Any] = SCHEMA
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**resolve(target), **{k: v for k, v in node.items() if k != "$ref"}}


def leaf_paths(values: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every value in values.yaml, down to scalars and lists."""
    if isinstance(values, dict) and values:
        return [p for k, v in values.items() for p in leaf_paths(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")]


def schema_for(path: str) -> dict[str, Any]:
    """The schema of the value at `path`; every object on the way must be closed (a typo is
    an error) or a map whose values have a schema of their own."""
    node = resolve(SCHEMA)
    for key in path.split("."):
        extra = node.get("additionalProperties", True)
        assert extra is not True, f"{path}: any key is accepted next to {key}"
        if key in node.get("properties", {}):
            node = resolve(node["properties"][key])
        else:
            assert extra is not False, f"{path}: {key} is not in the schema"
            node = resolve(extra)
    return node


def test_the_schema_describes_every_default_value() -> None:
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    paths = leaf_paths(defaults)
    assert "vm.image.source" in paths and "devices.hostPath" in paths
    for path in paths:
        node = schema_for(path)
        assert {"type", "enum", "anyOf"} & set(node), f"{path}: no type"


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_value_set_passes(values: Values) -> None:
    chart().validate_schema(values)


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"replicas": "two"}, "/replicas"),
        ({"replicaCount": 2}, "replicaCount"),
        ({"cloudInit": {"format": "iso"}}, "/cloudInit/format"),
        ({"cloudInit": {"userData": "#cloud-config\n"}}, "userData"),
        ({"vm": {"accel": "hvf"}}, "/vm/accel"),
        ({"vm": {"readiness": "tcp:70000"}}, "/vm/readiness"),
        ({"vm": {"readiness": "ssh"}}, "/vm/readiness"),
        ({"vm": {"memory": "2 gigs"}}, "/vm/memory"),
        ({"vm": {"mac": "52:54:00:12:34"}}, "/vm/mac"),
        ({"vm": {"natExclude": "tcp/9100"}}, "/vm/natExclude"),
        ({"vm": {"natExclude": ["9100"]}}, "/vm/natExclude/0"),
        ({"vm": {"image": {"sha256": "abc"}}}, "/vm/image/sha256"),
        ({"vnc": {"password": "longer-than-8"}}, "/vnc/password"),
        ({"service": {"ports": [{"name": "web", "port": 80, "protocol": "HTTP"}]}}, "protocol"),
        ({"service": {"type": "Headless"}}, "/service/type"),
        ({"securityContext": {"privilaged": True}}, "privilaged"),
        ({"devices": {"hostPath": "yes"}}, "/devices/hostPath"),
        ({"vms": {"web": {"replicaz": 2}}}, "replicaz"),
        ({"vms": {"web": {"vm": {"accel": "fast"}}}}, "/vms/web/vm/accel"),
        ({"vms": {"Web_1": {}}}, "Web_1"),
        ({"imageCache": {"accessModes": ["ReadWriteSome"]}}, "/imageCache/accessModes/0"),
    ],
)
def test_typos_and_wrong_types_are_refused(values: Values, where: str) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart().validate_schema(with_source(values))
    assert where in str(caught.value)


def test_a_missing_image_source_fails_with_a_clear_message() -> None:
    chart().validate_schema({})  # the schema lets it through: a vms entry may set it
    with pytest.raises(helm.HelmRenderError, match=r"vm\.image\.source is required"):
        render({})
    # A vms entry without a source of its own is named.
    values = {"enabled": False, "vms": {"web": {"replicas": 1}}}
    with pytest.raises(helm.HelmRenderError, match=r"VM rel-kvm-manager-web: .*vms\.web\.vm"):
        render(values)
    render({"enabled": False, "vms": {"web": {"vm": {"image": {"source": "/image/a.raw"}}}}})
