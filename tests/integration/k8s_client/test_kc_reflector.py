"""Reflector contract against a scripted apiserver: exact fault cases (style guide §1.2)."""

from __future__ import annotations

import asyncio
import random
from contextlib import aclosing

import pytest
from k8s_scripted_apiserver import (
    Drop,
    Event,
    Hang,
    Pause,
    Raw,
    RecordingSleep,
    Reply,
    Watch,
    bookmark,
    eventually,
    expired,
    obj,
    pod_list,
    scripted_apiserver,
    status,
)

from hami.cache.informer import Delta, Informer
from hami.config.settings import BackoffSettings, NetworkingSettings, WatchingSettings
from hami.k8s.auth import Credentials
from hami.k8s.client import HttpKubeApi
from hami.k8s.objects import PODS
from hami.k8s.watch import Bookmark, Change, Listed, Reflector

PODS_PATH = "/api/v1/namespaces/ns/pods"
FAST = WatchingSettings(
    min_timeout=5,
    max_timeout=10,
    inactivity_timeout=0.3,
    backoff=BackoffSettings(initial=0.01, maximum=0.08, factor=2.0, jitter=0.0),
)
NO_RETRIES = NetworkingSettings(max_retries=0, request_timeout=2.0, connect_timeout=1.0)


async def take(reflector: Reflector, n: int, limit: float = 5.0) -> list:
    out: list = []
    async with aclosing(reflector.events()) as events, asyncio.timeout(limit):
        async for event in events:
            out.append(event)
            if len(out) == n:
                break
    return out


@pytest.fixture
async def server():
    async with scripted_apiserver() as srv:
        yield srv


@pytest.fixture
async def api(server):
    async with HttpKubeApi(Credentials.anonymous(server.url), NO_RETRIES) as client:
        yield client


def reflector(api, sleep=None, settings=FAST) -> Reflector:
    return Reflector(
        api, PODS, namespace="ns", settings=settings, rng=random.Random(1), sleep=sleep or RecordingSleep()
    )


async def test_list_then_watch_from_the_list_rv(server, api):
    server.on("GET", PODS_PATH, pod_list("10", obj("a", "9"), obj("b", "10")))
    server.on(
        "WATCH", PODS_PATH, Watch([Event("ADDED", obj("c", "11")), Event("MODIFIED", obj("a", "12")), Hang()])
    )
    r = reflector(api)
    events = await take(r, 3)
    assert isinstance(events[0], Listed)
    assert [o["metadata"]["name"] for o in events[0].objects] == ["a", "b"]
    assert events[0].resource_version == "10"
    assert [(e.type, e.resource_version) for e in events[1:]] == [("ADDED", "11"), ("MODIFIED", "12")]
    assert r.last_resource_version == "12"
    (lst,) = server.calls("GET", PODS_PATH)
    assert lst.query["resourceVersion"] == "0"  # first list may come from the watch cache
    assert "limit" not in lst.query  # ignored by the server with RV 0 anyway
    (w,) = server.calls("WATCH", PODS_PATH)
    assert w.query["resourceVersion"] == "10"
    assert w.query["allowWatchBookmarks"] == "true"
    assert 5 <= int(w.query["timeoutSeconds"]) <= 10


async def test_bookmarks_advance_the_rv_and_a_closed_watch_resumes_without_relist(server, api):
    server.on("GET", PODS_PATH, pod_list("10"))
    server.on(
        "WATCH",
        PODS_PATH,
        Watch([bookmark("20"), Pause(0.05)]),  # then the server ends the stream (timeoutSeconds)
        Watch([Event("ADDED", obj("x", "21")), Hang()]),
    )
    r = reflector(api)
    events = await take(r, 3)
    assert isinstance(events[1], Bookmark) and events[1].resource_version == "20"
    assert isinstance(events[2], Change) and events[2].resource_version == "21"
    watches = server.calls("WATCH", PODS_PATH)
    assert [w.query["resourceVersion"] for w in watches] == ["10", "20"]
    assert len(server.calls("GET", PODS_PATH)) == 1
    assert r.stats.bookmarks == 1


