"""Offline chart checks (issue 9): helm lint --strict, helm template and Kubernetes schema validation
for the four CI value sets, the script CI runs, and the values schema's refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from chartkit import CHART, CI_VALUES, KUBE_VERSION, NAMESPACE, REPO, Chart, values_file

# Custom resources have no schema in kubernetes-validate's bundle; these kinds, and only these,
# are not schema-validated (their fields are checked by the object tests instead).
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("cert-manager.io/v1", "Issuer"),
    ("cert-manager.io/v1", "Certificate"),
}
# resource.k8s.io/v1 (DRA GA) first exists in Kubernetes 1.34; DRA objects are validated there.
NEWER_API = {"resource.k8s.io/v1": "1.34.0"}


def test_four_value_sets_exist() -> None:
    assert [p.name for p in CI_VALUES] == [
        "cdi-dra-monitoring-values.yaml",
        "custom-resources-values.yaml",
        "default-values.yaml",
        "ha-certmanager-values.yaml",
    ]


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_lint_strict(chart: Chart, values: Path) -> None:
    proc = chart.run("lint", "--strict", str(CHART), "-f", str(values), "--namespace", NAMESPACE)
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def _validate(obj: dict[str, Any]) -> str:
    version = NEWER_API.get(obj["apiVersion"], KUBE_VERSION)
    try:
        return kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']}: {e}") from None


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_every_rendered_object_validates(chart: Chart, values: Path) -> None:
    rendered = chart.template([values])
    checked = skipped = 0
    for obj in rendered.objects:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            skipped += 1
            continue
        assert _validate(obj) in {"1.33", "1.34"}
        checked += 1
    assert checked >= 15, f"only {checked} objects rendered"
    kinds = {o["kind"] for o in rendered.objects}
    assert {"Deployment", "DaemonSet", "Service", "ConfigMap", "ClusterRole"} <= kinds
    assert skipped == sum((o["apiVersion"], o["kind"]) in CRD_KINDS for o in rendered.objects)


def test_validation_catches_a_bad_field(default: Any) -> None:
    # The validator must reject what a typo in a template would produce.
    deployment = dict(default.get("Deployment", "hami-scheduler"))
    bad = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(AssertionError, match="replica"):
        _validate(bad)


@pytest.mark.slow
def test_check_chart_script(helm: Path, tmp_path: Path) -> None:
    """scripts/check_chart.sh is what CI and developers run; it must pass on the four sets."""
    env = {
        **os.environ,
        "HELM": str(helm),
        "PYTHON": sys.executable,
        "HOME": str(tmp_path),
    }
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "check_chart.sh")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "chart OK: 4 value sets" in proc.stdout
    assert "skip ServiceMonitor" in proc.stdout  # the DRA/monitoring set renders them


def test_check_chart_script_fails_on_invalid_values(helm: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad-values.yaml"
    bad.write_text("devicePlugin:\n  deviceSplitCount: 0\n", encoding="utf-8")
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "check_chart.sh"), str(bad)],
        capture_output=True,
        text=True,
        env={**os.environ, "HELM": str(helm), "PYTHON": sys.executable},
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "deviceSplitCount" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["scheduler.admissionWebhook.failurePolicy=Maybe"], "failurePolicy"),
        (["devicePlugin.deviceSplitCount=0"], "deviceSplitCount"),
        (["devicePlugin.deviceListStrategy=bogus"], "deviceListStrategy"),
        (["devicePlugin.deviceMemoryScaling=0"], "deviceMemoryScaling"),
        (["scheduler.defaultSchedulerPolicy.gpuSchedulerPolicy=random"], "gpuSchedulerPolicy"),
        (["scheduler.defaultSchedulerPolicy.nodeSchedulerPolicy=topology-aware"], "nodeSchedulerPolicy"),
        (["resourceMem=not a resource"], "resourceMem"),
        (["scheduler.nodeLockExpire=five minutes"], "nodeLockExpire"),
        (["devicePlugin.deviceSplitCont=3"], "deviceSplitCont"),
        (["scheduler.replicas=3", "scheduler.leaderElect=false"], "needs scheduler.leaderElect=true"),
        (["global.gpuHookPath=/opt/hami"], "must be global.gpuHookPath/vgpu"),
        (["devicePlugin.nodeConfiguration.config=not json"], "not valid JSON"),
        (["dra.enabled=true", r"dra.nodeSelector.hami\.io/dra=null"], "dra.nodeSelector needs a label"),
        (
            ["scheduler.patch.enabled=false", "scheduler.certManager.enabled=false"],
            "needs a certificate",
        ),
    ],
)
def test_bad_values_are_refused_with_the_key_named(chart: Chart, sets: list[str], message: str) -> None:
    assert message in chart.template_error(sets)


def test_default_values_file_is_the_chart_default(chart: Chart) -> None:
    assert chart.template([values_file("default")]).text == chart.template().text
