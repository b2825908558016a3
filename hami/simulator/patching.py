"""PATCH bodies: JSON merge patch (RFC 7386), strategic merge patch, JSON patch (RFC 6902).

Strategic merge knows the patch-merge keys of the built-in kinds we serve (k8s-apis.md §6.8):
lists of containers/env/volumes/... merge by key, ``metadata.finalizers`` merges as a set, other
lists are replaced; directives ``$patch: replace|delete|merge``, ``$retainKeys``,
``$setElementOrder/<field>`` and ``$deleteFromPrimitiveList/<field>`` are honoured.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from hami.simulator.statuses import StatusError, bad_request, unprocessable_patch

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, APPLY_PATCH)
MAX_JSON_PATCH_OPS = 10_000

# Field name → patchMergeKey (struct tags of k8s.io/api core/v1, resource/v1, meta/v1).
MERGE_KEYS: Mapping[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "conditions": "type",
    "ownerReferences": "uid",
    "resourceClaims": "name",
    "resourceClaimStatuses": "name",
    "reservedFor": "uid",
    "addresses": "type",
    "hostAliases": "ip",
    "podIPs": "ip",
    "hostIPs": "ip",
    "topologySpreadConstraints": "topologyKey",
    "schedulingGates": "name",
}
# Lists of scalars with patchStrategy "merge" (a set union).
PRIMITIVE_MERGE_LISTS = frozenset({"finalizers"})


def unsupported_media_type() -> StatusError:
    return StatusError(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: "
        + ", ".join(PATCH_TYPES),
    )


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


# ---------------------------------------------------------------------------- merge patch
def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# ---------------------------------------------------------------------------- strategic merge patch
def strategic_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        raise bad_request("strategic merge patch body must be a JSON object")
    return _smp_map(target if isinstance(target, dict) else {}, patch)


def _smp_map(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any] | None:
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: v for k, v in patch.items() if not k.startswith("$")}
    if directive not in (None, "merge"):
        raise bad_request(f"Unknown patch type: {directive}")
    result = dict(target)
    retain = patch.get("$retainKeys")
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = value if isinstance(value, list) else []
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            existing = result.get(name)
            if isinstance(existing, list) and isinstance(value, list):
                result[name] = [v for v in existing if v not in value]
            continue
        if value is None:
            result.pop(key, None)
            continue
        current = result.get(key)
        if isinstance(value, dict):
            merged = _smp_map(current if isinstance(current, dict) else {}, value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _smp_list(key, current if isinstance(current, list) else [], value)
        else:
            result[key] = value
    for name, order in orders.items():
        if isinstance(result.get(name), list):
            result[name] = _apply_order(name, result[name], order)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _smp_list(field: str, current: list[Any], patch: list[Any]) -> list[Any]:
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [p for p in patch if not (isinstance(p, dict) and "$patch" in p)]
    if field in PRIMITIVE_MERGE_LISTS:
        result = list(current)
        for value in patch:
            if value not in result:
                result.append(value)
        return result
    key = _merge_key(field, [*current, *patch])
    if key is None or not all(isinstance(p, dict) for p in patch):
        return [p for p in patch if not (isinstance(p, dict) and p.get("$patch") == "delete")]
    result = [dict(c) if isinstance(c, dict) else c for c in current]
    for item in patch:
        wanted = item.get(key)
        index = next((i for i, c in enumerate(result) if isinstance(c, dict) and c.get(key) == wanted), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
            continue
        if index is None:
            merged = _smp_map({}, item)
            if merged is not None:
                result.append(merged)
        else:
            merged = _smp_map(result[index], item)
            if merged is None:
                del result[index]
            else:
                result[index] = merged
    return result


def _merge_key(field: str, items: list[Any]) -> str | None:
    """A Service's ``ports`` merge by ``port``, a container's by ``containerPort``: only a ServicePort
    has ``port`` without ``containerPort``."""
    if field == "ports" and any(
        isinstance(i, dict) and "port" in i and "containerPort" not in i for i in items
    ):
        return "port"
    return MERGE_KEYS.get(field)


def _apply_order(field: str, items: list[Any], order: list[Any]) -> list[Any]:
    key = _merge_key(field, [*items, *order])

    def ident(item: Any) -> Any:
        return item.get(key) if key and isinstance(item, dict) else item

    wanted = [o.get(key) if key and isinstance(o, dict) else o for o in order]
    ranked = {w: i for i, w in enumerate(wanted)}
    in_order = sorted((i for i in items if ident(i) in ranked), key=lambda i: ranked[ident(i)])
    rest = [i for i in items if ident(i) not in ranked]
    return in_order + rest


# ---------------------------------------------------------------------------- JSON patch
class _PatchFailed(Exception):
    pass


def _unescape_token(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _tokens(path: Any) -> list[str]:
    if not isinstance(path, str):
        raise _PatchFailed(f"path must be a string, got {path!r}")
    if path == "":
        return []
    if not path.startswith("/"):
        raise _PatchFailed(f'JSON pointer must be empty or start with a "/": {path!r}')
    return [_unescape_token(t) for t in path[1:].split("/")]


def _index(container: list[Any], token: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise _PatchFailed(f"invalid array index {token!r}")
    index = int(token)
    if index > len(container) or (index == len(container) and not allow_end):
        raise _PatchFailed(f"array index out of bounds: {index}")
    return index


def _parent(doc: Any, tokens: list[str]) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise _PatchFailed(f"missing value at path /{'/'.join(tokens)}: {token!r} not found")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, allow_end=False)]
        else:
            raise _PatchFailed(f"cannot traverse into a scalar at {token!r}")
    return node


def _get(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        return doc
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise _PatchFailed(f"path /{'/'.join(tokens)} does not exist")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, allow_end=False)]
    raise _PatchFailed("cannot read from a scalar")


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, allow_end=True), value)
    else:
        raise _PatchFailed("cannot add to a scalar")
    return doc


def _remove(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise _PatchFailed("cannot remove the whole document")
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise _PatchFailed(f"unable to remove nonexistent key: {last}: missing value")
        del parent[last]
    elif isinstance(parent, list):
        del parent[_index(parent, last, allow_end=False)]
    else:
        raise _PatchFailed("cannot remove from a scalar")
    return doc


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 on a private copy of ``target``; a failed op is 422 (k8s-apis.md §6.8)."""
    if not isinstance(ops, list):
        raise bad_request("json patch body must be a JSON array of operations")
    if len(ops) > MAX_JSON_PATCH_OPS:
        raise StatusError(
            413,
            "RequestEntityTooLarge",
            f"The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPS}, got {len(ops)}",
        )
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict):
            raise bad_request(f"json patch operation must be an object, got {op!r}")
        kind = op.get("op")
        try:
            tokens = _tokens(op.get("path"))
            if kind == "add":
                doc = _add(doc, tokens, copy.deepcopy(op.get("value")))
            elif kind == "remove":
                doc = _remove(doc, tokens)
            elif kind == "replace":
                _get(doc, tokens)
                doc = (
                    _add(_remove(doc, tokens), tokens, copy.deepcopy(op.get("value")))
                    if tokens
                    else op.get("value")
                )
            elif kind in ("move", "copy"):
                source = _tokens(op.get("from"))
                value = copy.deepcopy(_get(doc, source))
                if kind == "move":
                    if tokens[: len(source)] == source and len(tokens) > len(source):
                        raise _PatchFailed("cannot move a value into one of its children")
                    doc = _remove(doc, source)
                doc = _add(doc, tokens, value)
            elif kind == "test":
                if _get(doc, tokens) != op.get("value"):
                    raise _PatchFailed(f"testing value {op.get('path')} failed: test failed")
            else:
                raise bad_request(f"Unexpected kind: {kind}")
        except _PatchFailed as e:
            raise unprocessable_patch(str(e)) from None
    return doc


def apply_patch(content_type: str | None, target: Any, patch: Any) -> Any:
    kind = media_type(content_type)
    if kind == MERGE_PATCH:
        return merge_patch(target, patch) if isinstance(patch, dict) else _bad_merge(patch)
    if kind == STRATEGIC_MERGE_PATCH:
        return strategic_merge_patch(target, patch)
    if kind == JSON_PATCH:
        return json_patch(target, patch)
    raise unsupported_media_type()


def _bad_merge(patch: Any) -> Any:
    raise bad_request(f"merge patch body must be a JSON object, got {type(patch).__name__}")
