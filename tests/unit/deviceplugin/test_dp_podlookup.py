"""Finding the pod an Allocate call belongs to, with verification, and recording the outcome."""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from hami.core.model import ContainerDevice
from hami.core.node_lock import NodeLock, encode_node_lock
from hami.deviceplugin.memkube import InMemoryKube, allocating_pod
from hami.deviceplugin.podlookup import (
    AmbiguousAllocation,
    ForeignPodFirst,
    HamiPendingPodSource,
    KubeAllocationRecorder,
    MalformedAllocation,
    PodBeingDeleted,
    PodLookupError,
    names_gpus_of,
)
from hami.k8s.errors import ApiInvalid, ApiServerError

NODE = "gpu-node-1"
A, B, C = "GPU-aaaa", "GPU-bbbb", "GPU-cccc"
LOCK = "2026-02-01T08:00:00Z,default,demo"


def kube(lock: str | None = None) -> InMemoryKube:
    k = InMemoryKube()
    ann = {"hami.io/mutex.lock": lock} if lock else {}
    k.put_node({"metadata": {"name": NODE, "annotations": ann}})
    return k


def source(k: InMemoryKube) -> HamiPendingPodSource:
    return HamiPendingPodSource(k, k)


async def test_lock_holder_is_found_with_count_match() -> None:
    k = kube(LOCK)
    k.put_pod(allocating_pod("demo", NODE, f"{A},NVIDIA,3000,30:{B},NVIDIA,3000,30:;"))
    found = await source(k).find(NODE, [f"{A}-4", f"{C}-0"])  # arbitrary IDs: only the count matters
    assert (found.name, found.container_index, found.container_name) == ("demo", 0, "app")
    assert [d.uuid for d in found.devices] == [A, B]
    assert found.remaining == ((),) and found.complete


async def test_lock_uid_must_match_the_pod() -> None:
    uid = str(uuidlib.uuid4())
    lock = encode_node_lock(
        NodeLock(time=datetime(2026, 2, 1, 8, tzinfo=UTC), namespace="default", name="demo", uid=uid)
    )
    k = kube(lock)
    k.put_pod(allocating_pod("demo", NODE, f"{A},NVIDIA,1000,10:;", uid="another-uid"))
    k.put_pod(allocating_pod("other", NODE, f"{B},NVIDIA,2000,20:;", created="2026-01-01T00:00:00Z"))
    # The re-created "demo" is not the lock holder, so two pods fit one device: refuse to guess.
    with pytest.raises(AmbiguousAllocation, match="refusing to guess"):
        await source(k).find(NODE, [f"{C}-0"])
    # Kubelet IDs naming the GPUs decide it.
    assert (await source(k).find(NODE, [f"{B}-3"])).name == "other"


async def test_exact_gpu_match_beats_the_lock_and_positions_are_kept() -> None:
    k = kube(LOCK)
    k.put_pod(allocating_pod("demo", NODE, f"{A},NVIDIA,1000,10:;"))
    k.put_pod(
        allocating_pod("two", NODE, f";{B},NVIDIA,2000,20:;{C},NVIDIA,2000,20:;", containers=("s", "x", "y"))
    )
    found = await source(k).find(NODE, [f"{B}-1"])
    assert (found.name, found.container_index, found.container_name) == ("two", 1, "x")
    assert found.remaining == ((), (), found.remaining[2]) and not found.complete


async def test_fallback_without_lock_uses_the_only_pending_pod() -> None:
    k = kube()
    k.put_pod(allocating_pod("solo", NODE, f"{A},NVIDIA,1000,10:;"))
    done = allocating_pod("done", NODE, f"{A},NVIDIA,1000,10:;")
    done["metadata"]["annotations"]["hami.io/bind-phase"] = "success"
    k.put_pod(done)
    elsewhere = allocating_pod("elsewhere", "other-node", f"{A},NVIDIA,1000,10:;")
    k.put_pod(elsewhere)
    assert (await source(k).find(NODE, [f"{C}-0"])).name == "solo"


async def test_pods_not_waiting_are_never_served() -> None:
    k = kube(LOCK)
    running = allocating_pod("demo", NODE, f"{A},NVIDIA,1000,10:;", phase="Running")
    k.put_pod(running)
    deleting = allocating_pod("gone", NODE, f"{A},NVIDIA,1000,10:;")
    deleting["metadata"]["deletionTimestamp"] = "2026-02-01T08:01:00Z"
    k.put_pod(deleting)
    spoofed = allocating_pod("spoof", NODE, f"{A},NVIDIA,1000,10:;")
    spoofed["spec"]["nodeName"] = "other-node"  # annotation names us, but bound elsewhere
    k.put_pod(spoofed)
    # The deleting pod still owns its entry (kubelet may be allocating it): the call is refused
    # in its name, never served to it nor to anyone else.
    with pytest.raises(PodBeingDeleted, match="default/gone: is being deleted"):
        await source(k).find(NODE, [f"{A}-0"])
    k.delete_pod("default", "gone")
    with pytest.raises(PodLookupError, match="default/demo: phase Running"):
        await source(k).find(NODE, [f"{A}-0"])


