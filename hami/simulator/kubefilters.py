"""The in-tree filters and score of the fake kube-scheduler, as pure functions over raw JSON.

They run before any extender (k8s-apis.md §8.4) in kube-scheduler's default plugin order:
NodeUnschedulable, TaintToleration, NodeAffinity (``nodeSelector`` and required node affinity),
NodeResourcesFit. A node fails at its first failing plugin; NodeResourcesFit reports every
insufficient resource at once. Reason strings are kube-scheduler's, so ``FailedScheduling``
messages read like a real cluster's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any, Final

from hami.core.quantity import QuantityError, parse_quantity

JsonObj = dict[str, Any]

REASON_UNSCHEDULABLE: Final = "node(s) were unschedulable"
REASON_AFFINITY: Final = "node(s) didn't match Pod's node affinity/selector"
REASON_TOO_MANY_PODS: Final = "Too many pods"
TAINT_UNSCHEDULABLE: Final = "node.kubernetes.io/unschedulable"
# Scoring defaults for containers without requests
# (kube-scheduler ``DefaultMilliCPURequest`` / ``DefaultMemoryRequest``).
_NONZERO_CPU: Final = Fraction(1, 10)
_NONZERO_MEMORY: Final = Fraction(200 * 2**20)
_TERMINAL: Final = frozenset({"Succeeded", "Failed"})


def quantity(value: object) -> Fraction:
    """A quantity, with unparsable values counted as zero (the API server would have rejected them)."""
    try:
        return parse_quantity(value)  # type: ignore[arg-type]
    except QuantityError:
        return Fraction(0)


def _container_requests(container: Mapping[str, Any]) -> dict[str, Fraction]:
    resources = container.get("resources") or {}
    merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    return {name: quantity(value) for name, value in merged.items()}


def pod_requests(pod: Mapping[str, Any]) -> dict[str, Fraction]:
    """Effective pod requests: max(sum of containers, each init container) plus overhead.

    Requests default from limits, as the API server's defaulting does.
    """
    spec = pod.get("spec") or {}
    total: dict[str, Fraction] = {}
    for container in spec.get("containers") or []:
        for name, value in _container_requests(container).items():
            total[name] = total.get(name, Fraction(0)) + value
    for container in spec.get("initContainers") or []:
        for name, value in _container_requests(container).items():
            total[name] = max(total.get(name, Fraction(0)), value)
    for name, value in (spec.get("overhead") or {}).items():
        total[name] = total.get(name, Fraction(0)) + quantity(value)
    return total


def is_active(pod: Mapping[str, Any]) -> bool:
    """A pod that still holds node resources (not Succeeded/Failed)."""
    return (pod.get("status") or {}).get("phase") not in _TERMINAL


def tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    for tol in tolerations:
        effect = tol.get("effect") or ""
        if effect and effect != taint.get("effect"):
            continue
        key = tol.get("key") or ""
        operator = tol.get("operator") or "Equal"
        if key and key != taint.get("key"):
            continue
        if operator == "Exists":
            return True
        if not key:  # an empty key with Equal matches nothing (validation forbids it)
            continue
        if operator == "Equal" and (tol.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def _untolerated_taint(pod: Mapping[str, Any], node: Mapping[str, Any]) -> str | None:
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not tolerates(tolerations, taint):
            return f"node(s) had untolerated taint {{{taint.get('key', '')}: {taint.get('value', '')}}}"
    return None


def _requirement_matches(req: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key = str(req.get("key", ""))
    op = req.get("operator")
    values = [str(v) for v in req.get("values") or []]
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt") and key in labels and len(values) == 1:
        try:
            have, want = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > want if op == "Gt" else have < want
    return False


def _field_matches(req: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    if req.get("key") != "metadata.name":
        return False
    return _requirement_matches(
        {**req, "key": "name"}, {"name": (node.get("metadata") or {}).get("name", "")}
    )


def matches_node_affinity(pod: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    labels = (node.get("metadata") or {}).get("labels") or {}
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True
    for term in terms:  # terms are ORed, requirements inside a term ANDed
        exprs = term.get("matchExpressions") or []
        fields = term.get("matchFields") or []
        if not exprs and not fields:
            continue
        if all(_requirement_matches(r, labels) for r in exprs) and all(
            _field_matches(r, node) for r in fields
        ):
            return True
    return False


def node_allocatable(node: Mapping[str, Any]) -> dict[str, Fraction]:
    status = node.get("status") or {}
    raw = status.get("allocatable") or status.get("capacity") or {}
    return {name: quantity(value) for name, value in raw.items()}


def fit_reasons(
    pod: Mapping[str, Any],
    node: Mapping[str, Any],
    node_pods: Iterable[Mapping[str, Any]],
    *,
    ignored_resources: frozenset[str] = frozenset(),
) -> list[str]:
    """Why ``pod`` cannot go on ``node`` (empty list: it fits). ``node_pods`` are the pods bound or
    assumed on that node, terminal ones included (they are skipped here)."""
    spec = node.get("spec") or {}
    if spec.get("unschedulable") and not tolerates(
        (pod.get("spec") or {}).get("tolerations") or [], {"key": TAINT_UNSCHEDULABLE, "effect": "NoSchedule"}
    ):
        return [REASON_UNSCHEDULABLE]
    taint = _untolerated_taint(pod, node)
    if taint is not None:
        return [taint]
    if not matches_node_affinity(pod, node):
        return [REASON_AFFINITY]
    allocatable = node_allocatable(node)
    used: dict[str, Fraction] = {}
    count = 0
    for other in node_pods:
        if not is_active(other):
            continue
        count += 1
        for name, value in pod_requests(other).items():
            used[name] = used.get(name, Fraction(0)) + value
    reasons: list[str] = []
    if count + 1 > allocatable.get("pods", Fraction(0)):
        reasons.append(REASON_TOO_MANY_PODS)
    for name, want in sorted(pod_requests(pod).items()):
        if want <= 0 or name in ignored_resources or name == "pods":
            continue
        if want > allocatable.get(name, Fraction(0)) - used.get(name, Fraction(0)):
            reasons.append(f"Insufficient {name}")
    return reasons


def least_allocated_score(
    pod: Mapping[str, Any], node: Mapping[str, Any], node_pods: Iterable[Mapping[str, Any]]
) -> int:
    """NodeResourcesFit ``LeastAllocated`` over cpu and memory, 0..100 (containers without requests
    count as 100m CPU / 200 MiB, as in kube-scheduler)."""

    def nonzero(p: Mapping[str, Any]) -> tuple[Fraction, Fraction]:
        cpu = mem = Fraction(0)
        for container in (p.get("spec") or {}).get("containers") or []:
            req = _container_requests(container)
            cpu += req.get("cpu") or _NONZERO_CPU
            mem += req.get("memory") or _NONZERO_MEMORY
        return cpu, mem

    allocatable = node_allocatable(node)
    cpu, mem = nonzero(pod)
    for other in node_pods:
        if is_active(other):
            c, m = nonzero(other)
            cpu += c
            mem += m
    scores = []
    for want, have in (
        (cpu, allocatable.get("cpu", Fraction(0))),
        (mem, allocatable.get("memory", Fraction(0))),
    ):
        scores.append(0 if have <= 0 or want > have else int((have - want) * 100 / have))
    return sum(scores) // len(scores)


def fit_error_message(total_nodes: int, reasons_by_node: Mapping[str, list[str]]) -> str:
    """kube-scheduler ``FitError.Error()``: ``0/N nodes are available: <count> <reason>, ….``"""
    histogram: Counter[str] = Counter(reason for reasons in reasons_by_node.values() for reason in reasons)
    parts = sorted(f"{count} {reason}" for reason, count in histogram.items())
    message = f"0/{total_nodes} nodes are available"
    return f"{message}: {', '.join(parts)}." if parts else f"{message}."
