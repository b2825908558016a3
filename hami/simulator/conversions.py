"""Conversion between the two Event APIs, which share one storage (core v1 form) as in kube-apiserver.

``events.k8s.io/v1`` renames fields of the core ``v1`` Event (``regarding`` = ``involvedObject``,
``note`` = ``message``, ``reportingController`` = ``reportingComponent``, ``deprecated*`` = the legacy
source/timestamps/count). Objects of every other kind pass through unchanged.
"""

from __future__ import annotations

from typing import Any

from hami.simulator.resources import ResourceType

JsonObj = dict[str, Any]

# (events.k8s.io/v1 name, core v1 name)
_RENAMES: tuple[tuple[str, str], ...] = (
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
)
_SAME = ("metadata", "reason", "type", "action", "related", "eventTime", "series", "reportingInstance")


def is_events_v1(rt: ResourceType) -> bool:
    return rt.group == "events.k8s.io"


def to_view(rt: ResourceType, obj: JsonObj) -> JsonObj:
    """Stored form → the form of ``rt``'s API version."""
    if not is_events_v1(rt):
        return obj
    out: JsonObj = {"kind": "Event", "apiVersion": rt.api_version}
    for key in _SAME:
        if key in obj:
            out[key] = obj[key]
    for new, old in _RENAMES:
        if obj.get(old) not in (None, {}, ""):
            out[new] = obj[old]
    series = obj.get("series")
    if isinstance(series, dict):
        out["series"] = {"count": series.get("count", 0), "lastObservedTime": series.get("lastObservedTime")}
    return out


def from_view(rt: ResourceType, obj: Any) -> Any:
    """A request body in ``rt``'s API version → stored form."""
    if not is_events_v1(rt) or not isinstance(obj, dict):
        return obj
    out: JsonObj = {"kind": "Event", "apiVersion": "v1"}
    for key in _SAME:
        if key in obj:
            out[key] = obj[key]
    for new, old in _RENAMES:
        if new in obj:
            out[old] = obj[new]
    return out
