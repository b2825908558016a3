"""Server-side ``meta.k8s.io/v1`` Table output, so ``kubectl get`` prints real columns (k8s-apis.md §6.12).

Columns follow kube-apiserver's printers for pods, nodes, namespaces, events, leases and the DRA
kinds; any other kind gets ``Name`` and ``Created At``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hami.simulator.resources import ResourceType
from hami.simulator.strategies import parse_time

JsonObj = dict[str, Any]
Column = tuple[str, str, str, int]  # name, type, format, priority
Row = list[Any]


def human_duration(seconds: float) -> str:
    """apimachinery ``duration.HumanDuration``."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        rest = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if rest == 0 else f"{hours // 24 // 365}y{rest}d"
    return f"{hours // 24 // 365}y"


def _age(timestamp: Any, now: float) -> str:
    if not timestamp:
        return "<unknown>"
    try:
        return human_duration(now - parse_time(str(timestamp)))
    except ValueError:
        return "<unknown>"


def _name(obj: Mapping[str, Any]) -> str:
    return str(obj["metadata"].get("name", ""))


def _pod_row(pod: Mapping[str, Any], now: float) -> Row:
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    total = len(spec.get("containers") or [])
    ready = sum(1 for c in statuses if c.get("ready"))
    restarts = sum(int(c.get("restartCount") or 0) for c in statuses)
    reason = status.get("reason") or status.get("phase") or "Unknown"
    for c in statuses:
        state = c.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif state.get("terminated", {}).get("reason"):
            reason = state["terminated"]["reason"]
    if pod["metadata"].get("deletionTimestamp"):
        reason = "Terminating"
    gates = spec.get("readinessGates") or []
    return [
        _name(pod),
        f"{ready}/{total}",
        reason,
        restarts,
        _age(pod["metadata"].get("creationTimestamp"), now),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        f"{0}/{len(gates)}" if gates else "<none>",
    ]


def _node_row(node: Mapping[str, Any], now: float) -> Row:
    status = node.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    ready = conditions.get("Ready")
    state = "Ready" if ready == "True" else "NotReady" if ready == "False" else "Unknown"
    if (node.get("spec") or {}).get("unschedulable"):
        state += ",SchedulingDisabled"
    labels = node["metadata"].get("labels") or {}
    roles = sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/"))
    info = status.get("nodeInfo") or {}
    addresses = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    return [
        _name(node),
        state,
        ",".join(roles) or "<none>",
        _age(node["metadata"].get("creationTimestamp"), now),
        info.get("kubeletVersion", ""),
        addresses.get("InternalIP", "<none>"),
        addresses.get("ExternalIP", "<none>"),
        info.get("osImage", "<unknown>"),
        info.get("kernelVersion", "<unknown>"),
        info.get("containerRuntimeVersion", "<unknown>"),
    ]


def _event_row(ev: Mapping[str, Any], now: float) -> Row:
    involved = ev.get("involvedObject") or ev.get("regarding") or {}
    last = (
        ev.get("lastTimestamp")
        or ev.get("deprecatedLastTimestamp")
        or ev.get("eventTime")
        or (ev["metadata"].get("creationTimestamp"))
    )
    return [
        _age(last, now),
        ev.get("type", ""),
        ev.get("reason", ""),
        f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}",
        ev.get("message") or ev.get("note") or "",
    ]


def _claim_state(claim: Mapping[str, Any]) -> str:
    status = claim.get("status") or {}
    if claim["metadata"].get("deletionTimestamp"):
        return "deleted"
    parts = ["allocated" if status.get("allocation") else "pending"]
    if status.get("reservedFor"):
        parts.append("reserved")
    return ",".join(parts)


