"""The AdmissionReview envelope (spec §3 status conventions, k8s-apis.md §9.1), without HTTP."""

from __future__ import annotations

import base64
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from webhook_builders import capacity, container, gpu, pod, request

from hami.core.admission import PodAdmission
from hami.core.ledger import Ledger
from hami.scheduler.webhook import SnapshotCapacity, WebhookHandler

GPU = "nvidia.com/gpu"
JSON = "application/json"


def review_body(obj, *, api_version="admission.k8s.io/v1", uid="7f3c", **kw) -> bytes:
    return orjson.dumps(
        {"apiVersion": api_version, "kind": "AdmissionReview", "request": request(obj, uid=uid, **kw)}
    )


def well_formed(answer: dict, api_version: str = "admission.k8s.io/v1") -> dict:
    """Check the answer's shape; return its response."""
    assert answer["apiVersion"] == api_version and answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert isinstance(response["uid"], str) and isinstance(response["allowed"], bool)
    status = response["status"]
    assert status["code"] in (200, 400, 403, 500)
    assert response["allowed"] == (status["code"] == 200)
    if status["code"] == 403:
        assert status["reason"] == "Forbidden" and status["message"]
    if status["code"] in (400, 500):
        assert status["message"]
    assert ("patch" in response) == ("patchType" in response)
    if "patch" in response:
        assert response["allowed"] and response["patchType"] == "JSONPatch"
        ops = json.loads(base64.b64decode(response["patch"], validate=True))
        assert ops and all(
            op["op"] in ("add", "replace", "remove") and op["path"].startswith("/") for op in ops
        )
    orjson.dumps(answer)  # serialisable
    return response


@pytest.fixture
def handler() -> WebhookHandler:
    return WebhookHandler(PodAdmission())


@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_allowed_with_patch_echoes_version_and_uid(handler, api_version):
    answer = handler.respond(review_body(pod(container(limits={GPU: "1"})), api_version=api_version), JSON)
    response = well_formed(answer, api_version)
    assert response["uid"] == "7f3c" and response["status"] == {"code": 200}
    ops = json.loads(base64.b64decode(response["patch"]))
    assert {"op": "replace", "path": "/spec/schedulerName", "value": "hami-scheduler"} in ops


def test_allowed_without_change_has_no_patch(handler):
    response = well_formed(handler.respond(review_body(pod(container())), JSON))
    assert response == {"uid": "7f3c", "allowed": True, "status": {"code": 200}}


def test_allowed_message_and_warnings(handler):
    body = pod(container(limits={GPU: "1"}, securityContext={"privileged": True}), scheduler="volcano")
    response = well_formed(handler.respond(review_body(body), JSON))
    assert response["status"] == {"code": 200, "message": "pod already has different scheduler assigned"}
    body = pod(container(limits={GPU: "1"}, securityContext={"privileged": True}))
    response = well_formed(handler.respond(review_body(body), JSON))
    assert response["warnings"] == ["container 'c0' is privileged: HAMi does not manage its devices"]


def test_denied_is_403_forbidden(handler):
    response = well_formed(handler.respond(review_body({"metadata": {}, "spec": {"containers": []}}), JSON))
    assert response["allowed"] is False
    assert response["status"] == {"code": 403, "reason": "Forbidden", "message": "pod has no containers"}


