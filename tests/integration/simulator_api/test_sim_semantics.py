"""kube-apiserver semantics of the simulated server, checked over HTTP (k8s-apis.md §6)."""

from __future__ import annotations

import asyncio
import json
import re

import orjson

from hami.simulator.faults import FaultRule
from hami.simulator.resources import PODS

POD = {
    "metadata": {"name": "p", "labels": {"app": "a"}},
    "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]},
}
PODS_URL = "/api/v1/namespaces/default/pods"
LEASES_URL = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"
MERGE = {"Content-Type": "application/merge-patch+json"}


async def call(http, method: str, url: str, body=None, headers=None):
    data = None if body is None else json.dumps(body)
    async with http.request(
        method, url, data=data, headers=headers or {"Content-Type": "application/json"}
    ) as r:
        text = await r.read()
        return r.status, (orjson.loads(text) if text.strip() else None)


async def watch_lines(http, url: str, *, stop_after: int | None = None, actions=None) -> list[dict]:
    """Open a watch, optionally run ``actions`` once it is established, collect its events."""
    events: list[dict] = []
    async with http.get(url) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
        if actions is not None:
            await asyncio.sleep(0.05)
            await actions()
        async for line in resp.content:
            events.append(orjson.loads(line))
            if stop_after is not None and len(events) >= stop_after:
                break
    return events


async def test_error_statuses_are_exact(http):
    status, body = await call(http, "GET", f"{PODS_URL}/missing")
    assert (status, body) == (
        404,
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": 'pods "missing" not found',
            "reason": "NotFound",
            "details": {"name": "missing", "kind": "pods"},
            "code": 404,
        },
    )
    status, body = await call(http, "GET", f"{LEASES_URL}/x")
    assert body["message"] == 'leases.coordination.k8s.io "x" not found'
    assert body["details"] == {"name": "x", "group": "coordination.k8s.io", "kind": "leases"}
    status, body = await call(http, "POST", "/api/v1/namespaces/nope/pods", POD)
    assert (status, body["message"]) == (404, 'namespaces "nope" not found')
    assert (await call(http, "POST", PODS_URL, POD))[0] == 201
    status, body = await call(http, "POST", PODS_URL, POD)
    assert (status, body["reason"], body["message"]) == (409, "AlreadyExists", 'pods "p" already exists')
    status, body = await call(http, "POST", PODS_URL, {"metadata": {"name": "Bad_Name"}, "spec": POD["spec"]})
    assert status == 422 and body["message"].startswith(
        'Pod "Bad_Name" is invalid: metadata.name: Invalid value'
    )
    status, body = await call(http, "POST", PODS_URL, {"metadata": {"name": "q", "namespace": "other"}})
    assert status == 400 and "does not match the namespace" in body["message"]
    status, body = await call(http, "GET", f"{PODS_URL}?fieldSelector=spec.bogus%3Dx")
    assert (status, body["message"]) == (400, "field label not supported: spec.bogus")
    status, body = await call(http, "GET", f"{LEASES_URL}?fieldSelector=spec.holderIdentity%3Dx")
    assert (
        body["message"] == '"spec.holderIdentity" is not a known field selector: only "metadata.name", '
        '"metadata.namespace"'
    )
    status, body = await call(
        http, "GET", "/apis/resource.k8s.io/v1/resourceslices?fieldSelector=spec.pool%3Dx"
    )
    assert (
        body["message"] == "field label not supported for resource.k8s.io/v1, Kind=ResourceSlice: spec.pool"
    )
    status, body = await call(http, "GET", f"{PODS_URL}?labelSelector=app%20in%20(a")
    assert status == 400 and body["reason"] == "BadRequest"
    status, body = await call(
        http, "PATCH", f"{PODS_URL}/p", {}, {"Content-Type": "application/apply-patch+cbor"}
    )
    assert status == 415 and body["reason"] == "UnsupportedMediaType"
    status, body = await call(
        http, "POST", PODS_URL, POD, {"Content-Type": "application/vnd.kubernetes.protobuf"}
    )
    assert status == 415