async def test_410_mid_watch_relists_with_a_consistent_read(server, api):
    server.on("GET", PODS_PATH, pod_list("10", obj("a", "10")), pod_list("50", obj("b", "49")))
    server.on("WATCH", PODS_PATH, Watch([Event("ADDED", obj("c", "11")), expired("11")]), Watch([Hang()]))
    sleep = RecordingSleep()
    r = reflector(api, sleep)
    events = await take(r, 3)
    assert [type(e).__name__ for e in events] == ["Listed", "Change", "Listed"]
    assert events[2].resource_version == "50"
    lists = server.calls("GET", PODS_PATH)
    assert [q.query.get("resourceVersion") for q in lists] == ["0", None]  # "" = quorum read
    assert lists[1].query["limit"] == "500"  # consistent relists are paginated
    assert r.stats.expired == 1
    assert sleep.delays == [0.01]


async def test_410_as_an_http_reply_also_relists(server, api):
    server.on("GET", PODS_PATH, pod_list("10"), pod_list("60"))
    server.on("WATCH", PODS_PATH, Reply(410, status(410, "Gone", "gone")))
    events = await take(reflector(api), 2)
    assert [e.resource_version for e in events] == ["10", "60"]


async def test_a_dropped_stream_rewatches_from_the_last_rv(server, api):
    server.on("GET", PODS_PATH, pod_list("10"))
    server.on("WATCH", PODS_PATH, Watch([Event("ADDED", obj("a", "11")), Pause(0.05), Drop()]))
    server.on("WATCH", PODS_PATH, Watch([Event("ADDED", obj("b", "12")), Hang()]))
    sleep = RecordingSleep()
    r = reflector(api, sleep)
    events = await take(r, 3)
    assert [e.resource_version for e in events] == ["10", "11", "12"]
    assert [w.query["resourceVersion"] for w in server.calls("WATCH", PODS_PATH)] == ["10", "11"]
    assert len(server.calls("GET", PODS_PATH)) == 1
    assert len(sleep.delays) == 1


async def test_inactivity_timeout_rewatches_without_relist(server, api):
    server.on("GET", PODS_PATH, pod_list("10"))
    server.on("WATCH", PODS_PATH, Watch([Event("ADDED", obj("a", "11")), Hang()]))
    server.on("WATCH", PODS_PATH, Watch([Event("ADDED", obj("b", "12")), Hang()]))
    r = reflector(api)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    events = await take(r, 3)
    elapsed = loop.time() - t0
    assert [e.resource_version for e in events] == ["10", "11", "12"]
    assert 0.3 <= elapsed < 2.0
    assert r.stats.inactivity_timeouts == 1
    assert [w.query["resourceVersion"] for w in server.calls("WATCH", PODS_PATH)] == ["10", "11"]


async def test_429_rewatches_without_relist_honouring_retry_after(server, api):
    server.on("GET", PODS_PATH, pod_list("10"))
    server.on("WATCH", PODS_PATH, Reply(429, status(429, "TooManyRequests"), headers={"Retry-After": "2"}))
    server.on("WATCH", PODS_PATH, Watch([Event("ADDED", obj("a", "11")), Hang()]))
    sleep = RecordingSleep()
    events = await take(reflector(api, sleep), 2)
    assert events[1].resource_version == "11"
    assert sleep.delays == [2.0]
    assert len(server.calls("GET", PODS_PATH)) == 1


async def test_other_watch_errors_relist_from_the_last_rv(server, api):
    server.on("GET", PODS_PATH, pod_list("10"), pod_list("15", obj("a", "15")))
    server.on(
        "WATCH",
        PODS_PATH,
        Watch([Event("ADDED", obj("a", "12")), Event("ERROR", status(500, "InternalError", "etcd"))]),
    )
    sleep = RecordingSleep()
    events = await take(reflector(api, sleep), 3)
    assert [type(e).__name__ for e in events] == ["Listed", "Change", "Listed"]
    lists = server.calls("GET", PODS_PATH)
    assert lists[1].query["resourceVersion"] == "12"
    assert len(sleep.delays) == 1


