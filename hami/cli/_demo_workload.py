"""The pods ``hami demo`` submits: a small mix of GPU-sharing workloads.

Phase 1 is what a shared GPU cluster typically runs side by side:

* ``infer-1..N`` (one per node, at least 3): inference replicas of 20000 MiB and 25 % of the cores,
  annotated ``hami.io/node-scheduler-policy: spread`` so the replicas land on different nodes;
* ``notebook``: a quarter of a card's memory (``gpumem-percentage``) and 10 % of its cores;
* ``train``: one whole card (``gpucores: 100`` makes it exclusive; its memory defaults to all);
* ``vllm-tp2``: one pod on two cards (tensor parallelism 2), 30000 MiB and 50 % on each;
* ``too-big``: more memory per card than any card has. The admission webhook refuses it at
  creation; without the webhook it stays Pending and ``hami why`` explains it.

Phase 2, once phase 1 has settled, is ``whole-node``: every card of one node, exclusively. Each
node already serves an inference replica, so it cannot fit anywhere: the pod stays Pending and
``hami why`` shows, node by node and card by card, what is in the way. It is submitted last so that
it does not grab an idle node before the replicas spread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from hami.core import keys
from hami.simulator.scenario import gpu_pod

JsonObj = dict[str, Any]

NAMESPACE: Final = "default"
DEMO_LABEL: Final = "app.kubernetes.io/part-of"
DEMO_LABEL_VALUE: Final = "hami-demo"
INFER_MEMORY_MIB: Final = 20000
INFER_CORES: Final = 25
NOTEBOOK_PERCENT: Final = 25
NOTEBOOK_CORES: Final = 10
TP2_MEMORY_MIB: Final = 30000
TP2_CORES: Final = 50
MIN_INFER_REPLICAS: Final = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoPod:
    name: str
    wants: str
    """What it asks for, in words (printed when it is submitted)."""
    phase: int
    manifest: JsonObj

    @property
    def key(self) -> str:
        return f"{NAMESPACE}/{self.name}"


def oversized_memory_mib(gpu_memory_mib: int) -> int:
    """A per-card memory request above the card's size (by a quarter, rounded up to 1000 MiB)."""
    return (gpu_memory_mib * 5 // 4 // 1000 + 1) * 1000


def demo_pods(*, nodes: int, gpus_per_node: int, gpu_memory_mib: int, webhook: bool) -> tuple[DemoPod, ...]:
    """The demo's pods in submission order.

    With ``webhook`` the pods name no scheduler (the webhook sets ``hami-scheduler``, as in a real
    cluster); without it they name it themselves.
    """
    scheduler = None if webhook else keys.DEFAULT_SCHEDULER_NAME

    def pod(name: str, wants: str, phase: int = 1, **kwargs: Any) -> DemoPod:
        manifest = gpu_pod(name, namespace=NAMESPACE, scheduler_name=scheduler, **kwargs)
        manifest["metadata"].setdefault("labels", {})[DEMO_LABEL] = DEMO_LABEL_VALUE
        return DemoPod(name=name, wants=wants, phase=phase, manifest=manifest)

    replicas = max(MIN_INFER_REPLICAS, nodes)
    spread = {keys.NODE_SCHEDULER_POLICY: "spread"}
    too_big = oversized_memory_mib(gpu_memory_mib)
    return (
        *(
            pod(
                f"infer-{i + 1}",
                f"1 GPU share: {INFER_MEMORY_MIB} MiB, {INFER_CORES}% cores (node policy spread)",
                gpumem=INFER_MEMORY_MIB,
                gpucores=INFER_CORES,
                annotations=spread,
            )
            for i in range(replicas)
        ),
        pod(
            "notebook",
            f"1 GPU share: {NOTEBOOK_PERCENT}% of the memory, {NOTEBOOK_CORES}% cores",
            gpumem_percentage=NOTEBOOK_PERCENT,
            gpucores=NOTEBOOK_CORES,
        ),
        pod("train", "1 whole GPU (exclusive: 100% cores)", gpucores=100),
        pod(
            "vllm-tp2",
            f"2 GPUs (tensor parallel 2): {TP2_MEMORY_MIB} MiB and {TP2_CORES}% cores on each",
            gpus=2,
            gpumem=TP2_MEMORY_MIB,
            gpucores=TP2_CORES,
        ),
        pod("too-big", f"1 GPU with {too_big} MiB (cards have {gpu_memory_mib} MiB)", gpumem=too_big),
        pod(
            "whole-node",
            f"{gpus_per_node} whole GPUs on one node (exclusive)",
            phase=2,
            gpus=gpus_per_node,
            gpucores=100,
        ),
    )
