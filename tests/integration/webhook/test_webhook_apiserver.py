"""The webhook registered in the simulated API server as the chart registers it (spec §3), pods
created through the API over plain HTTP; the API server calls the webhook over HTTPS."""

from __future__ import annotations

import aiohttp
from webhook_pki import hami_webhook_configuration

from hami.core.ids import DeviceID
from hami.core.model import NVIDIA, DeviceInfo
from hami.simulator.resources import MUTATING_WEBHOOKS, NAMESPACES, PODS
from hami.simulator.server import ApiServer

GPU, MEM, CORES = "nvidia.com/gpu", "nvidia.com/gpumem", "nvidia.com/gpucores"


async def create_pod(server: ApiServer, body: dict, namespace: str = "default") -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.url}/api/v1/namespaces/{namespace}/pods", json=body) as resp,
    ):
        return resp.status, await resp.json()


def gpu_pod(limits: dict, *, labels: dict | None = None, scheduler: str | None = None) -> dict:
    spec: dict = {
        "containers": [{"name": "cuda", "image": "nvidia/cuda:12.4", "resources": {"limits": limits}}]
    }
    if scheduler is not None:
        spec["schedulerName"] = scheduler
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "job-", "labels": labels or {}},
        "spec": spec,
    }


def a10(uuid: str) -> DeviceInfo:
    return DeviceInfo(
        id=DeviceID(uuid),
        count=10,
        devmem=24576,
        devcore=100,
        type="NVIDIA-A10",
        health=True,
        devicevendor=NVIDIA,
    )


def stored(server: ApiServer, created: dict) -> dict:
    return server.store.get(PODS, "default", created["metadata"]["name"])


async def test_gpu_pod_gets_the_hami_scheduler_and_exclusive_cores(apiserver, webhook, ca):
    apiserver.store.create(MUTATING_WEBHOOKS, None, hami_webhook_configuration(ca.pem))
    status, created = await create_pod(apiserver, gpu_pod({GPU: "1"}))
    assert status == 201, created
    for pod in (created, stored(apiserver, created)):
        assert pod["spec"]["schedulerName"] == "hami-scheduler"
        resources = pod["spec"]["containers"][0]["resources"]
        assert resources["limits"] == {GPU: "1", CORES: "100"}
        assert resources["requests"] == {GPU: "1", CORES: "100"}  # defaulted again after the patch


async def test_memory_only_pod_gets_a_count_and_plain_pod_is_untouched(apiserver, webhook, ca):
    apiserver.store.create(MUTATING_WEBHOOKS, None, hami_webhook_configuration(ca.pem))
    status, created = await create_pod(apiserver, gpu_pod({MEM: "3000"}))
    assert status == 201, created
    pod = stored(apiserver, created)
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {MEM: "3000", GPU: "1"}
    assert pod["spec"]["schedulerName"] == "hami-scheduler"
    status, created = await create_pod(apiserver, gpu_pod({"cpu": "1"}))
    assert status == 201 and stored(apiserver, created)["spec"]["schedulerName"] == "default-scheduler"


async def test_other_scheduler_and_ignore_labels_are_respected(apiserver, webhook, ca):
    apiserver.store.create(MUTATING_WEBHOOKS, None, hami_webhook_configuration(ca.pem))
    _, created = await create_pod(apiserver, gpu_pod({GPU: "1"}, scheduler="volcano"))
    assert created["spec"]["schedulerName"] == "volcano"
    assert created["spec"]["containers"][0]["resources"]["limits"] == {GPU: "1"}
    _, created = await create_pod(apiserver, gpu_pod({GPU: "1"}, labels={"hami.io/webhook": "ignore"}))
    assert created["spec"]["schedulerName"] == "default-scheduler"
    apiserver.store.create(
        NAMESPACES, None, {"metadata": {"name": "quiet", "labels": {"hami.io/webhook": "ignore"}}}
    )
    status, created = await create_pod(apiserver, gpu_pod({GPU: "1"}), namespace="quiet")
    assert status == 201 and created["spec"]["schedulerName"] == "default-scheduler"


async def test_impossible_request_is_rejected_once_devices_are_registered(apiserver, webhook, ca):
    apiserver.store.create(MUTATING_WEBHOOKS, None, hami_webhook_configuration(ca.pem))
    # Nothing registered yet: nothing is rejected.
    status, _ = await create_pod(apiserver, gpu_pod({GPU: "1", MEM: "90000"}))
    assert status == 201
    for node in ("node-a", "node-b"):
        webhook.ledger.set_node_devices(node, [a10(f"{node}-{i}") for i in range(4)])
    status, answer = await create_pod(apiserver, gpu_pod({GPU: "1", MEM: "90000"}))
    assert status == 403, answer
    assert answer["message"] == (
        "admission webhook \"vgpu.hami.io\" denied the request: container 'cuda' asks for 90000 MiB per "
        "NVIDIA device but the largest registered device has 24576 MiB"
    )
    status, answer = await create_pod(apiserver, gpu_pod({GPU: "5"}))
    assert status == 403 and "no node has more than 4" in answer["message"]
    # The cache going out of sync (e.g. relisting) suspends the check rather than guessing.
    webhook.synced = False
    status, _ = await create_pod(apiserver, gpu_pod({GPU: "5"}))
    assert status == 201
    assert webhook.calls  # the handler consulted the cache state on every review


async def test_node_assigned_pod_is_denied(apiserver, webhook, ca):
    apiserver.store.create(MUTATING_WEBHOOKS, None, hami_webhook_configuration(ca.pem))
    body = gpu_pod({GPU: "1"})
    body["spec"]["nodeName"] = "node-a"
    status, answer = await create_pod(apiserver, body)
    assert status == 403
    assert answer["message"] == 'admission webhook "vgpu.hami.io" denied the request: pod has node assigned'
