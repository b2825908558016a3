from __future__ import annotations

import math

import pytest

from hami.core.fragmentation import (
    CpuAwareFragmentation,
    FragmentationModel,
    ShapeKey,
    ShapeWindow,
    TypicalPod,
    build_typical_pods,
    cpu_per_gpu_milli,
    model_allowed,
    sigmoid_score,
    stranded_gpu,
    whole_gpu_after,
)
from hami.core.packing import FragmentationAware

SHARE = ShapeKey(cpu_milli=4000, gpu_milli=500, gpu_number=1)
WHOLE = ShapeKey(cpu_milli=8000, gpu_milli=1000, gpu_number=1)
CPU = ShapeKey(cpu_milli=2000, gpu_milli=0, gpu_number=0)
TYPICAL = (TypicalPod(key=SHARE, weight=0.5), TypicalPod(key=WHOLE, weight=0.5))


def key(cpu: int, milli: int = 1000, number: int = 1, gpu_type: str = "") -> ShapeKey:
    return ShapeKey(cpu_milli=cpu, gpu_milli=milli, gpu_number=number, gpu_type=gpu_type)


def test_typical_pods_order_threshold_and_weights() -> None:
    a, b, c, d, e = key(1000), key(2000), key(3000), key(4000), key(5000)
    counts = {a: 3.0, b: 3.0, c: 2.0, d: 1.0, e: 1.0}
    typical = build_typical_pods(counts, threshold_pct=80)
    assert [t.key for t in typical] == [b, a, c]  # equal counts: the larger key first
    assert [t.weight for t in typical] == [0.3 / 0.8, 0.3 / 0.8, 0.2 / 0.8]
    everything = build_typical_pods(counts, threshold_pct=95)
    assert len(everything) == 5 and everything[0].weight == 0.3  # all taken: no renormalisation
    assert build_typical_pods({}) == ()


def test_model_allowed() -> None:
    assert model_allowed("", "T4") and model_allowed("T4|V100M16", "V100M16")
    assert not model_allowed("T4", "G2") and model_allowed("||", "G2") and not model_allowed("T4", "")


def test_node_fragmentation_by_hand() -> None:
    model = FragmentationModel(TYPICAL)
    # both shapes fit; only the 300-milli GPU is a fragment, for each (0.5*300 + 0.5*300)
    assert model.node_fragmentation("T4", 10000, [1000, 300]) == 300.0
    # the whole-GPU shape lacks CPU: all 1300 free milli count for it (Q4)
    assert model.node_fragmentation("T4", 6000, [1000, 300]) == 0.5 * 300 + 0.5 * 1300
    # a CPU-only typical pod sees all free GPU as fragment whatever the CPU
    cpu_only = FragmentationModel((TypicalPod(key=CPU, weight=1.0),))
    assert cpu_only.node_fragmentation("T4", 0, [1000, 300]) == 1300.0
    # a type-restricted shape sees all free GPU of another model as fragment
    typed = FragmentationModel((TypicalPod(key=key(1000, gpu_type="V100M16"), weight=1.0),))
    assert typed.node_fragmentation("T4", 99999, [1000]) == 1000.0
    assert typed.node_fragmentation("V100M16", 99999, [1000]) == 0.0


def test_fgd_choice_by_hand() -> None:
    model = FragmentationModel(TYPICAL)
    # sharing pod of 300 milli: on the 300 GPU F goes 300 -> 0 (score 57), on the idle one
    # F goes 300 -> 650 (score 41): the best GPU value is 300
    assert model.fgd_choice("T4", 10000, (300, 1000), 2000, 300, 1) == (sigmoid_score(300.0), (300,))
    assert sigmoid_score(300.0) == 57 and sigmoid_score(-350.0) == 41 and sigmoid_score(0.0) == 50
    # a CPU-only pod that does not change any CPU comparison scores exactly 50
    assert model.fgd_choice("T4", 30000, (300, 1000), 1000, 0, 0) == (50, ())
    assert whole_gpu_after((0, 500, 1000, 1000), 1000, 2) == (0, 0, 0, 500)


def test_least_change_is_the_exact_best_of_fgd() -> None:
    model = FragmentationModel(TYPICAL)
    # a 300-milli pod: on the 300 GPU F goes 300 -> 0, on the idle one 300 -> 650
    assert model.least_change("T4", 10000, (300, 1000), 2000, 300, 1) == (-300.0, (300,))
    # equal free values are tried once: F 500 (WHOLE fits nowhere) -> 100 + 350
    assert model.least_change("T4", 10000, (500, 500), 1000, 300, 1) == (-50.0, (500,))
    # whole-GPU and CPU-only pods have no GPU choice
    assert model.least_change("T4", 10000, (1000, 1000), 1000, 1000, 1) == (0.0, ())
    # a CPU-only pod that takes the CPU the whole-GPU shape needs makes both GPUs fragments
    assert model.least_change("T4", 10000, (1000, 1000), 4000, 0, 0) == (0.5 * 2000, ())


