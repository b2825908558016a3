"""Explainable decisions: the full record of a pod's last filter, for ``hami why NS/POD``.

Every failed filter records, per candidate node, the reason the extender returned and HAMi's
reason string, the vendor whose Fit failed and the predicates that failed (``MLU``,
``CardInsufficientMemory``), and per device the predicate that failed with its numbers
(``GPU-3: free 7200 MiB < 8000 MiB``). Events stay short (HAMi 2.8's texts); the full record
lives here, in memory, per pending pod, bounded (least recently written records go first, and a
record keeps at most ``max_nodes`` nodes, counting the rest), and is served as JSON at
``GET /why/{ns}/{pod}``.
A successful decision replaces the record with a short one; a deleted pod's record is dropped.

The filter path stores a :class:`PendingRecord`: it keeps what the record is made of (the
request, the kept failures, which are immutable and computed anyway) and formats the node and
device lines only when the record is read, so a failed filter of 500 nodes does not format
thousands of device messages that nobody may ask for.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from hami.core.placement import Decision, NodeFailure, Unschedulable
from hami.core.requests import PodRequest


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceLine:
    device: str
    reason: str
    have: int
    need: int
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "reason": self.reason,
            "have": self.have,
            "need": self.need,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeLine:
    node: str
    reason: str  # FailedNodes value
    detail: str  # HAMi reason string / note
    container: int | None = None
    vendor: str | None = None  # common word of the vendor whose Fit failed (NVIDIA, MLU, DCU...)
    predicates: tuple[str, ...] = ()  # the failed predicates, e.g. ("CardInsufficientMemory",)
    devices: tuple[DeviceLine, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "reason": self.reason,
            "detail": self.detail,
            "container": self.container,
            "vendor": self.vendor,
            "predicates": list(self.predicates),
            "devices": [d.to_json() for d in self.devices],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class WhyRecord:
    """One filter outcome of one pod."""

    namespace: str
    name: str
    uid: str
    time: str  # RFC 3339
    outcome: str  # "unschedulable" | "scheduled" | "error"
    message: str
    generation: int = 0
    candidates: int = 0
    request: tuple[str, ...] = ()  # one line per container request
    nodes: tuple[NodeLine, ...] = ()
    omitted_nodes: int = 0
    chosen: str | None = None
    devices: Mapping[str, str] = field(default_factory=dict)  # vendor -> encoded allocation

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
            "time": self.time,
            "outcome": self.outcome,
            "message": self.message,
            "generation": self.generation,
            "candidates": self.candidates,
            "request": list(self.request),
            "chosen": self.chosen,
            "devices": dict(self.devices),
            "nodes": [n.to_json() for n in self.nodes],
            "omittedNodes": self.omitted_nodes,
        }


def request_lines(request: PodRequest) -> tuple[str, ...]:
    lines: list[str] = []
    for container in request.containers:
        for vendor, req in container.devices.items():
            if req.memreq > 0:
                mem = f"{req.memreq} MiB"
            elif req.mem_percentage_req <= 100:
                mem = f"{req.mem_percentage_req}% of memory"
            else:
                mem = "whole memory"
            lines.append(
                f"container {container.index} ({container.name or '?'}): {req.nums} x {vendor}, {mem}, "
                f"{req.coresreq} cores"
            )
    return tuple(lines)


def predicates_of(failure: NodeFailure) -> tuple[str, ...]:
    """The predicates that failed on the node: HAMi's per-device reasons counted by the Fit, else
    the rejections' reasons, else the node-level note or reason (``node unregistered``)."""
    found = list(failure.counts) or [r.reason for r in failure.rejections]
    if not found:
        found = [failure.note or failure.reason]
    return tuple(dict.fromkeys(found))


