"""End to end in DRA mode, through the embedded cluster: a Deployment of 3 replicas asking
``nvidia.com/gpu: 1, gpumem: 4000``.

Everything runs on its real path: the webhook's translation (templates + patch applied as the
webhook would), the resourceclaim controller, the fake kube-scheduler's DynamicResources plugin,
the fake kubelets calling ``NodePrepareResources`` / ``NodeUnprepareResources`` over the Unix
sockets of real ``hami dra-plugin`` processes, and the CDI specs those processes write.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dra_fixtures import SLICES, eventually

from hami.core.dra_translate import DRIVER_NAME, translate_pod
from hami.dra.slices import validate_resource_slice
from hami.simulator.cluster import EmbeddedCluster
from hami.simulator.kubelet import REASON_DRA_PREPARE, RUN_SECONDS_ANNOTATION, KubeletSettings
from hami.simulator.patching import json_patch
from hami.simulator.restclient import ApiError, RestClient, pod_path
from hami.simulator.scenario import NodeSpec

NS = "demo"
CLAIMS = f"/apis/resource.k8s.io/v1/namespaces/{NS}/resourceclaims"
GPU_MIB = 10000  # one GPU per node: two 4000 MiB shares fit on it, a third does not
FAST = KubeletSettings(
    heartbeat_interval=0.3, dra_registry_poll=0.05, dra_retry_initial=0.1, dra_retry_max=0.5
)


def nodes(*names: str) -> tuple[NodeSpec, ...]:
    return tuple(NodeSpec(name=n, gpus=1, gpu_model="NVIDIA A10", gpu_memory_mib=GPU_MIB) for n in names)


def replica(gpumem: int = 4000, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """What the ReplicaSet controller submits: a generated name, so admission sees no name."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-5d8f7c-",
            "namespace": NS,
            "labels": {"app": "web"},
            "annotations": annotations or {},
        },
        "spec": {
            "containers": [
                {
                    "name": "cuda",
                    "image": "cuda",
                    "resources": {
                        "limits": {"nvidia.com/gpu": "1", "nvidia.com/gpumem": str(gpumem), "cpu": "1"}
                    },
                }
            ]
        },
    }


async def admit(rest: RestClient, pod: dict[str, Any]) -> dict[str, Any]:
    """The webhook in DRA mode: ensure the templates, apply the patch, create the pod."""
    translation = translate_pod(pod, namespace=NS)
    for template in translation.templates:
        try:
            await rest.create(f"/apis/resource.k8s.io/v1/namespaces/{NS}/resourceclaimtemplates", template)
        except ApiError as e:
            assert e.code == 409
    return await rest.create(f"/api/v1/namespaces/{NS}/pods", json_patch(pod, list(translation.patch)))


def phase(value: str) -> Callable[[dict[str, Any]], bool]:
    return lambda pod: (pod.get("status") or {}).get("phase") == value


def checkpoint_claims(cluster: EmbeddedCluster, node: str) -> dict[str, Any]:
    path = cluster.node(node).dra_layout.plugin_dir / "prepared-claims.json"
    return dict(json.loads(path.read_text())["claims"]) if path.exists() else {}


def cdi_specs(cluster: EmbeddedCluster, node: str) -> list[Path]:
    return sorted(cluster.kubelet(node).dra.cdi_dir.glob("*.json"))


async def gone(rest: RestClient, path: str) -> bool:
    try:
        await rest.get(path)
    except ApiError as e:
        return e.code == 404
    return False


