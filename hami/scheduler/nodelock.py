"""HAMi's node lock ``hami.io/mutex.lock``, tied to its pod (hami-scheduler-spec.md §6.2).

Only written with ``--compat-node-lock`` (HAMi 2.8's device plugin finds the pod through it;
ours does not need it, see :mod:`hami.scheduler.handoff`). The wire format is HAMi's
``<RFC3339>,<namespace>,<name>``; the pod's UID rides inside the timestamp's fraction
(:mod:`hami.core.node_lock`), which HAMi's parser reads as the same second.

Differences from 2.8, all about *who owns* a lock rather than how old it is:

* a lock is free when its owner pod is gone (not in the watch cache, or another UID under that
  name), terminal, being deleted, or already past Allocate (bound and allocated); it is never
  taken over because of its age alone (a slow kubelet keeps its lock), and an owner that is
  still between bind and Allocate keeps it whatever its age;
* the same pod may re-acquire its own lock (§14 item 12);
* an unreadable lock value (HAMi's plugin would fail Allocate on it) is taken over;
* reads come from the node watch cache, writes carry the cached ``resourceVersion`` as a
  precondition (409 → wait for the cache to catch up, then retry), never a GET.

:class:`VendorLocks` handles the vendors' own locks (``VendorTraits.lock_key`` other than
``hami.io/mutex.lock``: Cambricon's ``cambricon.com/dsmlu.lock``), whose value is only HAMi's
RFC 3339 time: see its docstring.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from hami.core import keys
from hami.core.errors import HamiError
from hami.core.node_lock import NodeLock, encode_node_lock
from hami.k8s.client import KubeApi
from hami.k8s.errors import ApiConflict, ApiError, ApiNotFound
from hami.k8s.objects import NODES
from hami.k8s.patches import merge_patch
from hami.scheduler.podinfo import PodInfo
from hami.scheduler.registrar import NodeInfo
from hami.scheduler.state import SchedulerState

logger = logging.getLogger(__name__)

ATTEMPTS: Final = 5
DEFAULT_VENDOR_LOCK_EXPIRY: Final = timedelta(minutes=5)
"""A vendor lock without its own expiry ages out like HAMi's default ``--node-lock-timeout``."""
CACHE_CATCH_UP: Final = 1.0  # seconds to wait for the node watch after a 409


class NodeLockError(HamiError):
    """The node is locked by a live pod, or the lock could not be written."""


def lock_value(now: datetime, pod: PodInfo) -> str:
    try:
        return encode_node_lock(
            NodeLock(time=now, namespace=pod.namespace, name=pod.name, uid=pod.uid or None)
        )
    except ValueError:  # a UID that is not a canonical UUID: HAMi's own shape
        return encode_node_lock(NodeLock(time=now, namespace=pod.namespace, name=pod.name))


def owner_state(state: SchedulerState, lock: NodeLock) -> tuple[PodInfo | None, str | None]:
    """The lock's owner pod, and why the lock is free (None: the owner still needs it)."""
    if lock.namespace is None or lock.name is None:
        return None, "legacy lock without an owner"
    found = state.pod_by_key(lock.namespace, lock.name)
    if found is None:
        return None, f"owner {lock.owner} is gone"
    _, info = found
    if lock.uid is not None and info.uid != lock.uid:
        return None, f"owner {lock.owner} was re-created (UID {info.uid}, lock names {lock.uid})"
    if info.terminal:
        return info, f"owner {lock.owner} is {info.phase}"
    if info.deleting:
        return info, f"owner {lock.owner} is being deleted"
    if info.allocation_done:
        return info, f"owner {lock.owner} is past Allocate"
    return info, None


def stale_reason(state: SchedulerState, node: NodeInfo) -> str | None:
    """Why ``node``'s lock should be released now (None: no lock, or its owner still needs it)."""
    if not node.lock_text:
        return None
    if node.lock is None:
        return f"unreadable lock {node.lock_text!r}: {node.lock_error}"
    _, why = owner_state(state, node.lock)
    return why