async def test_list_failures_back_off_exponentially(server, api):
    server.on("GET", PODS_PATH, *[Reply(500, status(500, "InternalError"))] * 4, pod_list("10"))
    sleep = RecordingSleep()
    events = await take(reflector(api, sleep), 1)
    assert events[0].resource_version == "10"
    assert sleep.delays == [0.01, 0.02, 0.04, 0.08]


async def test_a_stream_that_ends_at_once_backs_off_before_rewatching(server, api):
    server.on("GET", PODS_PATH, pod_list("10"))
    server.on("WATCH", PODS_PATH, Watch([]), Watch([]), Watch([Event("ADDED", obj("a", "11")), Hang()]))
    sleep = RecordingSleep()
    events = await take(reflector(api, sleep), 2)
    assert events[1].resource_version == "11"
    assert sleep.delays == [0.01, 0.02]


async def test_a_garbage_line_is_a_protocol_error_and_the_watch_resumes(server, api):
    server.on("GET", PODS_PATH, pod_list("10"))
    server.on("WATCH", PODS_PATH, Watch([Event("ADDED", obj("a", "11")), Raw(b"<html>oops\n")]))
    server.on("WATCH", PODS_PATH, Watch([Event("ADDED", obj("b", "12")), Hang()]))
    events = await take(reflector(api), 3)
    assert [e.resource_version for e in events] == ["10", "11", "12"]
    assert [w.query["resourceVersion"] for w in server.calls("WATCH", PODS_PATH)] == ["10", "11"]


async def test_connection_refused_retries_the_list_with_backoff():
    # a port with nothing listening
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    async with HttpKubeApi(Credentials.anonymous(f"http://127.0.0.1:{port}"), NO_RETRIES) as client:
        sleep = RecordingSleep()
        r = reflector(client, sleep)
        async with aclosing(r.events()) as events:
            task = asyncio.ensure_future(anext(events))
            await eventually(lambda: len(sleep.delays) >= 3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert sleep.delays[:3] == [0.01, 0.02, 0.04]
        assert r.stats.errors >= 3


async def test_informer_relist_synthesises_tombstones(server, api):
    server.on(
        "GET",
        PODS_PATH,
        pod_list("10", obj("a", "5"), obj("b", "6")),
        pod_list("30", obj("b", "6"), obj("c", "29")),
    )
    server.on("WATCH", PODS_PATH, Watch([Event("MODIFIED", obj("b", "11")), expired("11")]), Watch([Hang()]))
    informer: Informer[None] = Informer(api, PODS, namespace="ns", settings=FAST, sleep=RecordingSleep())
    seen: list[Delta] = []
    informer.add_handler(seen.append)
    task = asyncio.create_task(informer.run(), name="informer")
    try:
        await asyncio.wait_for(informer.wait_synced(), 5)
        await eventually(lambda: len(seen) >= 6)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [(d.type, d.key, d.final_state_unknown) for d in seen] == [
        ("added", "ns/a", False),
        ("added", "ns/b", False),
        ("updated", "ns/b", False),
        ("deleted", "ns/a", True),  # vanished while the watch was broken
        ("updated", "ns/b", False),  # RV 11 → 6 in the consistent list
        ("added", "ns/c", False),
    ]
    assert sorted(informer.store.keys()) == ["ns/b", "ns/c"]
    assert informer.store.resource_version == "30"


async def test_an_expired_list_falls_back_to_a_consistent_list(server, api):
    settings = WatchingSettings(
        min_timeout=5,
        max_timeout=10,
        inactivity_timeout=0.3,
        initial_list_resource_version="7",  # e.g. resuming from a remembered RV
        backoff=FAST.backoff,
    )
    server.on(
        "GET",
        PODS_PATH,
        Reply(410, status(410, "Expired", "too old resource version: 7 (90)")),
        pod_list("90"),
    )
    events = await take(reflector(api, settings=settings), 1)
    assert events[0].resource_version == "90"
    assert [r.query.get("resourceVersion") for r in server.calls("GET", PODS_PATH)] == ["7", None]
