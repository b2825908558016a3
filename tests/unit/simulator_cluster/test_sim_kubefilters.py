from __future__ import annotations

from fractions import Fraction

from hami.simulator.kubefilters import (
    fit_error_message,
    fit_reasons,
    least_allocated_score,
    matches_node_affinity,
    pod_requests,
    tolerates,
)


def node(cpu="4", memory="8Gi", pods="110", **extra):
    alloc = {"cpu": cpu, "memory": memory, "pods": pods, **extra}
    return {
        "metadata": {"name": "n", "labels": {"zone": "a", "gen": "5"}},
        "spec": {},
        "status": {"allocatable": alloc},
    }


def pod(requests=None, limits=None, **spec):
    resources = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return {
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "resources": resources}], **spec},
    }


def test_pod_requests_default_from_limits_and_take_the_init_maximum():
    p = pod(requests={"cpu": "500m"}, limits={"memory": "1Gi", "nvidia.com/gpu": "2"})
    p["spec"]["containers"].append({"name": "d", "resources": {"requests": {"cpu": "250m"}}})
    p["spec"]["initContainers"] = [{"name": "i", "resources": {"requests": {"cpu": "2"}}}]
    p["spec"]["overhead"] = {"cpu": "100m"}
    assert pod_requests(p) == {
        "cpu": Fraction(21, 10),
        "memory": Fraction(2**30),
        "nvidia.com/gpu": Fraction(2),
    }


def test_tolerations():
    taint = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    assert tolerates([{"operator": "Exists"}], taint)  # empty key + Exists tolerates everything
    assert tolerates([{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}], taint)
    assert tolerates([{"key": "dedicated", "value": "gpu"}], taint)  # operator defaults to Equal
    assert not tolerates([{"key": "dedicated", "value": "cpu"}], taint)
    assert not tolerates([{"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}], taint)
    assert not tolerates([], taint)


def test_required_node_affinity_terms():
    def with_terms(*terms):
        return pod(
            affinity={
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}
                }
            }
        )

    n = node()
    assert matches_node_affinity(
        with_terms({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}), n
    )
    assert not matches_node_affinity(
        with_terms({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}), n
    )
    assert matches_node_affinity(
        with_terms({"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["4"]}]}), n
    )
    assert not matches_node_affinity(
        with_terms({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}), n
    )
    # Terms are ORed.
    assert matches_node_affinity(
        with_terms(
            {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n"]}]},
        ),
        n,
    )
    assert not matches_node_affinity(pod(nodeSelector={"zone": "b"}), n)


def test_fit_reasons_count_bound_pods_and_skip_ignored_resources():
    n = node(cpu="2", pods="2")
    running = pod(requests={"cpu": "1500m"})
    finished = pod(requests={"cpu": "2"})
    finished["status"] = {"phase": "Succeeded"}
    wants = pod(requests={"cpu": "1", "memory": "16Gi"}, limits={"nvidia.com/gpu": "1"})
    assert fit_reasons(wants, n, [running, finished]) == [
        "Insufficient cpu",
        "Insufficient memory",
        "Insufficient nvidia.com/gpu",
    ]
    assert fit_reasons(wants, n, [running], ignored_resources=frozenset({"nvidia.com/gpu"})) == [
        "Insufficient cpu",
        "Insufficient memory",
    ]
    assert fit_reasons(pod(), n, [running, running]) == ["Too many pods"]
    cordoned = {**n, "spec": {"unschedulable": True}}
    assert fit_reasons(pod(), cordoned, []) == ["node(s) were unschedulable"]
    tolerant = pod(tolerations=[{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}])
    assert fit_reasons(tolerant, cordoned, []) == []


def test_score_prefers_the_emptier_node():
    busy = [pod(requests={"cpu": "3", "memory": "6Gi"})]
    assert least_allocated_score(pod(requests={"cpu": "1"}), node(), []) > least_allocated_score(
        pod(requests={"cpu": "1"}), node(), busy
    )


def test_fit_error_message_is_sorted_and_counted():
    message = fit_error_message(
        4,
        {"a": ["Insufficient cpu"], "b": ["Insufficient cpu", "Insufficient memory"], "c": ["Too many pods"]},
    )
    assert message == "0/4 nodes are available: 1 Insufficient memory, 1 Too many pods, 2 Insufficient cpu."
    assert fit_error_message(0, {}) == "0/0 nodes are available."