def test_errored_is_400_with_the_field(handler):
    response = well_formed(handler.respond(review_body(pod(container(limits={GPU: "x"}))), JSON))
    assert response["status"]["code"] == 400
    assert "spec.containers[0].resources.limits['nvidia.com/gpu']" in response["status"]["message"]


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (review_body(pod(container())), "text/plain", "Content-Type=text/plain, expected application/json"),
        (b"", JSON, "request body is empty"),
        (b"  \n", JSON, "request body is empty"),
        (b"{not json", JSON, "malformed JSON"),
        (b"[1, 2]", JSON, "expected an AdmissionReview object, got JSON list"),
        (
            b'{"apiVersion": "admission.k8s.io/v2", "kind": "AdmissionReview"}',
            JSON,
            "apiVersion admission.k8s.io/v2",
        ),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}', JSON, "kind Pod: expected AdmissionReview"),
        (
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}',
            JSON,
            "AdmissionReview has no request",
        ),
        (
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": 3}',
            JSON,
            "request: expected an object, got JSON int",
        ),
        (
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"object": {}}}',
            JSON,
            "request.uid is missing",
        ),
        (
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 7}}',
            JSON,
            "request.uid: expected a string, got JSON int",
        ),
        (
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u"}}',
            JSON,
            "request.object: expected a Pod object, got missing",
        ),
    ],
)
def test_bad_reviews_are_400_naming_the_problem(handler, body, content_type, message):
    response = well_formed(handler.respond(body, content_type))
    assert response["allowed"] is False and response["status"]["code"] == 400
    assert message in response["status"]["message"]


def test_v1beta1_error_keeps_version_and_uid(handler):
    body = b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "u1"}}'
    response = well_formed(handler.respond(body, JSON), "admission.k8s.io/v1beta1")
    assert response["uid"] == "u1" and response["status"]["code"] == 400


def test_unexpected_exception_is_500_not_a_crash():
    class Broken:
        def review_request(self, request, *, capacity=None):
            raise RuntimeError("bug")

    response = well_formed(WebhookHandler(Broken()).respond(review_body(pod(container())), JSON))
    assert response["status"] == {"code": 500, "message": "internal error: RuntimeError"}


def test_capacity_provider_feeds_the_impossible_check():
    cap = capacity({"n": [gpu("g0"), gpu("g1")]})
    calls = []

    def provider():
        calls.append(1)
        return cap

    handler = WebhookHandler(PodAdmission(), capacity=provider)
    response = well_formed(handler.respond(review_body(pod(container(limits={GPU: "3"}))), JSON))
    assert response["status"]["code"] == 403 and "no node has more than 2" in response["status"]["message"]
    assert calls == [1]
    unsynced = WebhookHandler(PodAdmission(), capacity=lambda: None)
    assert well_formed(unsynced.respond(review_body(pod(container(limits={GPU: "3"}))), JSON))["allowed"]


def test_snapshot_capacity_is_memoised_by_generation_and_gated_by_sync():
    ledger = Ledger()
    synced = False
    provider = SnapshotCapacity(ledger.snapshot, lambda: synced)
    assert provider() is None
    synced = True
    assert provider().empty
    ledger.set_node_devices("n", [gpu("g0")])
    first = provider()
    assert not first.empty and provider() is first
    ledger.set_node_devices("n", [gpu("g0"), gpu("g1")])
    assert provider() is not first and max(c.slots for s in provider().shapes for c in s) == 2


