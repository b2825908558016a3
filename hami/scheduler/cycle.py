"""The filter cycle: snapshot → fit → assume in one synchronous step, then persist.

The critical section (style guide §3.6) is :meth:`FilterCycle.decide`: it reads the ledger's
snapshot, runs the pure placement (:func:`hami.core.placement.schedule`) and reserves the
decision with ``ledger.assume`` without any ``await`` in between. Concurrent ``/filter`` calls
therefore need no lock: the event loop runs one decision at a time and each sees the previous
one's reservation. Only then is the decision written to the pod (HAMi 2.8's annotations,
byte-identical, §5.8) with one JSON merge patch; a definite rejection (4xx) forgets the
reservation, anything ambiguous (timeout, 5xx) leaves it to the watch or the stale sweep.

Fixes of HAMi 2.8 quirks, deliberately: quota usage cannot leak (it is the ledger's per-pod sum,
§8); a re-filtered pod's old reservation is released before the new decision (its quota with it);
node ties are broken by node name (§14 item 13); a pod bound already is refused, not re-placed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from hami.core import keys
from hami.core.deviceconfig import NvidiaConfig
from hami.core.errors import InvalidRequest, LedgerError
from hami.core.fragmentation import ShapeKey, ShapeWindow
from hami.core.ids import NodeName
from hami.core.model import PodDevices
from hami.core.packing import FragmentationAware
from hami.core.placement import (
    NODE_QUARANTINED,
    NODE_UNREGISTERED,
    Decision,
    NodeFailure,
    NodeFit,
    Unschedulable,
    evaluate_node,
    pod_shape,
    schedule,
)
from hami.core.pod_annotations import encode_unix_time
from hami.core.policy import GpuPolicy, NodePolicy, node_policy_of
from hami.core.requests import PodRequest, pod_request
from hami.k8s.client import KubeApi
from hami.k8s.errors import ApiClientError, ApiError
from hami.k8s.objects import PODS
from hami.k8s.patches import metadata_patch
from hami.metrics.instruments import SchedulerInstruments
from hami.scheduler.events import FILTERING_FAILED, FILTERING_SUCCEED, EventSink, PodRef, pod_ref
from hami.scheduler.explain import (
    WhyBook,
    error_record,
    pending_scheduled_record,
    pending_unschedulable_record,
)
from hami.scheduler.leadership import Leadership
from hami.scheduler.state import Assumption, SchedulerState

logger = logging.getLogger(__name__)

NO_REQUEST_MESSAGE = "does not request any resource"
REQUEST_MEMO = 4096  # parsed requests kept (pods between filter and bind, with room for retries)


@dataclass(frozen=True, slots=True, kw_only=True)
class FilterOutcome:
    """What ``/filter`` answers (the extender's ExtenderFilterResult fields)."""

    node_names: tuple[str, ...] | None = None
    failed_nodes: Mapping[str, str] | None = None
    error: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CycleSettings:
    node_policy: NodePolicy = NodePolicy.BINPACK
    gpu_policy: GpuPolicy = GpuPolicy.SPREAD
    exact_events_max_nodes: int = 64
    shape_window: int = 2000  # recent pod shapes the fragmentation-aware policy learns from
    why_max_nodes: int = 256


@dataclass(slots=True, kw_only=True)
class _Prepared:
    outcome: FilterOutcome
    ref: PodRef | None = None
    assumption: Assumption | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    node: str = ""
    event: str = ""


class FilterCycle:
    def __init__(
        self,
        state: SchedulerState,
        api: KubeApi | None,
        *,
        nvidia: NvidiaConfig,
        settings: CycleSettings,
        events: EventSink,
        why: WhyBook,
        instruments: SchedulerInstruments | None = None,
        leadership: Leadership | None = None,
    ) -> None:
        self.state = state
        self.api = api
        self.leadership = leadership
        self.nvidia = nvidia
        self.settings = settings
        self.events = events
        self.why = why
        self.instruments = instruments
        self._readers = state.registry.request_readers()
        self._writes: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # uid -> (lock, [users])
        self._requests: OrderedDict[tuple[str, str], PodRequest] = OrderedDict()
        self._decided: OrderedDict[str, float] = OrderedDict()  # uid -> monotonic time of our last decision
        self._scores: OrderedDict[tuple[str, int, tuple[str, ...]], list[tuple[str, int]]] = OrderedDict()
        # Typical pod shapes for the fragmentation-aware node policy, learned from every pod filtered.
        self.fragmentation = FragmentationAware(window=ShapeWindow(size=settings.shape_window))

    # ------------------------------------------------------------------ filter

    async def filter(self, pod: Mapping[str, Any], candidates: Sequence[str]) -> FilterOutcome:
        prepared = self.decide(pod, candidates)
        if not prepared.annotations:
            return prepared.outcome
        assert prepared.ref is not None
        return await self._persist(prepared, pod)

    def request_of(self, pod: Mapping[str, Any]) -> PodRequest:
        """The pod's device request, memoised per (UID, resourceVersion): filter, prioritize and
        bind of one pod parse it once (quantity parsing dominates a decision's cost)."""
        meta = pod.get("metadata")
        key: tuple[str, str] | None = None
        if isinstance(meta, Mapping):
            uid, rv = meta.get("uid"), meta.get("resourceVersion")
            if isinstance(uid, str) and uid and isinstance(rv, str) and rv:
                key = (uid, rv)
                cached = self._requests.get(key)
                if cached is not None:
                    return cached
        request = pod_request(pod, self.nvidia, readers=self._readers)
        if key is not None:
            self._requests[key] = request
            if len(self._requests) > REQUEST_MEMO:
                self._requests.popitem(last=False)
        return request

    def decided_at(self, uid: str) -> float | None:
        """When this process last placed pod ``uid`` (state clock), None if not recently."""
        return self._decided.get(uid)

    def wants_devices(self, pod: Mapping[str, Any]) -> bool:
        """Whether the pod requests any vendor device (an unreadable request counts as yes)."""
        try:
            return not self.request_of(pod).is_empty
        except InvalidRequest:
            return True

    def decide(self, pod: Mapping[str, Any], candidates: Sequence[str]) -> _Prepared:
        """The synchronous part: parse, snapshot, fit, assume. No await in here."""
        now = self.state.clock.now()
        try:
            request = self.request_of(pod)
        except InvalidRequest as e:
            return _Prepared(outcome=FilterOutcome(error=f"invalid pod: {e}"))
        ref = pod_ref(pod)
        if request.is_empty:
            self.events.emit(ref, "Warning", FILTERING_FAILED, NO_REQUEST_MESSAGE)
            return _Prepared(outcome=FilterOutcome(node_names=tuple(candidates)))
        if not request.uid:
            return _Prepared(outcome=FilterOutcome(error="invalid pod: metadata.uid is missing"))
        info = self.state.pod_info(request.uid)
        if info is not None and info.node_name:
            message = f"pod {ref.namespace}/{ref.name} is already bound to {info.node_name}"
            return _Prepared(outcome=FilterOutcome(error=message))

        self.state.begin_decision(request.uid)
        quota = self.state.quotas.check_for(request.namespace)
        milli, number = pod_shape(request)
        self.fragmentation.observe(ShapeKey(cpu_milli=0, gpu_milli=milli, gpu_number=number))
        snapshot = self.state.ledger.snapshot()
        result = schedule(
            snapshot,
            candidates,
            request,
            self.state.registry,
            default_node_policy=self.settings.node_policy,
            default_gpu_policy=self.settings.gpu_policy,
            quota=quota,
            evaluate_all=len(candidates) <= self.settings.exact_events_max_nodes,
            fragmentation=self.fragmentation,
        )
        if isinstance(result, Unschedulable):
            return self._unschedulable(ref, request, result, candidates, now)

        annotations = self._annotations(pod, result.node, result.devices, now)
        try:
            self.state.ledger.assume(request.uid, result.node, result.devices, namespace=request.namespace)
        except LedgerError as e:  # placement and ledger disagree: a bug, never a silent over-commit
            logger.error("pod %s: decision on %s refused by the ledger: %s", ref.name, result.node, e)
            self.why.put(error_record(ref.namespace, ref.name, ref.uid, str(e), when=now))
            return _Prepared(outcome=FilterOutcome(error=f"internal error: {e}"))
        allocated = tuple(
            (vendor_keys.allocated, annotations[vendor_keys.allocated])
            for vendor_keys in self.state.device_keys.values()
            if vendor_keys.allocated in annotations
        )
        assumption = Assumption(
            uid=request.uid,
            namespace=request.namespace,
            name=request.name,
            node=result.node,
            allocated=allocated,
            since=self.state.clock.monotonic(),
            pod=dict(pod),  # type: ignore[arg-type]
        )
        self.state.assumed(assumption)
        self._decided[request.uid] = assumption.since
        self._decided.move_to_end(request.uid)
        if len(self._decided) > REQUEST_MEMO:
            self._decided.popitem(last=False)
        self.why.put(  # formatted when read: annotations is not changed after this point
            pending_scheduled_record(
                request, result, when=now, candidates=len(candidates), annotations=annotations
            )
        )
        return _Prepared(
            outcome=FilterOutcome(node_names=(result.node,)),
            ref=ref,
            assumption=assumption,
            annotations=annotations,
            node=result.node,
            event=self._success_message(result, candidates),
        )

    def _annotations(
        self, pod: Mapping[str, Any], node: str, devices: PodDevices, now: datetime
    ) -> dict[str, str]:
        annotations = {keys.VGPU_NODE: node, keys.VGPU_TIME: encode_unix_time(now)}
        term = self.leadership.term if self.leadership is not None else None
        if term is not None:  # fencing: a decision of a deposed leader is recognisable
            annotations[keys.SCHEDULER_TERM] = str(term)
        for vendor, assigned in devices.items():
            impl = self.state.registry.get(vendor)
            if impl is not None:
                annotations.update(impl.allocation_annotations(assigned, pod=pod, node=node, now=now))
        return annotations

    def _success_message(self, decision: Decision, candidates: Sequence[str]) -> str:
        if decision.complete:
            return decision.success_message(len(candidates))
        # Early exit on a large candidate list: the other nodes were not all evaluated.
        return (
            f"find fit node({decision.node}), {len(decision.failures)} nodes not fit, "
            f"{len(candidates) - len(decision.failures)} nodes not evaluated or fit"
            f"({decision.node}:{decision.score:.2f})"
        )

    def _unschedulable(
        self,
        ref: PodRef,
        request: PodRequest,
        result: Unschedulable,
        candidates: Sequence[str],
        now: datetime,
    ) -> _Prepared:
        overrides: dict[str, NodeFailure] = {}
        failed = result.failed_nodes
        for name, failure in result.failures.items():
            if failure.reason != NODE_UNREGISTERED:
                continue
            why = self.state.registrar.quarantine_reason(name)
            if why is not None:
                overrides[name] = NodeFailure(
                    node=NodeName(name),
                    reason=NODE_QUARANTINED,
                    note=f"unreadable device registration: {why}",
                )
                failed[name] = NODE_QUARANTINED
        self.why.put(
            pending_unschedulable_record(
                request,
                result,
                when=now,
                candidates=len(candidates),
                max_nodes=self.settings.why_max_nodes,
                overrides=overrides,
            )
        )
        for message in result.event_messages():
            self.events.emit(ref, "Warning", FILTERING_FAILED, message)
        self.events.emit(
            ref, "Warning", FILTERING_FAILED, f"no available node, {len(candidates)} nodes do not meet"
        )
        if self.instruments is not None:  # one counter update per reason, not per node
            per_reason: Counter[str] = Counter()
            for failure in result.failures.values():
                per_reason.update(
                    failure.counts.keys() if failure.counts else (failure.note or failure.reason,)
                )
            for reason, count in per_reason.items():
                self.instruments.filter_failed(reason, count)
        return _Prepared(outcome=FilterOutcome(failed_nodes=MappingProxyType(failed)))

    async def _persist(self, prepared: _Prepared, pod: Mapping[str, Any]) -> FilterOutcome:
        ref = prepared.ref
        assumption = prepared.assumption
        assert ref is not None and assumption is not None
        lock, users = self._writes.setdefault(ref.uid, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:  # an older write of the same pod lands first
                patch = metadata_patch(
                    annotations=prepared.annotations, labels={keys.VGPU_NODE: prepared.node}
                )
                if self.api is not None:
                    await self.api.patch(PODS, ref.name, patch, namespace=ref.namespace)
        except ApiError as e:
            definite = isinstance(e, ApiClientError)
            self.state.write_failed(assumption, definite=definite)
            logger.warning(
                "pod %s/%s: writing the decision for %s failed (%s): %s",
                ref.namespace,
                ref.name,
                prepared.node,
                "forgotten" if definite else "kept until the watch settles it",
                e,
            )
            self.events.emit(ref, "Warning", FILTERING_FAILED, str(e))
            self.why.put(
                error_record(
                    ref.namespace,
                    ref.name,
                    ref.uid,
                    f"writing the decision failed: {e}",
                    when=self.state.clock.now(),
                )
            )
            return FilterOutcome(error=str(e))
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._writes[ref.uid]
        self.state.write_done(assumption)
        self.events.emit(ref, "Normal", FILTERING_SUCCEED, prepared.event)
        return prepared.outcome

    # ------------------------------------------------------------------ prioritize

    def prioritize(self, pod: Mapping[str, Any], candidates: Sequence[str]) -> list[tuple[str, int]]:
        """HostPriorityList scores 0..10 for ``candidates`` (MaxExtenderPriority 10).

        Where the pod already holds a reservation, that node scores 10 and the others 0 (the
        filter's decision stands). Otherwise every candidate is evaluated on the current snapshot
        and the fitting ones are scaled by node policy (binpack: fuller is better); unfit 0.
        Memoised per (pod UID, ledger generation, candidates).
        """
        try:
            request = self.request_of(pod)
        except InvalidRequest:
            return [(name, 0) for name in candidates]
        if request.is_empty:
            return [(name, 0) for name in candidates]
        usage = self.state.ledger.pod(request.uid) if request.uid else None
        if usage is not None:
            return [(name, 10 if name == usage.node else 0) for name in candidates]
        snapshot = self.state.ledger.snapshot()
        memo_key = (request.uid, snapshot.generation, tuple(candidates))
        cached = self._scores.get(memo_key)
        if cached is not None:
            return cached
        quota = self.state.quotas.check_for(request.namespace)
        fits: dict[str, float] = {}
        for name in candidates:
            node = snapshot.node(name)
            if node is None:
                continue
            result = evaluate_node(
                node,
                request,
                self.state.registry,
                default_node_policy=self.settings.node_policy,
                default_gpu_policy=self.settings.gpu_policy,
                quota=quota,
            )
            if isinstance(result, NodeFit):
                fits[name] = result.score
        spread = node_policy_of(request.node_policy, self.settings.node_policy) is NodePolicy.SPREAD
        scores = _scale(fits, invert=spread)
        out = [(name, scores.get(name, 0)) for name in candidates]
        self._scores[memo_key] = out
        while len(self._scores) > 256:
            self._scores.popitem(last=False)
        return out


def _scale(scores: Mapping[str, float], *, invert: bool) -> dict[str, int]:
    if not scores:
        return {}
    lo, hi = min(scores.values()), max(scores.values())
    out: dict[str, int] = {}
    for name, value in scores.items():
        ratio = 1.0 if hi == lo else (value - lo) / (hi - lo)
        if invert and hi != lo:
            ratio = 1.0 - ratio
        out[name] = max(1, round(ratio * 10))  # a fitting node never scores below an unfit one
    return out
