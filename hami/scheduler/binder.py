"""The bind cycle (hami-scheduler-spec.md §6.1), reading the pod and node from the watch cache.

1. Find the pod in the cache (waiting briefly for a lagging watch; the filter's copy of the pod
   is the fallback), check the UID kube-scheduler sends against it, and check that the pod's
   reservation is on the node being bound (the filter answered exactly one node).
2. Take the node's handoff turn (:mod:`hami.scheduler.handoff`): binds of one node go in the
   order kubelet will admit them, so the device plugin can tell waiting pods apart.
3. With ``--compat-node-lock``, set the node locks HAMi's vendors take for this pod
   (:mod:`nodelock`): ``hami.io/mutex.lock`` for NVIDIA and the vendors sharing it, once; a
   vendor's own lock besides (Cambricon ``cambricon.com/dsmlu.lock``); none for the vendors HAMi
   does not lock. A lock that cannot be taken releases the ones already taken.
4. ``POST pods/<name>/binding`` carrying ``hami.io/bind-phase: allocating`` and
   ``hami.io/bind-time`` as Binding annotations (the apiserver copies them onto the pod, so the
   phase and ``nodeName`` land together; the values are HAMi's).

Unwinding is in reverse order and idempotent. A *definite* failure (a 4xx, the handoff turn not
coming) releases the node lock and the reservation; an *ambiguous* one (timeout, 5xx: the
binding may have landed) keeps both until the watch shows what happened. A 409 whose cache
shows the pod bound to this node is a success (a retried bind). The binding call is never
retried blindly (style guide §3.4).

With leader election (:mod:`hami.scheduler.leadership`) the binding also carries the leader's
term (``hami.io/scheduler-term``), the Lease is re-read right before it, and a device pod whose
decision was written in another term (by a deposed leader) is not bound: kube-scheduler filters
it again, which replaces the reservation, so a predecessor's decision is never committed by this
leader. The old reservation is kept until then (not voided): should a binding the predecessor
sent before stepping down still arrive, its devices are not handed to another pod meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from hami.core import keys
from hami.core.errors import HamiError
from hami.core.ledger import PodUsage
from hami.core.pod_annotations import encode_unix_time
from hami.k8s.client import KubeApi
from hami.k8s.errors import ApiClientError, ApiConflict, ApiError
from hami.scheduler.events import BINDING_FAILED, BINDING_SUCCEED, EventSink, PodRef
from hami.scheduler.handoff import HandoffTimeout, HandoffTracker
from hami.scheduler.leadership import Leadership
from hami.scheduler.nodelock import DEFAULT_VENDOR_LOCK_EXPIRY, NodeLockError, NodeLocks, VendorLocks
from hami.scheduler.podinfo import PodInfo
from hami.scheduler.state import SchedulerState

logger = logging.getLogger(__name__)

POLL: Final = 0.02


@dataclass(frozen=True, slots=True, kw_only=True)
class BindArgs:
    """ExtenderBindingArgs."""

    pod_name: str
    pod_namespace: str
    pod_uid: str
    node: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BinderSettings:
    bind_wait_timeout: float = 20.0
    cache_wait: float = 2.0
    compat_node_lock: bool = False


class BindFailed(HamiError):
    """A bind that did not happen; ``definite`` is False when the binding may have landed."""

    def __init__(self, message: str, *, definite: bool = True) -> None:
        self.definite = definite
        super().__init__(message)


Fence = Callable[[], Awaitable[object]]


class Binder:
    def __init__(
        self,
        state: SchedulerState,
        api: KubeApi,
        *,
        settings: BinderSettings,
        events: EventSink,
        tracker: HandoffTracker | None = None,
        fence: Fence | None = None,
        leadership: Leadership | None = None,
        decided_at: Callable[[str], float | None] = lambda uid: None,
        wants_devices: Callable[[Mapping[str, Any]], bool] = lambda pod: False,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.state = state
        self.api = api
        self.settings = settings
        self.events = events
        self.tracker = tracker or state.tracker
        self.locks = NodeLocks(state, api, sleep=sleep) if settings.compat_node_lock else None
        self.vendor_locks = VendorLocks(self.locks) if self.locks is not None else None
        self.fence = fence
        self.leadership = leadership
        self.decided_at = decided_at
        self.wants_devices = wants_devices
        self._sleep = sleep

    async def bind(self, args: BindArgs) -> str:
        """Bind; returns "" or the error text for ExtenderBindingResult.Error."""
        ref = PodRef(namespace=args.pod_namespace, name=args.pod_name, uid=args.pod_uid)
        try:
            await self._bind(args)
        except BindFailed as e:
            logger.warning("bind %s/%s to %s failed: %s", args.pod_namespace, args.pod_name, args.node, e)
            self.events.emit(ref, "Warning", BINDING_FAILED, str(e))
            return str(e)
        self.events.emit(
            ref,
            "Normal",
            BINDING_SUCCEED,
            f"Successfully binding node [{args.node}] to {args.pod_namespace}/{args.pod_name}",
        )
        return ""

    async def _cached(self, args: BindArgs) -> tuple[Mapping[str, Any], PodInfo]:
        waited = 0.0
        while True:
            found = self.state.pod_by_key(args.pod_namespace, args.pod_name)
            if found is not None and (not args.pod_uid or found[1].uid == args.pod_uid):
                return found
            if waited >= self.settings.cache_wait:
                break
            await self._sleep(POLL)
            waited += POLL
        assumption = self.state.assumptions.get(args.pod_uid) if args.pod_uid else None
        if assumption is not None and assumption.pod is not None:
            return assumption.pod, self.state.decode_pod(assumption.pod)
        if found is not None:
            raise BindFailed(
                f"pod {args.pod_namespace}/{args.pod_name} has UID {found[1].uid}, not {args.pod_uid}"
            )
        raise BindFailed(f"failed to get pod {args.pod_namespace}/{args.pod_name}: not in the watch cache")

    async def _usage(self, uid: str, wants_devices: bool) -> PodUsage | None:
        """The pod's reservation; for a device pod, wait briefly for a watch that lags behind a
        decision made elsewhere (another replica, before a restart)."""
        waited = 0.0
        while True:
            usage = self.state.ledger.pod(uid)
            if usage is not None or not wants_devices or uid in self.state.voided:
                return usage
            if waited >= self.settings.cache_wait:
                return None
            await self._sleep(POLL)
            waited += POLL

    async def _bind(self, args: BindArgs) -> None:
        raw, info = await self._cached(args)
        uid = info.uid
        if info.node_name:
            if info.node_name == args.node:
                return  # already bound there (a retried bind)
            raise BindFailed(f"pod {info.key} is already bound to {info.node_name}")
        usage = self.state.ledger.pod(uid)
        wants = usage is not None or self.wants_devices(raw)
        if usage is None:
            usage = await self._usage(uid, wants)
        devices = usage is not None and any(any(c for c in psd) for psd in usage.devices.values())
        if usage is None and (wants or info.placed):
            raise BindFailed(
                f"pod {info.key} has no device reservation (an earlier bind failed, it was released, or it "
                "was not filtered by this scheduler); it must be filtered again"
            )
        if usage is not None and usage.node != args.node:
            raise BindFailed(f"pod {info.key} was placed on {usage.node} by the filter, not on {args.node}")
        if self.state.node_info(args.node) is None:
            raise BindFailed(f"failed to get node {args.node}")
        if devices:
            stale = self._stale_term(raw, info)
            if stale is not None:
                raise BindFailed(stale)
        if not devices:
            await self._fence(info)
            await self._post(info, args.node, uid)
            return
        vendors = tuple(v for v, psd in usage.devices.items() if any(psd)) if usage is not None else ()
        try:
            async with self.tracker.turn(
                args.node, uid, info.order_key, wait_limit=self.settings.bind_wait_timeout
            ):
                await self._locked_bind(info, args.node, vendors)
        except HandoffTimeout as e:
            self.state.void(uid)
            raise BindFailed(str(e)) from e
        except BindFailed as e:
            if e.definite:
                self.state.void(uid)
            raise

    def _stale_term(self, raw: Mapping[str, Any], info: PodInfo) -> str | None:
        """Why the pod's reservation is not this leader's to bind (None: it is).

        Ours: placed by this replica in the current term (the watch may not show that write yet,
        or show an older write with the same devices), or the pod's annotation carries the current
        term. A decision without a term annotation (no leader election, or HAMi 2.8) is accepted
        as it is."""
        lead = self.leadership
        term = lead.term if lead is not None else None
        if lead is None or term is None:
            return None
        decided, since = self.decided_at(info.uid), lead.since
        if decided is not None and since is not None and decided >= since:
            return None
        annotations = (raw.get("metadata") or {}).get("annotations") or {}
        stamped = annotations.get(keys.SCHEDULER_TERM)
        if stamped is None or stamped == str(term):
            return None
        return (
            f"not binding {info.key}: its devices were reserved in leader term {stamped!r} (a previous "
            f"leader), this leader's term is {term}; the pod must be filtered again"
        )

    async def _fence(self, info: PodInfo) -> None:
        """Leader election: re-check the Lease right before writing (a deposed leader must not bind)."""
        if self.fence is not None:
            try:
                await self.fence()
            except HamiError as e:
                raise BindFailed(f"not binding {info.key}: {e}") from e

    async def _locked_bind(self, info: PodInfo, node: str, vendors: Sequence[str] = ()) -> None:
        await self._fence(info)  # after the (possibly long) wait for the handoff turn
        taken = await self._lock(info, node, vendors)
        try:
            await self._post(info, node, info.uid)
        except BindFailed as e:
            if e.definite:
                await self._unlock(info, node, taken)
            raise
        found = self.state.pod_by_key(info.namespace, info.name)
        self.tracker.bound(node, info.uid, info.order_key, found[1] if found is not None else None)

    def lock_keys(self, vendors: Sequence[str]) -> dict[str, timedelta]:
        """The node locks taken (compat mode) for a pod holding devices of ``vendors``, with their
        expiry: each vendor's ``VendorTraits.lock_key``, once per key (HAMi 2.8 takes the shared
        ``hami.io/mutex.lock`` once per vendor, so a pod of two such vendors conflicts with itself)."""
        out: dict[str, timedelta] = {}
        for vendor in vendors:
            traits = self.state.traits.get(vendor)
            if traits is not None and traits.lock_key:
                out.setdefault(traits.lock_key, traits.lock_expiry or DEFAULT_VENDOR_LOCK_EXPIRY)
        return out

    async def _lock(self, info: PodInfo, node: str, vendors: Sequence[str]) -> list[str]:
        """Take the pod's node locks (compat mode); returns the keys taken."""
        if self.locks is None or self.vendor_locks is None:
            return []
        taken: list[str] = []
        for key, expiry in self.lock_keys(vendors).items():
            try:
                if key == keys.NODE_LOCK:
                    await self.locks.acquire(node, info)
                else:
                    await self.vendor_locks.acquire(node, key, expiry, info)
            except NodeLockError as e:
                await self._unlock(info, node, taken)  # no partial locks
                raise BindFailed(str(e)) from e
            taken.append(key)
        return taken

    async def _unlock(self, info: PodInfo, node: str, taken: Sequence[str]) -> None:
        if self.locks is None or self.vendor_locks is None:
            return
        for key in reversed(taken):
            if key == keys.NODE_LOCK:
                await self.locks.release(node, info.namespace, info.name, info.uid or None)
            else:
                await self.vendor_locks.release(node, key, info)

    async def _post(self, info: PodInfo, node: str, uid: str) -> None:
        annotations = {
            keys.BIND_PHASE: keys.BIND_PHASE_ALLOCATING,
            keys.BIND_TIME: encode_unix_time(self.state.clock.now()),
        }
        term = self.leadership.term if self.leadership is not None else None
        if term is not None:
            annotations[keys.SCHEDULER_TERM] = str(term)
        try:
            await self.api.bind_pod(info.namespace, info.name, node, uid=uid or None, annotations=annotations)
        except ApiConflict as e:
            if await self._bound_to(info, node):
                return  # an earlier attempt landed
            raise BindFailed(f"binding {info.key} to {node} failed: {e}") from e
        except ApiClientError as e:
            raise BindFailed(f"binding {info.key} to {node} failed: {e}") from e
        except ApiError as e:
            raise BindFailed(f"binding {info.key} to {node} may have failed: {e}", definite=False) from e

    async def _bound_to(self, info: PodInfo, node: str) -> bool:
        """Whether the watch shows the pod bound to ``node`` (waiting briefly for it to catch up)."""
        waited = 0.0
        while True:
            found = self.state.pod_by_key(info.namespace, info.name)
            if found is not None and found[1].uid == info.uid and found[1].node_name:
                return found[1].node_name == node
            if waited >= self.settings.cache_wait:
                return False
            await self._sleep(POLL)
            waited += POLL