async def test_count_mismatch_is_an_error_naming_the_pod() -> None:
    k = kube(LOCK)
    k.put_pod(allocating_pod("demo", NODE, f"{A},NVIDIA,1000,10:;"))
    with pytest.raises(PodLookupError, match=r"waits for 2 device\(s\).*default/demo: waits for 1"):
        await source(k).find(NODE, [f"{A}-0", f"{A}-1"])


@pytest.mark.parametrize(
    "value",
    [
        "GPU-a,NVIDIA,abc,10:;",  # non-numeric memory
        "GPU-a,NVIDIA:;",  # too few fields
        ";;GPU-a,NVIDIA,1,1:;",  # more entries than containers
    ],
)
async def test_malformed_annotation_of_lock_holder_is_reported(value: str) -> None:
    k = kube(LOCK)
    k.put_pod(allocating_pod("demo", NODE, value))
    with pytest.raises(MalformedAllocation, match=r"hami\.io/vgpu-devices-to-allocate") as info:
        await source(k).find(NODE, [f"{A}-0"])
    assert info.value.pod["metadata"]["name"] == "demo"


async def test_unreadable_lock_is_ignored_but_pods_still_verified() -> None:
    k = kube("not-a-lock,x")
    k.put_pod(allocating_pod("solo", NODE, f"{A},NVIDIA,1000,10:;"))
    assert (await source(k).find(NODE, [f"{A}-0"])).name == "solo"


async def test_expected_prefers_lock_holder() -> None:
    k = kube(LOCK)
    k.put_pod(allocating_pod("old", NODE, f"{B},NVIDIA,1000,10:;", created="2020-01-01T00:00:00Z"))
    k.put_pod(allocating_pod("demo", NODE, f"{A},NVIDIA,1000,10:;"))
    expected = await source(k).expected(NODE, 1)
    assert expected is not None and expected.name == "demo"
    assert await source(k).expected(NODE, 3) is None


def test_names_gpus_of_is_a_multiset_match() -> None:
    devs = (ContainerDevice(uuid=A, type="NVIDIA", usedmem=1, usedcores=1),) * 2
    assert names_gpus_of([f"{A}-0", f"{A}-5"], devs)
    assert not names_gpus_of([f"{A}-0", f"{B}-5"], devs)


async def test_recorder_consumes_sets_phase_and_releases_own_lock() -> None:
    k = kube(LOCK)
    k.put_pod(allocating_pod("demo", NODE, f"{A},NVIDIA,3000,30:;"))
    found = await source(k).find(NODE, [f"{A}-0"])
    recorder = KubeAllocationRecorder(k, k, retry_delay_s=0)
    await recorder.consume(found)
    assert k.pod("default", "demo")["metadata"]["annotations"]["hami.io/vgpu-devices-to-allocate"] == ";"
    await recorder.finish(found.pod, NODE, success=True)
    annotations = k.pod("default", "demo")["metadata"]["annotations"]
    assert annotations["hami.io/bind-phase"] == "success"
    assert annotations["hami.io/vgpu-devices-allocated"] == f"{A},NVIDIA,3000,30:;"  # never touched
    assert "hami.io/mutex.lock" not in k.node(NODE)["metadata"]["annotations"]
    lock_patch = [p for p in k.patches if p.kind == "node"][-1].patch
    assert lock_patch["metadata"]["annotations"] == {"hami.io/mutex.lock": None}
    assert lock_patch["metadata"]["resourceVersion"]


async def test_recorder_leaves_a_foreign_lock() -> None:
    k = kube("2026-02-01T08:00:00Z,default,someone-else")
    k.put_pod(allocating_pod("demo", NODE, f"{A},NVIDIA,3000,30:;"))
    await KubeAllocationRecorder(k, k).finish(k.pod("default", "demo"), NODE, success=False)
    assert k.pod("default", "demo")["metadata"]["annotations"]["hami.io/bind-phase"] == "failed"
    assert k.node(NODE)["metadata"]["annotations"]["hami.io/mutex.lock"].endswith("someone-else")


async def test_recorder_releases_lock_even_if_pod_vanished() -> None:
    k = kube(LOCK)
    pod = k.put_pod(allocating_pod("demo", NODE, f"{A},NVIDIA,3000,30:;"))
    k.delete_pod("default", "demo")
    await KubeAllocationRecorder(k, k).finish(pod, NODE, success=False)
    assert "hami.io/mutex.lock" not in k.node(NODE)["metadata"]["annotations"]


class FlakyPatches(InMemoryKube):
    """Pod patches answer ``error`` the first ``failures`` times (an apiserver hiccup)."""

    def __init__(self, failures: int, error: Exception) -> None:
        super().__init__()
        self.failures = failures
        self.error = error

    async def patch_pod(self, namespace: str, name: str, patch: Mapping[str, Any]) -> Mapping[str, Any]:
        if self.failures:
            self.failures -= 1
            raise self.error
        return await super().patch_pod(namespace, name, patch)


