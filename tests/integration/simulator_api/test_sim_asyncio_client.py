"""kubernetes-asyncio against the simulated API server: list/watch/410, patch, leases, binding."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from kubernetes_asyncio import client, config, watch

from hami.simulator.resources import PODS


@pytest.fixture
async def core(kubeconfig):
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        yield api


def pod(name: str, **labels: str) -> dict:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]},
    }


async def test_list_watch_and_relist_after_410(core, apiserver):
    v1 = client.CoreV1Api(core)
    for i in range(3):
        await v1.create_namespaced_pod("default", pod(f"p{i}", app="x"))
    listed = await v1.list_namespaced_pod("default", label_selector="app=x")
    assert [p.metadata.name for p in listed.items] == ["p0", "p1", "p2"]
    stale_rv = listed.metadata.resource_version

    await v1.create_namespaced_pod("default", pod("p3", app="x"))
    seen = []
    async for event in watch.Watch().stream(
        v1.list_namespaced_pod, "default", resource_version=stale_rv, timeout_seconds=1
    ):
        seen.append((event["type"], event["object"].metadata.name))
    assert seen == [("ADDED", "p3")]

    apiserver.store.compact()  # drop the history: the old RV is now too old
    with pytest.raises(client.ApiException) as expired:
        async for _ in watch.Watch().stream(
            v1.list_namespaced_pod, "default", resource_version=stale_rv, timeout_seconds=1
        ):
            pass
    assert expired.value.status == 410
    assert "too old resource version" in expired.value.reason

    # The client's answer to 410: re-list, then watch from the fresh RV.
    relisted = await v1.list_namespaced_pod("default")
    assert len(relisted.items) == 4
    await v1.delete_namespaced_pod("p0", "default")
    stream = watch.Watch().stream(
        v1.list_namespaced_pod,
        "default",
        resource_version=relisted.metadata.resource_version,
        timeout_seconds=1,
    )
    events = [(e["type"], e["object"].metadata.name) async for e in stream]
    assert events == [("DELETED", "p0")]


async def test_watch_without_timeout_retries_410_once_then_raises(core, apiserver):
    v1 = client.CoreV1Api(core)
    await v1.create_namespaced_pod("default", pod("a"))
    old = apiserver.store.resource_version - 1
    apiserver.store.compact()
    with pytest.raises(client.ApiException) as expired:
        async for _ in watch.Watch().stream(v1.list_namespaced_pod, "default", resource_version=str(old)):
            pass
    assert expired.value.status == 410


async def test_watch_with_bookmarks_and_initial_events(core, apiserver):
    v1 = client.CoreV1Api(core)
    await v1.create_namespaced_pod("default", pod("a"))
    raw = []
    async for event in watch.Watch().stream(
        v1.list_namespaced_pod, "default", allow_watch_bookmarks=True, timeout_seconds=1
    ):
        raw.append((event["type"], event["raw_object"]["metadata"]))
    assert raw[0][0] == "ADDED"
    assert raw[1] == (
        "BOOKMARK",
        {
            "resourceVersion": str(apiserver.store.resource_version),
            "annotations": {"k8s.io/initial-events-end": "true"},
        },
    )
    assert all(kind == "BOOKMARK" for kind, _ in raw[2:]) and len(raw) > 2  # periodic bookmarks (0.2 s)


async def test_merge_and_strategic_patch(core, apiserver):
    v1 = client.CoreV1Api(core)
    await v1.create_namespaced_pod("default", pod("a", keep="1", drop="1"))
    patched = await v1.patch_namespaced_pod(
        "a",
        "default",
        {"metadata": {"labels": {"drop": None, "new": "2"}}},
        _content_type="application/merge-patch+json",
    )
    assert patched.metadata.labels == {"keep": "1", "new": "2"}
    # A dict body is sent as strategic merge: finalizers merge as a set instead of being replaced.
    await v1.patch_namespaced_pod("a", "default", {"metadata": {"finalizers": ["x.io/a"]}})
    merged = await v1.patch_namespaced_pod("a", "default", {"metadata": {"finalizers": ["x.io/b"]}})
    assert merged.metadata.finalizers == ["x.io/a", "x.io/b"]
    # A list body is a JSON patch.
    jp = await v1.patch_namespaced_pod("a", "default", [{"op": "remove", "path": "/metadata/finalizers"}])
    assert jp.metadata.finalizers is None


async def test_lease_create_update_and_stale_conflict(core):
    leases = client.CoordinationV1Api(core)
    now = dt.datetime(2026, 1, 5, 10, 0, 0, 421337, tzinfo=dt.UTC)
    body = client.V1Lease(
        metadata=client.V1ObjectMeta(name="hami-scheduler"),
        spec=client.V1LeaseSpec(
            holder_identity="a_1",
            lease_duration_seconds=15,
            acquire_time=now,
            renew_time=now,
            lease_transitions=0,
        ),
    )
    created = await leases.create_namespaced_lease("kube-system", body)
    first_rv = created.metadata.resource_version
    created.spec.renew_time = now + dt.timedelta(seconds=2, microseconds=1)
    renewed = await leases.replace_namespaced_lease("hami-scheduler", "kube-system", created)
    assert int(renewed.metadata.resource_version) > int(first_rv)
    raw = await leases.read_namespaced_lease("hami-scheduler", "kube-system", _preload_content=False)
    text = json.loads(await raw.read())
    assert text["spec"]["renewTime"] == "2026-01-05T10:00:02.421338Z"

    created.metadata.resource_version = first_rv  # stale: somebody else renewed since
    created.spec.holder_identity = "b_2"
    with pytest.raises(client.ApiException) as conflict:
        await leases.replace_namespaced_lease("hami-scheduler", "kube-system", created)
    assert conflict.value.status == 409
    status = json.loads(conflict.value.body)
    assert status["reason"] == "Conflict"
    assert status["message"] == (
        'Operation cannot be fulfilled on leases.coordination.k8s.io "hami-scheduler": the object has been '
        "modified; please apply your changes to the latest version and try again"
    )
    assert status["details"] == {"name": "hami-scheduler", "group": "coordination.k8s.io", "kind": "leases"}

    # MicroTime needs exactly six fractional digits: a whole-second time is rejected like Go would.
    whole = client.V1Lease(
        metadata=client.V1ObjectMeta(name="other"),
        spec=client.V1LeaseSpec(holder_identity="c", renew_time=now.replace(microsecond=0)),
    )
    with pytest.raises(client.ApiException) as bad:
        await leases.create_namespaced_lease("kube-system", whole)
    assert bad.value.status == 400


async def test_pod_binding_201_then_409(core, apiserver):
    v1 = client.CoreV1Api(core)
    created = await v1.create_namespaced_pod("default", pod("p"))
    binding = client.V1Binding(
        metadata=client.V1ObjectMeta(
            name="p", uid=created.metadata.uid, annotations={"hami.io/bind-phase": "ok"}
        ),
        target=client.V1ObjectReference(kind="Node", name="node-a"),
    )
    response = await v1.create_namespaced_pod_binding("p", "default", binding, _preload_content=False)
    assert response.status == 201
    assert json.loads(await response.read()) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": 201,
    }
    response.release()
    stored = apiserver.store.get(PODS, "default", "p")
    assert stored["spec"]["nodeName"] == "node-a"
    assert stored["metadata"]["annotations"] == {"hami.io/bind-phase": "ok"}
    assert [c["type"] for c in stored["status"]["conditions"]] == ["PodScheduled"]

    with pytest.raises(client.ApiException) as again:
        await v1.create_namespaced_pod_binding("p", "default", binding)
    assert again.value.status == 409
    assert json.loads(again.value.body)["message"] == (
        'Operation cannot be fulfilled on pods/binding "p": pod p is already assigned to node "node-a"'
    )
