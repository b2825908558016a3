"""Watch registrations of the store: each filters change events into its own bounded queue.

A change that makes an object start or stop matching a watcher's selectors reaches it as ``ADDED``
or ``DELETED`` (the latter carrying the last matching state stamped with the new resourceVersion),
as kube-apiserver's cache watchers do (k8s-apis.md §6.5).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from hami.simulator.resources import ResourceType
from hami.simulator.selectors import FieldSelector, LabelSelector

JsonObj = dict[str, Any]
EventType = Literal["ADDED", "MODIFIED", "DELETED"]
Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class StoreEvent:
    type: EventType
    store_key: str
    key: Key
    rv: int
    obj: JsonObj
    """New state; for DELETED the last state stamped with the delete's resourceVersion."""
    old: JsonObj | None


@dataclass(slots=True)
class WatchItem:
    """One event as a watcher sees it; ``encoded`` caches its JSON line for every watcher sharing it."""

    type: str
    obj: JsonObj
    encoded: bytes | None = None


@dataclass(slots=True, kw_only=True, eq=False)
class Watcher:
    """A registered watch: filters store events into its own queue."""

    rt: ResourceType
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector
    queue_limit: int
    items: collections.deque[WatchItem] = field(default_factory=collections.deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    closed: str | None = None
    """Why the store ended this watch (overflow, shutdown), or None while open."""
    on_close: Callable[[Watcher], None] | None = None

    def matches(self, obj: JsonObj) -> bool:
        meta = obj["metadata"]
        if self.namespace is not None and meta.get("namespace", "") != self.namespace:
            return False
        return self.labels.matches(meta.get("labels")) and self.fields.matches(self.rt, obj)

    def push(self, item: WatchItem) -> None:
        if self.closed is not None:
            return
        if len(self.items) >= self.queue_limit:
            self.close("watcher too slow: event queue overflow")
            return
        self.items.append(item)
        self.wakeup.set()

    def offer(self, event: StoreEvent, shared: WatchItem) -> None:
        """Deliver ``event`` if it concerns this watcher, with selector transitions as ADDED/DELETED."""
        new_match = self.matches(event.obj)
        if event.type == "ADDED":
            if new_match:
                self.push(shared)
            return
        if event.type == "DELETED":
            if new_match:
                self.push(shared)
            return
        old_match = event.old is not None and self.matches(event.old)
        if old_match and new_match:
            self.push(shared)
        elif new_match:
            self.push(WatchItem("ADDED", event.obj))
        elif old_match and event.old is not None:
            self.push(WatchItem("DELETED", with_rv(event.old, event.rv)))

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
            self.wakeup.set()
            if self.on_close is not None:
                self.on_close(self)

    def take(self) -> list[WatchItem]:
        items = list(self.items)
        self.items.clear()
        self.wakeup.clear()
        return items


def with_rv(obj: JsonObj, rv: int) -> JsonObj:
    """A shallow copy of ``obj`` with ``metadata.resourceVersion`` set to ``rv``."""
    copy = dict(obj)
    copy["metadata"] = dict(obj["metadata"])
    copy["metadata"]["resourceVersion"] = str(rv)
    return copy