_S, _I, _D = "string", "integer", "date"
_PRINTERS: Mapping[str, tuple[Sequence[Column], Callable[[Mapping[str, Any], float], Row]]] = {
    "pods": (
        [
            ("Name", _S, "name", 0),
            ("Ready", _S, "", 0),
            ("Status", _S, "", 0),
            ("Restarts", _S, "", 0),
            ("Age", _S, "", 0),
            ("IP", _S, "", 1),
            ("Node", _S, "", 1),
            ("Nominated Node", _S, "", 1),
            ("Readiness Gates", _S, "", 1),
        ],
        _pod_row,
    ),
    "nodes": (
        [
            ("Name", _S, "name", 0),
            ("Status", _S, "", 0),
            ("Roles", _S, "", 0),
            ("Age", _S, "", 0),
            ("Version", _S, "", 0),
            ("Internal-IP", _S, "", 1),
            ("External-IP", _S, "", 1),
            ("OS-Image", _S, "", 1),
            ("Kernel-Version", _S, "", 1),
            ("Container-Runtime", _S, "", 1),
        ],
        _node_row,
    ),
    "namespaces": (
        [("Name", _S, "name", 0), ("Status", _S, "", 0), ("Age", _S, "", 0)],
        lambda o, now: [
            _name(o),
            (o.get("status") or {}).get("phase", ""),
            _age(o["metadata"].get("creationTimestamp"), now),
        ],
    ),
    "events": (
        [
            ("Last Seen", _S, "", 0),
            ("Type", _S, "", 0),
            ("Reason", _S, "", 0),
            ("Object", _S, "", 0),
            ("Message", _S, "", 0),
        ],
        _event_row,
    ),
    "leases.coordination.k8s.io": (
        [("Name", _S, "name", 0), ("Holder", _S, "", 0), ("Age", _S, "", 0)],
        lambda o, now: [
            _name(o),
            (o.get("spec") or {}).get("holderIdentity", ""),
            _age(o["metadata"].get("creationTimestamp"), now),
        ],
    ),
    "configmaps": (
        [("Name", _S, "name", 0), ("Data", _I, "", 0), ("Age", _S, "", 0)],
        lambda o, now: [
            _name(o),
            len(o.get("data") or {}) + len(o.get("binaryData") or {}),
            _age(o["metadata"].get("creationTimestamp"), now),
        ],
    ),
    "secrets": (
        [("Name", _S, "name", 0), ("Type", _S, "", 0), ("Data", _I, "", 0), ("Age", _S, "", 0)],
        lambda o, now: [
            _name(o),
            o.get("type", ""),
            len(o.get("data") or {}),
            _age(o["metadata"].get("creationTimestamp"), now),
        ],
    ),
    "resourceslices.resource.k8s.io": (
        [
            ("Name", _S, "name", 0),
            ("Node", _S, "", 0),
            ("Driver", _S, "", 0),
            ("Pool", _S, "", 0),
            ("Age", _S, "", 0),
        ],
        lambda o, now: [
            _name(o),
            (o.get("spec") or {}).get("nodeName", ""),
            (o.get("spec") or {}).get("driver", ""),
            ((o.get("spec") or {}).get("pool") or {}).get("name", ""),
            _age(o["metadata"].get("creationTimestamp"), now),
        ],
    ),
    "resourceclaims.resource.k8s.io": (
        [("Name", _S, "name", 0), ("State", _S, "", 0), ("Age", _S, "", 0)],
        lambda o, now: [_name(o), _claim_state(o), _age(o["metadata"].get("creationTimestamp"), now)],
    ),
}
_GENERIC: tuple[Sequence[Column], Callable[[Mapping[str, Any], float], Row]] = (
    [("Name", _S, "name", 0), ("Created At", _D, "", 0)],
    lambda o, now: [_name(o), o["metadata"].get("creationTimestamp", "")],
)


def _row_object(obj: JsonObj, include: str) -> JsonObj | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}


def to_table(
    rt: ResourceType,
    objects: Sequence[JsonObj],
    *,
    now: float,
    include_object: str = "Metadata",
    list_meta: JsonObj | None = None,
    api_version: str = "meta.k8s.io/v1",
) -> JsonObj:
    columns, printer = _PRINTERS.get(rt.store_key, _GENERIC)
    rows = []
    for obj in objects:
        row: JsonObj = {"cells": printer(obj, now)}
        attached = _row_object(obj, include_object)
        if attached is not None:
            row["object"] = attached
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": api_version,
        "metadata": list_meta or {},
        "columnDefinitions": [
            {"name": n, "type": t, "format": f, "description": n, "priority": p} for n, t, f, p in columns
        ],
        "rows": rows,
    }
