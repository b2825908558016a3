"""The bind ↔ Allocate handoff (issue 4 item 3, hami/scheduler/handoff.py).

A model of kubelet (pods bound to the node are admitted in batches sorted by creationTimestamp,
one Allocate per container, in order) drives the device plugin's real pod lookup
(hami.deviceplugin.podlookup: GetPreferredAllocation → the oldest waiting pod's GPUs, Allocate →
exact GPU match, then oldest). kube-scheduler binds in a random order with random delays. With
the scheduler's handoff order, every Allocate goes to the pod kubelet is admitting, with many
pods between bind and Allocate at once; without it, some go to the wrong pod.
"""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from sched_fakes import Env, container, gpu, make_env, node_obj, pod_obj

from hami.core import keys
from hami.core.vendors import build_registry
from hami.deviceplugin.podlookup import HamiPendingPodSource, KubeAllocationRecorder
from hami.k8s.objects import NODES, PODS
from hami.k8s.patches import merge_patch
from hami.scheduler.handoff import HandoffTracker
from hami.scheduler.podinfo import decode_pod


class PluginApi:
    """The device plugin's PodApi/NodeApi over the loopback apiserver."""

    def __init__(self, env: Env) -> None:
        self.api = env.api

    async def get_pod(self, namespace: str, name: str) -> Mapping[str, Any]:
        return copy.deepcopy(self.api.pods[f"{namespace}/{name}"])

    async def list_pods_on_node(self, node: str) -> Sequence[Mapping[str, Any]]:
        return [copy.deepcopy(p) for p in self.api.pods.values() if p["spec"].get("nodeName") == node]

    async def patch_pod(self, namespace: str, name: str, patch: Mapping[str, Any]) -> Mapping[str, Any]:
        return await self.api.patch(PODS, name, merge_patch(patch), namespace=namespace)

    async def get_node(self, name: str) -> Mapping[str, Any]:
        return copy.deepcopy(self.api.nodes[name])

    async def patch_node(self, name: str, patch: Mapping[str, Any]) -> Mapping[str, Any]:
        return await self.api.patch(NODES, name, merge_patch(patch))

    async def patch_node_status(self, name: str, patch: Mapping[str, Any]) -> Mapping[str, Any]:
        return await self.patch_node(name, {"status": patch.get("status", patch)})


async def yields(rng: random.Random, most: int) -> None:
    for _ in range(rng.randint(0, most)):
        await asyncio.sleep(0)


async def kubelet(
    env: Env,
    node: str,
    rng: random.Random,
    admitted: list[tuple[str, str]],
    peak: list[int],
    *,
    slow: int = 3,
) -> None:
    plugin = PluginApi(env)
    source = HamiPendingPodSource(plugin, plugin)
    recorder = KubeAllocationRecorder(plugin, plugin, retry_delay_s=0)
    handled: set[str] = set()
    while True:
        batch = [
            p
            for p in env.api.pods.values()
            if p["spec"].get("nodeName") == node and p["metadata"]["uid"] not in handled
        ]
        batch.sort(
            key=lambda p: (
                p["metadata"]["creationTimestamp"],
                p["metadata"]["namespace"],
                p["metadata"]["name"],
            )
        )
        waiting = sum(1 for p in env.api.pods.values() if p["spec"].get("nodeName") == node) - len(handled)
        peak[0] = max(peak[0], waiting)
        for pod in batch:
            handled.add(pod["metadata"]["uid"])
            for ctr in pod["spec"]["containers"]:
                count = int(ctr["resources"]["limits"].get("nvidia.com/gpu", "0"))
                if not count:
                    continue
                expected = await source.expected(node, count)
                ids = [f"{cd.uuid}-{i}" for i, cd in enumerate(expected.devices)] if expected else []
                allocation = await source.find(node, ids)
                admitted.append((pod["metadata"]["uid"], allocation.uid))
                await recorder.consume(allocation)
                if allocation.complete:
                    await recorder.finish(allocation.pod, node, success=True)
                await yields(rng, slow)
        await asyncio.sleep(0)


