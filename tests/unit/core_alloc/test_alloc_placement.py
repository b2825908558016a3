"""Node choice and per-node fit (hami-scheduler-spec.md §5.2, §5.4, §5.7): the four policy
combinations, the A10 worked example, multi-container pods, failures, and equivalence of the fast
path with a full evaluation."""

from __future__ import annotations

import pytest
from alloc_builders import cd, gpu, ledger_with, pod, req
from hypothesis import given, settings
from hypothesis import strategies as st

from hami.core import keys
from hami.core.errors import InvalidRequest
from hami.core.fit import NamespaceQuota, QuotaAmounts
from hami.core.ledger import Ledger
from hami.core.model import NVIDIA
from hami.core.placement import (
    NODE_QUARANTINED,
    NODE_UNREGISTERED,
    Decision,
    NodeFailure,
    NodeFit,
    Unschedulable,
    evaluate_node,
    schedule,
)
from hami.core.vendor import NvidiaVendor, VendorRegistry, default_registry

VENDORS = default_registry()


def four_device_cluster() -> Ledger:
    """spec §5.7 end-to-end golden: node1 = device1 (1 task, 2000 MiB, 25 cores) + device2 (idle);
    node2 = device3 (idle) + device4 (1 task, 6000 MiB, 75 cores); all Count 10, 8000 MiB, NUMA 0."""
    return ledger_with(
        {
            "node1": [gpu("device1", index=0), gpu("device2", index=1)],
            "node2": [gpu("device3", index=0), gpu("device4", index=1)],
        },
        [("p1", "node1", [cd("device1", 2000, 25)]), ("p2", "node2", [cd("device4", 6000, 75)])],
    )


@pytest.mark.parametrize(
    ("node_policy", "gpu_policy", "node", "device"),
    [
        ("binpack", "binpack", "node2", "device4"),
        ("binpack", "spread", "node2", "device3"),
        ("spread", "binpack", "node1", "device1"),
        ("spread", "spread", "node1", "device2"),
    ],
)
def test_four_policy_combinations(node_policy: str, gpu_policy: str, node: str, device: str) -> None:
    ledger = four_device_cluster()
    snap = ledger.snapshot()
    assert snap.nodes["node1"].score == 3.0 and snap.nodes["node2"].score == 8.0
    request = pod(req(1, mem=1000, cores=20), node_policy=node_policy, gpu_policy=gpu_policy)
    for evaluate_all in (False, True):
        decision = schedule(snap, ["node1", "node2"], request, VENDORS, evaluate_all=evaluate_all)
        assert isinstance(decision, Decision)
        assert decision.node == node
        index = {"device1": 0, "device2": 1, "device3": 0, "device4": 1}[device]
        assert decision.devices[NVIDIA] == ((cd(device, 1000, 20, idx=index),),)


def test_pod_annotations_override_default_policies() -> None:
    snap = four_device_cluster().snapshot()
    from hami.core.policy import GpuPolicy, NodePolicy

    decision = schedule(
        snap,
        ["node1", "node2"],
        pod(req(1, mem=1000, cores=20)),
        VENDORS,
        default_node_policy=NodePolicy.SPREAD,
        default_gpu_policy=GpuPolicy.BINPACK,
    )
    assert isinstance(decision, Decision)
    assert (decision.node, decision.devices[NVIDIA][0][0].uuid) == ("node1", "device1")


def a10_cluster() -> Ledger:
    return ledger_with(
        {
            "node-a": [
                gpu("GPU-0uuid", mem=23028, type="NVIDIA A10"),
                gpu("GPU-1uuid", index=1, mem=23028, type="NVIDIA A10"),
            ],
            "node-b": [gpu("GPU-9uuid", mem=2000, type="NVIDIA A10")],
        },
        [("busy", "node-a", [cd("GPU-0uuid", 4000, 30)])],
    )


