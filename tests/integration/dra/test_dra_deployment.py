"""End to end in DRA mode: a Deployment of 3 replicas asking nvidia.com/gpu: 1, gpumem: 4000.

Real pieces: the simulated API server, the DRA plugin per node (slices, registration, prepare over
its Unix socket), the claim translation (as the webhook applies it), the resourceclaim controller,
the allocator and the kubelet DRA manager. The scheduling and kubelet loops here only call the
hooks in the order the fake kube-scheduler and fake kubelet will (filter → reserve → pre_bind →
bind; prepare on admission, unprepare on deletion), until those are wired into the embedded cluster.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from dra_fixtures import DEVICE_CLASS, RunningPlugin, create_node, eventually, plugin_config

from hami.core.dra_translate import DRIVER_NAME, translate_pod
from hami.dra.devices import mock_gpus
from hami.k8s.client import HttpKubeApi
from hami.simulator.dra_allocator import DraScheduling
from hami.simulator.dra_controller import KubeletDra, ResourceClaimController, resolve_cdi
from hami.simulator.patching import json_patch
from hami.simulator.restclient import ApiError, RestClient, pod_path

NODES = ("node-1", "node-2")
NS = "demo"
CLAIMS = f"/apis/resource.k8s.io/v1/namespaces/{NS}/resourceclaims"


def replica() -> dict[str, Any]:
    """What the ReplicaSet controller submits: a generated name, so admission sees no name."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-5d8f7c-", "namespace": NS, "labels": {"app": "web"}},
        "spec": {
            "containers": [
                {
                    "name": "cuda",
                    "image": "cuda",
                    "resources": {"limits": {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "4000", "cpu": "1"}},
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


async def schedule(rest: RestClient, dra: DraScheduling, bound: dict[str, str]) -> None:
    """One pass of a first-fit scheduler using the DRA hooks."""
    pods = (await rest.get(f"/api/v1/namespaces/{NS}/pods"))["items"]
    for pod in pods:
        meta = pod["metadata"]
        if pod["spec"].get("nodeName") or meta.get("deletionTimestamp"):
            continue
        host = next((n for n in NODES if not dra.filter(pod, n)), None)
        if host is None:
            continue
        dra.reserve(pod, host)
        try:
            await dra.pre_bind(pod)
            await rest.create(
                pod_path(NS, meta["name"], "binding"),
                {
                    "metadata": {"name": meta["name"], "uid": meta["uid"]},
                    "target": {"kind": "Node", "name": host},
                },
            )
        except Exception:
            dra.unreserve(pod)
            raise
        bound[meta["name"]] = host


async def test_three_replicas_share_gpus_by_capacity_and_deleting_frees_everything(
    kube: HttpKubeApi, rest: RestClient, dra_dir: Path
) -> None:
    await rest.create("/api/v1/namespaces", {"metadata": {"name": NS}})
    await rest.create("/apis/resource.k8s.io/v1/deviceclasses", DEVICE_CLASS)
    plugins: dict[str, RunningPlugin] = {}
    kubelets: dict[str, KubeletDra] = {}
    tasks: list[asyncio.Task[None]] = []
    dra = DraScheduling(rest)
    controller = ResourceClaimController(rest, resync_s=0.2)
    try:
        for node in NODES:
            await create_node(rest, node)
            # One 10000 MiB GPU per node: two 4000 MiB shares fit on node-1, the third goes to node-2.
            plugins[node] = RunningPlugin(
                plugin_config(dra_dir, node), mock_gpus(node, 1, memory_mib=10000), kube
            )
            await plugins[node].start()
            kubelets[node] = KubeletDra(rest, plugins[node].config.registry_dir, poll_s=0.05)
            tasks.append(asyncio.create_task(kubelets[node].run()))
            await kubelets[node].wait_for_driver(DRIVER_NAME)
        tasks.append(asyncio.create_task(dra.run()))
        tasks.append(asyncio.create_task(controller.run()))
        await asyncio.wait_for(dra.synced.wait(), 10)
        await asyncio.wait_for(controller.ready.wait(), 10)

        created = [await admit(rest, replica()) for _ in range(3)]
        names = [p["metadata"]["name"] for p in created]
        assert len(set(names)) == 3
        templates = (await rest.get(f"/apis/resource.k8s.io/v1/namespaces/{NS}/resourceclaimtemplates"))[
            "items"
        ]
        assert [t["metadata"]["name"] for t in templates] == ["hami-gpu-1x4000mi-0c"]

        bound: dict[str, str] = {}

        async def all_bound() -> bool:
            await schedule(rest, dra, bound)
            return len(bound) == 3

        await eventually(all_bound, within=15, poll=0.1)
        assert sorted(bound.values()) == ["node-1", "node-1", "node-2"]

        # The kubelets prepare what was bound to them.
        envs: dict[str, dict[str, str]] = {}
        for name, node in bound.items():
            pod = await rest.get(pod_path(NS, name))
            devices = await kubelets[node].prepare_pod(pod)
            envs[name] = dict(resolve_cdi([plugins[node].config.cdi_dir], devices.containers["cuda"]).env)

        claims = (await rest.get(CLAIMS))["items"]
        assert len(claims) == 3
        by_pod = {}
        for claim in claims:
            owner = claim["metadata"]["ownerReferences"][0]
            assert claim["metadata"]["name"].startswith(f"{owner['name']}-hami-gpu-cuda-")
            assert (
                claim["metadata"]["annotations"]["resource.kubernetes.io/pod-claim-name"] == "hami-gpu-cuda"
            )
            assert "resource.kubernetes.io/delete-protection" in claim["metadata"]["finalizers"]
            (result,) = claim["status"]["allocation"]["devices"]["results"]
            assert result["consumedCapacity"] == {"cores": "0", "memory": "4000Mi"}
            assert claim["status"]["reservedFor"] == [
                {"resource": "pods", "name": owner["name"], "uid": owner["uid"]}
            ]
            by_pod[owner["name"]] = result
        shared = [r for n, r in by_pod.items() if bound[n] == "node-1"]
        assert {r["device"] for r in shared} == {"hami-gpu-0"} and len({r["shareID"] for r in shared}) == 2

        for name, node in bound.items():
            pod = await rest.get(pod_path(NS, name))
            (status,) = pod["status"]["resourceClaimStatuses"]
            assert status["name"] == "hami-gpu-cuda"
            gpu = mock_gpus(node, 1, memory_mib=10000)[0]
            claim_uid = next(
                c["metadata"]["uid"] for c in claims if c["metadata"]["name"] == status["resourceClaimName"]
            )
            assert envs[name] == {
                "NVIDIA_VISIBLE_DEVICES": gpu.uuid,
                "CUDA_DEVICE_MEMORY_LIMIT_0": "4000m",
                "CUDA_DEVICE_SM_LIMIT": "0",
                "CUDA_DEVICE_MEMORY_SHARED_CACHE": f"/usr/local/vgpu/{claim_uid}.cache",
                "LIBCUDA_LOG_LEVEL": "1",
            }
        assert len(list(plugins["node-1"].config.cdi_dir.glob("*.json"))) == 2
        assert len(list(plugins["node-2"].config.cdi_dir.glob("*.json"))) == 1

        # Delete the Deployment: pods go, kubelets unprepare, claims are released and deleted.
        for name, node in bound.items():
            pod = await rest.get(pod_path(NS, name))
            await rest.delete(pod_path(NS, name), grace_seconds=0)
            assert await kubelets[node].unprepare_pod(pod["metadata"]["uid"]) == []

        async def no_claims() -> bool:
            return not (await rest.get(CLAIMS))["items"]

        await eventually(no_claims, within=15)
        for node in NODES:
            assert list(plugins[node].config.cdi_dir.glob("*.json")) == []
            assert plugins[node].plugin is not None and plugins[node].plugin.checkpoint.claims == {}
        # Everything is free again: a new replica is scheduled onto node-1's GPU.
        again = await admit(rest, replica())
        bound.clear()
        await eventually(lambda: _bound_one(rest, dra, bound), within=15, poll=0.1)
        assert bound == {again["metadata"]["name"]: "node-1"}
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for runner in plugins.values():
            await runner.stop()


async def _bound_one(rest: RestClient, dra: DraScheduling, bound: dict[str, str]) -> bool:
    await schedule(rest, dra, bound)
    return len(bound) == 1
