"""Admission webhooks called over real HTTPS with a self-signed CA, as kube-apiserver calls them."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from hami.simulator.resources import MUTATING_WEBHOOKS, NAMESPACES, PODS, VALIDATING_WEBHOOKS
from hami.simulator.server import ApiServer, ApiServerSettings

SVC_NS, SVC_NAME = "hami-system", "hami-webhook"


@dataclass(frozen=True)
class Pki:
    ca_pem: bytes
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(directory: Path, name: str) -> Pki:
    """A CA and a serving certificate for ``<svc>.<ns>.svc`` and 127.0.0.1 (EC keys: fast)."""
    directory.mkdir(parents=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        f"/CN={name}-ca",
        cwd=directory,
    )
    _openssl(
        "req",
        *ec,
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
        "-subj",
        f"/CN={SVC_NAME}.{SVC_NS}.svc",
        cwd=directory,
    )
    (directory / "ext.cnf").write_text(f"subjectAltName=DNS:{SVC_NAME}.{SVC_NS}.svc,IP:127.0.0.1\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.crt",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        cwd=directory,
    )
    return Pki((directory / "ca.crt").read_bytes(), directory / "tls.crt", directory / "tls.key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki") / "good", "good")


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki") / "other", "other")


@dataclass
class Hook:
    """The webhook server under test: records every AdmissionReview it gets."""

    port: int = 0
    reviews: list[dict] = field(default_factory=list)

    async def mutate(self, request: web.Request) -> web.Response:
        review = await request.json()
        self.reviews.append(review)
        patch = [{"op": "add", "path": "/metadata/labels/hami.io~1mutated", "value": "true"}]
        if not (review["request"]["object"]["metadata"].get("labels")):
            patch.insert(0, {"op": "add", "path": "/metadata/labels", "value": {}})
        return web.json_response(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": review["request"]["uid"],
                    "allowed": True,
                    "patchType": "JSONPatch",
                    "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
                },
            }
        )

    async def validate(self, request: web.Request) -> web.Response:
        review = await request.json()
        self.reviews.append(review)
        labels = review["request"]["object"]["metadata"].get("labels") or {}
        allowed = labels.get("deny") != "yes"
        response: dict = {"uid": review["request"]["uid"], "allowed": allowed}
        if not allowed:
            response["status"] = {"code": 403, "message": "pods labelled deny=yes are refused"}
        return web.json_response(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        )

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return await self.validate(request)

    async def wrong_uid(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {"uid": "not-the-request", "allowed": True},
            }
        )


@pytest.fixture
async def hook(pki: Pki) -> AsyncIterator[Hook]:
    state = Hook()
    app = web.Application()
    app.router.add_post("/mutate", state.mutate)
    app.router.add_post("/validate", state.validate)
    app.router.add_post("/slow", state.slow)
    app.router.add_post("/wrong-uid", state.wrong_uid)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert, pki.key)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    state.port = runner.addresses[0][1]
    yield state
    await runner.cleanup()


@pytest.fixture
async def server(hook: Hook) -> AsyncIterator[ApiServer]:
    def resolve(namespace: str, name: str, port: int) -> str:
        assert (namespace, name, port) == (SVC_NS, SVC_NAME, 443)
        return f"127.0.0.1:{hook.port}"

    async with ApiServer.running(settings=ApiServerSettings(webhook_service_resolver=resolve)) as srv:
        yield srv


def webhook(name: str, path: str, ca: bytes, *, url_port: int | None = None, **extra) -> dict:
    client_config: dict = {"caBundle": base64.b64encode(ca).decode()}
    if url_port is None:
        client_config["service"] = {"namespace": SVC_NS, "name": SVC_NAME, "path": path}
    else:
        client_config["url"] = f"https://127.0.0.1:{url_port}{path}"
    return {
        "name": name,
        "clientConfig": client_config,
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "rules": [
            {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}
        ],
        **extra,
    }


def configure(srv: ApiServer, mutating: list[dict] = (), validating: list[dict] = ()) -> None:
    if mutating:
        srv.store.create(
            MUTATING_WEBHOOKS, None, {"metadata": {"name": "hami-mutating"}, "webhooks": mutating}
        )
    if validating:
        srv.store.create(
            VALIDATING_WEBHOOKS, None, {"metadata": {"name": "hami-validating"}, "webhooks": validating}
        )


async def create_pod(srv: ApiServer, body: dict, namespace: str = "default") -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{srv.url}/api/v1/namespaces/{namespace}/pods", json=body) as resp,
    ):
        return resp.status, await resp.json()


def pod_body(**labels: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "job-", "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]},
    }


async def test_mutating_then_validating_over_https(server, hook, pki):
    configure(
        server,
        mutating=[webhook("vgpu.hami.io", "/mutate", pki.ca_pem)],
        validating=[webhook("check.hami.io", "/validate", pki.ca_pem)],
    )
    status, created = await create_pod(server, pod_body(app="x"))
    assert status == 201, created
    assert created["metadata"]["labels"] == {"app": "x", "hami.io/mutated": "true"}
    assert created["metadata"]["name"].startswith("job-")
    mutating_review, validating_review = hook.reviews
    request = mutating_review["request"]
    assert mutating_review["apiVersion"] == "admission.k8s.io/v1"
    assert request["operation"] == "CREATE" and request["namespace"] == "default"
    assert request["kind"] == {"group": "", "version": "v1", "kind": "Pod"}
    assert request["resource"] == {"group": "", "version": "v1", "resource": "pods"}
    assert "name" not in request  # generateName is resolved after mutating admission
    assert request["object"]["spec"]["schedulerName"] == "default-scheduler"  # defaults applied first
    assert validating_review["request"]["name"] == created["metadata"]["name"]
    assert validating_review["request"]["object"]["metadata"]["labels"]["hami.io/mutated"] == "true"

    status, denied = await create_pod(server, pod_body(deny="yes"))
    assert status == 403
    assert denied["message"] == (
        'admission webhook "check.hami.io" denied the request: pods labelled deny=yes are refused'
    )
    assert len(server.store.objects(PODS)) == 1


async def test_selectors_skip_the_webhook(server, hook, pki):
    ignore = {"matchExpressions": [{"key": "hami.io/webhook", "operator": "NotIn", "values": ["ignore"]}]}
    configure(
        server,
        mutating=[
            webhook("vgpu.hami.io", "/mutate", pki.ca_pem, namespaceSelector=ignore, objectSelector=ignore)
        ],
    )
    server.store.create(
        NAMESPACES, None, {"metadata": {"name": "quiet", "labels": {"hami.io/webhook": "ignore"}}}
    )
    _, in_quiet_ns = await create_pod(server, pod_body(), namespace="quiet")
    _, opted_out = await create_pod(server, pod_body(**{"hami.io/webhook": "ignore"}))
    _, mutated = await create_pod(server, pod_body())
    assert (
        "labels" not in in_quiet_ns["metadata"] or "hami.io/mutated" not in in_quiet_ns["metadata"]["labels"]
    )
    assert "hami.io/mutated" not in opted_out["metadata"]["labels"]
    assert mutated["metadata"]["labels"] == {"hami.io/mutated": "true"}
    assert len(hook.reviews) == 1


async def test_failure_policy_on_unreachable_bad_ca_slow_and_bad_answers(server, hook, pki, other_ca):
    unused = socket_port()
    configure(
        server,
        validating=[
            webhook("down.hami.io", "/validate", pki.ca_pem, url_port=unused, failurePolicy="Ignore")
        ],
    )
    status, _ = await create_pod(server, pod_body())
    assert status == 201  # Ignore: the failed call is skipped

    cases = [
        webhook("down.hami.io", "/validate", pki.ca_pem, url_port=unused),
        webhook("untrusted.hami.io", "/validate", other_ca.ca_pem),
        webhook("slow.hami.io", "/slow", pki.ca_pem, timeoutSeconds=1),
        webhook("liar.hami.io", "/wrong-uid", pki.ca_pem),
    ]
    for case in cases:
        server.store.delete(VALIDATING_WEBHOOKS, None, "hami-validating")
        configure(server, validating=[case])
        status, error = await create_pod(server, pod_body())
        assert status == 500, error
        assert error["reason"] == "InternalError"
        assert f'failed calling webhook "{case["name"]}"' in error["message"]
    assert "context deadline exceeded" in error["message"] or "uid" in error["message"]


async def test_update_rules_see_the_old_object(server, hook, pki):
    rule = {"operations": ["UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}
    configure(server, validating=[webhook("check.hami.io", "/validate", pki.ca_pem, rules=[rule])])
    status, created = await create_pod(server, pod_body())
    assert status == 201 and hook.reviews == []  # CREATE is not in the rules
    name = created["metadata"]["name"]
    async with aiohttp.ClientSession() as session:
        url = f"{server.url}/api/v1/namespaces/default/pods/{name}"
        headers = {"Content-Type": "application/merge-patch+json"}
        async with session.patch(
            url, data=json.dumps({"metadata": {"labels": {"deny": "yes"}}}), headers=headers
        ) as resp:
            assert resp.status == 403
        async with session.patch(
            url, data=json.dumps({"metadata": {"labels": {"ok": "1"}}}), headers=headers
        ) as resp:
            assert resp.status == 200
    last = hook.reviews[-1]["request"]
    assert last["operation"] == "UPDATE" and last["name"] == name
    assert not last["oldObject"]["metadata"].get("labels")
    assert last["object"]["metadata"]["labels"] == {"ok": "1"}


async def test_kubectl_shows_the_denial(server, hook, pki, kubectl, tmp_path):
    configure(server, validating=[webhook("check.hami.io", "/validate", pki.ca_pem)])
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    proc = await asyncio.create_subprocess_exec(
        str(kubectl),
        "--kubeconfig",
        str(kubeconfig),
        "--cache-dir",
        str(tmp_path / "cache"),
        "create",
        "-f",
        "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    body = pod_body(deny="yes")
    body["metadata"] = {"name": "refused", "labels": {"deny": "yes"}}
    _, err = await proc.communicate(json.dumps(body).encode())
    assert proc.returncode != 0
    assert (
        'admission webhook "check.hami.io" denied the request: pods labelled deny=yes are refused'
        in err.decode()
    )


def socket_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
