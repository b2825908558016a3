"""Fault injection for the embedded cluster, switched on and off per test (issue 11).

Two levels:

* :class:`ApiChaos` belongs to one :class:`~hami.simulator.server.ApiServer` (``srv.chaos``); the
  server consults it on every request and every watch stream:

  - ``pause()`` / ``resume()``: every request (and every open watch stream) hangs until resumed,
    as an apiserver stuck behind a dead etcd does; ``async with chaos.paused_for(): ...``;
  - ``drop_watches(resource)``: end the open watch streams of a resource, abruptly (the TCP
    connection is closed mid-stream) or cleanly (the stream ends as if ``timeoutSeconds`` passed);
  - ``expire_watches(resource)``: the next watches from a resourceVersion answer ``410 Expired``
    (what a compacted etcd answers), after dropping the open ones so clients come back at once;
  - ``delay_events(resource, s)`` / ``reorder_events(resource, window_s)``: events reach watchers
    late, or in a shuffled order that keeps each object's own events in order (the guarantee a
    real apiserver keeps per object, but not across objects or resources);
  - ``fail`` / ``throttle`` / ``time_out``: 5xx, 429 with ``Retry-After``, or a hang (the client's
    timeout fires) for chosen verbs and resources, through :mod:`hami.simulator.faults`;
  - ``hold``: freeze matching requests until the test releases them (a call caught mid-flight);
  - ``clear()``: everything back to normal.

* :class:`ClusterChaos` adds what lives on nodes: re-creating a node's ``kubelet.sock`` (a kubelet
  restart: plugins must re-register, allocations survive) and skewing a node's clock (the kubelet's
  heartbeats, Lease renewals and pod status times are written off by that many seconds).

Role processes (scheduler, device plugins, monitor) are killed and restarted by the test harness
that started them (``tests/reliability/rel_harness.py``).

Resources are named by their plural (``pods``, ``nodes``, ``leases``); ``None`` means every resource.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from hami.simulator.faults import FaultRule, Faults
from hami.simulator.resources import ResourceType
from hami.simulator.statuses import expired
from hami.simulator.watchers import Watcher, WatchItem

if TYPE_CHECKING:
    from hami.simulator.cluster import EmbeddedCluster

logger = logging.getLogger(__name__)

DROPPED_REASON: Final = "watch stream dropped by fault injection"
CLOSED_REASON: Final = "watch stream closed by fault injection"


@dataclass(slots=True)
class ChaosStats:
    """How many faults were injected (tests assert their fault really happened)."""

    paused_requests: int = 0
    dropped_watches: int = 0
    expired_watches: int = 0
    delayed_batches: int = 0
    reordered_batches: int = 0


@dataclass(frozen=True, slots=True)
class _EventFault:
    delay_s: float = 0.0
    reorder_window_s: float = 0.0


def _object_key(item: WatchItem) -> tuple[str, str]:
    meta = item.obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def shuffle_per_object(items: list[WatchItem], rng: random.Random) -> list[WatchItem]:
    """Shuffle ``items`` across objects, keeping each object's events (and bookmarks last) in order."""
    events = [i for i in items if i.type not in ("BOOKMARK", "ERROR")]
    tail = [i for i in items if i.type in ("BOOKMARK", "ERROR")]
    queues: dict[tuple[str, str], collections.deque[WatchItem]] = collections.defaultdict(collections.deque)
    order: list[tuple[str, str]] = []
    for item in events:
        key = _object_key(item)
        queues[key].append(item)
        order.append(key)
    rng.shuffle(order)
    return [queues[key].popleft() for key in order] + tail


