"""Informer: a Reflector feeding a Store, with handlers and decode-once side tables.

* ``Listed`` (first list and every re-list) *replaces* the store: keys that vanished
  while we were disconnected get a synthesised ``deleted`` delta with
  ``final_state_unknown=True`` (client-go ``DeletedFinalStateUnknown``), otherwise a ledger
  would keep their allocations forever. Objects whose resourceVersion did not change
  produce no delta.
* ``has_synced`` is set after the first list has been applied; gate workers on it.
* Each object is transformed (``managedFields`` stripped, by default) and decoded
  **once** at ingest by the caller's ``decoder`` (e.g. hami.core annotation codecs); the
  result sits in the store's side table next to the raw object. A decoder failure is
  logged and counted (``decode_failures``, ``on_decode_error``) and the object is still
  cached with no decoded value: bad annotations never crash the informer.
* Handlers are synchronous and must be fast (enqueue a key, update a ledger); a failing
  handler is logged and counted, never propagated into the watch loop. Per object they
  see an in-order subsequence of its states; there is no order across objects.

``apply(event)`` is the synchronous core, usable on its own in tests.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from hami.cache.store import IndexFunc, Store
from hami.cache.transforms import DEFAULT_TRANSFORM, Transform
from hami.config.settings import WatchingSettings
from hami.core.errors import HamiError
from hami.k8s.api import KubeApi
from hami.k8s.objects import RawObject, Resource, resource_version
from hami.k8s.watch import Bookmark, Change, Listed, Reflector, ReflectorEvent

_logger = logging.getLogger(__name__)

D = TypeVar("D")

DeltaType = Literal["added", "updated", "deleted"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Delta(Generic[D]):
    """One change as handlers see it. ``object`` is the new state (for ``deleted``: the last
    known state); ``old``/``old_decoded`` the previous state, when there was one."""

    type: DeltaType
    key: str
    object: RawObject
    decoded: D | None
    old: RawObject | None = None
    old_decoded: D | None = None
    final_state_unknown: bool = False


Handler = Callable[[Delta[D]], None]
Decoder = Callable[[RawObject], D]


class Informer(Generic[D]):
    def __init__(
        self,
        api: KubeApi,
        resource: Resource,
        *,
        settings: WatchingSettings | None = None,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        indexers: Mapping[str, IndexFunc] | None = None,
        transform: Transform | None = DEFAULT_TRANSFORM,
        decoder: Decoder[D] | None = None,
        on_decode_error: Callable[[str, Exception], None] | None = None,
        name: str | None = None,
        detect_mutations: bool = False,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        logger: logging.Logger | None = None,
    ) -> None:
        self.name = name or f"informer {resource.qualified}" + (f" in {namespace}" if namespace else "")
        self.resource = resource
        self.store: Store[D] = Store(indexers=indexers, detect_mutations=detect_mutations)
        self.has_synced = asyncio.Event()
        self.reflector = Reflector(
            api,
            resource,
            settings=settings,
            namespace=namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            name=self.name,
            rng=rng,
            sleep=sleep,
            logger=logger,
        )
        self._transform = transform
        self._decoder = decoder
        self._on_decode_error = on_decode_error
        self._handlers: list[Handler[D]] = []
        self._log = logger or _logger
        self.decode_failures = 0
        self.handler_failures = 0

    def add_handler(self, handler: Handler[D]) -> None:
        """Register a fast, synchronous callback. Handlers added after sync first receive an
        ``added`` delta for every cached object (so late subscribers miss nothing)."""
        self._handlers.append(handler)
        if self.has_synced.is_set():
            for key, obj in self.store.items():
                self._notify_one(
                    handler, Delta(type="added", key=key, object=obj, decoded=self.store.decoded(key))
                )

    async def wait_synced(self) -> None:
        await self.has_synced.wait()

    async def run(self) -> None:
        """Watch forever (until cancelled)."""
        async with aclosing(self.reflector.events()) as events:
            async for event in events:
                self.apply(event)

    # ------------------------------------------------------------------ sync core

    def apply(self, event: ReflectorEvent) -> list[Delta[D]]:
        """Apply one reflector event to the store, notify handlers, return the deltas."""
        if isinstance(event, Bookmark):
            self.store.resource_version = event.resource_version
            return []
        if isinstance(event, Listed):
            deltas = self._replace(event)
        else:
            deltas = self._change(event)
        for delta in deltas:
            for handler in self._handlers:
                self._notify_one(handler, delta)
        if isinstance(event, Listed) and not self.has_synced.is_set():
            self.has_synced.set()
            self._log.info(
                "%s: synced %d objects at RV %s", self.name, len(self.store), event.resource_version
            )
        return deltas

    def _ingest(self, raw: RawObject) -> tuple[RawObject, D | None, Exception | None]:
        obj = self._transform(raw) if self._transform is not None else raw
        if self._decoder is None:
            return obj, None, None
        try:
            return obj, self._decoder(obj), None
        except HamiError as exc:
            self._decode_failed(obj, exc, unexpected=False)
            return obj, None, exc
        except Exception as exc:
            self._decode_failed(obj, exc, unexpected=True)
            return obj, None, exc

    def _decode_failed(self, obj: RawObject, exc: Exception, *, unexpected: bool) -> None:
        self.decode_failures += 1
        key = self.store.key_of(obj)
        if unexpected:
            self._log.error("%s: decoder crashed on %s", self.name, key, exc_info=exc)
        else:
            self._log.warning("%s: cannot decode %s: %s", self.name, key, exc)
        if self._on_decode_error is not None:
            try:
                self._on_decode_error(key, exc)
            except Exception:
                self._log.error("%s: on_decode_error callback failed", self.name, exc_info=True)

    def _replace(self, event: Listed) -> list[Delta[D]]:
        fresh: dict[str, RawObject] = {}
        for raw in event.objects:
            try:
                fresh[self.store.key_of(raw)] = raw
            except ValueError as exc:
                self._log.warning("%s: skipping listed object without a name: %s", self.name, exc)
        deltas: list[Delta[D]] = []
        for key in self.store.keys():
            if key not in fresh:
                old, old_decoded = self.store.remove(key)
                assert old is not None
                deltas.append(
                    Delta(
                        type="deleted",
                        key=key,
                        object=old,
                        decoded=old_decoded,
                        old=old,
                        old_decoded=old_decoded,
                        final_state_unknown=True,
                    )
                )
        if deltas:
            self._log.warning(
                "%s: %d objects vanished during a disconnect; synthesised deletes", self.name, len(deltas)
            )
        for key, raw in fresh.items():
            current = self.store.get(key)
            if current is not None and resource_version(current) == resource_version(raw):
                continue
            deltas.append(self._store(key, raw, current))
        self.store.resource_version = event.resource_version
        return deltas

    def _change(self, event: Change) -> list[Delta[D]]:
        try:
            key = self.store.key_of(event.object)
        except ValueError as exc:
            self._log.warning("%s: ignoring %s event without a name: %s", self.name, event.type, exc)
            return []
        if event.resource_version:
            self.store.resource_version = event.resource_version
        if event.type == "DELETED":
            old, old_decoded = self.store.remove(key)
            obj = self._transform(event.object) if self._transform is not None else event.object
            return [
                Delta(
                    type="deleted", key=key, object=obj, decoded=old_decoded, old=old, old_decoded=old_decoded
                )
            ]
        return [self._store(key, event.object, self.store.get(key))]

    def _store(self, key: str, raw: RawObject, current: RawObject | None) -> Delta[D]:
        old_decoded = self.store.decoded(key) if current is not None else None
        obj, decoded, error = self._ingest(raw)
        self.store.upsert(obj, decoded=decoded, error=error)
        return Delta(
            type="updated" if current is not None else "added",
            key=key,
            object=obj,
            decoded=decoded,
            old=current,
            old_decoded=old_decoded,
        )

    def _notify_one(self, handler: Handler[D], delta: Delta[D]) -> None:
        try:
            handler(delta)
        except Exception:
            self.handler_failures += 1
            self._log.error(
                "%s: handler %r failed on %s %s", self.name, handler, delta.type, delta.key, exc_info=True
            )
