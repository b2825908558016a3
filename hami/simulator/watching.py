"""The watch stream: JSON lines of ``{"type","object"}`` over a chunked 200 response (k8s-apis.md §6.5).

Initial events (RV unset/"0" or ``sendInitialEvents``) end with a ``k8s.io/initial-events-end``
bookmark when bookmarks are allowed; periodic bookmarks carry the store RV when the watcher's queue
is empty (so every earlier event has been written); ``timeoutSeconds`` ends the stream cleanly; an
error after the stream started (too old RV, too large RV) is one ``ERROR`` event carrying a Status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiohttp import web

from hami.simulator.resources import ResourceType
from hami.simulator.selectors import FieldSelector, LabelSelector
from hami.simulator.statuses import StatusError, too_large_resource_version
from hami.simulator.store import Store
from hami.simulator.watchers import Watcher, WatchItem

JsonObj = dict[str, Any]
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


class WatchHooks(Protocol):
    """Fault injection around watch streams (:class:`hami.simulator.chaos.ApiChaos`)."""

    def admit_watch(self, rt: ResourceType, resource_version: str) -> None:
        """May raise a StatusError (sent as the stream's ERROR event)."""

    def watch_opened(self, watcher: Watcher) -> None: ...

    def watch_closed(self, watcher: Watcher) -> None: ...

    def watch_aborted(self, watcher: Watcher) -> bool:
        """Whether the stream must end by closing the connection instead of a clean end."""

    async def deliver(self, watcher: Watcher, items: list[WatchItem]) -> list[WatchItem]:
        """The batch to write instead of ``items`` (may wait, add what arrived meanwhile, reorder)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchRequest:
    rt: ResourceType
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector
    resource_version: str
    send_initial_events: bool | None
    allow_bookmarks: bool
    timeout_s: float
    bookmark_interval_s: float
    too_large_rv_wait_s: float
    queue_limit: int
    view: Callable[[JsonObj], JsonObj] | None = None
    """Converts a stored object to what this client asked for (API version, Table); None = as stored."""
    hooks: WatchHooks | None = None


def _bookmark(rt: ResourceType, rv: int, *, initial_end: bool = False) -> JsonObj:
    meta: JsonObj = {"resourceVersion": str(rv)}
    if initial_end:
        meta["annotations"] = {INITIAL_EVENTS_END: "true"}
    return {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}


def _encode(item: WatchItem, view: Callable[[JsonObj], JsonObj] | None) -> bytes:
    if view is None:
        if item.encoded is None:
            item.encoded = orjson.dumps({"type": item.type, "object": item.obj}) + b"\n"
        return item.encoded
    obj = item.obj if item.type in ("BOOKMARK", "ERROR") else view(item.obj)
    return orjson.dumps({"type": item.type, "object": obj}) + b"\n"


async def _open(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        status=200, headers={"Content-Type": "application/json", "Cache-Control": "no-cache"}
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    return response


async def serve_watch(request: web.Request, store: Store, watch: WatchRequest) -> web.StreamResponse:
    rt = watch.rt
    if watch.send_initial_events and watch.resource_version not in ("", "0"):
        wanted = int(watch.resource_version)
        if wanted > store.resource_version and not await store.wait_for_rv(wanted, watch.too_large_rv_wait_s):
            response = await _open(request)
            error = too_large_resource_version(wanted, store.resource_version).to_status()
            await response.write(orjson.dumps({"type": "ERROR", "object": error}) + b"\n")
            await response.write_eof()
            return response
    try:
        if watch.hooks is not None:
            watch.hooks.admit_watch(rt, watch.resource_version)
        watcher, initial = store.watch(
            rt,
            watch.namespace,
            labels=watch.labels,
            fields=watch.fields,
            resource_version=watch.resource_version,
            send_initial_events=watch.send_initial_events,
            queue_limit=watch.queue_limit,
        )
    except StatusError as e:
        response = await _open(request)
        await response.write(orjson.dumps({"type": "ERROR", "object": e.to_status()}) + b"\n")
        await response.write_eof()
        return response
    if initial and watch.allow_bookmarks:
        # Synchronously after the backlog: nothing can interleave, so this RV covers the initial state.
        watcher.items.append(WatchItem("BOOKMARK", _bookmark(rt, store.resource_version, initial_end=True)))
        watcher.wakeup.set()
    if watch.hooks is not None:
        watch.hooks.watch_opened(watcher)
    aborted = False
    try:
        response = await _open(request)
        await _pump(response, store, watcher, watch)
        aborted = watch.hooks is not None and watch.hooks.watch_aborted(watcher)
        if not aborted:
            await response.write_eof()
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        store.stop_watch(watcher)
        if watch.hooks is not None:
            watch.hooks.watch_closed(watcher)
    if aborted and request.transport is not None:
        request.transport.close()  # mid-stream: the client sees a broken chunked transfer
    return response


async def _pump(response: web.StreamResponse, store: Store, watcher: Watcher, watch: WatchRequest) -> None:
    start = time.monotonic()
    deadline = start + watch.timeout_s
    next_bookmark = start + watch.bookmark_interval_s
    while True:
        items = watcher.take()
        if items and watch.hooks is not None:
            items = await watch.hooks.deliver(watcher, items)
        if items:
            await response.write(b"".join(_encode(item, watch.view) for item in items))
        if watcher.closed is not None:
            return
        now = time.monotonic()
        if watch.allow_bookmarks and now >= next_bookmark and not watcher.items:
            await response.write(
                _encode(WatchItem("BOOKMARK", _bookmark(watch.rt, store.resource_version)), None)
            )
            next_bookmark = now + watch.bookmark_interval_s
        if now >= deadline:
            if watch.allow_bookmarks and not watcher.items:
                bookmark = WatchItem("BOOKMARK", _bookmark(watch.rt, store.resource_version))
                await response.write(_encode(bookmark, None))
            return
        wait = min(deadline, next_bookmark if watch.allow_bookmarks else deadline) - now
        if watcher.items:
            continue
        try:
            await asyncio.wait_for(watcher.wakeup.wait(), timeout=max(wait, 0.0))
        except TimeoutError:
            pass