def _node_line(failure: NodeFailure) -> NodeLine:
    return NodeLine(
        node=failure.node,
        reason=failure.reason,
        detail=failure.detail,
        container=failure.container,
        vendor=failure.vendor,
        predicates=predicates_of(failure),
        devices=tuple(
            DeviceLine(device=r.device, reason=r.reason, have=r.have, need=r.need, message=r.message)
            for r in failure.rejections
        ),
    )


def unschedulable_record(
    request: PodRequest,
    result: Unschedulable,
    *,
    when: datetime,
    candidates: int,
    max_nodes: int,
    overrides: Mapping[str, NodeFailure] | None = None,
) -> WhyRecord:
    kept, omitted = _kept_failures(result, max_nodes, overrides)
    return _unschedulable(request, result.generation, kept, omitted, when, candidates)


PENDING_FACTOR: Final = 4  # failures a pending record may keep, per node its record shows


def pending_unschedulable_record(
    request: PodRequest,
    result: Unschedulable,
    *,
    when: datetime,
    candidates: int,
    max_nodes: int,
    overrides: Mapping[str, NodeFailure] | None = None,
) -> PendingRecord:
    """:func:`unschedulable_record`, formatted on first read.

    The failures (immutable, device rejections as plain tuples) take about the memory of the
    formatted lines of as many nodes. Up to ``PENDING_FACTOR × max_nodes`` of them are kept as
    they are and the ``max_nodes`` shown are chosen on read; with more, they are chosen now. So
    a pending record holds at most ``PENDING_FACTOR`` times what the formatted record would."""
    generation = result.generation
    if len(result.failures) + len(overrides or ()) > PENDING_FACTOR * max_nodes:
        kept, omitted = _kept_failures(result, max_nodes, overrides)
        return PendingRecord(
            request.namespace,
            request.name,
            request.uid,
            lambda: _unschedulable(request, generation, kept, omitted, when, candidates),
        )

    def build() -> WhyRecord:
        chosen, left = _kept_failures(result, max_nodes, overrides)
        return _unschedulable(request, generation, chosen, left, when, candidates)

    return PendingRecord(request.namespace, request.name, request.uid, build)


def _kept_failures(
    result: Unschedulable, max_nodes: int, overrides: Mapping[str, NodeFailure] | None
) -> tuple[list[NodeFailure], int]:
    failures: dict[str, NodeFailure] = {str(k): v for k, v in result.failures.items()}
    if overrides:
        failures.update(overrides)
    ordered = sorted(failures.values(), key=lambda f: (f.reason, f.node))
    return ordered[:max_nodes], max(0, len(ordered) - max_nodes)


def _unschedulable(
    request: PodRequest,
    generation: int,
    kept: Sequence[NodeFailure],
    omitted: int,
    when: datetime,
    candidates: int,
) -> WhyRecord:
    return WhyRecord(
        namespace=request.namespace,
        name=request.name,
        uid=request.uid,
        time=_stamp(when),
        outcome="unschedulable",
        message=f"0/{candidates} nodes fit",
        generation=generation,
        candidates=candidates,
        request=request_lines(request),
        nodes=tuple(_node_line(f) for f in kept),
        omitted_nodes=omitted,
    )


def scheduled_record(
    request: PodRequest,
    decision: Decision,
    *,
    when: datetime,
    candidates: int,
    annotations: Mapping[str, str],
) -> WhyRecord:
    return WhyRecord(
        namespace=request.namespace,
        name=request.name,
        uid=request.uid,
        time=_stamp(when),
        outcome="scheduled",
        message=f"placed on {decision.node} (score {decision.score:.2f})",
        generation=decision.generation,
        candidates=candidates,
        request=request_lines(request),
        chosen=decision.node,
        devices=dict(annotations),
    )


def pending_scheduled_record(
    request: PodRequest,
    decision: Decision,
    *,
    when: datetime,
    candidates: int,
    annotations: Mapping[str, str],
) -> PendingRecord:
    """:func:`scheduled_record`, formatted on first read (``annotations`` must not change)."""
    return PendingRecord(
        request.namespace,
        request.name,
        request.uid,
        lambda: scheduled_record(
            request, decision, when=when, candidates=candidates, annotations=annotations
        ),
    )