def test_cpu_stranding_by_hand() -> None:
    # typical pods ask (0.5*4000 + 0.5*8000) CPU per (0.5*500 + 0.5*1000) GPU milli = 8
    assert cpu_per_gpu_milli(TYPICAL) == 8.0
    assert cpu_per_gpu_milli((TypicalPod(key=CPU, weight=1.0),)) == 0.0
    assert stranded_gpu(2000, 12000, 8.0) == 500.0  # 12 cores feed 1500 of 2000 free milli
    assert stranded_gpu(2000, 100000, 8.0) == 0.0 and stranded_gpu(2000, -5, 8.0) == 2000.0
    assert stranded_gpu(2000, 0, 0.0) == 0.0  # no GPU shape known: nothing is stranded
    measure = CpuAwareFragmentation(TYPICAL)
    # both shapes fit one more pod, so FGD sees no fragment; 4 cores of 12 are short for 2 GPUs
    assert measure.value("T4", 12000, [1000, 1000]) == 0.0 + 500.0
    # a CPU-only pod on a CPU-lean node: F does not move (both shapes still fit), S grows by 250
    assert measure.delta("T4", 20000, (1000, 1000), 6000, 0, 0) == (0.0, 250.0, ())
    assert measure.delta("T4", 64000, (1000, 1000), 6000, 0, 0) == (0.0, 0.0, ())
    # a sharing pod: the GPU choice is FGD's exact best
    assert measure.delta("T4", 64000, (500, 1000), 1000, 500, 1) == (-250.0, 0.0, (500,))


def test_fragmentation_aware_avoids_stranding_where_fgd_ties() -> None:
    """A CPU-only pod: FGD scores a CPU-lean and a CPU-rich node alike (one more typical pod
    still fits on both), ours sees the lean node's GPUs losing the CPU they need."""
    typical = (TypicalPod(key=WHOLE, weight=1.0),)
    fgd = FragmentationModel(typical)
    lean = ("T4", 20000, (1000, 1000))
    rich = ("T4", 64000, (1000, 1000))
    assert fgd.fgd_choice(*lean, 6000, 0, 0) == fgd.fgd_choice(*rich, 6000, 0, 0) == (50, ())
    policy = FragmentationAware(typical=typical)
    # lean: 14 of 16 needed cores left -> 250 milli stranded -> int(100 sigmoid(-0.25)) = 43
    assert policy.node_key(*lean, 6000, 0, 0) == (-43, 250.0)
    assert policy.node_key(*rich, 6000, 0, 0) == (-50, 0.0)
    assert policy.node_key(*rich, 6000, 0, 0) < policy.node_key(*lean, 6000, 0, 0)
    assert policy.node_key(*lean, 6000, 0, 0) is policy.node_key(*lean, 6000, 0, 0)  # memoised


def test_shape_window_slides_and_versions() -> None:
    window = ShapeWindow(size=3, threshold_pct=100)
    assert len(window) == 0 and window.typical() == ()
    for k in (SHARE, SHARE, WHOLE, CPU):
        window.observe(k)
    assert window.counts() == {SHARE: 1, WHOLE: 1, CPU: 1}
    assert window.version == 4 and window.size == 3
    assert {t.key for t in window.typical()} == {SHARE, WHOLE, CPU}
    assert math.isclose(sum(t.weight for t in window.typical()), 1.0)
    model = window.model()
    assert window.model() is model
    window.observe(WHOLE)
    assert window.model() is not model
    with pytest.raises(ValueError, match="size"):
        ShapeWindow(size=0)


def test_fragmentation_aware_learns_from_its_window() -> None:
    policy = FragmentationAware(window=ShapeWindow(size=100))
    assert policy.measure.typical == ()  # nothing observed yet
    for _ in range(10):
        policy.observe(SHARE)
        policy.observe(WHOLE)
    assert policy.refresh() is True
    assert {t.key for t in policy.typical} == {SHARE, WHOLE}
    assert policy.refresh() is False
    # a 500-milli pod fills the half-used GPU (value 500) and keeps the idle one whole
    assert policy.gpu_values("T4", 64000, (500, 1000), 1000, 500) == (500,)
    better = policy.node_key("T4", 64000, (500, 1000), 1000, 500, 1)
    worse = policy.node_key("T4", 64000, (1000, 1000), 1000, 500, 1)
    assert better < worse
    with pytest.raises(ValueError, match="ShapeWindow"):
        FragmentationAware()