async def test_generate_name_defaults_and_optimistic_concurrency(http):
    status, pod = await call(
        http, "POST", PODS_URL, {"metadata": {"generateName": "web-"}, "spec": POD["spec"]}
    )
    assert status == 201 and re.fullmatch(r"web-[bcdfghjklmnpqrstvwxz2456789]{5}", pod["metadata"]["name"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", pod["metadata"]["creationTimestamp"])
    assert (
        pod["status"] == {"phase": "Pending", "qosClass": "BestEffort"} and pod["metadata"]["generation"] == 1
    )
    url = f"{PODS_URL}/{pod['metadata']['name']}"
    pod["metadata"]["labels"] = {"v": "1"}
    status, updated = await call(http, "PUT", url, pod)  # pod carries the current RV
    assert status == 200 and int(updated["metadata"]["resourceVersion"]) > int(
        pod["metadata"]["resourceVersion"]
    )
    status, body = await call(http, "PUT", url, pod)  # now stale
    assert status == 409 and body["message"] == (
        f'Operation cannot be fulfilled on pods "{pod["metadata"]["name"]}": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    status, again = await call(http, "PUT", url, updated)  # no-op: same RV, no event
    assert status == 200 and again["metadata"]["resourceVersion"] == updated["metadata"]["resourceVersion"]
    lease = {"metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}}
    assert (await call(http, "PUT", f"{LEASES_URL}/l", lease))[0] == 201  # leases are created by PUT
    status, body = await call(http, "PUT", f"{LEASES_URL}/l", lease)
    assert status == 422 and body["message"] == (
        'leases.coordination.k8s.io "l" is invalid: metadata.resourceVersion: Invalid value: 0: must be '
        "specified for an update"
    )


async def test_status_subresource_split(http):
    await call(http, "POST", PODS_URL, POD)
    status, pod = await call(http, "GET", f"{PODS_URL}/p")
    pod["status"]["phase"] = "Running"
    pod["metadata"]["labels"]["via"] = "main"
    status, main = await call(http, "PUT", f"{PODS_URL}/p", pod)
    assert status == 200
    assert main["status"]["phase"] == "Pending" and main["metadata"]["labels"]["via"] == "main"
    main["status"]["phase"] = "Running"
    main["spec"]["containers"][0]["image"] = "changed:1"
    _status, via_status = await call(http, "PUT", f"{PODS_URL}/p/status", main)
    assert (
        via_status["status"]["phase"] == "Running"
        and via_status["spec"]["containers"][0]["image"] == "busybox:1.36"
    )
    _, patched = await call(http, "PATCH", f"{PODS_URL}/p/status", {"status": {"podIP": "10.0.0.9"}}, MERGE)
    assert patched["status"]["podIP"] == "10.0.0.9" and patched["status"]["phase"] == "Running"


async def test_graceful_pod_deletion_and_finalizers(http, apiserver):
    await call(http, "POST", PODS_URL, POD)
    binding = {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": "p"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"},
    }
    status, body = await call(http, "POST", f"{PODS_URL}/p/binding", binding)
    assert (status, body["code"]) == (201, 201)
    status, pending = await call(http, "DELETE", f"{PODS_URL}/p")
    assert status == 200 and pending["metadata"]["deletionGracePeriodSeconds"] == 30
    assert apiserver.store.try_get(PODS, "default", "p") is not None
    status, body = await call(http, "POST", f"{PODS_URL}/p/binding", binding)
    assert status == 409 and body["message"].endswith("pod p is being deleted, cannot be assigned to a host")
    status, _ = await call(
        http,
        "DELETE",
        f"{PODS_URL}/p",
        {"gracePeriodSeconds": 0, "preconditions": {"uid": pending["metadata"]["uid"]}},
    )
    assert status == 200 and apiserver.store.try_get(PODS, "default", "p") is None
    status, body = await call(http, "DELETE", f"{PODS_URL}/p")
    assert status == 404
    # Non-pod kinds answer a removal with a Success Status.
    await call(http, "PUT", f"{LEASES_URL}/l", {"metadata": {"name": "l"}, "spec": {}})
    status, body = await call(http, "DELETE", f"{LEASES_URL}/l")
    assert status == 200 and body["status"] == "Success"
    assert body["details"]["group"] == "coordination.k8s.io" and body["details"]["kind"] == "leases"


async def test_watch_transitions_timeout_and_paths(http, apiserver):
    await call(http, "POST", PODS_URL, POD)
    rv = apiserver.store.resource_version

    async def actions():
        await call(
            http, "PATCH", f"{PODS_URL}/p", {"metadata": {"labels": {"app": "b"}}}, MERGE
        )  # leaves app=a
        await call(
            http, "PATCH", f"{PODS_URL}/p", {"metadata": {"labels": {"app": "a"}}}, MERGE
        )  # comes back
        await call(http, "DELETE", f"{PODS_URL}/p")

    events = await watch_lines(
        http,
        f"{PODS_URL}?watch=True&labelSelector=app%3Da&resourceVersion={rv}&timeoutSeconds=1",
        actions=actions,
    )
    assert [e["type"] for e in events] == ["DELETED", "ADDED", "DELETED"]
    assert events[0]["object"]["metadata"]["labels"] == {"app": "a"}  # the last matching state...
    assert int(events[0]["object"]["metadata"]["resourceVersion"]) == rv + 1  # ...stamped with the new RV
    assert all(e["object"]["kind"] == "Pod" for e in events)
    # Deprecated /watch/ path, and an RV older than the history is an ERROR event inside a 200 stream.
    apiserver.store.compact()
    events = await watch_lines(http, f"/api/v1/watch/namespaces/default/pods?resourceVersion={rv}")
    assert events == [
        {
            "type": "ERROR",
            "object": {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"too old resource version: {rv} ({apiserver.store.resource_version + 1})",
                "reason": "Expired",
                "code": 410,
            },
        }
    ]


async def test_send_initial_events_protocol(http, apiserver):
    await call(http, "POST", PODS_URL, POD)
    status, body = await call(http, "GET", f"{PODS_URL}?watch=1&sendInitialEvents=true")
    assert status == 422 and "resourceVersionMatch" in body["message"]
    url = (
        f"{PODS_URL}?watch=1&sendInitialEvents=true&allowWatchBookmarks=true"
        f"&resourceVersionMatch=NotOlderThan&timeoutSeconds=1"
    )
    events = await watch_lines(http, url, stop_after=2)
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"]["metadata"] == {
        "resourceVersion": str(apiserver.store.resource_version),
        "annotations": {"k8s.io/initial-events-end": "true"},
    }
    future = apiserver.store.resource_version + 100
    events = await watch_lines(http, url + f"&resourceVersion={future}")
    assert events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 504
    assert events[0]["object"]["message"].startswith(f"Timeout: Too large resource version: {future}")


async def test_pagination_is_a_consistent_snapshot(http, apiserver):
    for i in range(5):
        await call(http, "POST", PODS_URL, {**POD, "metadata": {"name": f"p{i}"}})
    status, first = await call(http, "GET", f"{PODS_URL}?limit=2")
    assert [p["metadata"]["name"] for p in first["items"]] == ["p0", "p1"]
    assert first["metadata"]["remainingItemCount"] == 3 and first["kind"] == "PodList"
    await call(http, "DELETE", f"{PODS_URL}/p3")  # after the first page: must not show in later pages
    await call(http, "POST", PODS_URL, {**POD, "metadata": {"name": "p9"}})
    names, token = [], first["metadata"]["continue"]
    while token:
        status, page = await call(http, "GET", f"{PODS_URL}?limit=2&continue={token}")
        names += [p["metadata"]["name"] for p in page["items"]]
        token = page["metadata"].get("continue")
        assert page["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert names == ["p2", "p3", "p4"]
    status, body = await call(
        http, "GET", f"{PODS_URL}?limit=2&continue={first['metadata']['continue']}&resourceVersion=5"
    )
    assert (status, body["message"]) == (
        400,
        "specifying resource version is not allowed when using continue",
    )
    apiserver.store.compact()
    status, body = await call(http, "GET", f"{PODS_URL}?limit=2&continue={first['metadata']['continue']}")
    assert status == 410 and body["message"].startswith("The provided continue parameter is too old")
    status, body = await call(http, "GET", "/api/v1/pods?fieldSelector=metadata.name%3Dp9")
    assert [p["metadata"]["name"] for p in body["items"]] == ["p9"]


async def test_table_output(http):
    await call(http, "POST", PODS_URL, POD)
    accept = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}
    async with http.get(f"{PODS_URL}?includeObject=Object", headers=accept) as resp:
        table = await resp.json(content_type=None)
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert [c["name"] for c in table["columnDefinitions"]][:5] == [
        "Name",
        "Ready",
        "Status",
        "Restarts",
        "Age",
    ]
    assert table["rows"][0]["cells"][:4] == ["p", "0/1", "Pending", 0]
    assert table["rows"][0]["object"]["kind"] == "Pod"
    async with http.get(f"{PODS_URL}/p", headers=accept) as resp:
        one = await resp.json(content_type=None)
    assert one["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


async def test_events_share_storage_across_api_groups(http):
    body = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "e1"},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "hami-scheduler",
        "reportingInstance": "x",
        "action": "Scheduling",
        "reason": "FailedScheduling",
        "type": "Warning",
        "note": "no GPU left",
        "regarding": {"kind": "Pod", "name": "p", "namespace": "default"},
    }
    status, created = await call(http, "POST", "/apis/events.k8s.io/v1/namespaces/default/events", body)
    assert status == 201 and created["note"] == "no GPU left" and created["apiVersion"] == "events.k8s.io/v1"
    status, listed = await call(
        http,
        "GET",
        "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dp,reason%3DFailedScheduling",
    )
    [core_event] = listed["items"]
    assert core_event["message"] == "no GPU left" and core_event["reportingComponent"] == "hami-scheduler"


async def test_discovery_version_and_probes(http):
    status, api = await call(http, "GET", "/api")
    assert api["versions"] == ["v1"]
    status, groups = await call(http, "GET", "/apis")
    names = {g["name"] for g in groups["groups"]}
    assert {
        "coordination.k8s.io",
        "resource.k8s.io",
        "events.k8s.io",
        "admissionregistration.k8s.io",
    } <= names
    status, core = await call(http, "GET", "/api/v1")
    assert status == 200
    by_name = {r["name"]: r for r in core["resources"]}
    assert by_name["pods"]["shortNames"] == ["po"] and by_name["pods/binding"]["kind"] == "Binding"
    _status, dra = await call(http, "GET", "/apis/resource.k8s.io/v1")
    assert {r["name"] for r in dra["resources"]} >= {
        "deviceclasses",
        "resourceclaims",
        "resourceclaims/status",
        "resourceclaimtemplates",
        "resourceslices",
    }
    _, version = await call(http, "GET", "/version")
    assert (version["major"], version["minor"]) == ("1", "35")
    async with http.get("/readyz") as resp:
        assert resp.status == 200 and await resp.text() == "ok"


async def test_fault_injection(http, apiserver):
    apiserver.faults.add(
        FaultRule(path_prefix=PODS_URL, methods=frozenset({"GET"}), status=429, retry_after_s=2)
    )
    async with http.get(PODS_URL) as resp:
        assert resp.status == 429 and resp.headers["Retry-After"] == "2"
        assert (await resp.json())["reason"] == "TooManyRequests"
    assert (await call(http, "GET", PODS_URL))[0] == 200  # times=1: only the first request


async def test_namespace_deletion_and_secret_string_data(http, apiserver):
    await call(http, "POST", "/api/v1/namespaces", {"metadata": {"name": "team"}})
    await call(http, "POST", "/api/v1/namespaces/team/pods", POD)
    status, secret = await call(
        http, "POST", "/api/v1/namespaces/team/secrets", {"metadata": {"name": "s"}, "stringData": {"k": "v"}}
    )
    assert secret["data"] == {"k": "dg=="} and secret["type"] == "Opaque" and "stringData" not in secret
    status, _ = await call(http, "DELETE", "/api/v1/namespaces/team")
    assert status == 200
    assert apiserver.store.objects(PODS, "team") == []
    status, _ = await call(http, "GET", "/api/v1/namespaces/team/secrets/s")
    assert status == 404


async def test_resource_claim_status_and_slices(http):
    claim = {
        "metadata": {"name": "gpu"},
        "spec": {
            "devices": {
                "requests": [{"name": "gpu", "exactly": {"deviceClassName": "hami-core-gpu.project-hami.io"}}]
            }
        },
    }
    url = "/apis/resource.k8s.io/v1/namespaces/default/resourceclaims"
    status, created = await call(http, "POST", url, claim)
    assert status == 201 and created["metadata"]["generation"] == 1
    allocation = {"status": {"reservedFor": [{"resource": "pods", "name": "p", "uid": "u1"}]}}
    status, patched = await call(
        http,
        "PATCH",
        f"{url}/gpu/status",
        allocation,
        {"Content-Type": "application/strategic-merge-patch+json"},
    )
    assert patched["status"]["reservedFor"][0]["uid"] == "u1" and patched["metadata"]["generation"] == 1
    slices = "/apis/resource.k8s.io/v1/resourceslices"
    for node in ("a", "b"):
        await call(
            http,
            "POST",
            slices,
            {
                "metadata": {"generateName": f"{node}-gpu-"},
                "spec": {
                    "driver": "gpu.hami.io",
                    "nodeName": node,
                    "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                },
            },
        )
    status, listed = await call(
        http, "GET", f"{slices}?fieldSelector=spec.nodeName%3Db,spec.driver%3Dgpu.hami.io"
    )
    assert [s["spec"]["nodeName"] for s in listed["items"]] == ["b"]