@pytest.mark.slow
async def test_three_replicas_share_gpus_by_capacity_and_deleting_frees_everything(dra_dir: Path) -> None:
    async with EmbeddedCluster.running(
        nodes=nodes("node-1", "node-2"),
        state_dir=dra_dir,
        kubelet_settings=FAST,
        dra=True,
        start_dra_plugins=True,
    ) as cluster:
        rest = cluster.client
        await rest.create("/api/v1/namespaces", {"metadata": {"name": NS}})
        assert sorted(cluster.dra_plugins) == ["node-1", "node-2"]
        slices = (await rest.get(SLICES))["items"]
        assert sorted(s["spec"]["nodeName"] for s in slices) == ["node-1", "node-2"]
        assert all(validate_resource_slice(s) == [] for s in slices)
        uuids = {
            s["spec"]["nodeName"]: s["spec"]["devices"][0]["attributes"]["uuid"]["string"] for s in slices
        }
        assert all(DRIVER_NAME in cluster.kubelet(n).dra.plugins.drivers for n in ("node-1", "node-2"))

        created = [await admit(rest, replica()) for _ in range(3)]
        names = [p["metadata"]["name"] for p in created]
        assert len(set(names)) == 3
        running = {n: await cluster.wait_for_pod(NS, n, phase("Running"), within=30) for n in names}
        bound = {n: p["spec"]["nodeName"] for n, p in running.items()}
        assert sorted(bound.values()) == ["node-1", "node-1", "node-2"]

        # Three claims, one per pod, made from the one shared template and sharing GPUs by capacity.
        claims = {c["metadata"]["name"]: c for c in (await rest.get(CLAIMS))["items"]}
        assert len(claims) == 3
        results: dict[str, dict[str, Any]] = {}
        for name, pod in running.items():
            (status,) = pod["status"]["resourceClaimStatuses"]
            claim = claims[status["resourceClaimName"]]
            owner = claim["metadata"]["ownerReferences"][0]
            assert (owner["name"], owner["uid"]) == (name, pod["metadata"]["uid"])
            assert "resource.kubernetes.io/delete-protection" in claim["metadata"]["finalizers"]
            assert claim["status"]["reservedFor"] == [
                {"resource": "pods", "name": name, "uid": pod["metadata"]["uid"]}
            ]
            (result,) = claim["status"]["allocation"]["devices"]["results"]
            assert (result["driver"], result["pool"]) == (DRIVER_NAME, bound[name])
            assert result["consumedCapacity"] == {"cores": "0", "memory": "4000Mi", "tasks": "1"}
            results[name] = result
        shared = [r for n, r in results.items() if bound[n] == "node-1"]
        assert {r["device"] for r in shared} == {"hami-gpu-0"} and len({r["shareID"] for r in shared}) == 2

        # Each pod was prepared by its own node's kubelet, which recorded the CDI edits.
        for name, node in bound.items():
            pod = running[name]
            claim_name = pod["status"]["resourceClaimStatuses"][0]["resourceClaimName"]
            claim_uid = claims[claim_name]["metadata"]["uid"]
            record = cluster.kubelet(node).record(NS, name)
            assert record is not None and record.phase == "Running" and record.claims == (claim_name,)
            (devices,) = record.dra
            assert devices.claims == {claim_name: (f"k8s.{DRIVER_NAME}/claim={claim_uid}-hami-gpu-0",)}
            assert record.envs("cuda") == {
                "NVIDIA_VISIBLE_DEVICES": uuids[node],
                "CUDA_DEVICE_MEMORY_LIMIT_0": "4000m",
                "CUDA_DEVICE_SM_LIMIT": "0",
                "CUDA_DEVICE_MEMORY_SHARED_CACHE": f"/usr/local/vgpu/{claim_uid}.cache",
                "LIBCUDA_LOG_LEVEL": "1",
            }
            other = "node-2" if node == "node-1" else "node-1"
            assert cluster.kubelet(other).record(NS, name) is None
            listing = json.loads((cluster.node(node).state_dir / "pod-resources.json").read_text())
            (entry,) = [p for p in listing["podResources"] if p["name"] == name]
            (container,) = entry["containers"]
            assert container["dynamicResources"][0]["claimName"] == claim_name
        assert [len(cdi_specs(cluster, n)) for n in ("node-1", "node-2")] == [2, 1]
        assert [len(checkpoint_claims(cluster, n)) for n in ("node-1", "node-2")] == [2, 1]

        # Delete the Deployment: the replicas go (one force-deleted), kubelets unprepare,
        # the controller deallocates and deletes the claims.
        for name in names[:-1]:
            await rest.delete(pod_path(NS, name))
        await rest.delete(pod_path(NS, names[-1]), grace_seconds=0)
        for name in names:
            await eventually(lambda name=name: gone(rest, pod_path(NS, name)), within=30)
        await eventually(lambda: _no_claims(rest), within=30)
        for node in ("node-1", "node-2"):
            await eventually(
                lambda node=node: not cdi_specs(cluster, node) and not checkpoint_claims(cluster, node),
                within=30,
            )
            assert cluster.kubelet(node).dra.plugins.prepared_claims() == {}
            assert cluster.kubelet(node).pod_resources() == []

        # The slices' capacity is all free again: two pods wanting a whole GPU each both run.
        whole = [await admit(rest, replica(gpumem=GPU_MIB)) for _ in range(2)]
        placed = [
            (await cluster.wait_for_pod(NS, p["metadata"]["name"], phase("Running"), within=30))["spec"][
                "nodeName"
            ]
            for p in whole
        ]
        assert sorted(placed) == ["node-1", "node-2"]