class ApiChaos:
    """The API server's switchable faults; also the watch hooks the server calls (see module doc)."""

    def __init__(self, faults: Faults, *, rng: random.Random | None = None) -> None:
        self.faults = faults
        self.stats = ChaosStats()
        self._rng = rng or random.Random(11)
        self._running = asyncio.Event()
        self._running.set()
        self._watchers: set[Watcher] = set()
        self._aborted: set[Watcher] = set()
        self._expire: dict[str | None, int] = {}
        self._events: dict[str | None, _EventFault] = {}

    # ------------------------------------------------------------------ pause
    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        """From now on every request and every watch delivery waits until :meth:`resume`."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @contextlib.asynccontextmanager
    async def paused_for(self) -> AsyncIterator[None]:
        self.pause()
        try:
            yield
        finally:
            self.resume()

    async def wait_running(self) -> None:
        """Called by the server before serving a request: hangs while paused."""
        if not self._running.is_set():
            self.stats.paused_requests += 1
            await self._running.wait()

    # ------------------------------------------------------------------ request faults
    def fail(
        self,
        *,
        verbs: Iterable[str] = (),
        resources: Iterable[str] = (),
        status: int = 500,
        times: int = 1,
        message: str = "injected fault",
    ) -> FaultRule:
        """Answer ``status`` (500, 503, 504, ...) to the next ``times`` matching requests (-1: all)."""
        return self.faults.add(
            FaultRule(
                verbs=frozenset(verbs),
                resources=frozenset(resources),
                status=status,
                times=times,
                message=message,
            )
        )

    def throttle(
        self,
        *,
        verbs: Iterable[str] = (),
        resources: Iterable[str] = (),
        times: int = 1,
        retry_after_s: int = 1,
    ) -> FaultRule:
        """429 TooManyRequests with ``Retry-After`` to the next ``times`` matching requests."""
        return self.faults.add(
            FaultRule(
                verbs=frozenset(verbs),
                resources=frozenset(resources),
                status=429,
                retry_after_s=retry_after_s,
                times=times,
                message="the server has received too many requests and has asked us to try again later",
            )
        )

    def time_out(
        self,
        *,
        verbs: Iterable[str] = (),
        resources: Iterable[str] = (),
        times: int = 1,
        after_s: float | None = None,
    ) -> FaultRule:
        """The next ``times`` matching requests never get an answer: they hang until the client's own
        timeout (``after_s=None``), or the connection is dropped after ``after_s`` seconds."""
        rule = FaultRule(verbs=frozenset(verbs), resources=frozenset(resources), times=times)
        if after_s is None:
            rule.hang = True
        else:
            rule.delay_s, rule.drop = after_s, True
        return self.faults.add(rule)

    def hold(
        self,
        *,
        verbs: Iterable[str] = (),
        resources: Iterable[str] = (),
        query: Mapping[str, str] | None = None,
        times: int = 1,
    ) -> FaultRule:
        """Freeze the next ``times`` matching requests until ``rule.release.set()``: a call held in flight
        while a test kills or restarts something, then served against the state of that moment."""
        return self.faults.add(
            FaultRule(
                verbs=frozenset(verbs),
                resources=frozenset(resources),
                query=dict(query or {}),
                times=times,
                release=asyncio.Event(),
            )
        )

    # ------------------------------------------------------------------ watch faults
    def drop_watches(self, resource: str | None = None, *, abrupt: bool = True) -> int:
        """End the open watch streams of ``resource`` (all with None); returns how many.

        ``abrupt``: the connection is closed mid-stream (clients see a broken transfer); otherwise the
        stream ends cleanly. Either way a correct client re-watches from its last resourceVersion.
        """
        victims = [w for w in self._watchers if w.closed is None and _concerns(resource, w.rt)]
        for watcher in victims:
            if abrupt:
                self._aborted.add(watcher)
            watcher.close(DROPPED_REASON if abrupt else CLOSED_REASON)
        self.stats.dropped_watches += len(victims)
        return len(victims)

    def expire_watches(self, resource: str | None = None, *, count: int = 1, drop: bool = True) -> None:
        """The next ``count`` watches of ``resource`` that resume from a resourceVersion get 410 Expired
        (a re-list must follow); with ``drop`` the open streams are dropped first so it happens now.

        ``count`` is per resource; -1 keeps expiring until :meth:`clear`.
        """
        self._expire[resource] = count
        if drop:
            self.drop_watches(resource, abrupt=False)

    def delay_events(self, resource: str | None, delay_s: float) -> None:
        """Every batch of events for ``resource`` reaches its watchers ``delay_s`` late (0: off)."""
        current = self._events.get(resource, _EventFault())
        self._set_events(resource, _EventFault(delay_s, current.reorder_window_s))

    def reorder_events(self, resource: str | None, *, window_s: float = 0.05) -> None:
        """Collect events for ``window_s`` and deliver them shuffled across objects (0: off)."""
        current = self._events.get(resource, _EventFault())
        self._set_events(resource, _EventFault(current.delay_s, window_s))

    def _set_events(self, resource: str | None, fault: _EventFault) -> None:
        if fault.delay_s <= 0 and fault.reorder_window_s <= 0:
            self._events.pop(resource, None)
        else:
            self._events[resource] = fault

    def clear(self) -> None:
        """Resume, release held requests, stop every watch fault and remove every fault rule."""
        self.resume()
        for rule in self.faults.rules:
            if rule.release is not None:
                rule.release.set()
        self._expire.clear()
        self._events.clear()
        self.faults.clear()

    @property
    def open_watches(self) -> int:
        return sum(1 for w in self._watchers if w.closed is None)

    # ------------------------------------------------------------------ hooks called by the server
    def admit_watch(self, rt: ResourceType, resource_version: str) -> None:
        """Before a watch is registered: raises 410 Expired when an expiry is armed for it."""
        if resource_version in ("", "0"):
            return  # a watch that starts with the current state cannot be too old
        for key in (rt.plural, None):
            left = self._expire.get(key)
            if left is None or left == 0:
                continue
            if left > 0:
                self._expire[key] = left - 1
            self.stats.expired_watches += 1
            raise expired(f"too old resource version: {resource_version} (injected fault)")

    def watch_opened(self, watcher: Watcher) -> None:
        self._watchers.add(watcher)

    def watch_closed(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)
        self._aborted.discard(watcher)

    def watch_aborted(self, watcher: Watcher) -> bool:
        return watcher in self._aborted

    async def deliver(self, watcher: Watcher, items: list[WatchItem]) -> list[WatchItem]:
        """Called with each batch about to be written to a watch stream; may wait and reorder."""
        await self.wait_running()
        fault = self._events.get(watcher.rt.plural) or self._events.get(None)
        if fault is None:
            return items
        if fault.delay_s > 0:
            self.stats.delayed_batches += 1
            await asyncio.sleep(fault.delay_s)
        if fault.reorder_window_s > 0:
            await asyncio.sleep(fault.reorder_window_s)
            self.stats.reordered_batches += 1
        if watcher.closed is None:
            items = items + watcher.take()
        await self.wait_running()
        return shuffle_per_object(items, self._rng) if fault.reorder_window_s > 0 else items


def _concerns(resource: str | None, rt: ResourceType) -> bool:
    return resource is None or rt.plural == resource


class ClusterChaos:
    """Faults of an :class:`~hami.simulator.cluster.EmbeddedCluster`: its API server's and its nodes'."""

    def __init__(self, cluster: EmbeddedCluster) -> None:
        self.cluster = cluster

    @property
    def api(self) -> ApiChaos:
        return self.cluster.api.chaos

    async def restart_kubelet(self, node: str) -> None:
        """Re-create ``node``'s ``kubelet.sock``: registered plugins are dropped and must re-register;
        running pods and their allocations survive (kubelet's checkpoint)."""
        await self.cluster.kubelet(node).restart()

    def skew_clock(self, node: str, seconds: float) -> None:
        """From now on ``node``'s kubelet writes times ``seconds`` off (negative: behind)."""
        self.cluster.kubelet(node).clock_skew_s = seconds

    def clear(self) -> None:
        """API faults off and every node's clock back in line (processes are the harness's)."""
        self.api.clear()
        for node in self.cluster.nodes:
            node.kubelet.clock_skew_s = 0.0
