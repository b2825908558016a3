"""A fake kube-scheduler that drives the HTTP extender exactly as the real one does.

It talks to the API server over HTTP (list+watch of pods and nodes, ``pods/binding``,
``pods/status`` patches, core/v1 Events), like kube-scheduler. For every pod whose
``spec.schedulerName`` is one of the configured profiles and that has no ``nodeName``, one
scheduling cycle at a time (kube-scheduler's cycle is serial):

1. in-tree filters (:mod:`hami.simulator.kubefilters`), ignoring resources an extender manages
   with ``ignoredByScheduler``;
2. extender filters in configuration order, each on the previous one's survivors, only when the
   extender is interested in the pod (``managedResources``); ``ignorable`` extenders' errors are
   skipped;
3. if more than one node survives: in-tree LeastAllocated score plus extender prioritize scores
   (``score × weight × 10``); ties go to the first node by name (the real one picks at random);
4. the pod is *assumed* on the node (so the next cycle counts it) and bound in a separate task:
   by the interested extender with a ``bindVerb``, else by ``POST pods/binding``.

Pods with ``spec.resourceClaims`` also go through the DynamicResources plugin
(:class:`~hami.simulator.dra_scheduling.DraScheduling`): after the in-tree filters each node must
be able to allocate the pod's claims from its ResourceSlices; the chosen node's allocations are
reserved with the assumption, written (allocation, ``reservedFor``) before binding, and
unreserved when binding fails. ResourceSlice, ResourceClaim and DeviceClass changes, and a pod's
``status.resourceClaimStatuses`` being filled in, count as cluster changes. Pods without claims
never reach that code.

Failures set ``PodScheduled=False`` (reason ``Unschedulable`` for a fit error, ``SchedulerError``
otherwise) and record a ``FailedScheduling`` Warning event (repeats bump ``count``). Failed pods
retry after a doubling backoff (``podInitialBackoffSeconds`` … ``podMaxBackoffSeconds``); a pod
that did not fit also waits for a relevant cluster change (node added/changed, a pod on a node
deleted or finished) or the flush interval. Not simulated: preemption, pod (anti-)affinity,
topology spread, volumes, ``percentageOfNodesToScore``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from hami.simulator.dra_allocator import Unallocatable
from hami.simulator.dra_scheduling import DraBindError, DraScheduling
from hami.simulator.extenderclient import MAX_EXTENDER_PRIORITY, MAX_NODE_SCORE, ExtenderError, HttpExtender
from hami.simulator.kubefilters import fit_error_message, fit_reasons, is_active, least_allocated_score
from hami.simulator.restclient import STRATEGIC_PATCH, ApiError, Informer, InformerEvent, RestClient, pod_path
from hami.simulator.schedconfig import DEFAULT_SCHEDULER_NAME, SchedulerConfig

logger = logging.getLogger(__name__)

JsonObj = dict[str, Any]
REASON_UNSCHEDULABLE: Final = "Unschedulable"
REASON_SCHEDULER_ERROR: Final = "SchedulerError"
_MESSAGE_LIMIT: Final = 1024


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("spec") or {}


def _claim_statuses(pod: Mapping[str, Any]) -> Any:
    return (pod.get("status") or {}).get("resourceClaimStatuses")


class _FitError(Exception):
    pass


@dataclass(slots=True, kw_only=True)
class _Entry:
    uid: str
    attempts: int = 0
    ready_at: float = 0.0
    parked: bool = False
    parked_at: float = 0.0


class FakeKubeScheduler:
    """Schedules the configured profiles' pods; :meth:`run` until cancelled."""

    def __init__(self, client: RestClient, config: SchedulerConfig, *, instance: str = "") -> None:
        self._client = client
        self.config = config
        self.names = frozenset(config.scheduler_names)
        self._component = config.scheduler_names[0]
        self._instance = instance or "kube-scheduler-sim"
        self._extenders = [HttpExtender(e) for e in config.extenders]
        self._ignored = config.ignored_resources()
        self._pods = Informer(client, "/api/v1/pods", name=f"{self._component} pods")
        self._nodes = Informer(client, "/api/v1/nodes", name=f"{self._component} nodes")
        self._pods.add_handler(self._on_pod)
        self._nodes.add_handler(self._on_node)
        self._dra = DraScheduling(client, on_change=self._move_all)
        self._queue: dict[str, _Entry] = {}
        self._in_flight: set[str] = set()
        self._assumed: dict[str, tuple[str, JsonObj]] = {}  # pod key → (node, pod as assumed)
        self._by_node: dict[str, dict[str, JsonObj]] = {}
        self._moves = 0  # cluster changes seen; a pod that failed across one is not parked
        self._wake = asyncio.Event()
        self._events: dict[tuple[str, str, str], tuple[str, int]] = {}
        self.cycles = 0
        """Scheduling cycles run so far (tests read it)."""
        self.ready = asyncio.Event()

    # ---- informer handlers (sync, fast) -------------------------------------------------------

    def _responsible(self, pod: Mapping[str, Any]) -> bool:
        spec = _spec(pod)
        return (
            (spec.get("schedulerName") or DEFAULT_SCHEDULER_NAME) in self.names
            and not spec.get("nodeName")
            and not spec.get("schedulingGates")
            and not _meta(pod).get("deletionTimestamp")
            and is_active(pod)
        )

    def _move_all(self) -> None:
        self._moves += 1
        for entry in self._queue.values():
            entry.parked = False
        self._wake.set()

    def _on_pod(self, event: InformerEvent) -> None:
        key, old, new = event.key, event.old, event.new
        old_node = _spec(old).get("nodeName") if old else None
        if old_node:
            self._by_node.get(old_node, {}).pop(key, None)
        if new is None:
            self._queue.pop(key, None)
            self._assumed.pop(key, None)
            self._forget_events(key)
            if old_node:
                self._move_all()
            return
        node = _spec(new).get("nodeName")
        if node:
            self._by_node.setdefault(node, {})[key] = new
            self._queue.pop(key, None)
            self._assumed.pop(key, None)
            self._forget_events(key)
            if old is not None and is_active(old) and not is_active(new):
                self._move_all()
            return
        if not self._responsible(new):
            self._queue.pop(key, None)
            return
        uid = str(_meta(new).get("uid", ""))
        entry = self._queue.get(key)
        if entry is None or entry.uid != uid:
            if key not in self._in_flight and key not in self._assumed:
                self._queue[key] = _Entry(uid=uid)
                self._wake.set()
        elif old is not None and (
            _spec(old) != _spec(new)
            or _meta(old).get("labels") != _meta(new).get("labels")
            or _claim_statuses(old) != _claim_statuses(new)  # the claim controller created a claim
        ):
            entry.parked = False
            self._wake.set()

    def _on_node(self, event: InformerEvent) -> None:
        old, new = event.old, event.new
        if old is not None and new is not None:
            relevant = (
                _spec(old) != _spec(new)
                or _meta(old).get("labels") != _meta(new).get("labels")
                or _meta(old).get("annotations") != _meta(new).get("annotations")
                or (old.get("status") or {}).get("allocatable")
                != (new.get("status") or {}).get("allocatable")
            )
            if not relevant:
                return
        self._move_all()

    # ---- queue ------------------------------------------------------------------------------

    def _backoff(self, attempts: int) -> float:
        return float(
            min(self.config.pod_initial_backoff * 2 ** max(attempts - 1, 0), self.config.pod_max_backoff)
        )

    def _next_ready(self, now: float) -> tuple[str | None, float | None]:
        best: tuple[Any, ...] | None = None
        best_key: str | None = None
        wait: float | None = None
        for key, entry in self._queue.items():
            if entry.parked and now - entry.parked_at >= self.config.unschedulable_flush:
                entry.parked = False
            if entry.parked:
                remaining = entry.parked_at + self.config.unschedulable_flush - now
                wait = remaining if wait is None else min(wait, remaining)
                continue
            if entry.ready_at > now:
                wait = entry.ready_at - now if wait is None else min(wait, entry.ready_at - now)
                continue
            pod = self._pods.get(key) or {}
            order = (-int(_spec(pod).get("priority") or 0), str(_meta(pod).get("creationTimestamp", "")), key)
            if best is None or order < best:
                best, best_key = order, key
        return best_key, wait

    async def _loop(self, tg: asyncio.TaskGroup) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            key, wait = self._next_ready(loop.time())
            if key is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                continue
            entry = self._queue.pop(key)
            pod = self._pods.get(key)
            if pod is None or not self._responsible(pod) or str(_meta(pod).get("uid", "")) != entry.uid:
                continue
            self._in_flight.add(key)
            try:
                await self._schedule_one(key, entry, pod, tg)
            finally:
                self._in_flight.discard(key)

    # ---- one cycle ---------------------------------------------------------------------------

    def _pods_on(self, node: str) -> list[JsonObj]:
        pods = list(self._by_node.get(node, {}).values())
        pods.extend(p for n, p in self._assumed.values() if n == node)
        return pods

    async def _schedule_one(self, key: str, entry: _Entry, pod: JsonObj, tg: asyncio.TaskGroup) -> None:
        self.cycles += 1
        moves_at_start = self._moves
        try:
            host = await self._select_host(pod)
            self._dra.reserve(pod, host)
        except (_FitError, Unallocatable) as exc:
            parked = self._moves == moves_at_start
            await self._record_failure(pod, REASON_UNSCHEDULABLE, str(exc))
            self._requeue(key, entry, parked=parked)
            return
        except ExtenderError as exc:
            await self._record_failure(pod, REASON_SCHEDULER_ERROR, str(exc))
            self._requeue(key, entry, parked=False)
            return
        assumed = {**pod, "spec": {**_spec(pod), "nodeName": host}}
        self._assumed[key] = (host, assumed)
        tg.create_task(self._bind(key, entry, pod, host), name=f"bind {key}")

    async def _select_host(self, pod: JsonObj) -> str:
        nodes = sorted(self._nodes.objects.values(), key=lambda n: str(_meta(n).get("name", "")))
        reasons: dict[str, list[str]] = {}
        feasible: list[JsonObj] = []
        for node in nodes:
            name = str(_meta(node).get("name", ""))
            why = fit_reasons(pod, node, self._pods_on(name), ignored_resources=self._ignored)
            if not why:  # like kube-scheduler, a node's filters stop at the first that fails
                why = self._dra.filter(pod, name)
            if why:
                reasons[name] = why
            else:
                feasible.append(node)
        for extender in self._extenders:
            if not feasible:
                break
            if not extender.config.filter_verb or not extender.config.is_interested(pod):
                continue
            try:
                names, failed, unresolvable = await extender.filter(pod, feasible)
            except ExtenderError:
                if extender.config.ignorable:
                    logger.info("skipping ignorable extender %s", extender.url, exc_info=True)
                    continue
                raise
            for name, why_not in unresolvable.items():
                reasons[name] = [why_not]
            for name, why_not in failed.items():
                if name not in unresolvable:
                    reasons[name] = [why_not]
            by_name = {str(_meta(n).get("name", "")): n for n in feasible}
            feasible = [by_name[n] for n in names if n in by_name]
        if not feasible:
            raise _FitError(fit_error_message(len(nodes), reasons))
        if len(feasible) == 1:
            return str(_meta(feasible[0]).get("name", ""))
        return await self._prioritize(pod, feasible)

    async def _prioritize(self, pod: JsonObj, feasible: list[JsonObj]) -> str:
        scores = {
            str(_meta(n).get("name", "")): least_allocated_score(
                pod, n, self._pods_on(str(_meta(n).get("name", "")))
            )
            for n in feasible
        }
        scorers = [e for e in self._extenders if e.config.prioritize_verb and e.config.is_interested(pod)]
        results = await asyncio.gather(
            *(e.prioritize(pod, feasible) for e in scorers), return_exceptions=True
        )
        for extender, result in zip(scorers, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, ExtenderError):
                    raise result
                logger.info("prioritize with extender %s failed (ignored): %s", extender.url, result)
                continue
            for host, score in result.items():
                if host in scores:
                    scores[host] += score * (MAX_NODE_SCORE // MAX_EXTENDER_PRIORITY)
        best = max(scores.values())
        return next(name for name, score in scores.items() if score == best)

    def _requeue(self, key: str, entry: _Entry, *, parked: bool) -> None:
        now = asyncio.get_running_loop().time()
        entry.attempts += 1
        entry.ready_at = now + self._backoff(entry.attempts)
        entry.parked = parked
        entry.parked_at = now
        pod = self._pods.get(key)
        if pod is not None and self._responsible(pod) and str(_meta(pod).get("uid", "")) == entry.uid:
            self._queue[key] = entry
            self._wake.set()

    # ---- binding cycle ------------------------------------------------------------------------

    async def _bind(self, key: str, entry: _Entry, pod: JsonObj, host: str) -> None:
        meta = _meta(pod)
        name, namespace, uid = str(meta.get("name")), str(meta.get("namespace")), str(meta.get("uid"))
        try:
            await self._dra.pre_bind(pod)
            bound = False
            for extender in self._extenders:
                if not extender.config.bind_verb or not extender.config.is_interested(pod):
                    continue
                try:
                    await extender.bind(name=name, namespace=namespace, uid=uid, node=host)
                except ExtenderError:
                    if extender.config.ignorable:
                        continue
                    raise
                bound = True
                break
            if not bound:
                await self._default_bind(namespace, name, uid, host)
        except (DraBindError, ExtenderError, ApiError) as exc:
            self._dra.unreserve(pod)
            await self._record_failure(pod, REASON_SCHEDULER_ERROR, f"binding rejected: {exc}")
            self._assumed.pop(key, None)
            self._requeue(key, entry, parked=False)
            self._move_all()  # the forgotten assumption freed room on that node
            return
        logger.info("bound %s to %s", key, host)
        await self._record_event(
            pod, "Normal", "Scheduled", f"Successfully assigned {namespace}/{name} to {host}"
        )

    async def _default_bind(self, namespace: str, name: str, uid: str, host: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": host},
        }
        await self._client.create(pod_path(namespace, name, "binding"), body)

    # ---- reporting ----------------------------------------------------------------------------

    async def _record_failure(self, pod: JsonObj, reason: str, message: str) -> None:
        message = message[:_MESSAGE_LIMIT]
        logger.info("cannot schedule %s: %s", _meta(pod).get("name"), message)
        await self._record_event(pod, "Warning", "FailedScheduling", message)
        current = next(
            (c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == "PodScheduled"),
            None,
        )
        if current and (current.get("status"), current.get("reason"), current.get("message")) == (
            "False",
            reason,
            message,
        ):
            return
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "reason": reason,
            "message": message,
            "lastProbeTime": None,
            "lastTransitionTime": _now(),
        }
        meta = _meta(pod)
        patch = {"status": {"conditions": [condition]}}
        try:
            await self._client.patch(
                pod_path(str(meta.get("namespace")), str(meta.get("name")), "status"),
                patch,
                content_type=STRATEGIC_PATCH,
            )
        except ApiError as exc:
            logger.debug("cannot set PodScheduled on %s: %s", meta.get("name"), exc)

    def _forget_events(self, key: str) -> None:
        for event_key in [k for k in self._events if k[0] == key]:
            del self._events[event_key]

    async def _record_event(self, pod: JsonObj, type_: str, reason: str, message: str) -> None:
        meta = _meta(pod)
        namespace, name = str(meta.get("namespace", "default")), str(meta.get("name", ""))
        pod_key = f"{namespace}/{name}"
        component = str(_spec(pod).get("schedulerName") or DEFAULT_SCHEDULER_NAME)  # the profile's name
        now = _now()
        events_path = f"/api/v1/namespaces/{namespace}/events"
        seen = self._events.get((pod_key, reason, message))
        try:
            if seen is not None:
                event_name, count = seen
                await self._client.patch(
                    f"{events_path}/{event_name}", {"count": count + 1, "lastTimestamp": now}
                )
                self._events[(pod_key, reason, message)] = (event_name, count + 1)
                return
            event_name = f"{name}.{secrets.token_hex(8)}"
            await self._client.create(
                events_path,
                {
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {"name": event_name, "namespace": namespace},
                    "involvedObject": {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": name,
                        "namespace": namespace,
                        "uid": meta.get("uid", ""),
                        "resourceVersion": meta.get("resourceVersion", ""),
                    },
                    "reason": reason,
                    "message": message,
                    "type": type_,
                    "source": {"component": component},
                    "firstTimestamp": now,
                    "lastTimestamp": now,
                    "count": 1,
                    "action": "Scheduling" if reason != "Scheduled" else "Binding",
                    "reportingComponent": component,
                    "reportingInstance": self._instance,
                },
            )
            self._events[(pod_key, reason, message)] = (event_name, 1)
        except ApiError as exc:
            logger.debug("cannot record event %s for %s: %s", reason, pod_key, exc)

    # ---- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Watch, schedule and bind until cancelled."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pods.run(), name=f"{self._component}: watch pods")
                tg.create_task(self._nodes.run(), name=f"{self._component}: watch nodes")
                tg.create_task(self._dra.run(), name=f"{self._component}: dynamic resources")
                await self._pods.synced.wait()
                await self._nodes.synced.wait()
                await self._dra.synced.wait()
                self.ready.set()
                await self._loop(tg)
        finally:
            for extender in self._extenders:
                await asyncio.shield(extender.close())
