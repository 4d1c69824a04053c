"""Every value set lints clean in strict mode and renders manifests that the Kubernetes API
schemas accept."""

from __future__ import annotations

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.chart.render import CHART_DIR, KUBE_VERSION, VALUE_SETS, Values, render

WARNING = 2  # helm lint severities: 1 info, 2 warning, 3 error
# Custom resources, which have no schema here: test_metrics checks the ServiceMonitor's fields.
CUSTOM_RESOURCES = {"monitoring.coreos.com/v1"}


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_lint_is_clean_in_strict_mode(values: Values) -> None:
    report = helm.lint(CHART_DIR, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= WARNING]
    assert problems == [] and report["errors"] == []
    assert report["total_charts_linted"] == 1


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_manifest_is_valid_kubernetes(values: Values) -> None:
    rendered = render(values)
    assert rendered.all("StatefulSet"), "no VM rendered"
    for manifest in rendered.manifests:
        where = f"{manifest['kind']} {manifest['metadata']['name']}"
        assert manifest["metadata"]["labels"]["app.kubernetes.io/instance"] == "rel", where
        if manifest["apiVersion"] in CUSTOM_RESOURCES:
            continue
        try:
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {exc.message} at {list(exc.path)}")


def test_strict_validation_catches_a_bad_manifest() -> None:
    # The check above means something: the same schemas refuse a misspelt field.
    statefulset = render(VALUE_SETS["defaults"]).statefulset()
    statefulset["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBE_VERSION, strict=True)


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert (chart["name"], chart["version"], chart["appVersion"]) == (
        "kvm-manager",
        "0.1.0",
        "0.1.0",
    )
    assert chart["kubeVersion"].startswith(">=1.2")
    assert chart["description"]
