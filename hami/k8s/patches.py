"""Patch builders: merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge.

Writes are accumulated into one ``Patch`` value and sent in one call; cached objects are
never edited in place (style guide §3.3). Optimistic concurrency:

* a merge/strategic patch carrying ``metadata.resourceVersion`` is a precondition: the
  server answers **409 Conflict** when the object moved on (k8s-apis.md §6.8);
* a JSON patch gets a leading ``test`` op on ``/metadata/resourceVersion``; a failed test
  is **422 Invalid** (not 409), so callers catch ``ApiInvalid`` there.

Without a resourceVersion the server applies the patch to the latest object, so merge
patches of different annotation keys never conflict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

MERGE_PATCH: Final = "application/merge-patch+json"
JSON_PATCH: Final = "application/json-patch+json"
STRATEGIC_MERGE_PATCH: Final = "application/strategic-merge-patch+json"

PatchType = Literal[
    "application/merge-patch+json",
    "application/json-patch+json",
    "application/strategic-merge-patch+json",
]


@dataclass(frozen=True, slots=True)
class Patch:
    """A ready-to-send patch: its content type and its encoded body."""

    content_type: PatchType
    body: bytes

    def decoded(self) -> Any:
        return orjson.loads(self.body)


def _with_rv(changes: Mapping[str, Any], resource_version: str | None) -> dict[str, Any]:
    body = dict(changes)
    if resource_version is not None:
        if not resource_version:
            raise ValueError("an empty resourceVersion is not a precondition")
        meta = dict(body.get("metadata") or {})
        meta["resourceVersion"] = resource_version
        body["metadata"] = meta
    return body


def merge_patch(changes: Mapping[str, Any], *, resource_version: str | None = None) -> Patch:
    """RFC 7386: maps merge, ``None`` deletes a key, lists are replaced whole."""
    return Patch(MERGE_PATCH, orjson.dumps(_with_rv(changes, resource_version)))


def strategic_merge_patch(changes: Mapping[str, Any], *, resource_version: str | None = None) -> Patch:
    """Strategic merge (built-in kinds only): keyed lists such as containers merge by name."""
    return Patch(STRATEGIC_MERGE_PATCH, orjson.dumps(_with_rv(changes, resource_version)))


def metadata_patch(
    *,
    annotations: Mapping[str, str | None] | None = None,
    labels: Mapping[str, str | None] | None = None,
    resource_version: str | None = None,
) -> Patch:
    """Merge patch of annotations and/or labels; a ``None`` value removes that key."""
    meta: dict[str, Any] = {}
    if annotations:
        meta["annotations"] = dict(annotations)
    if labels:
        meta["labels"] = dict(labels)
    if not meta and resource_version is None:
        raise ValueError("an empty metadata patch changes nothing")
    return merge_patch({"metadata": meta}, resource_version=resource_version)


# --------------------------------------------------------------------------- JSON patch


def pointer(*parts: str | int) -> str:
    """A JSON pointer: ``pointer("metadata", "annotations", "hami.io/x")`` →
    ``/metadata/annotations/hami.io~1x`` (``~`` → ``~0``, ``/`` → ``~1``)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


@dataclass(frozen=True, slots=True)
class JsonPatchOp:
    op: Literal["add", "remove", "replace", "test", "move", "copy"]
    path: str
    value: Any = None
    from_: str | None = None

    def encode(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"op": self.op, "path": self.path}
        if self.op in ("add", "replace", "test"):
            doc["value"] = self.value
        if self.op in ("move", "copy"):
            if self.from_ is None:
                raise ValueError(f"JSON patch {self.op} needs a 'from' path")
            doc["from"] = self.from_
        return doc


def op_add(path: str, value: Any) -> JsonPatchOp:
    return JsonPatchOp("add", path, value)


def op_replace(path: str, value: Any) -> JsonPatchOp:
    return JsonPatchOp("replace", path, value)


def op_remove(path: str) -> JsonPatchOp:
    return JsonPatchOp("remove", path)


def op_test(path: str, value: Any) -> JsonPatchOp:
    return JsonPatchOp("test", path, value)


def json_patch(ops: Iterable[JsonPatchOp], *, resource_version: str | None = None) -> Patch:
    """RFC 6902. With ``resource_version`` a ``test`` op guards the whole patch (422 if stale)."""
    encoded = [op.encode() for op in ops]
    if resource_version is not None:
        if not resource_version:
            raise ValueError("an empty resourceVersion is not a precondition")
        encoded.insert(0, op_test(pointer("metadata", "resourceVersion"), resource_version).encode())
    if not encoded:
        raise ValueError("an empty JSON patch changes nothing")
    return Patch(JSON_PATCH, orjson.dumps(encoded))


def annotation_ops(current: Mapping[str, str] | None, changes: Mapping[str, str | None]) -> list[JsonPatchOp]:
    """JSON-patch ops setting/removing annotations given the object's current annotations
    (``add`` on a missing parent map fails, so the map is created whole when absent)."""
    if current is None:
        values = {k: v for k, v in changes.items() if v is not None}
        return [op_add(pointer("metadata", "annotations"), values)] if values else []
    ops: list[JsonPatchOp] = []
    for key, value in changes.items():
        path = pointer("metadata", "annotations", key)
        if value is None:
            if key in current:
                ops.append(op_remove(path))
        else:
            ops.append(op_add(path, value))
    return ops
