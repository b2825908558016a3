"""core/v1 Event bodies (``kubectl describe`` shows them under the pod)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Final, Literal

from hami.k8s.objects import RawObject, format_time

EVENT_MESSAGE_LIMIT: Final = 1024

EventType = Literal["Normal", "Warning"]


def event_body(
    involved: RawObject,
    *,
    reason: str,
    message: str,
    type: EventType,
    component: str,
    action: str = "",
    now: datetime,
) -> dict[str, Any]:
    """A core/v1 Event for ``involved`` (message cut to 1024 characters)."""
    meta = involved.get("metadata") or {}
    name = meta.get("name", "unknown")
    namespace = meta.get("namespace") or "default"
    involved_ref = {
        "apiVersion": involved.get("apiVersion", "v1"),
        "kind": involved.get("kind", ""),
        "name": name,
        "namespace": meta.get("namespace", ""),
        "uid": meta.get("uid", ""),
        "resourceVersion": meta.get("resourceVersion", ""),
    }
    stamp = format_time(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{name}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
        "involvedObject": {k: v for k, v in involved_ref.items() if v},
        "reason": reason,
        "message": message[:EVENT_MESSAGE_LIMIT],
        "type": type,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
        "action": action or reason,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