def test_a10_worked_example() -> None:
    snap = a10_cluster().snapshot()
    decision = schedule(
        snap, ["node-a", "node-b"], pod(req(1, mem=3000, cores=30)), VENDORS, evaluate_all=True
    )
    assert isinstance(decision, Decision)
    assert decision.node == "node-a"
    assert round(decision.score, 2) == 2.87
    assert NvidiaVendor().allocation_annotations(decision.devices[NVIDIA]) == {
        keys.VGPU_DEVICES_TO_ALLOCATE: "GPU-1uuid,NVIDIA,3000,30:;",
        keys.VGPU_DEVICES_ALLOCATED: "GPU-1uuid,NVIDIA,3000,30:;",
    }
    assert decision.complete
    assert decision.success_message(2) == "find fit node(node-a), 1 nodes not fit, 1 nodes fit(node-a:2.87)"
    assert decision.failures["node-b"].detail == "1/1 CardInsufficientMemory"
    binpack = schedule(snap, ["node-a"], pod(req(1, mem=3000, cores=30), gpu_policy="binpack"), VENDORS)
    assert isinstance(binpack, Decision)
    assert binpack.devices[NVIDIA][0][0].uuid == "GPU-0uuid"


def test_identical_idle_gpus_choose_the_last_listed() -> None:
    ledger = ledger_with({"n": [gpu("GPU-0"), gpu("GPU-1", index=1)]})
    for policy in ("binpack", "spread"):
        decision = schedule(ledger.snapshot(), ["n"], pod(req(1, mem=100), gpu_policy=policy), VENDORS)
        assert isinstance(decision, Decision)
        assert decision.devices[NVIDIA][0][0].uuid == "GPU-1"


def test_middle_container_golden_encoding() -> None:
    ledger = ledger_with({"n": [gpu("uuid1")]})
    decision = schedule(ledger.snapshot(), ["n"], pod(None, req(1, mem=1000, cores=30), None), VENDORS)
    assert isinstance(decision, Decision)
    assert decision.devices[NVIDIA] == ((), (cd("uuid1", 1000, 30),), ())
    assert NvidiaVendor().allocation_annotations(decision.devices[NVIDIA])[keys.VGPU_DEVICES_ALLOCATED] == (
        ";uuid1,NVIDIA,1000,30:;;"
    )


def test_later_containers_see_earlier_containers_usage() -> None:
    ledger = ledger_with({"n": [gpu("A", mem=8000), gpu("B", index=1, mem=8000)]})
    request = pod(req(1, mem=5000), req(1, mem=5000), gpu_policy="binpack")
    decision = schedule(ledger.snapshot(), ["n"], request, VENDORS)
    assert isinstance(decision, Decision)
    first, second = decision.devices[NVIDIA]
    assert {first[0].uuid, second[0].uuid} == {"A", "B"}
    ledger.assume("pod-uid", "n", decision.devices)
    assert ledger.check_invariants() == []
    too_much = schedule(ledger.snapshot(), ["n"], pod(req(1, mem=5000), uid="p2"), VENDORS)
    assert isinstance(too_much, Unschedulable)


def test_second_container_failure_reports_its_index() -> None:
    ledger = ledger_with({"n": [gpu("A", mem=8000)]})
    result = evaluate_node(ledger.snapshot().nodes["n"], pod(req(1, mem=5000), req(1, mem=5000)), VENDORS)
    assert isinstance(result, NodeFailure)
    assert result.container == 1
    assert result.detail == "1/1 CardInsufficientMemory"


def test_node_insufficient_device_and_unknown_vendor() -> None:
    ledger = ledger_with({"n": [gpu("A"), gpu("B", index=1)]})
    node = ledger.snapshot().nodes["n"]
    failure = evaluate_node(node, pod(req(3)), VENDORS)
    assert isinstance(failure, NodeFailure) and failure.detail == "NodeInsufficientDevice"
    other = evaluate_node(node, pod({"OTHER": req(1, type="OTHER")}), VENDORS)
    assert isinstance(other, NodeFailure) and other.detail == "Device type not found"
    fits = evaluate_node(node, pod(req(2)), VENDORS)
    assert isinstance(fits, NodeFit) and fits.devices is not None