def error_record(namespace: str, name: str, uid: str, message: str, *, when: datetime) -> WhyRecord:
    return WhyRecord(
        namespace=namespace, name=name, uid=uid, time=_stamp(when), outcome="error", message=message
    )


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class PendingRecord:
    """A :class:`WhyRecord` built on first read (then kept), from immutable inputs."""

    __slots__ = ("_build", "_record", "name", "namespace", "uid")

    def __init__(self, namespace: str, name: str, uid: str, build: Callable[[], WhyRecord]) -> None:
        self.namespace = namespace
        self.name = name
        self.uid = uid
        self._build: Callable[[], WhyRecord] | None = build
        self._record: WhyRecord | None = None

    def record(self) -> WhyRecord:
        if self._record is None:
            assert self._build is not None
            self._record = self._build()
            self._build = None  # drop the inputs: the record is all that is needed now
        return self._record


class WhyBook:
    """Bounded in-memory records keyed by ``namespace/name`` (least recently written evicted)."""

    def __init__(self, capacity: int = 2000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._records: OrderedDict[str, WhyRecord | PendingRecord] = OrderedDict()

    def put(self, record: WhyRecord | PendingRecord) -> None:
        key = f"{record.namespace}/{record.name}"
        self._records.pop(key, None)
        self._records[key] = record
        while len(self._records) > self.capacity:
            self._records.popitem(last=False)

    def get(self, namespace: str, name: str) -> WhyRecord | None:
        key = f"{namespace}/{name}"
        record = self._records.get(key)
        if isinstance(record, PendingRecord):
            record = record.record()
            self._records[key] = record  # same position: reading is not writing
        return record

    def drop(self, namespace: str, name: str, uid: str | None = None) -> None:
        key = f"{namespace}/{name}"
        record = self._records.get(key)
        if record is not None and (uid is None or record.uid in ("", uid)):
            del self._records[key]

    def __len__(self) -> int:
        return len(self._records)


# ------------------------------------------------------------------------------- text rendering


def render_text(doc: Mapping[str, Any]) -> str:
    """A record (``WhyRecord.to_json()`` shape) as readable text, for ``hami why``."""
    out: list[str] = []
    name = f"{doc.get('namespace', '')}/{doc.get('name', '')}"
    out.append(f"Pod {name} (uid {doc.get('uid') or '?'}), last filter at {doc.get('time', '?')}")
    out.append(f"Outcome: {doc.get('outcome', '?')} - {doc.get('message', '')}")
    requests: Sequence[str] = doc.get("request") or []
    if requests:
        out.append("Request:")
        out.extend(f"  {line}" for line in requests)
    if doc.get("chosen"):
        out.append(f"Chosen node: {doc['chosen']}")
        for key, value in sorted((doc.get("devices") or {}).items()):
            out.append(f"  {key}: {value}")
    nodes: Sequence[Mapping[str, Any]] = doc.get("nodes") or []
    if nodes:
        out.append(f"Candidates: {doc.get('candidates', len(nodes))}")
        for node in nodes:
            where = ""
            if node.get("container") is not None:
                where = f" (container {node['container']}"
                where += f", {node['vendor']})" if node.get("vendor") else ")"
            predicates = [p for p in node.get("predicates") or () if p != node.get("reason")]
            detail = node.get("detail") or ", ".join(predicates)
            out.append(
                f"  {node.get('node')}: {node.get('reason')}{where}" + (f": {detail}" if detail else "")
            )
            for device in node.get("devices") or []:
                out.append(f"      - {device.get('message') or device.get('reason')}")
    omitted = doc.get("omittedNodes") or 0
    if omitted:
        out.append(f"  ... and {omitted} more node(s) not shown")
    return "\n".join(out) + "\n"
