"""Each API fault of hami.simulator.chaos, observed through the real client stack (hami.k8s +
hami.cache informers): the fault happens, and the client comes back to the server's truth."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rel_harness import until

from hami.cache.informer import Delta, Informer
from hami.config.settings import BackoffSettings, NetworkingSettings, WatchingSettings
from hami.k8s.auth import Credentials
from hami.k8s.client import HttpKubeApi
from hami.k8s.errors import ApiError, ApiTooManyRequests
from hami.k8s.objects import NODES, PODS
from hami.k8s.patches import merge_patch
from hami.simulator.chaos import ClusterChaos, shuffle_per_object
from hami.simulator.cluster import EmbeddedCluster
from hami.simulator.faults import request_info
from hami.simulator.kubelet import KubeletSettings
from hami.simulator.resources import PODS as SIM_PODS
from hami.simulator.restclient import ApiError as SimApiError
from hami.simulator.server import ApiServer, ApiServerSettings
from hami.simulator.watchers import WatchItem

pytestmark = pytest.mark.reliability

WATCHING = WatchingSettings(
    min_timeout=30,
    max_timeout=60,
    inactivity_timeout=30,
    backoff=BackoffSettings(initial=0.01, maximum=0.05, jitter=0.0),
)


def pod(name: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }


@pytest.fixture
async def sim() -> AsyncIterator[ApiServer]:
    async with ApiServer.running(settings=ApiServerSettings(bookmark_interval_s=60)) as srv:
        yield srv


@pytest.fixture
async def api(sim: ApiServer) -> AsyncIterator[HttpKubeApi]:
    networking = NetworkingSettings(
        max_retries=2,
        request_timeout=2.0,
        connect_timeout=1.0,
        max_retry_after=1.0,
        retry_backoff=BackoffSettings(initial=0.01, maximum=0.05, jitter=0.0),
    )
    async with HttpKubeApi(Credentials.anonymous(sim.url), networking) as client:
        yield client


@contextlib.asynccontextmanager
async def informer(api: HttpKubeApi) -> AsyncIterator[Informer[None]]:
    inf: Informer[None] = Informer(api, PODS, settings=WATCHING, namespace="default")
    task = asyncio.create_task(inf.run())
    try:
        await asyncio.wait_for(inf.wait_synced(), 5)
        yield inf
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def server_names(sim: ApiServer) -> list[str]:
    return sorted(f"default/{p['metadata']['name']}" for p in sim.store.objects(SIM_PODS, "default"))


def test_request_info_names_verbs_and_resources() -> None:
    q = {"watch": "true"}
    assert request_info("GET", "/api/v1/pods").verb == "list"
    assert request_info("GET", "/api/v1/pods", q).verb == "watch"
    assert request_info("GET", "/api/v1/watch/namespaces/ns/pods").verb == "watch"
    info = request_info("POST", "/api/v1/namespaces/ns/pods/p/binding")
    assert (info.verb, info.resource, info.namespace, info.name) == ("create", "pods/binding", "ns", "p")
    assert request_info("PATCH", "/api/v1/nodes/n1/status").resource == "nodes/status"
    assert request_info("GET", "/api/v1/namespaces/default").resource == "namespaces"
    assert request_info("PUT", "/api/v1/namespaces/default/finalize").resource == "namespaces/finalize"
    lease = request_info("PUT", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/hami")
    assert (lease.verb, lease.resource, lease.name) == ("update", "leases", "hami")
    assert request_info("DELETE", "/api/v1/namespaces/ns/pods").verb == "deletecollection"
    assert request_info("GET", "/healthz").verb == ""


def test_reordering_keeps_each_objects_own_order() -> None:
    import random

    items = [
        WatchItem(
            "MODIFIED", {"metadata": {"namespace": "d", "name": f"p{i % 5}", "resourceVersion": str(i)}}
        )
        for i in range(40)
    ] + [WatchItem("BOOKMARK", {"metadata": {"resourceVersion": "40"}})]
    out = shuffle_per_object(items, random.Random(3))
    assert sorted(id(i) for i in out) == sorted(id(i) for i in items) and out[-1].type == "BOOKMARK"
    for name in {f"p{i}" for i in range(5)}:
        rvs = [
            int(i.obj["metadata"]["resourceVersion"]) for i in out if i.obj["metadata"].get("name") == name
        ]
        assert rvs == sorted(rvs)
    assert [i.obj["metadata"].get("name") for i in out[:10]] != [f"p{i % 5}" for i in range(10)]


@pytest.mark.parametrize("abrupt", [True, False], ids=["abrupt", "clean"])
async def test_dropped_watch_streams_resume_from_their_resource_version(
    sim: ApiServer, api: HttpKubeApi, abrupt: bool
) -> None:
    await api.create(PODS, pod("a"), namespace="default")
    async with informer(api) as inf:
        await until(lambda: sim.chaos.open_watches == 1)
        watches = inf.reflector.stats.watches
        assert sim.chaos.drop_watches("pods", abrupt=abrupt) == 1
        assert sim.chaos.drop_watches("nodes") == 0  # other resources are untouched
        sim.store.create(SIM_PODS, "default", pod("b"))
        await until(lambda: sorted(inf.store.keys()) == server_names(sim))
        await until(lambda: inf.reflector.stats.watches > watches)
        assert inf.reflector.stats.lists == 1  # resumed, never re-listed
        assert sim.chaos.stats.dropped_watches == 1


async def test_expired_watch_forces_a_relist_with_tombstones(sim: ApiServer, api: HttpKubeApi) -> None:
    for name in ("a", "b"):
        await api.create(PODS, pod(name), namespace="default")
    seen: list[Delta[None]] = []
    async with informer(api) as inf:
        inf.add_handler(seen.append)
        await until(lambda: sim.chaos.open_watches == 1)
        sim.chaos.pause()  # change the world while the informer cannot look
        sim.chaos.expire_watches("pods", count=1)
        sim.store.delete(SIM_PODS, "default", "a", grace_period=0)
        sim.store.create(SIM_PODS, "default", pod("c"))
        sim.chaos.resume()
        await until(lambda: sorted(inf.store.keys()) == ["default/b", "default/c"])
        assert inf.reflector.stats.expired == 1 and inf.reflector.stats.lists == 2
        assert sim.chaos.stats.expired_watches == 1
    assert ("deleted", "default/a") in [(d.type, d.key) for d in seen]


async def test_delayed_events_arrive_late_and_complete(sim: ApiServer, api: HttpKubeApi) -> None:
    async with informer(api) as inf:
        await until(lambda: sim.chaos.open_watches == 1)
        sim.chaos.delay_events("pods", 0.4)
        start = time.monotonic()
        sim.store.create(SIM_PODS, "default", pod("late"))
        await until(lambda: "default/late" in inf.store.keys())
        assert time.monotonic() - start >= 0.35
        sim.chaos.delay_events("pods", 0)
        assert sim.chaos.stats.delayed_batches >= 1


async def test_reordered_events_still_converge(sim: ApiServer, api: HttpKubeApi) -> None:
    order: list[str] = []
    async with informer(api) as inf:
        inf.add_handler(lambda d: order.append(d.key) if d.type == "added" else None)
        await until(lambda: sim.chaos.open_watches == 1)
        sim.chaos.reorder_events(None, window_s=0.1)
        names = [f"r{i:02d}" for i in range(20)]
        for name in names:
            sim.store.create(SIM_PODS, "default", pod(name))
        for name in names[:5]:
            sim.store.mutate(
                SIM_PODS, "default", name, lambda o: o["metadata"].setdefault("labels", {}).update(x="1")
            )
        await until(lambda: sorted(inf.store.keys()) == server_names(sim))
        for name in names[:5]:
            assert inf.store.get(f"default/{name}")["metadata"]["labels"] == {"x": "1"}  # type: ignore[index]
        assert order != [f"default/{n}" for n in names]  # they really came out of order
        assert sim.chaos.stats.reordered_batches >= 1


async def test_pause_hangs_every_request_until_resumed(sim: ApiServer, api: HttpKubeApi) -> None:
    async with informer(api) as inf:
        await until(lambda: sim.chaos.open_watches == 1)
        async with sim.chaos.paused_for():
            get = asyncio.create_task(api.list_all(NODES))
            sim.store.create(SIM_PODS, "default", pod("while-paused"))
            await asyncio.sleep(0.3)
            assert not get.done() and "default/while-paused" not in inf.store.keys()
            assert sim.chaos.stats.paused_requests >= 1
        assert (await get)["kind"] == "NodeList"
        await until(lambda: "default/while-paused" in inf.store.keys())


async def test_429_500_and_timeouts_for_chosen_verbs(sim: ApiServer, api: HttpKubeApi) -> None:
    await api.create(PODS, pod("a"), namespace="default")
    throttle = sim.chaos.throttle(verbs={"list"}, resources={"pods"}, times=2, retry_after_s=0)
    listed = await api.list_all(PODS, namespace="default")  # retried through two 429s
    assert [p["metadata"]["name"] for p in listed["items"]] == ["a"] and throttle.hits == 2
    sim.chaos.throttle(verbs={"patch"}, resources={"pods"}, times=-1, retry_after_s=0)
    with pytest.raises(ApiTooManyRequests):
        await api.patch(PODS, "a", merge_patch({"metadata": {"labels": {"x": "y"}}}), namespace="default")
    sim.chaos.clear()
    fail = sim.chaos.fail(verbs={"get"}, resources={"nodes"}, status=500, times=-1)
    with pytest.raises(ApiError) as failed:
        await api.get(NODES, "missing")
    assert failed.value.status == 500 and fail.hits >= 1
    await api.get(PODS, "a", namespace="default")  # other verbs and resources are untouched
    sim.chaos.clear()
    hung = sim.chaos.time_out(verbs={"create"}, resources={"pods"}, times=1)
    start = time.monotonic()
    with pytest.raises(ApiError):
        await api.create(PODS, pod("b"), namespace="default")
    assert 1.5 < time.monotonic() - start < 10 and hung.hits == 1  # the client's 2 s timeout fired
    assert sim.store.try_get(SIM_PODS, "default", "b") is None


async def test_kubelet_restart_and_clock_skew(tmp_path: Path) -> None:
    import tempfile

    state = Path(tempfile.mkdtemp(prefix="hc", dir="/tmp"))
    async with EmbeddedCluster.running(
        nodes=1, gpus_per_node=0, state_dir=state, kubelet_settings=KubeletSettings(heartbeat_interval=0.1)
    ) as cluster:
        chaos = ClusterChaos(cluster)
        kubelet_sock = cluster.node("node-1").kubelet.devices.socket_path
        plugin_sock = kubelet_sock.parent / "plugin.sock"
        with socket.socket(socket.AF_UNIX) as plugin:
            plugin.bind(str(plugin_sock))  # a plugin's endpoint: a kubelet restart wipes it
            await chaos.restart_kubelet("node-1")
        assert kubelet_sock.is_socket() and not plugin_sock.exists()
        chaos.skew_clock("node-1", 3600)
        lease_path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/node-1"

        async def renew_skew() -> float:
            try:
                lease = await cluster.client.get(lease_path)
            except SimApiError:
                return float("inf")  # no heartbeat yet
            renew = datetime.fromisoformat(lease["spec"]["renewTime"].replace("Z", "+00:00"))
            return (renew - datetime.now(UTC)).total_seconds()

        deadline = time.monotonic() + 5
        while not 3500 < await renew_skew() < 3700:
            assert time.monotonic() < deadline, "the skewed heartbeat never arrived"
            await asyncio.sleep(0.1)
        chaos.clear()
        deadline = time.monotonic() + 5
        while abs(await renew_skew()) > 60:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    import shutil

    shutil.rmtree(state, ignore_errors=True)


async def test_held_requests_wait_for_their_release(sim: ApiServer, api: HttpKubeApi) -> None:
    await api.create(PODS, pod("a"), namespace="default")
    hold = sim.chaos.hold(verbs={"list"}, resources={"pods"}, query={"fieldSelector": "spec.nodeName=n1"})
    assert hold.release is not None
    other = await api.list_all(PODS, namespace="default")  # a different query is not held
    held = asyncio.create_task(api.list_all(PODS, field_selector="spec.nodeName=n1"))
    await until(lambda: hold.hits == 1)
    sim.store.create(SIM_PODS, "default", {**pod("b"), "spec": {**pod("b")["spec"], "nodeName": "n1"}})
    await asyncio.sleep(0.2)
    assert not held.done() and len(other["items"]) == 1
    hold.release.set()
    assert [p["metadata"]["name"] for p in (await held)["items"]] == ["b"]  # served as of its release