def test_node_ties_go_to_the_smallest_name() -> None:
    ledger = ledger_with({name: [gpu(f"GPU-{name}")] for name in ("node-c", "node-a", "node-b")})
    for node_policy in ("binpack", "spread"):
        for evaluate_all in (False, True):
            decision = schedule(
                ledger.snapshot(),
                ["node-c", "node-b", "node-a"],
                pod(req(1, mem=100), node_policy=node_policy),
                VENDORS,
                evaluate_all=evaluate_all,
            )
            assert isinstance(decision, Decision)
            assert decision.node == "node-a"


def test_unschedulable_reports_every_candidate() -> None:
    ledger = ledger_with(
        {
            "node-a": [gpu("a0", mem=4000)],
            "node-b": [gpu("b0", mem=4000)],
            "node-c": [gpu("c0", type="NVIDIA-T4")],
        }
    )
    request = pod(req(1, mem=6000), annotations={keys.USE_GPUTYPE: "V100"})
    result = schedule(ledger.snapshot(), ["node-a", "node-b", "node-c", "ghost"], request, VENDORS)
    assert isinstance(result, Unschedulable)
    assert result.failed_nodes == {
        "node-a": "NodeUnfitPod",
        "node-b": "NodeUnfitPod",
        "node-c": "NodeUnfitPod",
        "ghost": NODE_UNREGISTERED,
    }
    assert result.failures["node-c"].detail == "1/1 CardTypeMismatch"
    assert result.event_messages() == [
        "2 nodes CardInsufficientMemory(node-a,node-b)",
        "1 nodes CardTypeMismatch(node-c)",
    ]
    assert result.failures["node-a"].messages() == ["a0: free 4000 MiB < 6000 MiB"]


def test_quarantined_node_is_never_chosen() -> None:
    ledger = ledger_with({"good": [gpu("g", mem=1000)], "bad": [gpu("b", mem=80000)]})
    ledger.quarantine("bad", "uid-x", "cannot decode hami.io/vgpu-devices-allocated")
    decision = schedule(ledger.snapshot(), ["good", "bad"], pod(req(1, mem=500)), VENDORS)
    assert isinstance(decision, Decision) and decision.node == "good"
    assert decision.failures["bad"].reason == NODE_QUARANTINED
    assert "uid-x" in decision.failures["bad"].detail
    result = schedule(ledger.snapshot(), ["bad"], pod(req(1, mem=500)), VENDORS)
    assert isinstance(result, Unschedulable)
    assert result.failed_nodes == {"bad": NODE_QUARANTINED}


def test_empty_request_is_rejected() -> None:
    with pytest.raises(InvalidRequest, match="requests no device"):
        schedule(Ledger().snapshot(), ["n"], pod(None), VENDORS)


def test_registry_rejects_duplicates_and_lists_keys() -> None:
    from hami.core.errors import ConfigError

    registry = VendorRegistry([NvidiaVendor()])
    with pytest.raises(ConfigError, match="registered twice"):
        registry.register(NvidiaVendor())
    assert registry.names == (NVIDIA,) and NVIDIA in registry and len(registry) == 1
    assert registry.pod_device_keys()[NVIDIA].allocated == keys.VGPU_DEVICES_ALLOCATED
    assert registry.request_readers() == ()
    assert registry[NVIDIA].name == NVIDIA


# ------------------------------------------------------------------------------- equivalence property

node_st = st.lists(
    st.tuples(
        st.sampled_from([4000, 8000, 16000]),  # devmem
        st.integers(0, 3),  # tasks already there
        st.sampled_from([0, 1000, 3000]),  # MiB per task
        st.sampled_from([0, 10, 30]),  # cores per task
        st.integers(0, 1),  # numa
        st.booleans(),  # healthy
    ),
    min_size=1,
    max_size=4,
)
container_st = st.one_of(
    st.none(),
    st.builds(
        req,
        nums=st.integers(1, 3),
        mem=st.sampled_from([0, 500, 2000, 7000]),
        pct=st.sampled_from([101, 25, 100]),
        cores=st.sampled_from([0, 20, 100]),
    ),
)