class NodeLocks:
    """Set and release ``hami.io/mutex.lock`` through the watch cache and merge patches."""

    def __init__(
        self,
        state: SchedulerState,
        api: KubeApi,
        *,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.state = state
        self.api = api
        self._sleep = sleep

    async def acquire(self, node: str, pod: PodInfo) -> None:
        """Lock ``node`` for ``pod``; raises NodeLockError when a live pod holds it."""
        for attempt in range(1, ATTEMPTS + 1):
            info = self.state.node_info(node)
            if info is None:
                raise NodeLockError(f"failed to get node {node}")
            if info.lock_text:
                if info.lock is not None and info.lock.held_by(pod.namespace, pod.name, pod.uid or None):
                    return  # our own lock (a retried bind)
                if info.lock is not None:
                    _, why = owner_state(self.state, info.lock)
                    if why is None:
                        raise NodeLockError(f"node {node} is locked by pod {info.lock.owner}")
                    logger.info("node %s: taking over the lock of %s: %s", node, info.lock.owner, why)
                else:
                    logger.warning("node %s: taking over an unreadable lock %r", node, info.lock_text)
            value = lock_value(self.state.clock.now(), pod)
            try:
                await self._patch(node, value, info.resource_version)
                return
            except ApiConflict:
                await self._catch_up(node, info.resource_version)
            except ApiError as e:
                if attempt == ATTEMPTS:
                    raise NodeLockError(f"failed to set node lock (node={node}): {e}") from e
                await self._sleep(0.1)
        raise NodeLockError(f"failed to set node lock (node={node}): the node kept changing")

    async def release(
        self, node: str, namespace: str, name: str, uid: str | None, *, expected: str | None = None
    ) -> bool:
        """Remove the lock if ``namespace/name`` (and ``uid``) holds it — or, with ``expected``, if
        the value is still exactly that text (a stale lock found by the reconciler). Never raises
        (an undo step); returns whether a lock was removed."""
        for _ in range(ATTEMPTS):
            info = self.state.node_info(node)
            if info is None or not info.lock_text:
                return False
            if expected is not None:
                if info.lock_text != expected:
                    return False
            elif info.lock is None or not info.lock.held_by(namespace, name, uid):
                return False
            try:
                await self._patch(node, None, info.resource_version)
                return True
            except ApiNotFound:
                return False
            except ApiConflict:
                await self._catch_up(node, info.resource_version)
            except ApiError as e:
                logger.warning("node %s: releasing the lock of %s/%s failed: %s", node, namespace, name, e)
                await self._sleep(0.1)
        logger.error("node %s: could not release the lock of %s/%s", node, namespace, name)
        return False

    async def _patch(
        self, node: str, value: str | None, resource_version: str, *, key: str = keys.NODE_LOCK
    ) -> None:
        patch = merge_patch(
            {"metadata": {"annotations": {key: value}}},
            resource_version=resource_version or None,
        )
        await self.api.patch(NODES, node, patch)

    async def _catch_up(self, node: str, seen: str) -> None:
        """After a 409, wait (bounded) for the node watch to deliver a newer version."""
        waited = 0.0
        while waited < CACHE_CATCH_UP:
            info = self.state.node_info(node)
            if info is None or info.resource_version != seen:
                return
            await self._sleep(0.02)
            waited += 0.02


# ------------------------------------------------------------------------------- vendor locks


def time_lock_value(now: datetime) -> str:
    """HAMi's ``time.Now().Format(time.RFC3339)`` in UTC (``2026-01-20T07:12:17Z``)."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time_lock(value: str) -> datetime | None:
    """The time of an RFC 3339 lock value; None when it is not one (or names no zone)."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Taken:
    """A vendor lock this process wrote, and for which pod (the value does not say)."""

    value: str
    namespace: str
    name: str
    uid: str | None


class VendorLocks:
    """A vendor's own node lock whose value is only a time (HAMi's Cambricon ``LockNode``).

    HAMi sets ``<key>: <RFC3339 now>`` when the annotation is absent, takes it over when it is
    older than the vendor's expiry (2 minutes for Cambricon) and otherwise fails the bind with
    ``node <n> has been locked within <expiry>``; the vendor's device plugin removes it at
    Allocate. The value names no pod, so the pod a lock was written for is remembered here, in
    memory: a later bind takes that lock over as soon as its pod is gone or past Allocate (the
    rule :class:`NodeLocks` applies to ``hami.io/mutex.lock``), and a lock written by someone
    else (another replica, the vendor's plugin, before a restart) is taken over only after the
    expiry, as HAMi does. An unreadable value is taken over at once, like :class:`NodeLocks`.
    """

    def __init__(self, locks: NodeLocks) -> None:
        self._locks = locks
        self._taken: dict[tuple[str, str], _Taken] = {}

    def _free_reason(self, node: str, key: str, value: str, expiry: timedelta) -> str | None:
        """Why the lock ``value`` may be taken now (None: it is held)."""
        taken = self._taken.get((node, key))
        if taken is not None and taken.value == value:
            found = self._locks.state.pod_by_key(taken.namespace, taken.name)
            if found is None or (taken.uid is not None and found[1].uid != taken.uid):
                return f"the pod it was set for, {taken.namespace}/{taken.name}, is gone"
            info = found[1]
            if info.terminal or info.deleting or info.allocation_done:
                return f"the pod it was set for, {taken.namespace}/{taken.name}, is past Allocate"
        when = parse_time_lock(value)
        if when is None:
            return f"unreadable value {value!r}"
        if self._locks.state.clock.now() - when > expiry:
            return f"it is older than {_go_duration(expiry)}"
        return None

    async def acquire(self, node: str, key: str, expiry: timedelta, pod: PodInfo) -> None:
        """Set ``key`` on ``node`` for ``pod``; raises NodeLockError when it is held."""
        locks = self._locks
        for attempt in range(1, ATTEMPTS + 1):
            info = locks.state.node_info(node)
            if info is None:
                raise NodeLockError(f"failed to get node {node}")
            current = info.vendor_locks.get(key)
            if current is not None and self._held_by(node, key, current, pod):
                return  # our own lock (a retried bind)
            if current is not None:
                why = self._free_reason(node, key, current, expiry)
                if why is None:
                    raise NodeLockError(f"node {node} has been locked within {_go_duration(expiry)} ({key})")
                logger.info("node %s: taking over %s=%s: %s", node, key, current, why)
            value = time_lock_value(locks.state.clock.now())
            try:
                await locks._patch(node, value, info.resource_version, key=key)
            except ApiConflict:
                await locks._catch_up(node, info.resource_version)
                continue
            except ApiError as e:
                if attempt == ATTEMPTS:
                    raise NodeLockError(f"failed to set node lock {key} (node={node}): {e}") from e
                await locks._sleep(0.1)
                continue
            self._taken[(node, key)] = _Taken(
                value=value, namespace=pod.namespace, name=pod.name, uid=pod.uid or None
            )
            return
        raise NodeLockError(f"failed to set node lock {key} (node={node}): the node kept changing")

    async def release(self, node: str, key: str, pod: PodInfo) -> bool:
        """Remove ``key`` if this process set it for ``pod`` and it still holds that value. Never
        raises (an undo step); returns whether the lock was removed."""
        taken = self._taken.get((node, key))
        if taken is None or (taken.namespace, taken.name) != (pod.namespace, pod.name):
            return False
        locks = self._locks
        for _ in range(ATTEMPTS):
            info = locks.state.node_info(node)
            if info is None or info.vendor_locks.get(key) != taken.value:
                self._taken.pop((node, key), None)
                return False
            try:
                await locks._patch(node, None, info.resource_version, key=key)
            except ApiNotFound:
                return False
            except ApiConflict:
                await locks._catch_up(node, info.resource_version)
                continue
            except ApiError as e:
                logger.warning("node %s: releasing %s of %s failed: %s", node, key, pod.key, e)
                await locks._sleep(0.1)
                continue
            self._taken.pop((node, key), None)
            return True
        logger.error("node %s: could not release %s of %s", node, key, pod.key)
        return False

    def _held_by(self, node: str, key: str, value: str, pod: PodInfo) -> bool:
        taken = self._taken.get((node, key))
        return (
            taken is not None
            and taken.value == value
            and (taken.namespace, taken.name) == (pod.namespace, pod.name)
            and taken.uid in (None, pod.uid or None)
        )


def _go_duration(value: timedelta) -> str:
    """Go's ``Duration.String()`` for whole seconds (``2m0s``, ``5m0s``, ``30s``)."""
    total = int(value.total_seconds())
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"
