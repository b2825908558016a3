"""Issue 6 regression: a pod deleted while kubelet allocates it never costs its neighbour its devices.

The reliability test ``test_pod_deleted_while_the_kubelet_allocates_it`` reproduces this in the
embedded cluster; these pin the lookup's part of it in milliseconds.
"""

from __future__ import annotations

import pytest

from hami.deviceplugin.memkube import InMemoryKube, allocating_pod
from hami.deviceplugin.podlookup import (
    AmbiguousAllocation,
    HamiPendingPodSource,
    KubeAllocationRecorder,
    PodBeingDeleted,
)

NODE = "gpu-node-1"
A, B, C, D = "GPU-aaaa", "GPU-bbbb", "GPU-cccc", "GPU-dddd"


def kube() -> InMemoryKube:
    k = InMemoryKube()
    k.put_node({"metadata": {"name": NODE, "annotations": {}}})
    return k


def first_deleted_second_waiting(k: InMemoryKube, first_gpu: str, second_gpu: str) -> None:
    first = allocating_pod("first", NODE, f"{first_gpu},NVIDIA,1000,10:;", created="2026-02-01T08:00:00Z")
    first["metadata"]["deletionTimestamp"] = "2026-02-01T08:00:05Z"
    k.put_pod(first)
    k.put_pod(
        allocating_pod("second", NODE, f"{second_gpu},NVIDIA,2000,20:;", created="2026-02-01T08:00:01Z")
    )


@pytest.mark.parametrize("second_gpu", [B, A], ids=["other-gpu", "same-gpu"])
async def test_allocate_of_a_deleted_pod_is_refused_and_the_neighbour_keeps_its_devices(
    second_gpu: str,
) -> None:
    k = kube()
    first_deleted_second_waiting(k, A, second_gpu)
    pods = HamiPendingPodSource(k, k)
    # The deleted pod keeps its place: kubelet's in-flight call is steered to its GPUs...
    expected = await pods.expected(NODE, 1)
    assert expected is not None and expected.name == "first"
    # ...and that call is refused in its name (before the fix: served with second's devices).
    with pytest.raises(PodBeingDeleted, match=r"default/first: is being deleted") as info:
        await pods.find(NODE, [f"{A}-0"])
    assert info.value.pod["metadata"]["name"] == "first"
    # The service marks the refused pod failed; then second gets exactly its own entry.
    await KubeAllocationRecorder(k, k).finish(info.value.pod, NODE, success=False)
    assert k.pod("default", "first")["metadata"]["annotations"]["hami.io/bind-phase"] == "failed"
    found = await pods.find(NODE, [f"{second_gpu}-3"])
    assert found.name == "second"
    assert [(d.uuid, d.usedmem) for d in found.devices] == [(second_gpu, 2000)]


async def test_deleted_pod_is_never_served_through_the_single_candidate_fallback() -> None:
    k = kube()
    first_deleted_second_waiting(k, A, B)
    k.delete_pod("default", "second")
    with pytest.raises(PodBeingDeleted):
        await HamiPendingPodSource(k, k).find(NODE, [f"{C}-0"])


async def test_single_candidate_fallback_needs_ids_naming_no_other_pods_gpus() -> None:
    k = kube()
    k.put_pod(allocating_pod("solo", NODE, f"{B},NVIDIA,1000,10:;"))
    k.put_pod(allocating_pod("pair", NODE, f"{A},NVIDIA,1000,10:{C},NVIDIA,1000,10:;"))
    pods = HamiPendingPodSource(k, k)
    # Kubelet named one of pair's GPUs: the call may be a piece of pair's; never hand it solo's.
    with pytest.raises(AmbiguousAllocation, match=r"name GPUs of default/pair"):
        await pods.find(NODE, [f"{A}-0"])
    # IDs naming no waiting pod's GPU (kubelet chose freely) still reach the only candidate.
    assert (await pods.find(NODE, [f"{D}-0"])).name == "solo"
