from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest

from hami.metrics.catalog import all_specs, series_index

DASHBOARD = Path(__file__).resolve().parents[3] / "helm" / "hami" / "dashboards" / "hami.json"
GRAFANA_VAR = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<metric>[^,()]+),\s*)?(?P<label>\w+)\)$")


def substitute(expr: str) -> str:
    """Grafana variables → valid PromQL (ranges for interval variables, a string otherwise)."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return "5m" if name.startswith("__") and name.endswith("interval") else "placeholder"

    return GRAFANA_VAR.sub(repl, expr)


def metric_names(node: Any) -> Iterator[str]:
    """Every metric a parsed PromQL expression selects."""
    if isinstance(node, promql_parser.VectorSelector):
        if node.name:
            yield node.name
        for matcher in node.matchers.matchers:
            if matcher.name == "__name__":
                yield matcher.value
    elif isinstance(node, promql_parser.MatrixSelector):
        yield from metric_names(node.vector_selector)
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from metric_names(node.lhs)
        yield from metric_names(node.rhs)
    elif isinstance(node, promql_parser.AggregateExpr):
        yield from metric_names(node.expr)
        if node.param is not None:
            yield from metric_names(node.param)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from metric_names(arg)
    elif isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr):
        yield from metric_names(node.expr)
    elif not isinstance(node, promql_parser.NumberLiteral | promql_parser.StringLiteral):
        raise AssertionError(f"unhandled PromQL node {type(node).__name__}")


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    return out


def test_every_query_parses_and_names_existing_metrics(dashboard: dict[str, Any]) -> None:
    known = series_index()
    found: set[str] = set()
    exprs = queries(dashboard)
    assert len(exprs) >= 25
    for where, expr in exprs:
        try:
            parsed = promql_parser.parse(substitute(expr))
        except Exception as e:  # the parser raises plain exceptions with the position
            raise AssertionError(f"{where}: PromQL does not parse: {expr!r}: {e}") from e
        names = set(metric_names(parsed))
        assert names, f"{where}: selects no metric: {expr!r}"
        unknown = names - set(known)
        assert not unknown, f"{where}: unknown metrics {sorted(unknown)} in {expr!r}"
        found |= {known[n].name for n in names}
    # Every metric of the contract is on the dashboard somewhere.
    assert found == set(all_specs())


def test_template_variables_query_existing_metrics_and_labels(dashboard: dict[str, Any]) -> None:
    specs = all_specs()
    variables = [v for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert {v["name"] for v in variables} == {"node", "namespace"}
    for var in variables:
        m = LABEL_VALUES.match(var["query"]["query"])
        assert m is not None, var
        spec = specs[m["metric"].strip()]
        assert m["label"] in spec.labels


def test_dashboard_shape(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "hami-gpu-sharing" and dashboard["title"]
    ids = [p["id"] for p in all_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    for panel in all_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)) and refs
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24


def test_checker_rejects_unknown_metrics_and_bad_syntax() -> None:
    parsed = promql_parser.parse(
        substitute('sum(rate(vGPU_device_memory_usage_bytes{x=~"$node"}[$__rate_interval]))')
    )
    assert set(metric_names(parsed)) - set(series_index()) == {"vGPU_device_memory_usage_bytes"}
    forms = '-(QuotaUsed) + max_over_time({__name__="GPUDeviceSharedNum"}[5m:1m]) + topk(3, MigInfo)'
    assert set(metric_names(promql_parser.parse(forms))) == {"QuotaUsed", "GPUDeviceSharedNum", "MigInfo"}
    with pytest.raises(Exception):  # noqa: B017 - the parser's own error type
        promql_parser.parse("sum(rate(HostGPUMemoryUsage[5m])")
