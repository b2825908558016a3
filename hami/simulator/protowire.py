"""Just enough of Kubernetes' protobuf encoding for kubectl's typed ``create`` commands.

``kubectl create namespace|configmap|secret`` send ``application/vnd.kubernetes.protobuf`` bodies:
the magic ``k8s\\x00`` then a ``runtime.Unknown`` whose ``raw`` field holds the object. This module
decodes those three kinds (ObjectMeta name/generateName/namespace/labels/annotations/finalizers and
their simple payloads) into JSON form. Any other kind, or one with fields it does not know, is
refused with 415 naming what to use instead, rather than being half-decoded.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

from hami.simulator.statuses import StatusError

MAGIC = b"k8s\x00"
JsonObj = dict[str, Any]
Field = tuple[int, int, Any]  # number, wire type, value (int for varint, bytes for length-delimited)


class _Malformed(Exception):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise _Malformed("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Malformed("varint too long")


def _fields(data: bytes) -> Iterator[Field]:
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, wire, value
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise _Malformed("truncated field")
            yield number, wire, data[pos : pos + length]
            pos += length
        else:
            raise _Malformed(f"unsupported wire type {wire}")


def _text(value: Any) -> str:
    if not isinstance(value, bytes):
        raise _Malformed("expected a string")
    return value.decode()


def _map_entry(value: bytes) -> tuple[str, bytes]:
    key, item = "", b""
    for number, _, part in _fields(value):
        if number == 1:
            key = _text(part)
        elif number == 2:
            item = part
    return key, item


def _metadata(data: bytes) -> JsonObj:
    meta: JsonObj = {}
    names = {1: "name", 2: "generateName", 3: "namespace"}
    for number, _, value in _fields(data):
        if number in names:
            meta[names[number]] = _text(value)
        elif number in (11, 12):
            key, item = _map_entry(value)
            meta.setdefault("labels" if number == 11 else "annotations", {})[key] = item.decode()
        elif number == 14:
            meta.setdefault("finalizers", []).append(_text(value))
        elif number in (4, 5, 6, 7, 8, 17):
            continue  # server-owned on create: selfLink, uid, RV, generation, timestamps, managedFields
        else:
            raise _Malformed(f"ObjectMeta field {number}")
    return meta


def _namespace(obj: JsonObj, number: int, value: Any) -> None:
    if number == 2:
        finalizers = [_text(v) for n, _, v in _fields(value) if n == 1]
        obj["spec"] = {"finalizers": finalizers} if finalizers else {}
    elif number != 3:  # status is server-owned
        raise _Malformed(f"Namespace field {number}")


def _configmap(obj: JsonObj, number: int, value: Any) -> None:
    if number == 2:
        key, item = _map_entry(value)
        obj.setdefault("data", {})[key] = item.decode()
    elif number == 3:
        key, item = _map_entry(value)
        obj.setdefault("binaryData", {})[key] = base64.b64encode(item).decode()
    elif number == 4:
        obj["immutable"] = bool(value)
    else:
        raise _Malformed(f"ConfigMap field {number}")


def _secret(obj: JsonObj, number: int, value: Any) -> None:
    if number == 2:
        key, item = _map_entry(value)
        obj.setdefault("data", {})[key] = base64.b64encode(item).decode()
    elif number == 3:
        obj["type"] = _text(value)
    elif number == 4:
        key, item = _map_entry(value)
        obj.setdefault("stringData", {})[key] = item.decode()
    elif number == 5:
        obj["immutable"] = bool(value)
    else:
        raise _Malformed(f"Secret field {number}")


_KINDS: dict[str, Callable[[JsonObj, int, Any], None]] = {
    "Namespace": _namespace,
    "ConfigMap": _configmap,
    "Secret": _secret,
}


def decode(body: bytes) -> JsonObj:
    """A protobuf-encoded Namespace, ConfigMap or Secret as JSON; 415 for anything else."""
    try:
        if not body.startswith(MAGIC):
            raise _Malformed("missing the k8s protobuf magic prefix")
        api_version = kind = ""
        raw = b""
        for number, _, value in _fields(body[len(MAGIC) :]):
            if number == 1:
                for sub, _, item in _fields(value):
                    if sub == 1:
                        api_version = _text(item)
                    elif sub == 2:
                        kind = _text(item)
            elif number == 2:
                raw = value
        decode_field = _KINDS.get(kind)
        if decode_field is None:
            raise _Malformed(f"kind {kind or '<none>'}")
        obj: JsonObj = {"apiVersion": api_version, "kind": kind}
        for number, _, value in _fields(raw):
            if number == 1:
                obj["metadata"] = _metadata(value)
            else:
                decode_field(obj, number, value)
        return obj
    except (_Malformed, UnicodeDecodeError) as e:
        raise StatusError(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: "
            "application/json, application/yaml (protobuf is understood only for simple "
            f"Namespace/ConfigMap/Secret bodies: {e}; send JSON, e.g. kubectl apply -f / create -f)",
        ) from None
