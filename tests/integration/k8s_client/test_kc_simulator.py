"""hami.k8s and hami.cache against the embedded apiserver (hami.simulator) over real HTTP."""

from __future__ import annotations

import asyncio
import random

import pytest
from k8s_scripted_apiserver import eventually

from hami.cache.informer import Delta, Informer
from hami.cache.store import BY_NODE, POD_INDEXERS
from hami.config.settings import BackoffSettings, NetworkingSettings, WatchingSettings
from hami.k8s.auth import load_credentials
from hami.k8s.client import HttpKubeApi
from hami.k8s.errors import ApiConflict, ApiGone, ApiNotFound
from hami.k8s.objects import NODES, PODS
from hami.k8s.patches import merge_patch
from hami.simulator.faults import FaultRule
from hami.simulator.resources import PODS as SIM_PODS
from hami.simulator.server import ApiServer, ApiServerSettings

WATCHING = WatchingSettings(
    min_timeout=5,
    max_timeout=10,
    inactivity_timeout=5,
    backoff=BackoffSettings(initial=0.01, maximum=0.05, jitter=0.0),
)
NETWORKING = NetworkingSettings(max_retries=0, request_timeout=5.0, connect_timeout=2.0)
NS_PODS = "/api/v1/namespaces/default/pods"


@pytest.fixture
async def sim(tmp_path):
    async with ApiServer.running(settings=ApiServerSettings(bookmark_interval_s=0.2)) as srv:
        yield srv


@pytest.fixture
async def api(sim, tmp_path):
    # through a kubeconfig, as a user would point hami at a cluster
    creds = await load_credentials(
        NetworkingSettings(kubeconfig=str(sim.write_kubeconfig(tmp_path / "kubeconfig"))), environ={}
    )
    async with HttpKubeApi(creds, NETWORKING) as client:
        yield client


