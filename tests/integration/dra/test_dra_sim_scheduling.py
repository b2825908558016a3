"""The fake kube-scheduler's DynamicResources wiring, without plugin processes (slices written directly)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dra_fixtures import SLICES, eventually

from hami.core.dra_translate import DRIVER_NAME, translate_pod
from hami.dra.devices import mock_gpus
from hami.dra.slices import resource_slice
from hami.simulator.cluster import EmbeddedCluster
from hami.simulator.kubelet import REASON_DRA_PREPARE, KubeletSettings
from hami.simulator.patching import json_patch
from hami.simulator.restclient import RestClient, pod_path
from hami.simulator.scenario import NodeSpec, container, pod_manifest
from hami.simulator.schedconfig import SchedulerConfig

NO_ROOM = "0/1 nodes are available: 1 cannot allocate all claims: request gpu: 0 of 1 devices available."
FAST = KubeletSettings(
    heartbeat_interval=0.3, dra_registry_poll=0.05, dra_retry_initial=0.1, dra_retry_max=0.5
)


def gpu_pod(name: str) -> dict[str, Any]:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "containers": [
                {
                    "name": "cuda",
                    "image": "cuda",
                    "resources": {"limits": {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "4000"}},
                }
            ]
        },
    }
    translation = translate_pod(pod, namespace="default")
    return {"pod": json_patch(pod, list(translation.patch)), "templates": translation.templates}


async def submit(rest: RestClient, name: str) -> None:
    translated = gpu_pod(name)
    for template in translated["templates"]:
        await rest.create("/apis/resource.k8s.io/v1/namespaces/default/resourceclaimtemplates", template)
    await rest.create("/api/v1/namespaces/default/pods", translated["pod"])


async def failed_with(rest: RestClient, name: str, message: str) -> bool:
    """A FailedScheduling event with exactly that message was recorded for the pod."""
    events = (await rest.get("/api/v1/namespaces/default/events"))["items"]
    return any(
        e["involvedObject"]["name"] == name and e["reason"] == "FailedScheduling" and e["message"] == message
        for e in events
    )


async def test_a_claim_waits_for_capacity_and_a_new_slice_wakes_the_pod(dra_dir: Path) -> None:
    # Short backoffs but the default 60 s flush: an unschedulable pod is retried because of
    # cluster events (a new slice, a freed claim), never because of the flush.
    async with EmbeddedCluster.running(
        nodes=(NodeSpec(name="node-1", gpus=0),),
        scheduler_config=SchedulerConfig(pod_initial_backoff=0.05, pod_max_backoff=0.3),
        state_dir=dra_dir,
        kubelet_settings=FAST,
        dra=True,
    ) as cluster:
        rest = cluster.client
        await submit(rest, "wants-gpu")
        await eventually(lambda: failed_with(rest, "wants-gpu", NO_ROOM), within=30)
        pod = await cluster.get_pod("default", "wants-gpu")
        (condition,) = [c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled"]
        assert (condition["status"], condition["reason"]) == ("False", "Unschedulable")

        # A driver publishes the node's GPUs: the pod is scheduled and its claim allocated.
        node = await rest.get("/api/v1/nodes/node-1")
        gpus = mock_gpus("node-1", 1, memory_mib=8000)
        await rest.create(
            SLICES, resource_slice("node-1", DRIVER_NAME, gpus, node_uid=node["metadata"]["uid"])
        )
        bound = await cluster.wait_for_pod(
            "default", "wants-gpu", lambda p: bool(p["spec"].get("nodeName")), within=30
        )
        (status,) = bound["status"]["resourceClaimStatuses"]
        claim = await rest.get(
            f"/apis/resource.k8s.io/v1/namespaces/default/resourceclaims/{status['resourceClaimName']}"
        )
        (result,) = claim["status"]["allocation"]["devices"]["results"]
        assert (result["pool"], result["device"]) == ("node-1", "hami-gpu-0")
        assert claim["status"]["reservedFor"][0]["uid"] == bound["metadata"]["uid"]

        # No plugin serves the driver on the node: the kubelet keeps the pod waiting.
        await eventually(lambda: _prepare_failed(cluster, "wants-gpu"), within=30)
        assert (await cluster.get_pod("default", "wants-gpu"))["status"]["phase"] == "Pending"

        # A second 4000 MiB share still fits the 8000 MiB GPU; a third does not.
        await submit_more(rest, "second", "third")
        await cluster.wait_for_pod("default", "second", lambda p: bool(p["spec"].get("nodeName")), within=30)
        await eventually(lambda: failed_with(rest, "third", NO_ROOM), within=30)

        # A pod without claims takes the ordinary path on the same cluster.
        await cluster.create_pod(pod_manifest("plain", containers=[container("c")]))
        await cluster.wait_for_pod(
            "default", "plain", lambda p: p["status"].get("phase") == "Running", within=30
        )

        # Deleting the first pod frees its share: the third one gets it.
        await rest.delete(pod_path("default", "wants-gpu"), grace_seconds=0)
        await cluster.wait_for_pod("default", "third", lambda p: bool(p["spec"].get("nodeName")), within=30)


async def submit_more(rest: RestClient, *names: str) -> None:
    for name in names:
        translated = gpu_pod(name)
        await rest.create("/api/v1/namespaces/default/pods", translated["pod"])


def _prepare_failed(cluster: EmbeddedCluster, name: str) -> bool:
    record = cluster.kubelet("node-1").record("default", name)
    return record is not None and record.reason == REASON_DRA_PREPARE
