"""In-memory object store of the simulated API server (k8s-apis.md §6.2-§6.10).

One global, monotonically increasing resourceVersion shared by every kind; a bounded history of
change events (a watch or paginated list older than it gets 410 ``Expired``); 409 on resourceVersion
and UID preconditions; finalizers and graceful deletion; ``generateName``; the status subresource
split; pod defaults and ``pods/binding``. The history and continue tokens are
:mod:`hami.simulator.history`; the metadata rules of writes (server-owned fields, preconditions,
no-op detection) are :mod:`hami.simulator.objectmeta`.

Every method is synchronous, so each write is atomic on the event loop. Stored objects are never
mutated after they are stored (writes store new dicts), so readers may keep references; callers must
not mutate what they get back.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from hami.simulator import kindrules, strategies
from hami.simulator.history import ChangeHistory, decode_continue, encode_continue, parse_resource_version
from hami.simulator.objectmeta import (
    SERVER_SET_ON_CREATE,
    carry_over,
    check_delete_preconditions,
    check_update_path,
    same_object,
)
from hami.simulator.resources import NAMESPACES, REGISTRY, ResourceType
from hami.simulator.selectors import FieldSelector, LabelSelector
from hami.simulator.statuses import (
    StatusError,
    already_exists,
    bad_request,
    expired,
    field_error,
    generate_name_exhausted,
    invalid,
    modified_conflict,
    namespace_not_found,
    not_found,
)
from hami.simulator.watchers import StoreEvent, Watcher, WatchItem, with_rv

JsonObj = dict[str, Any]
Key = tuple[str, str]
_Keys = list[Key]
_Objects = list[JsonObj]
_Names = list[str]

GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
MAX_GENERATED_PREFIX = 58
GENERATE_ATTEMPTS = 8
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def clone(obj: Any) -> Any:
    """A deep copy of a JSON value (orjson round trip: faster than copy.deepcopy)."""
    return orjson.loads(orjson.dumps(obj))


def _sort_key(key: Key) -> str:
    return f"{key[0]}/{key[1]}" if key[0] else key[1]


@dataclass(frozen=True, slots=True, kw_only=True)
class ListResult:
    items: list[JsonObj]
    resource_version: int
    continue_token: str = ""
    remaining: int | None = None


class Store:
    """Objects of every kind, the global resourceVersion and the change history."""

    def __init__(
        self,
        *,
        history_size: int = 20_000,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        create_default_namespaces: bool = True,
    ) -> None:
        self._clock = clock
        self._rng = rng or random.Random()
        self._rv = 0
        self._tables: dict[str, dict[Key, JsonObj]] = collections.defaultdict(dict)
        self._sorted: dict[str, _Names | None] = {}
        self._sorted_keys: dict[str, _Keys] = {}
        self._history = ChangeHistory(history_size)
        self._watchers: dict[str, set[Watcher]] = collections.defaultdict(set)
        if create_default_namespaces:
            for ns in DEFAULT_NAMESPACES:
                self.create(NAMESPACES, None, {"metadata": {"name": ns}})

    # ---------------------------------------------------------------- reading
    @property
    def resource_version(self) -> int:
        return self._rv

    @property
    def oldest_retained_rv(self) -> int:
        """Watches and continue tokens from an RV below this are answered with 410."""
        return self._history.compacted_rv

    def now(self) -> float:
        return self._clock()

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> JsonObj:
        obj = self._tables[rt.store_key].get(self._key(rt, namespace, name))
        if obj is None:
            raise not_found(rt, name)
        return obj

    def try_get(self, rt: ResourceType, namespace: str | None, name: str) -> JsonObj | None:
        return self._tables[rt.store_key].get(self._key(rt, namespace, name))

    def objects(self, rt: ResourceType, namespace: str | None = None) -> _Objects:
        """Every stored object of ``rt`` (in ``namespace`` if given), in key order."""
        table = self._tables[rt.store_key]
        return [table[k] for k in self._ordered_keys(rt.store_key) if namespace is None or k[0] == namespace]

    def list(
        self,
        rt: ResourceType,
        namespace: str | None,
        *,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
        limit: int = 0,
        continue_token: str = "",
        resource_version: str = "",
        resource_version_match: str = "",
    ) -> ListResult:
        labels = labels or LabelSelector()
        fields = fields or FieldSelector()
        start = ""
        at_rv = self._rv
        if continue_token:
            if resource_version not in ("", "0"):
                raise bad_request("specifying resource version is not allowed when using continue")
            at_rv, start = decode_continue(continue_token)
        elif resource_version_match == "Exact" or (resource_version not in ("", "0") and limit > 0):
            at_rv = parse_resource_version(resource_version)
            if at_rv > self._rv:
                raise bad_request(f"resource version {at_rv} is in the future (current {self._rv})")
        if resource_version == "0" and not continue_token:
            limit = 0  # served from the watch cache: limit is ignored
        table, keys = self._state_at(rt, at_rv)
        index = bisect.bisect_left(keys, start, key=_sort_key) if start else 0
        items: _Objects = []
        last: Key | None = None
        selective = not labels.empty or not fields.empty
        scanned = index
        for key in keys[index:]:
            scanned += 1
            if namespace is not None and key[0] != namespace:
                continue
            obj = table[key]
            if selective and not (labels.matches(obj["metadata"].get("labels")) and fields.matches(rt, obj)):
                continue
            items.append(obj)
            last = key
            if limit and len(items) >= limit:
                break
        token = ""
        remaining: int | None = None
        if limit and last is not None and scanned < len(keys):
            rest = [k for k in keys[scanned:] if namespace is None or k[0] == namespace]
            if rest:
                token = encode_continue(at_rv, _sort_key(last) + "\x00")
                if not selective:
                    remaining = len(rest)
        return ListResult(items=items, resource_version=at_rv, continue_token=token, remaining=remaining)

    # ---------------------------------------------------------------- creating
    def admit_create_input(self, rt: ResourceType, namespace: str | None, body: Any) -> JsonObj:
        """Decode-time steps of CREATE: shape checks, namespace rules, wiped server fields, defaults."""
        obj: JsonObj = clone(strategies.check_shape(rt, body))
        meta = obj["metadata"]
        if rt.namespaced:
            assert namespace is not None
            body_ns = meta.get("namespace") or ""
            if body_ns and body_ns != namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
            ns_obj = self.try_get(NAMESPACES, None, namespace)
            if ns_obj is None:
                raise namespace_not_found(namespace)
            if ns_obj["metadata"].get("deletionTimestamp"):
                raise StatusError(
                    403,
                    "Forbidden",
                    f'{rt.qualified} "{meta.get("name") or meta.get("generateName", "")}" is forbidden: '
                    "unable to "
                    f"create new content in namespace {namespace} because it is being terminated",
                )
        else:
            meta.pop("namespace", None)
        for key in SERVER_SET_ON_CREATE:
            meta.pop(key, None)
        strategies.decode_defaults(rt, obj)
        kindrules.default(rt, obj)
        return obj

    def prepare_create(self, rt: ResourceType, obj: JsonObj) -> JsonObj:
        """Strategy steps of CREATE after mutating admission: name, uid, timestamps, status, validation."""
        obj = clone(obj)
        strategies.decode_defaults(rt, obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            prefix = str(meta.get("generateName") or "")
            if not prefix:
                raise invalid(
                    rt, "", [field_error("Required", "metadata.name", "name or generateName is required")]
                )
            meta["name"] = self._generate_name(rt, meta.get("namespace"), prefix)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = strategies.format_time(self.now())
        if rt.tracks_generation:
            meta["generation"] = 1
        strategies.prepare_for_create(rt, obj)
        strategies.raise_invalid_if(rt, meta["name"], strategies.validate_create(rt, obj))
        kindrules.prepare_create(rt, obj, self.objects, self._rng)
        return obj

    def commit_create(self, rt: ResourceType, obj: JsonObj) -> JsonObj:
        """Persist a prepared object; a clash on a generated name retries with a fresh suffix."""
        meta = obj["metadata"]
        key = self._key(rt, meta.get("namespace"), meta["name"])
        if rt.namespaced and self.try_get(NAMESPACES, None, key[0]) is None:
            raise namespace_not_found(key[0])
        if key in self._tables[rt.store_key]:
            prefix = meta.get("generateName")
            if not prefix or meta["name"][: len(prefix)] != prefix:
                raise already_exists(rt, meta["name"])
            meta["name"] = self._generate_name(rt, key[0] or None, prefix)
            key = self._key(rt, key[0] or None, meta["name"])
        kindrules.check_commit(rt, obj, self.objects)
        return self._write(rt, key, obj, None)

    def create(self, rt: ResourceType, namespace: str | None, body: Any) -> JsonObj:
        """CREATE without admission (tests, in-process components)."""
        return self.commit_create(rt, self.prepare_create(rt, self.admit_create_input(rt, namespace, body)))

    def _generate_name(self, rt: ResourceType, namespace: str | None, prefix: str) -> str:
        base = prefix[:MAX_GENERATED_PREFIX]
        for _ in range(GENERATE_ATTEMPTS):
            name = base + "".join(self._rng.choice(GENERATE_ALPHABET) for _ in range(5))
            if self._key(rt, namespace, name) not in self._tables[rt.store_key]:
                return name
        raise generate_name_exhausted(rt, name)

    # ---------------------------------------------------------------- updating
    def prepare_update(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
    ) -> tuple[JsonObj | None, JsonObj]:
        """PUT semantics up to admission: ``(old, new)``; ``old`` is None when the PUT creates."""
        new: JsonObj = clone(strategies.check_shape(rt, body))
        meta = new["metadata"]
        check_update_path(rt, meta, name, namespace)
        old = self.try_get(rt, namespace, name)
        if old is None:
            if rt.create_on_update and subresource is None:
                return None, self.prepare_create(rt, self.admit_create_input(rt, namespace, new))
            raise not_found(rt, name)
        carry_over(rt, name, old, new)
        strategies.decode_defaults(rt, new)
        kindrules.default(rt, new)
        strategies.apply_status_split(rt, old, new, subresource)
        if rt.tracks_generation and strategies.spec_changed(old, new):
            meta["generation"] = int(old["metadata"].get("generation") or 0) + 1
        strategies.raise_invalid_if(rt, name, strategies.validate_update(rt, old, new))
        kindrules.prepare_update(rt, old, new, self.objects, self._rng)
        return old, new

    def commit_update(self, rt: ResourceType, old: JsonObj | None, new: JsonObj) -> JsonObj:
        """Persist ``new`` if the stored object is still ``old`` (else 409); a no-op keeps the RV."""
        meta = new["metadata"]
        key = self._key(rt, meta.get("namespace"), meta["name"])
        if old is None:
            return self.commit_create(rt, new)
        current = self._tables[rt.store_key].get(key)
        if current is None:
            raise not_found(rt, meta["name"])
        if current is not old:
            raise modified_conflict(rt, meta["name"])
        if same_object(old, new):
            return old
        if (
            meta.get("deletionTimestamp")
            and not meta.get("finalizers")
            and not meta.get("deletionGracePeriodSeconds")
        ):
            return self._remove(rt, key, new)
        kindrules.check_commit(rt, new, self.objects)
        return self._write(rt, key, new, old)

    def update(
        self, rt: ResourceType, namespace: str | None, name: str, body: Any, *, subresource: str | None = None
    ) -> JsonObj:
        """PUT without admission."""
        old, new = self.prepare_update(rt, namespace, name, body, subresource=subresource)
        return self.commit_update(rt, old, new)

    def mutate(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        change: Callable[[JsonObj], object],
        *,
        subresource: str | None = None,
    ) -> JsonObj:
        """Read-modify-write: ``change`` edits a private copy of the current object in place.

        Its return value is ignored, so ``lambda o: o["metadata"].pop("finalizers")`` works.
        """
        current: JsonObj = clone(self.get(rt, namespace, name))
        change(current)
        return self.update(rt, namespace, name, current, subresource=subresource)

    # ---------------------------------------------------------------- deleting
    def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        *,
        grace_period: int | None = None,
        preconditions: dict[str, Any] | None = None,
    ) -> tuple[JsonObj, bool]:
        """DELETE: ``(object, removed)``; not removed means deletion is pending (grace or finalizers)."""
        key = self._key(rt, namespace, name)
        old = self._tables[rt.store_key].get(key)
        if old is None:
            raise not_found(rt, name)
        old_meta = old["metadata"]
        if preconditions:
            check_delete_preconditions(rt, name, old_meta, preconditions)
        grace = strategies.deletion_grace_period(rt, old, grace_period)
        finalizers = old_meta.get("finalizers") or []
        if rt.store_key == "namespaces":
            self._purge_namespace(name)
            return self._remove(rt, key, old), True
        if old_meta.get("deletionTimestamp"):
            current_grace = int(old_meta.get("deletionGracePeriodSeconds") or 0)
            if grace >= current_grace:
                return old, False
        if not finalizers and grace == 0:
            return self._remove(rt, key, old), True
        new = dict(old)
        meta = new["metadata"] = dict(old_meta)
        meta["deletionTimestamp"] = strategies.format_time(self.now() + grace)
        meta["deletionGracePeriodSeconds"] = grace
        if rt.tracks_generation:
            meta["generation"] = int(meta.get("generation") or 0) + 1
        return self._write(rt, key, new, old), False

    def _purge_namespace(self, namespace: str) -> None:
        seen: set[str] = set()
        for rt in REGISTRY:
            if not rt.namespaced or rt.store_key in seen:
                continue
            seen.add(rt.store_key)
            table = self._tables[rt.store_key]
            for key in [k for k in self._ordered_keys(rt.store_key) if k[0] == namespace]:
                self._remove(rt, key, table[key])

    def delete_collection(
        self,
        rt: ResourceType,
        namespace: str | None,
        *,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
        grace_period: int | None = None,
    ) -> _Objects:
        result = self.list(rt, namespace, labels=labels, fields=fields)
        deleted: _Objects = []
        for obj in result.items:
            meta = obj["metadata"]
            try:
                done, _ = self.delete(rt, meta.get("namespace"), meta["name"], grace_period=grace_period)
            except StatusError as e:
                if e.code != 404:
                    raise
                continue
            deleted.append(done)
        return deleted

    # ---------------------------------------------------------------- watching
    def watch(
        self,
        rt: ResourceType,
        namespace: str | None,
        *,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
        resource_version: str = "",
        send_initial_events: bool | None = None,
        queue_limit: int = 100_000,
    ) -> tuple[Watcher, bool]:
        """Register a watcher and queue its backlog; returns ``(watcher, initial_events_sent)``.

        RV unset/"0" (or ``sendInitialEvents``): synthetic ADDED for the current state, then changes.
        RV N: the retained events after N (410 when N is older than the history).
        """
        watcher = Watcher(
            rt=rt,
            namespace=namespace,
            labels=labels or LabelSelector(),
            fields=fields or FieldSelector(),
            queue_limit=queue_limit,
        )
        initial = resource_version in ("", "0") if send_initial_events is None else send_initial_events
        if initial:
            for key in self._ordered_keys(rt.store_key):
                obj = self._tables[rt.store_key][key]
                if watcher.matches(obj):
                    watcher.items.append(WatchItem("ADDED", obj))
        else:
            since = parse_resource_version(resource_version)
            compacted = self._history.compacted_rv
            if since < compacted:
                raise expired(f"too old resource version: {since} ({compacted + 1})")
            for event in self._history.events_after(since):
                if event.store_key == rt.store_key:
                    watcher.offer(event, WatchItem(event.type, event.obj))
        if watcher.items:
            watcher.wakeup.set()
        watcher.on_close = self._forget_watcher
        self._watchers[rt.store_key].add(watcher)
        return watcher, initial

    def _forget_watcher(self, watcher: Watcher) -> None:
        self._watchers[watcher.rt.store_key].discard(watcher)

    def stop_watch(self, watcher: Watcher) -> None:
        watcher.close("stopped")

    def close_all_watchers(self, reason: str = "server shutting down") -> None:
        for watchers in list(self._watchers.values()):
            for watcher in list(watchers):
                watcher.close(reason)

    def watcher_count(self) -> int:
        return sum(len(w) for w in self._watchers.values())

    async def wait_for_rv(self, rv: int, within_s: float) -> bool:
        """Wait until the global RV reaches ``rv`` (for "too large resource version" reads)."""
        deadline = time.monotonic() + within_s
        while self._rv < rv:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(0.05, left))
        return True

    def compact(self, keep: int = 0) -> None:
        """Drop all but the newest ``keep`` history events (tests use it to force 410 Expired)."""
        self._history.compact(keep, self._rv)

    # ---------------------------------------------------------------- internals
    def _key(self, rt: ResourceType, namespace: str | None, name: str) -> Key:
        return ((namespace or "") if rt.namespaced else "", name)

    def _ordered_keys(self, store_key: str) -> _Keys:
        cached = self._sorted.get(store_key)
        if cached is None:
            keys = sorted(self._tables[store_key], key=_sort_key)
            self._sorted_keys[store_key] = keys
            self._sorted[store_key] = [_sort_key(k) for k in keys]
        return self._sorted_keys[store_key]

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _write(self, rt: ResourceType, key: Key, obj: JsonObj, old: JsonObj | None) -> JsonObj:
        rv = self._next_rv()
        obj = dict(obj)
        obj["metadata"] = dict(obj["metadata"])
        obj["metadata"]["resourceVersion"] = str(rv)
        obj["kind"] = rt.kind
        obj["apiVersion"] = rt.api_version
        table = self._tables[rt.store_key]
        if key not in table:
            self._sorted[rt.store_key] = None
        table[key] = obj
        self._record(StoreEvent("MODIFIED" if old is not None else "ADDED", rt.store_key, key, rv, obj, old))
        return obj

    def _remove(self, rt: ResourceType, key: Key, last: JsonObj) -> JsonObj:
        table = self._tables[rt.store_key]
        old = table.pop(key)
        self._sorted[rt.store_key] = None
        rv = self._next_rv()
        final = with_rv(last, rv)
        self._record(StoreEvent("DELETED", rt.store_key, key, rv, final, old))
        return final

    def _record(self, event: StoreEvent) -> None:
        self._history.append(event)
        watchers = self._watchers.get(event.store_key)
        if watchers:
            shared = WatchItem(event.type, event.obj)
            for watcher in list(watchers):
                watcher.offer(event, shared)

    def _state_at(self, rt: ResourceType, rv: int) -> tuple[dict[Key, JsonObj], _Keys]:
        """The objects of ``rt`` as of ``rv`` (rolled back through the history), with sorted keys."""
        table = self._tables[rt.store_key]
        if rv >= self._rv:
            return table, self._ordered_keys(rt.store_key)
        state = self._history.rolled_back(rt.store_key, table, rv)
        if state is None:
            return table, self._ordered_keys(rt.store_key)
        return state, sorted(state, key=_sort_key)
