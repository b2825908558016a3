"""``POST /webhook`` over real HTTPS: the spec §3 exchange, HTTP-level errors, fuzzed bodies."""

from __future__ import annotations

import base64
import json
import ssl

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from webhook_pki import SERVICE_DNS

from hami.core.admission import PodAdmission
from hami.scheduler.webhook import WebhookHandler, webhook_routes

SPEC_REQUEST = {
    "apiVersion": "admission.k8s.io/v1beta1",
    "kind": "AdmissionReview",
    "request": {
        "uid": "7f3c5b2e-0000-4000-8000-000000000001",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "default",
        "operation": "CREATE",
        "object": {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "gpu-pod", "namespace": "default"},
            "spec": {
                "schedulerName": "default-scheduler",
                "containers": [
                    {"name": "c0", "image": "ubuntu", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
                ],
            },
        },
    },
}


@pytest.fixture
async def client(webhook, ca):
    context = ssl.create_default_context(cadata=ca.pem.decode())
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def post(session, webhook, data: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    async with session.post(
        f"https://127.0.0.1:{webhook.port}/webhook",
        data=data,
        headers={"Content-Type": content_type},
        server_hostname=SERVICE_DNS,
    ) as resp:
        return resp.status, json.loads(await resp.read())


async def test_spec_exchange_over_https(client, webhook):
    status, answer = await post(client, webhook, json.dumps(SPEC_REQUEST).encode())
    assert status == 200
    response = answer.pop("response")
    assert answer == {"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}
    patch = json.loads(base64.b64decode(response.pop("patch")))
    assert response == {
        "uid": "7f3c5b2e-0000-4000-8000-000000000001",
        "allowed": True,
        "status": {"code": 200},
        "patchType": "JSONPatch",
    }
    assert sorted(patch, key=lambda op: op["path"]) == [
        {"op": "add", "path": "/spec/containers/0/resources/limits/nvidia.com~1gpucores", "value": "100"},
        {"op": "replace", "path": "/spec/schedulerName", "value": "hami-scheduler"},
    ]


async def test_http_level_problems_are_answered_with_a_review(client, webhook):
    status, answer = await post(client, webhook, json.dumps(SPEC_REQUEST).encode(), "text/plain")
    assert status == 200 and answer["response"]["status"]["code"] == 400
    assert "Content-Type=text/plain" in answer["response"]["status"]["message"]
    status, answer = await post(client, webhook, b"")
    assert answer["response"]["status"] == {"code": 400, "message": "request body is empty"}
    status, answer = await post(client, webhook, b"{" + b" " * (70 * 1024) + b"}")
    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"] == {"code": 400, "message": "request body larger than 65536 bytes"}
    async with client.get(f"https://127.0.0.1:{webhook.port}/webhook", server_hostname=SERVICE_DNS) as resp:
        assert resp.status == 405


bodies = st.one_of(
    st.binary(max_size=200),
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=10),
        lambda children: (
            st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
        ),
        max_leaves=15,
    ).map(lambda value: json.dumps(value).encode()),
    st.builds(
        lambda request: json.dumps(
            {**SPEC_REQUEST, "request": {**SPEC_REQUEST["request"], **request}}
        ).encode(),
        st.dictionaries(
            st.sampled_from(["uid", "object", "operation", "kind"]),
            st.none() | st.integers() | st.text(max_size=5) | st.just({"spec": {"containers": [{}]}}),
        ),
    ),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(body=bodies)
async def test_fuzzed_bodies_over_https_get_well_formed_reviews(client, webhook, body):
    status, answer = await post(client, webhook, body)
    assert status == 200
    assert answer["kind"] == "AdmissionReview"
    assert answer["apiVersion"] in ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
    response = answer["response"]
    assert isinstance(response["uid"], str) and isinstance(response["allowed"], bool)
    assert response["status"]["code"] in (200, 400, 403)
    if not response["allowed"]:
        assert response["status"]["message"]


async def test_route_factory_mounts_the_same_endpoint():
    app = web.Application()
    app.router.add_routes(webhook_routes(WebhookHandler(PodAdmission()))(app))
    runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{port}/webhook", json=SPEC_REQUEST) as resp,
        ):
            answer = await resp.json()
        assert resp.status == 200 and answer["response"]["allowed"] is True and answer["response"]["patch"]
    finally:
        await runner.cleanup()
