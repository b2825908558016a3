"""The Reflector: keep a consumer equal to the server with list → watch(RV).

Contract (style guide §1.1-§1.2; client-go ``reflector.go``, kopf ``watching.py``):

* List first (``resourceVersion=0`` by default: may be served from the watch cache), then
  yield ``Listed(objects, rv)``, the full state, so the consumer can *replace* its store
  and synthesise deletes for keys that vanished while we were away.
* Watch from the list's RV with ``allowWatchBookmarks=true`` and a random
  ``timeoutSeconds`` in [min, max] so that many watchers do not reconnect in lockstep.
  Every event and bookmark advances the RV; a watch the server closes is resumed from it
  at once, without a re-list.
* No event (not even a bookmark) for ``inactivity_timeout`` (70 s: servers bookmark about
  every minute): the connection is presumed dead and the watch is resumed from the RV.
* ``410 Gone``/``Expired`` (as an HTTP reply or an ``ERROR`` event): the RV fell out of the
  server's history; re-list with ``resourceVersion=""`` (a consistent read), then watch.
* ``429`` and "connection refused": re-watch from the RV after a backoff, no re-list
  (client-go ``isWatchErrorRetriable``). A dropped stream or a watch that ends at once
  with no event: re-watch after a backoff. Any other error: re-list from the last RV
  after a backoff.
* Backoff is jittered exponential, 800 ms → 30 s, reset after 2 min without failures
  (``WatchingSettings.backoff``).

Test seams are constructor parameters (``sleep``, ``rng``, ``clock``), never monkeypatching.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Literal

from hami.config.settings import WatchingSettings
from hami.k8s.api import KubeApi
from hami.k8s.errors import (
    ApiConnectionError,
    ApiError,
    ApiGone,
    ApiTooManyRequests,
    ApiTransportError,
    error_from_status,
)
from hami.k8s.objects import RawObject, Resource, resource_version
from hami.runtime.backoff import Backoff
from hami.runtime.clock import Clock, LoopClock

_logger = logging.getLogger(__name__)

ChangeType = Literal["ADDED", "MODIFIED", "DELETED"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Listed:
    """The complete state after a (re)list: replace, don't merge."""

    objects: tuple[RawObject, ...]
    resource_version: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    type: ChangeType
    object: RawObject
    resource_version: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Bookmark:
    """The server's progress marker: nothing changed up to this RV."""

    resource_version: str


ReflectorEvent = Listed | Change | Bookmark


@dataclass(slots=True)
class ReflectorStats:
    """Counters for metrics and tests (mutated only by the reflector)."""

    lists: int = 0
    watches: int = 0
    events: int = 0
    bookmarks: int = 0
    expired: int = 0
    inactivity_timeouts: int = 0
    errors: int = 0


class _Inactive(Exception):
    pass


class _ShortWatch(Exception):
    pass