async def test_recorder_retries_a_transient_500_instead_of_failing_the_pod() -> None:
    # Found by the churn soak: one injected 500 on this patch made kubelet reject the pod for good.
    k = FlakyPatches(2, ApiServerError("injected fault", status=500, method="PATCH", path="/pods/demo"))
    k.put_node({"metadata": {"name": NODE, "annotations": {"hami.io/mutex.lock": LOCK}}})
    k.put_pod(allocating_pod("demo", NODE, f"{A},NVIDIA,3000,30:;"))
    found = await source(k).find(NODE, [f"{A}-0"])
    recorder = KubeAllocationRecorder(k, k, retry_delay_s=0)
    await recorder.consume(found)
    assert k.failures == 0
    assert k.pod("default", "demo")["metadata"]["annotations"]["hami.io/vgpu-devices-to-allocate"] == ";"


async def test_recorder_gives_up_after_its_retries_and_never_retries_a_4xx() -> None:
    k = FlakyPatches(10, ApiServerError("down", status=503))
    k.put_node({"metadata": {"name": NODE, "annotations": {}}})
    k.put_pod(allocating_pod("demo", NODE, f"{A},NVIDIA,3000,30:;"))
    found = await source(k).find(NODE, [f"{A}-0"])
    with pytest.raises(ApiServerError):
        await KubeAllocationRecorder(k, k, write_retries=3, retry_delay_s=0).consume(found)
    assert k.failures == 10 - 4
    k.failures, k.error = 1, ApiInvalid("bad", status=422)
    with pytest.raises(ApiInvalid):
        await KubeAllocationRecorder(k, k, retry_delay_s=0).consume(found)
    assert k.failures == 0


def foreign_pod(
    name: str, gpus: int, *, created: str, phase: str = "Pending", deleting: bool = False
) -> dict:
    """A pod some other scheduler bound (or created with nodeName): no HAMi annotations."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "default",
        "uid": f"uid-{name}",
        "creationTimestamp": created,
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-02-01T08:00:09Z"
    limits = {"nvidia.com/gpu": str(gpus)}
    return {
        "metadata": meta,
        "spec": {
            "nodeName": NODE,
            "containers": [{"name": "c", "image": "cuda", "resources": {"limits": limits}}],
        },
        "status": {"phase": phase},
    }


def hami_and_foreign(foreign: dict) -> InMemoryKube:
    k = kube()
    k.put_pod(allocating_pod("hami", NODE, f"{A},NVIDIA,3000,30:;", created="2026-02-01T08:00:05Z"))
    k.put_pod(foreign)
    return k


async def test_a_pod_outside_hami_first_in_line_never_gets_a_hami_pods_devices() -> None:
    # It bypassed the webhook (nodeName set, or another scheduler): kubelet admits it first, and
    # its Allocate used to match the HAMi pod waiting for as many GPUs (as in HAMi 2.8).
    k = hami_and_foreign(foreign_pod("bypass", 1, created="2026-02-01T08:00:01Z"))
    lookup = HamiPendingPodSource(k, k, resource="nvidia.com/gpu")
    with pytest.raises(
        ForeignPodFirst, match=r"default/bypass asks 1 nvidia\.com/gpu .* default/hami's devices"
    ):
        await lookup.find(NODE, [f"{A}-0"])
    with pytest.raises(ForeignPodFirst):
        await lookup.find(NODE, [f"{B}-3"])  # the "only pod waiting" path too
    # Created in the same second: kubelet's order is unknown, so the same refusal.
    k = hami_and_foreign(foreign_pod("bypass", 1, created="2026-02-01T08:00:05Z"))
    with pytest.raises(ForeignPodFirst):
        await HamiPendingPodSource(k, k, resource="nvidia.com/gpu").find(NODE, [f"{A}-0"])


@pytest.mark.parametrize(
    "foreign",
    [
        foreign_pod("newer", 1, created="2026-02-01T08:00:09Z"),  # admitted after the HAMi pod
        foreign_pod("bigger", 2, created="2026-02-01T08:00:01Z"),  # its Allocate asks 2 devices
        foreign_pod("rejected", 1, created="2026-02-01T08:00:01Z", phase="Failed"),
        foreign_pod("going", 1, created="2026-02-01T08:00:01Z", deleting=True),
    ],
    ids=lambda p: p["metadata"]["name"],
)
async def test_pods_outside_hami_that_cannot_be_this_call_do_not_block(foreign: dict) -> None:
    k = hami_and_foreign(foreign)
    found = await HamiPendingPodSource(k, k, resource="nvidia.com/gpu").find(NODE, [f"{A}-0"])
    assert found.name == "hami"


async def test_a_lone_pod_outside_hami_is_named_in_the_refusal() -> None:
    k = kube()
    k.put_pod(foreign_pod("bypass", 1, created="2026-02-01T08:00:01Z"))
    with pytest.raises(PodLookupError, match="default/bypass: not scheduled by HAMi"):
        await HamiPendingPodSource(k, k, resource="nvidia.com/gpu").find(NODE, [f"{A}-0"])
