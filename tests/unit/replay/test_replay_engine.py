from __future__ import annotations

import math
from pathlib import Path

import pytest

from hami.replay.curve import discretize, numpy_mean
from hami.replay.engine import Replay
from hami.replay.trace import NodeSpec, PodSpec


def node(name: str, cpu: int, gpus: int, model: str = "T4", mem: int = 262144) -> NodeSpec:
    return NodeSpec(name=name, cpu_milli=cpu, memory_mib=mem, gpus=gpus, model=model)


def pod(
    name: str, cpu: int, num: int = 0, milli: int = 0, mem: int = 1024, spec: tuple[str, ...] = ()
) -> PodSpec:
    return PodSpec(name=name, cpu_milli=cpu, memory_mib=mem, num_gpu=num, gpu_milli=milli, gpu_spec=spec)


def replay(nodes: list[NodeSpec], policy: str, trace: list[PodSpec] | None = None, split: int = 10) -> Replay:
    # tune 0.01: the trace is deflated to nothing, the test offers its own pods one by one
    rp = Replay(nodes, trace or [pod("t", 1000, 1, 1000)], policy, seed=1, tune=0.01, split=split)
    rp.rank = list(range(len(nodes)))
    return rp


def test_best_fit_prefers_the_tightest_node() -> None:
    rp = replay([node("a", 32000, 8), node("b", 32000, 2)], "best-fit")
    assert rp.offer(pod("p", 4000, 1, 1000)) == (1, (0,))
    assert rp.cpu_left[1] == 28000 and rp.lefts[1] == [0, 1000]


def test_ties_go_to_the_smallest_rank() -> None:
    rp = replay([node("a", 32000, 2), node("b", 32000, 2)], "best-fit")
    rp.rank = [1, 0]
    assert rp.offer(pod("p", 4000, 1, 1000))[0] == 1
    rp = replay([node("a", 32000, 2), node("b", 32000, 2)], "gpu-packing")
    rp.rank = [1, 0]
    assert rp.offer(pod("cpu", 1000))[0] == 1  # CPU-only: score 0 everywhere, rank decides


def test_filters_cpu_memory_model_and_gpus() -> None:
    nodes = [node("small", 2000, 1), node("v100", 64000, 4, "V100M16", mem=4096), node("t4", 64000, 2)]
    rp = replay(nodes, "best-fit")
    assert rp.offer(pod("cpu-heavy", 4000, 1, 500))[0] != 0
    assert rp.offer(pod("typed", 1000, 1, 500, spec=("V100M16",)))[0] == 1
    assert rp.offer(pod("big-mem", 1000, 1, 500, mem=8192))[0] != 1
    assert rp.offer(pod("four", 1000, 4, 1000, spec=("T4",))) == (None, ())


def test_sharing_pods_take_the_tightest_gpu_and_whole_pods_the_lowest_idle() -> None:
    rp = replay([node("a", 64000, 4)], "best-fit")
    assert rp.offer(pod("s1", 1000, 1, 600)) == (0, (0,))
    assert rp.offer(pod("s2", 1000, 1, 300)) == (0, (0,))  # 400 left on GPU 0 is the tightest
    assert rp.offer(pod("w", 1000, 2, 1000)) == (0, (1, 2))
    assert rp.lefts[0] == [100, 0, 0, 1000]


def test_split_count_limits_tasks_per_gpu() -> None:
    rp = replay([node("a", 64000, 1)], "best-fit", split=3)
    results = [rp.offer(pod(f"s{i}", 100, 1, 50))[0] for i in range(4)]
    assert results == [0, 0, 0, None]


def test_fgd_keeps_whole_gpus_free() -> None:
    trace = [pod(f"w{i}", 1000, 1, 1000) for i in range(5)] + [pod(f"s{i}", 1000, 1, 500) for i in range(5)]
    rp = replay([node("half-used", 32000, 2), node("idle", 32000, 2)], "fgd", trace)
    rp.offer(pod("first", 1000, 1, 500))  # lands somewhere; make node 0 the half-used one
    if rp.lefts[0] != [500, 1000]:
        rp = replay([node("idle", 32000, 2), node("half-used", 32000, 2)], "fgd", trace)
        rp.rank = [1, 0]
        rp.offer(pod("first", 1000, 1, 500))
    used = 0 if rp.lefts[0] == [500, 1000] else 1
    assert rp.offer(pod("second", 1000, 1, 500)) == (used, (0,))


@pytest.mark.parametrize("policy", ["binpack", "spread", "topology-aware"])
def test_hami_policies_node_choice(policy: str) -> None:
    rp = replay([node("a", 64000, 2), node("b", 64000, 2)], policy)
    rp.offer(pod("first", 1000, 1, 500))
    first = 0 if rp.npods[0] else 1
    second, gpus = rp.offer(pod("second", 1000, 1, 300))
    if policy == "spread":
        assert second == 1 - first
    else:
        assert second == first
    assert len(gpus) == 1