class Reflector:
    """One resource (optionally one namespace / selector) from one apiserver."""

    def __init__(
        self,
        api: KubeApi,
        resource: Resource,
        *,
        settings: WatchingSettings | None = None,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        logger: logging.Logger | None = None,
    ) -> None:
        self._api = api
        self.resource = resource
        self.settings = settings or WatchingSettings()
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.name = name or f"reflector {resource.qualified}" + (f" in {namespace}" if namespace else "")
        self._clock = clock or LoopClock()
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._log = logger or _logger
        self._rv = ""
        self.stats = ReflectorStats()

    @property
    def last_resource_version(self) -> str:
        """The newest RV seen (list, event or bookmark); "" before the first list."""
        return self._rv

    async def events(self) -> AsyncGenerator[ReflectorEvent, None]:
        """Yield ``Listed``/``Change``/``Bookmark`` forever (until cancelled or closed)."""
        backoff = Backoff(self.settings.backoff, clock=self._clock, rng=self._rng)
        list_rv = self.settings.initial_list_resource_version
        need_list = True
        while True:
            if need_list:
                try:
                    listed = await self._list(list_rv)
                except ApiGone as exc:
                    self.stats.expired += 1
                    self._log.warning(
                        "%s: list at RV %r expired (%s); re-listing consistently", self.name, list_rv, exc
                    )
                    list_rv = ""
                    await self._sleep(backoff.next_delay())
                    continue
                except ApiError as exc:
                    self.stats.errors += 1
                    delay = backoff.next_delay()
                    self._log.warning("%s: list failed (%s); retrying in %.2fs", self.name, exc, delay)
                    await self._sleep(delay)
                    continue
                need_list = False
                yield listed
            try:
                async with aclosing(self._watch_once()) as stream:
                    async for event in stream:
                        yield event
            except ApiGone as exc:
                self.stats.expired += 1
                self._log.warning("%s: RV %s expired (%s); re-listing", self.name, self._rv, exc.message)
                list_rv = ""
                need_list = True
                await self._sleep(backoff.next_delay())
            except _Inactive:
                self.stats.inactivity_timeouts += 1
                self._log.warning(
                    "%s: nothing received for %.1fs; re-watching from RV %s",
                    self.name,
                    self.settings.inactivity_timeout,
                    self._rv,
                )
            except _ShortWatch:
                delay = backoff.next_delay()
                self._log.debug(
                    "%s: watch ended at once without events; re-watching in %.2fs", self.name, delay
                )
                await self._sleep(delay)
            except (ApiTooManyRequests, ApiConnectionError, ApiTransportError) as exc:
                # Throttled, unreachable, or the stream broke: our RV is still good.
                self.stats.errors += 1
                delay = backoff.next_delay()
                if isinstance(exc, ApiTooManyRequests) and exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                self._log.warning(
                    "%s: watch failed (%s); re-watching from RV %s in %.2fs", self.name, exc, self._rv, delay
                )
                await self._sleep(delay)
            except ApiError as exc:
                self.stats.errors += 1
                delay = backoff.next_delay()
                self._log.warning("%s: watch failed (%s); re-listing in %.2fs", self.name, exc, delay)
                list_rv = self._rv
                need_list = True
                await self._sleep(delay)

    async def _list(self, list_rv: str) -> Listed:
        page_size = self.settings.page_size if list_rv != "0" else 0
        result = await self._api.list_all(
            self.resource,
            namespace=self.namespace,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            resource_version=list_rv or None,
            page_size=page_size or None,
        )
        self.stats.lists += 1
        rv = result["metadata"].get("resourceVersion", "")
        if rv:
            self._rv = rv
        self._log.debug("%s: listed %d objects at RV %s", self.name, len(result["items"]), rv)
        return Listed(objects=tuple(result["items"]), resource_version=rv)

    async def _watch_once(self) -> AsyncGenerator[Change | Bookmark, None]:
        timeout = int(self._rng.uniform(self.settings.min_timeout, self.settings.max_timeout))
        self.stats.watches += 1
        started = self._clock.monotonic()
        received = 0
        stream = self._api.watch(
            self.resource,
            namespace=self.namespace,
            resource_version=self._rv or None,
            timeout_seconds=max(1, timeout),
            allow_bookmarks=True,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
        )
        try:
            while True:
                try:
                    async with asyncio.timeout(self.settings.inactivity_timeout):
                        raw = await anext(stream)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise _Inactive() from None
                received += 1
                kind = raw["type"]
                obj = raw["object"]
                if kind == "ERROR":
                    # checked: the ERROR event's object is a Status (k8s-apis.md §6.5)
                    raise error_from_status(obj, method="WATCH", path=self.resource.qualified)  # type: ignore[arg-type]
                rv = resource_version(obj)
                if kind == "BOOKMARK":
                    if rv:
                        self._rv = rv
                        self.stats.bookmarks += 1
                        yield Bookmark(resource_version=rv)
                    continue
                if rv:
                    self._rv = rv
                self.stats.events += 1
                yield Change(type=kind, object=obj, resource_version=rv)
        finally:
            await stream.aclose()
        if received == 0 and self._clock.monotonic() - started < min(1.0, self.settings.inactivity_timeout):
            raise _ShortWatch()