# ------------------------------------------------------------------------------------------ fuzz

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_any = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=25,
)
resource_values = st.one_of(
    st.sampled_from(["1", "2", "0", "100", "4Gi", "500m", "-1", "x", "1e3"]), json_any
)
resource_names = st.sampled_from(
    [
        GPU,
        "nvidia.com/gpumem",
        "nvidia.com/gpumem-percentage",
        "nvidia.com/gpucores",
        "nvidia.com/priority",
        "cpu",
    ]
)
containers = st.fixed_dictionaries(
    {"name": st.text(max_size=5)},
    optional={
        "resources": st.fixed_dictionaries(
            {},
            optional={
                "limits": st.dictionaries(resource_names, resource_values, max_size=4) | json_any,
                "requests": st.dictionaries(resource_names, resource_values, max_size=3),
            },
        )
        | json_any,
        "securityContext": st.fixed_dictionaries({"privileged": json_any}) | json_any,
        "env": st.lists(st.fixed_dictionaries({"name": st.text(max_size=30), "value": st.text(max_size=3)}))
        | json_any,
    },
)
pods = st.fixed_dictionaries(
    {},
    optional={
        "metadata": st.fixed_dictionaries(
            {},
            optional={
                "labels": st.dictionaries(
                    st.sampled_from(["hami.io/webhook", "a"]), st.sampled_from(["ignore", "x"])
                )
                | json_any,
                "annotations": st.dictionaries(
                    st.sampled_from(["nvidia.com/use-gputype", "nvidia.com/numa-bind", "x"]),
                    st.text(max_size=5),
                )
                | json_any,
            },
        ),
        "spec": st.fixed_dictionaries(
            {},
            optional={
                "containers": st.lists(containers, max_size=3) | json_any,
                "schedulerName": st.sampled_from(["", "default-scheduler", "hami-scheduler", "other"])
                | json_any,
                "nodeName": st.text(max_size=3) | json_any,
                "runtimeClassName": json_any,
            },
        )
        | json_any,
    },
)
messy_reviews = st.fixed_dictionaries(
    {},
    optional={
        "apiVersion": st.sampled_from(["admission.k8s.io/v1", "admission.k8s.io/v1beta1", "v1"]) | json_any,
        "kind": st.just("AdmissionReview") | json_any,
        "request": st.fixed_dictionaries(
            {},
            optional={
                "uid": st.text(max_size=8) | json_any,
                "operation": st.sampled_from(["CREATE", "UPDATE"]) | json_any,
                "kind": st.just({"group": "", "version": "v1", "kind": "Pod"}) | json_any,
                "object": pods | json_any,
            },
        )
        | json_any,
    },
)
# Mostly valid envelopes around mostly plausible pods, so the fuzz reaches the pod rules.
plausible_containers = st.fixed_dictionaries(
    {
        "name": st.text(max_size=5),
        "resources": st.fixed_dictionaries(
            {
                "limits": st.dictionaries(
                    resource_names, st.sampled_from(["1", "2", "3", "100", "50", "24576", "30000"])
                )
            }
        ),
    },
    optional={"securityContext": st.fixed_dictionaries({"privileged": st.booleans()})},
)
plausible_pods = st.fixed_dictionaries(
    {
        "metadata": st.just({"name": "p"}),
        "spec": st.fixed_dictionaries({"containers": st.lists(plausible_containers, max_size=3)}),
    },
    optional={"extra": json_any},
)
valid_reviews = st.fixed_dictionaries(
    {
        "apiVersion": st.sampled_from(["admission.k8s.io/v1", "admission.k8s.io/v1beta1"]),
        "kind": st.just("AdmissionReview"),
        "request": st.fixed_dictionaries(
            {
                "uid": st.text(min_size=1, max_size=8),
                "operation": st.just("CREATE"),
                "object": plausible_pods | pods,
            }
        ),
    }
)
reviews = valid_reviews | messy_reviews
FUZZ_CAPACITY = capacity({"n": [gpu("g0"), gpu("g1", mem=8000, type="NVIDIA-T4")]})


@settings(max_examples=400, deadline=None)
@given(reviews, st.booleans())
def test_fuzzed_reviews_always_get_a_well_formed_answer(review, with_capacity):
    handler = WebhookHandler(PodAdmission(), capacity=lambda: FUZZ_CAPACITY if with_capacity else None)
    answer = handler.respond(json.dumps(review).encode(), JSON)
    api_version = review.get("apiVersion")
    expected = api_version if api_version in ("admission.k8s.io/v1", "admission.k8s.io/v1beta1") else None
    response = well_formed(answer, expected or "admission.k8s.io/v1")
    assert response["status"]["code"] != 500, response  # every bad input is named, never an internal error


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.sampled_from([JSON, "text/plain", ""]))
def test_fuzzed_bytes_always_get_a_well_formed_answer(body, content_type):
    response = well_formed(WebhookHandler(PodAdmission()).respond(body, content_type))
    assert response["status"]["code"] in (200, 400, 403)