async def scenario(
    seed: int, *, ordered: bool, pods: int = 12, shuffle: bool = True, slow: int = 3
) -> tuple[int, int, int]:
    """Returns (allocations, wrong handoffs, peak pods between bind and Allocate)."""
    rng = random.Random(seed)
    env = make_env(bind_wait_timeout=30)
    if not ordered:
        env.state.tracker.blocker = lambda *a, **k: None  # type: ignore[method-assign]
    env.api.add_node(node_obj("n1", [gpu(f"GPU-{i}", index=i, mem=80000) for i in range(4)]))
    created = []
    for i in range(pods):
        gpus = 2 if i % 5 == 4 else 1
        created.append(
            env.api.add_pod(
                pod_obj(
                    f"p{i:02d}", container(gpus=gpus, mem=1000 + 10 * i), created=f"2026-01-01T00:00:{i:02d}Z"
                )
            )
        )
    order = created[:]
    if shuffle:
        rng.shuffle(order)  # kube-scheduler's queue is not creation order (retries, backoff, priorities)
    admitted: list[tuple[str, str]] = []
    peak = [0]
    worker = asyncio.create_task(kubelet(env, "n1", rng, admitted, peak, slow=slow))
    binds = []
    for pod in order:
        assert (await env.filter(pod)).node_names == ("n1",)

        async def bind_later(pod: dict[str, Any] = pod) -> str:
            await yields(rng, 40)
            return await env.bind(pod, "n1")

        binds.append(asyncio.create_task(bind_later()))
        await yields(rng, 5)
    results = await asyncio.wait_for(asyncio.gather(*binds), 20)
    assert results == [""] * len(results)
    async with asyncio.timeout(10):
        while len(admitted) < pods:  # noqa: ASYNC110 - the model kubelet has no event to offer
            await asyncio.sleep(0.001)
    worker.cancel()
    await asyncio.gather(worker, return_exceptions=True)
    wrong = sum(1 for kubelet_pod, plugin_pod in admitted if kubelet_pod != plugin_pod)
    return len(admitted), wrong, peak[0]


@pytest.mark.parametrize("seed", range(6))
async def test_zero_wrong_handoffs_under_kubelet_admission_order(seed):
    allocations, wrong, _ = await scenario(seed, ordered=True)
    assert allocations == 12 and wrong == 0


@pytest.mark.parametrize("shuffle", [False, True])
async def test_at_least_eight_pods_between_bind_and_allocate_at_once(shuffle):
    """A busy kubelet (slow admissions): binds keep coming, pods pile up between bind and Allocate."""
    for seed in range(3):
        allocations, wrong, peak = await scenario(seed, ordered=True, pods=16, shuffle=shuffle, slow=400)
        assert allocations == 16 and wrong == 0
        if peak >= 8:
            return
    pytest.fail(f"at most {peak} pods were between bind and Allocate at once")


async def test_the_model_detects_misrouting_without_the_handoff_order():
    """The same model without the scheduler's ordering hands devices to the wrong pod."""
    wrong = [(await scenario(seed, ordered=False))[1] for seed in range(6)]
    assert sum(wrong) > 0


def test_tracker_blocks_only_older_binds_behind_newer_handoffs():
    tracker = HandoffTracker()
    tracker._enter("new", "n", ("2026-01-01T00:00:05Z", "default", "new"))
    assert tracker.blocker("n", "older", ("2026-01-01T00:00:01Z", "default", "older")) is not None
    assert tracker.blocker("n", "newest", ("2026-01-01T00:00:09Z", "default", "newest")) is None
    tracker.forget("new")
    assert tracker.blocker("n", "older", ("2026-01-01T00:00:01Z", "default", "older")) is None
    exclusive = HandoffTracker(exclusive=True)
    exclusive._enter("a", "n", ("2026-01-01T00:00:05Z", "default", "a"))
    assert "one at a time" in (exclusive.blocker("n", "b", ("2026-01-01T00:00:09Z", "default", "b")) or "")


def test_a_newer_pod_being_deleted_still_holds_older_binds_back():
    # Found by the churn soak: the test deleted a pod while kubelet admitted it; the tracker let an
    # older pod bind at once, the plugin put that pod first in line, and kubelet's call for the
    # deleted pod was handed the older pod's devices.
    registry = build_registry()
    allocating = {
        keys.VGPU_NODE: "n",
        keys.BIND_PHASE: keys.BIND_PHASE_ALLOCATING,
        keys.VGPU_DEVICES_TO_ALLOCATE: "GPU-0,NVIDIA,1000,10:;",
        keys.VGPU_DEVICES_ALLOCATED: "GPU-0,NVIDIA,1000,10:;",
    }
    newer = pod_obj(
        "newer", container(), node_name="n", annotations=allocating, created="2026-01-01T00:00:05Z"
    )
    newer["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:06Z"
    tracker = HandoffTracker()
    tracker.observe(decode_pod(newer, registry))
    older = ("2026-01-01T00:00:01Z", "default", "older")
    assert "newer pod default/newer" in (tracker.blocker("n", "older", older) or "")
    newer["status"]["phase"] = "Failed"  # kubelet rejected it, or it is gone: the way is free
    tracker.observe(decode_pod(newer, registry))
    assert tracker.blocker("n", "older", older) is None