async def _no_claims(rest: RestClient) -> bool:
    return not (await rest.get(CLAIMS))["items"]


@pytest.mark.slow
async def test_prepare_waits_for_the_plugin_and_a_finished_pod_is_unprepared(dra_dir: Path) -> None:
    async with EmbeddedCluster.running(
        nodes=nodes("node-1"), state_dir=dra_dir, kubelet_settings=FAST, dra=True, start_dra_plugins=True
    ) as cluster:
        rest = cluster.client
        await rest.create("/api/v1/namespaces", {"metadata": {"name": NS}})
        kubelet = cluster.kubelet("node-1")
        # The plugin goes away (its slice stays, so the pod is still scheduled there).
        assert await cluster.stop_dra_plugin("node-1") == 0
        await eventually(lambda: DRIVER_NAME not in kubelet.dra.plugins.drivers, within=30)

        pod = await admit(rest, replica(annotations={RUN_SECONDS_ANNOTATION: "1"}))
        name = pod["metadata"]["name"]

        def waiting(p: dict[str, Any]) -> bool:
            statuses = (p.get("status") or {}).get("containerStatuses") or []
            return (
                bool(statuses)
                and statuses[0]["state"].get("waiting", {}).get("reason") == "ContainerCreating"
            )

        waiting_pod = await cluster.wait_for_pod(NS, name, waiting, within=30)
        assert waiting_pod["status"]["phase"] == "Pending" and waiting_pod["spec"]["nodeName"] == "node-1"
        record = kubelet.record(NS, name)
        assert record is not None and record.reason == REASON_DRA_PREPARE
        assert f"DRA driver {DRIVER_NAME} is not registered" in record.message

        # The plugin comes back: the kubelet's retry prepares the claim and the pod runs.
        await cluster.start_dra_plugin("node-1")
        await cluster.wait_for_pod(NS, name, phase("Running"), within=30)
        record = kubelet.record(NS, name)
        assert (
            record is not None
            and record.reason == ""
            and record.envs("cuda")["CUDA_DEVICE_MEMORY_LIMIT_0"] == "4000m"
        )
        assert len(cdi_specs(cluster, "node-1")) == 1

        # It finishes after a second: unprepared, and its claim is released and deleted.
        await cluster.wait_for_pod(NS, name, phase("Succeeded"), within=30)
        await eventually(
            lambda: not cdi_specs(cluster, "node-1") and not checkpoint_claims(cluster, "node-1"), within=30
        )
        await eventually(lambda: _no_claims(rest), within=30)