def pod(name: str, node: str | None = None) -> dict:
    spec: dict = {"containers": [{"name": "c", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def node(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}


class Running:
    """Run an informer for the duration of a block."""

    def __init__(self, informer: Informer) -> None:
        self.informer = informer
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Informer:
        self.task = asyncio.create_task(self.informer.run(), name=self.informer.name)
        await asyncio.wait_for(self.informer.wait_synced(), 5)
        return self.informer

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


def pod_informer(api, **kwargs) -> Informer:
    return Informer(
        api,
        PODS,
        namespace="default",
        settings=WATCHING,
        indexers=POD_INDEXERS,
        rng=random.Random(3),
        detect_mutations=True,
        **kwargs,
    )


async def test_crud_and_errors_against_the_simulator(api):
    created = await api.create(PODS, pod("p1"), namespace="default")
    rv = created["metadata"]["resourceVersion"]
    assert created["status"]["phase"] == "Pending"
    patched = await api.patch(
        PODS,
        "p1",
        merge_patch({"metadata": {"annotations": {"a": "1"}}}, resource_version=rv),
        namespace="default",
    )
    assert patched["metadata"]["annotations"] == {"a": "1"}
    with pytest.raises(ApiConflict):  # stale RV precondition
        await api.patch(
            PODS,
            "p1",
            merge_patch({"metadata": {"annotations": {"a": "2"}}}, resource_version=rv),
            namespace="default",
        )
    await api.bind_pod("default", "p1", "n1", uid=created["metadata"]["uid"])
    bound = await api.get(PODS, "p1", namespace="default")
    assert bound["spec"]["nodeName"] == "n1"
    with pytest.raises(ApiConflict, match="already assigned"):
        await api.bind_pod("default", "p1", "n2")
    event = await api.create_event(bound, reason="Bound", message="bound to n1", component="hami-scheduler")
    assert event["involvedObject"]["name"] == "p1"
    await api.delete(PODS, "p1", namespace="default", grace_period_seconds=0)
    with pytest.raises(ApiNotFound):
        await api.get(PODS, "p1", namespace="default")


async def test_paginated_list_is_one_snapshot(api):
    for i in range(7):
        await api.create(PODS, pod(f"p{i}"), namespace="default")
    result = await api.list_all(PODS, namespace="default", resource_version="", page_size=3)
    assert [p["metadata"]["name"] for p in result["items"]] == [f"p{i}" for i in range(7)]
    assert int(result["metadata"]["resourceVersion"]) > 0


async def test_informers_sync_pods_and_nodes_and_follow_changes(sim, api):
    await api.create(NODES, node("n1"))
    await api.create(PODS, pod("a", node="n1"), namespace="default")
    await api.create(PODS, pod("b"), namespace="default")
    nodes: Informer[None] = Informer(api, NODES, settings=WATCHING)
    pods = pod_informer(api)
    seen: list[Delta] = []
    pods.add_handler(seen.append)
    async with Running(nodes), Running(pods):
        assert nodes.store.keys() == ["n1"]
        assert sorted(pods.store.keys()) == ["default/a", "default/b"]
        assert pods.store.index_keys(BY_NODE, "n1") == {"default/a"}
        assert "managedFields" not in pods.store.get("default/a")["metadata"]
        await api.bind_pod("default", "b", "n1")
        await api.delete(PODS, "a", namespace="default", grace_period_seconds=0)
        await api.create(NODES, node("n2"))
        await eventually(
            lambda: pods.store.index_keys(BY_NODE, "n1") == {"default/b"} and "n2" in nodes.store
        )
        pods.store.check_mutations()
    assert [(d.type, d.key) for d in seen][-2:] == [("updated", "default/b"), ("deleted", "default/a")]


async def test_watch_resumes_from_its_rv_after_a_disconnect(sim, api):
    pods = pod_informer(api)
    async with Running(pods):
        await eventually(lambda: sim.store.watcher_count() == 1)
        sim.store.close_all_watchers("test disconnect")
        await api.create(PODS, pod("late"), namespace="default")
        await eventually(lambda: "default/late" in pods.store)
        await eventually(lambda: pods.reflector.stats.watches >= 2)
    assert pods.reflector.stats.lists == 1  # resumed, not re-listed


async def test_bookmarks_advance_the_stored_rv(sim, api):
    await api.create(PODS, pod("a"), namespace="default")
    pods = pod_informer(api)
    async with Running(pods):
        pod_rv = pods.store.resource_version
        await api.create(NODES, node("elsewhere"))  # moves the global RV, not a pod event
        await eventually(lambda: int(pods.store.resource_version) >= sim.store.resource_version)
        assert int(pods.store.resource_version) > int(pod_rv)
        assert pods.reflector.stats.bookmarks >= 1
        assert len(pods.store) == 1


async def test_410_relists_and_synthesises_tombstones(sim, api):
    for name in ("a", "b"):
        await api.create(PODS, pod(name), namespace="default")
    pods = pod_informer(api)
    seen: list[Delta] = []
    async with Running(pods):
        pods.add_handler(seen.append)
        seen.clear()
        await eventually(lambda: sim.store.watcher_count() == 1)
        # cut the informer off, change the world, and forget the history it would resume from
        cut = sim.faults.add(FaultRule(path_prefix=NS_PODS, methods=frozenset({"GET"}), drop=True, times=-1))
        sim.store.close_all_watchers("partition")
        await eventually(lambda: cut.hits >= 1)
        sim.store.delete(SIM_PODS, "default", "a", grace_period=0)
        sim.store.create(SIM_PODS, "default", pod("c"))
        sim.store.compact()
        sim.faults.clear()
        await eventually(lambda: sorted(pods.store.keys()) == ["default/b", "default/c"])
    assert ("deleted", "default/a", True) in [(d.type, d.key, d.final_state_unknown) for d in seen]
    assert ("added", "default/c", False) in [(d.type, d.key, d.final_state_unknown) for d in seen]
    assert pods.reflector.stats.expired >= 1
    assert pods.reflector.stats.lists == 2


async def test_an_expired_watch_rv_is_gone(sim, api):
    await api.create(PODS, pod("a"), namespace="default")
    old = str(sim.store.resource_version)
    await api.create(PODS, pod("b"), namespace="default")
    sim.store.compact()
    with pytest.raises(ApiGone):
        async for event in api.watch(PODS, namespace="default", resource_version=old, timeout_seconds=5):
            if event["type"] == "ERROR":
                from hami.k8s.errors import error_from_status

                raise error_from_status(event["object"])  # type: ignore[arg-type]