def test_every_policy_runs_a_small_trace(tmp_path: Path) -> None:
    nodes = [
        node(f"n{i}", 16000 * (1 + i % 3), 2 + 2 * (i % 2), "T4" if i % 2 else "P100") for i in range(12)
    ]
    trace = [
        pod(f"p{i}", 1000 + 500 * (i % 7), (i % 3 == 0) + (i % 11 == 0), 1000 if i % 3 else 0)
        for i in range(40)
    ]
    trace += [pod(f"s{i}", 2000, 1, 100 * (1 + i % 9)) for i in range(40)]
    from hami.core.packing import POLICIES

    for policy in POLICIES:
        result = Replay(nodes, trace, policy, seed=7).run()
        assert result.pods >= len(trace)
        assert result.placed + result.failed == result.pods
        assert result.used_gpu_milli <= result.capacity_gpu_milli
        assert len(result.alloc_pct) == 131
        assert result.final_alloc_pct == pytest.approx(
            100 * result.used_gpu_milli / result.capacity_gpu_milli, abs=1e-3
        )


def test_deterministic_policies_are_reproducible() -> None:
    nodes = [node(f"n{i}", 32000, 2) for i in range(6)]
    trace = [pod(f"p{i}", 3000, 1, 100 * (1 + i % 10)) for i in range(30)]
    a = Replay(nodes, trace, "fgd", seed=3).run()
    b = Replay(nodes, trace, "fgd", seed=3).run()
    assert a.alloc_pct == b.alloc_pct and a.failed == b.failed


def test_unknown_policy_and_bad_split() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        Replay([node("a", 1000, 1)], [pod("p", 1, 1, 1000)], "nope", seed=1)
    with pytest.raises(ValueError, match="split"):
        Replay([node("a", 1000, 1)], [pod("p", 1, 1, 1000)], "fgd", seed=1, split=0)


def test_curve_buckets_by_rounded_arrived_percent() -> None:
    # capacity 1 GPU = 1000 milli: 1 % = 10 milli
    arrived = [4, 6, 14, 16, 30]
    used = [4, 6, 14, 6, 6]
    curve = discretize(arrived, used, 1000)
    assert curve[0] == 0.4  # only the 4-milli line (0.4 %) rounds to column 0
    assert curve[1] == round((0.6 + 1.4) / 2, 2)  # 0.6 % and 1.4 % round to column 1
    assert curve[2] == 0.6
    assert curve[3] == 0.6 and curve[4] == 0.6  # column 4 empty: columns 3..5 are used
    assert math.isnan(curve[130])
    assert numpy_mean([1.0] * 9 + [2.0]) == 1.1


def test_cpu_stranding_decides_where_fgd_ties() -> None:
    """Pinned: a CPU-only pod, then four whole-GPU pods of 8 cores on two 2-GPU nodes.

    FGD scores both nodes 50 for the CPU-only pod (one more typical pod fits either way), so
    the rank sends it to the CPU-lean node, whose 14 cores then feed only one of its two GPUs:
    the fourth GPU pod fails. fragmentation-aware sees the lean node's GPU lose its CPU and
    sends the CPU-only pod to the CPU-rich node: all four GPU pods fit.
    """
    trace = [pod(f"w{i}", 8000, 1, 1000) for i in range(4)]  # typical pods: (8 cores, 1 GPU)
    nodes = [node("lean", 20000, 2), node("rich", 64000, 2)]  # rank: lean first
    work = [pod("cpu-only", 6000)] + [pod(f"gpu{i}", 8000, 1, 1000) for i in range(4)]
    fgd = replay(nodes, "fgd", trace)
    assert [fgd.offer(p)[0] for p in work] == [0, 1, 1, 0, None]
    ours = replay(nodes, "fragmentation-aware", trace)
    assert [ours.offer(p)[0] for p in work] == [1, 0, 0, 1, 1]
    assert ours.cpu_left == [4000, 42000] and ours.lefts == [[0, 0], [0, 0]]


def test_fast_filter_agrees_with_the_readable_one() -> None:
    nodes = [
        node("small", 2000, 1),
        node("v100", 64000, 4, "V100M16", mem=4096),
        node("t4", 64000, 2),
        node("cpu-only", 96000, 0),
    ]
    rp = replay(nodes, "fgd")
    rp.offer(pod("half", 1000, 1, 500, spec=("T4",)))
    rp.offer(pod("whole", 1000, 1, 1000, spec=("V100M16",)))
    shapes = [
        pod("cpu", 3000),
        pod("mem", 1000, mem=8192),
        pod("share", 1000, 1, 600),
        pod("share-typed", 1000, 1, 400, spec=("T4",)),
        pod("two", 1000, 2, 1000),
        pod("four", 1000, 4, 1000, spec=("V100M16", "T4")),
    ]
    for p in shapes:
        s = rp.shape_of(p)
        readable = [i for i in range(len(nodes)) if rp.feasible(i, s)]
        assert rp.feasible_among(s, range(len(nodes))) == readable, p.name
        assert rp.feasible_among(s, [3, 2]) == [i for i in (3, 2) if rp.feasible(i, s)]