@settings(max_examples=120, deadline=None)
@given(
    st.lists(node_st, min_size=1, max_size=6),
    st.lists(container_st, min_size=1, max_size=3).filter(lambda cs: any(c is not None for c in cs)),
    st.sampled_from(["binpack", "spread"]),
    st.sampled_from(["binpack", "spread", "topology-aware"]),
    st.booleans(),
    st.one_of(st.none(), st.tuples(st.sampled_from([3000, 8000, 20000]), st.sampled_from([0, 100, 250]))),
)
def test_fast_path_matches_full_evaluation(
    nodes, containers, node_policy, gpu_policy, numa_bind, limits
) -> None:  # type: ignore[no-untyped-def]
    """Early exit, the cheap bound and the order-free pre-fit choose what evaluating every node
    fully (HAMi's way) chooses, and report the same failures."""
    ledger = Ledger()
    names = []
    for n, devices in enumerate(nodes):
        name = f"node-{n}"
        names.append(name)
        ledger.set_node_devices(
            name,
            [gpu(f"{name}-g{i}", index=i, mem=d[0], numa=d[4], health=d[5]) for i, d in enumerate(devices)],
        )
        for i, (mem, tasks, per_mem, per_cores, _, _) in enumerate(devices):
            for k in range(tasks):
                if (k + 1) * per_mem <= mem:
                    ledger.commit(
                        f"{name}-{i}-{k}", name, {NVIDIA: ((cd(f"{name}-g{i}", per_mem, per_cores),),)}
                    )
    annotations = {keys.NUMA_BIND: "true"} if numa_bind else {}
    request = pod(*containers, node_policy=node_policy, gpu_policy=gpu_policy, annotations=annotations)
    quota = (
        None
        if limits is None
        else NamespaceQuota(vendors={NVIDIA: QuotaAmounts(mem_limit=limits[0], cores_limit=limits[1])})
    )
    snap = ledger.snapshot()
    fast = schedule(snap, names, request, VENDORS, quota=quota)
    full = schedule(snap, names, request, VENDORS, evaluate_all=True, quota=quota)
    by_hand = {name: evaluate_node(snap.nodes[name], request, VENDORS, quota=quota) for name in names}
    fitting = [r for r in by_hand.values() if isinstance(r, NodeFit)]
    if not fitting:
        assert isinstance(fast, Unschedulable) and isinstance(full, Unschedulable)
        assert {n: f.detail for n, f in fast.failures.items()} == {n: f.detail for n, f in by_hand.items()}  # type: ignore[union-attr]
        return
    assert isinstance(fast, Decision) and isinstance(full, Decision)
    best_score = max(f.score for f in fitting) if node_policy == "binpack" else min(f.score for f in fitting)
    best = min(f.node for f in fitting if f.score == best_score)
    assert fast.node == full.node == best
    assert fast.devices == full.devices == by_hand[best].devices  # type: ignore[union-attr]
    assert len(full.fits) == len(fitting)
    ledger.assume(request.uid, fast.node, fast.devices)
    assert ledger.check_invariants() == []


def test_node_score_golden_and_spread_lands_on_the_idle_device() -> None:
    """spec §5.7: one busy device (5 tasks, 4000/8000 MiB, 50 cores) and one idle: node score 7.5."""
    ledger = ledger_with(
        {"n": [gpu("busy"), gpu("idle", index=1)]},
        [(f"t{i}", "n", [cd("busy", 800, 10)]) for i in range(5)],
    )
    snap = ledger.snapshot()
    assert snap.nodes["n"].score == 7.5
    decision = schedule(snap, ["n"], pod(req(1, mem=1000, cores=30), gpu_policy="spread"), VENDORS)
    assert isinstance(decision, Decision)
    assert decision.score == 7.5
    assert decision.devices[NVIDIA] == ((cd("idle", 1000, 30, idx=1),),)
