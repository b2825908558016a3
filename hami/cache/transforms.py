"""Ingest-time transforms: shrink objects before they are cached (client-go ``SetTransform``).

A transform returns a *new* dict and never edits its input (the reflector's object may be
shared with other consumers of the same event).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hami.k8s.objects import RawMeta, RawObject

Transform = Callable[[RawObject], RawObject]


def strip_managed_fields(obj: RawObject) -> RawObject:
    """Drop ``metadata.managedFields`` (often half of a pod's bytes; nobody here reads it)."""
    meta = obj.get("metadata")
    if not meta or "managedFields" not in meta:
        return obj
    slim: RawMeta = {k: v for k, v in meta.items() if k != "managedFields"}  # type: ignore[assignment]
    out = dict(obj)
    out["metadata"] = slim
    return out  # type: ignore[return-value]


def strip_last_applied(obj: RawObject) -> RawObject:
    """Drop kubectl's ``last-applied-configuration`` annotation (a full copy of the spec)."""
    meta = obj.get("metadata")
    annotations = (meta or {}).get("annotations")
    key = "kubectl.kubernetes.io/last-applied-configuration"
    if not meta or not annotations or key not in annotations:
        return obj
    slim: RawMeta = dict(meta)  # type: ignore[assignment]
    slim["annotations"] = {k: v for k, v in annotations.items() if k != key}
    out = dict(obj)
    out["metadata"] = slim
    return out  # type: ignore[return-value]


def chain(*transforms: Transform) -> Transform:
    """Apply ``transforms`` left to right."""
    steps: Sequence[Transform] = tuple(transforms)

    def apply(obj: RawObject) -> RawObject:
        for step in steps:
            obj = step(obj)
        return obj

    return apply


DEFAULT_TRANSFORM: Transform = chain(strip_managed_fields, strip_last_applied)
