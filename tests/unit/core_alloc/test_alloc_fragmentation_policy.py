"""The fragmentation-aware node policy: ranks fitting nodes by the learned shapes' fragmentation."""

from __future__ import annotations

from alloc_builders import cd, gpu, ledger_with, pod, req

from hami.core.fragmentation import ShapeKey, ShapeWindow
from hami.core.packing import FragmentationAware
from hami.core.placement import Decision, free_milli, pod_shape, schedule
from hami.core.policy import NodePolicy, node_policy_of
from hami.core.vendor import default_registry

VENDORS = default_registry()


def _cluster():
    # "packed": three full GPUs and one idle; "half": one GPU half used, one idle.
    nodes = {
        "packed": [gpu(f"p{i}", index=i, mem=8000) for i in range(4)],
        "half": [gpu(f"h{i}", index=i, mem=8000) for i in range(2)],
    }
    pods = [(f"full{i}", "packed", [cd(f"p{i}", 8000, 100, i)]) for i in range(3)]
    pods.append(("halfpod", "half", [cd("h0", 4000, 50, 0)]))
    return ledger_with(nodes, pods).snapshot()


def test_fragmentation_aware_keeps_a_whole_gpu_free():
    snap = _cluster()
    assert free_milli(snap.nodes["packed"]) == (0, 0, 0, 1000)
    assert free_milli(snap.nodes["half"]) == (500, 1000)
    window = ShapeWindow(size=100)
    policy = FragmentationAware(window=window)
    for _ in range(60):
        policy.observe(ShapeKey(cpu_milli=0, gpu_milli=1000, gpu_number=1))
    for _ in range(40):
        policy.observe(ShapeKey(cpu_milli=0, gpu_milli=500, gpu_number=1))
    request = pod(req(1, mem=4000, cores=50), gpu_policy="binpack")
    assert pod_shape(request) == (500, 1)

    binpack = schedule(snap, ["packed", "half"], request, VENDORS)
    assert isinstance(binpack, Decision) and binpack.node == "packed"  # eats the last whole GPU

    request = pod(req(1, mem=4000, cores=50), gpu_policy="binpack", node_policy="fragmentation-aware")
    ours = schedule(snap, ["packed", "half"], request, VENDORS, fragmentation=policy)
    assert isinstance(ours, Decision) and ours.node == "half" and ours.complete
    assert [d.uuid for d in ours.devices["NVIDIA"][0]] == ["h0"]  # the idle h1 stays whole
    # Without a model the policy falls back to binpack's choice.
    assert schedule(snap, ["packed", "half"], request, VENDORS).node == "packed"  # type: ignore[union-attr]


def test_node_policy_names():
    assert node_policy_of("fragmentation-aware") is NodePolicy.FRAGMENTATION_AWARE
    assert node_policy_of("bogus") is NodePolicy.BINPACK
