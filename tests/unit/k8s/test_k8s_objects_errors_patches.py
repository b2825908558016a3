from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from hami.k8s import errors as e
from hami.k8s.objects import (
    LEASES,
    NODES,
    PODS,
    format_micro_time,
    format_time,
    object_key,
    parse_time,
    split_key,
)
from hami.k8s.patches import (
    JSON_PATCH,
    MERGE_PATCH,
    annotation_ops,
    json_patch,
    merge_patch,
    metadata_patch,
    op_add,
    op_remove,
    pointer,
    strategic_merge_patch,
)


def test_resource_paths():
    assert PODS.collection_path() == "/api/v1/pods"
    assert PODS.collection_path("ns") == "/api/v1/namespaces/ns/pods"
    assert PODS.item_path("p", "ns", "binding") == "/api/v1/namespaces/ns/pods/p/binding"
    assert NODES.item_path("n1") == "/api/v1/nodes/n1"
    assert (
        LEASES.item_path("l", "kube-system") == "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/l"
    )
    assert LEASES.api_version == "coordination.k8s.io/v1" and PODS.api_version == "v1"
    assert LEASES.qualified == "leases.coordination.k8s.io"


@pytest.mark.parametrize("name", ["../x", "a/b", "", "a b", "x?y", ".."])
def test_resource_paths_reject_names_that_change_the_url(name):
    with pytest.raises(ValueError):
        PODS.item_path(name, "ns")


def test_namespace_rules():
    with pytest.raises(ValueError, match="namespaced"):
        PODS.item_path("p")
    with pytest.raises(ValueError, match="cluster-scoped"):
        NODES.collection_path("ns")


def test_keys():
    assert object_key({"metadata": {"name": "p", "namespace": "ns"}}) == "ns/p"
    assert object_key({"metadata": {"name": "n1"}}) == "n1"
    assert split_key("ns/p") == ("ns", "p") and split_key("n1") == (None, "n1")
    with pytest.raises(ValueError):
        object_key({"metadata": {}})


def test_micro_time_always_has_six_fractional_digits():
    assert format_micro_time(datetime(2026, 1, 5, 10, 0, 0, tzinfo=UTC)) == "2026-01-05T10:00:00.000000Z"
    assert (
        format_micro_time(datetime(2026, 1, 5, 10, 3, 12, 421337, tzinfo=UTC))
        == "2026-01-05T10:03:12.421337Z"
    )
    assert format_time(datetime(2026, 1, 5, 10, 3, 12, 421337, tzinfo=UTC)) == "2026-01-05T10:03:12Z"
    assert parse_time("2026-01-05T10:03:12.421337Z") == datetime(2026, 1, 5, 10, 3, 12, 421337, tzinfo=UTC)
    assert parse_time("2026-01-05T12:03:12+02:00") == datetime(2026, 1, 5, 10, 3, 12, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_time("yesterday")


def status(code: int, reason: str, message: str = "m", **details: object) -> bytes:
    doc = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }
    if details:
        doc["details"] = details
    return orjson.dumps(doc)


@pytest.mark.parametrize(
    ("code", "reason", "cls"),
    [
        (400, "BadRequest", e.ApiBadRequest),
        (401, "Unauthorized", e.ApiUnauthorized),
        (403, "Forbidden", e.ApiForbidden),
        (404, "NotFound", e.ApiNotFound),
        (409, "Conflict", e.ApiConflict),
        (409, "AlreadyExists", e.ApiAlreadyExists),
        (410, "Expired", e.ApiGone),
        (415, "UnsupportedMediaType", e.ApiUnsupportedMediaType),
        (422, "Invalid", e.ApiInvalid),
        (429, "TooManyRequests", e.ApiTooManyRequests),
        (418, "Teapot", e.ApiClientError),
        (500, "InternalError", e.ApiServerError),
        (503, "ServiceUnavailable", e.ApiServiceUnavailable),
        (504, "Timeout", e.ApiServerTimeout),
    ],
)
def test_errors_are_built_from_the_status_body(code, reason, cls):
    err = e.error_from_response(code, status(code, reason, 'pods "x" not found'), method="GET", path="/p")
    assert type(err) is cls
    assert err.status == code and err.reason == reason
    assert err.message == 'pods "x" not found'
    assert err.body is not None and err.body["code"] == code
    assert str(err) == f'GET /p: {code} {reason}: pods "x" not found'
    assert isinstance(err, e.ApiClientError) == (400 <= code < 500)


def test_retry_after_from_header_or_details():
    err = e.error_from_response(429, status(429, "TooManyRequests", retryAfterSeconds=3))
    assert err.retry_after == 3.0
    err = e.error_from_response(429, status(429, "TooManyRequests"), retry_after=e.parse_retry_after("7"))
    assert err.retry_after == 7.0
    assert e.parse_retry_after("soon") is None and e.parse_retry_after(None) is None


def test_non_status_bodies_are_truncated():
    err = e.error_from_response(502, b"<html>" + b"secret " * 1000)
    assert type(err) is e.ApiServerError
    assert len(err.message) < 300
    assert err.body is None


def test_watch_error_event_status_maps_to_gone():
    err = e.error_from_status(
        {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version: 1 (5)"}
    )
    assert isinstance(err, e.ApiGone)
    assert "too old" in err.message


def test_pointer_escapes():
    assert (
        pointer("metadata", "annotations", "hami.io/node-handshake")
        == "/metadata/annotations/hami.io~1node-handshake"
    )
    assert pointer("a~b", 0) == "/a~0b/0"


def test_merge_patch_with_rv_precondition():
    p = merge_patch({"metadata": {"annotations": {"a": "1", "b": None}}}, resource_version="42")
    assert p.content_type == MERGE_PATCH
    assert p.decoded() == {"metadata": {"annotations": {"a": "1", "b": None}, "resourceVersion": "42"}}
    assert metadata_patch(labels={"x": None}).decoded() == {"metadata": {"labels": {"x": None}}}
    assert strategic_merge_patch({"spec": {}}).content_type.startswith("application/strategic")
    with pytest.raises(ValueError):
        merge_patch({}, resource_version="")
    with pytest.raises(ValueError):
        metadata_patch()


def test_json_patch_with_rv_test_op():
    p = json_patch([op_add(pointer("metadata", "annotations", "k/x"), "v")], resource_version="7")
    assert p.content_type == JSON_PATCH
    assert p.decoded() == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
        {"op": "add", "path": "/metadata/annotations/k~1x", "value": "v"},
    ]
    with pytest.raises(ValueError):
        json_patch([])


def test_annotation_ops_create_the_map_when_absent():
    assert [o.encode() for o in annotation_ops(None, {"a": "1", "b": None})] == [
        {"op": "add", "path": "/metadata/annotations", "value": {"a": "1"}}
    ]
    ops = annotation_ops({"b": "2"}, {"a": "1", "b": None, "c": None})
    assert ops == [op_add("/metadata/annotations/a", "1"), op_remove("/metadata/annotations/b")]
