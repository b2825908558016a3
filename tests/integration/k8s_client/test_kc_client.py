"""HttpKubeApi against a scripted apiserver: verbs, pagination, errors, retries, auth, TLS."""

from __future__ import annotations

import base64
import ssl
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import yaml
from k8s_scripted_apiserver import Recorded, Reply, obj, pod_list, scripted_apiserver, status

from hami.config.settings import BackoffSettings, NetworkingSettings
from hami.core.errors import ConfigError
from hami.k8s import errors as e
from hami.k8s.auth import Credentials, load_credentials, load_in_cluster
from hami.k8s.client import HttpKubeApi
from hami.k8s.events import event_body
from hami.k8s.objects import LEASES, NODES, PODS
from hami.k8s.patches import json_patch, merge_patch, op_add
from hami.k8s.retrying import call_with_retries

FAST_RETRIES = NetworkingSettings(
    max_retries=3,
    request_timeout=2.0,
    connect_timeout=1.0,
    retry_backoff=BackoffSettings(initial=0.001, maximum=0.004, jitter=0.0),
)
POD = "/api/v1/namespaces/ns/pods/p"


@pytest.fixture
async def server():
    async with scripted_apiserver() as srv:
        yield srv


@pytest.fixture
async def api(server):
    async with HttpKubeApi(Credentials.anonymous(server.url), FAST_RETRIES) as client:
        yield client


async def test_verbs_paths_and_content_types(server, api):
    server.on("GET", POD, Reply(body=obj("p", "1")))
    server.on("POST", "/api/v1/namespaces/ns/pods", Reply(201, obj("p", "1")))
    server.on("PUT", "/api/v1/nodes/n1/status", Reply(body=obj("n1", "2", namespace=None)))
    server.on("PATCH", POD, Reply(body=obj("p", "3")), Reply(body=obj("p", "4")))
    server.on("DELETE", POD, Reply(body=obj("p", "5")))

    assert (await api.get(PODS, "p", namespace="ns"))["metadata"]["resourceVersion"] == "1"
    await api.create(PODS, {"metadata": {"name": "p"}}, namespace="ns")
    await api.replace(NODES, "n1", {"metadata": {"name": "n1"}}, subresource="status")
    await api.patch(
        PODS,
        "p",
        merge_patch({"metadata": {"annotations": {"a": "1"}}}, resource_version="2"),
        namespace="ns",
    )
    await api.patch(PODS, "p", json_patch([op_add("/metadata/labels", {})]), namespace="ns")
    await api.delete(PODS, "p", namespace="ns", uid="u1", grace_period_seconds=0)

    verbs = [(r.verb, r.path, r.headers.get("Content-Type")) for r in server.requests]
    assert verbs == [
        ("GET", POD, None),
        ("POST", "/api/v1/namespaces/ns/pods", "application/json"),
        ("PUT", "/api/v1/nodes/n1/status", "application/json"),
        ("PATCH", POD, "application/merge-patch+json"),
        ("PATCH", POD, "application/json-patch+json"),
        ("DELETE", POD, "application/json"),
    ]
    assert orjson.loads(server.requests[3].body) == {
        "metadata": {"annotations": {"a": "1"}, "resourceVersion": "2"}
    }
    assert orjson.loads(server.requests[5].body) == {
        "apiVersion": "v1",
        "kind": "DeleteOptions",
        "preconditions": {"uid": "u1"},
        "gracePeriodSeconds": 0,
    }
    assert server.requests[0].headers["User-Agent"].startswith("hami-py/")
    assert "Authorization" not in server.requests[0].headers


async def test_list_all_follows_continue_tokens(server, api):
    path = "/api/v1/pods"
    server.on(
        "GET",
        path,
        pod_list("100", obj("a", "1"), cont="tok1"),
        pod_list("100", obj("b", "2"), cont="tok2"),
        pod_list("100", obj("c", "3")),
    )
    result = await api.list_all(
        PODS, resource_version="", page_size=1, label_selector="app=x", field_selector="spec.nodeName=n1"
    )
    assert [i["metadata"]["name"] for i in result["items"]] == ["a", "b", "c"]
    assert result["metadata"]["resourceVersion"] == "100"
    queries = [r.query for r in server.calls("GET", path)]
    assert queries[0] == {
        "labelSelector": "app=x",
        "fieldSelector": "spec.nodeName=n1",
        "resourceVersion": "",
        "limit": "1",
    }
    assert queries[1] == {
        "labelSelector": "app=x",
        "fieldSelector": "spec.nodeName=n1",
        "limit": "1",
        "continue": "tok1",
    }
    assert queries[2]["continue"] == "tok2" and "resourceVersion" not in queries[2]


async def test_an_expired_continue_token_is_gone(server, api):
    path = "/api/v1/pods"
    server.on(
        "GET",
        path,
        pod_list("100", obj("a", "1"), cont="tok1"),
        Reply(410, status(410, "Expired", "The provided continue parameter is too old")),
    )
    with pytest.raises(e.ApiGone):
        await api.list_all(PODS, page_size=1)


async def test_errors_are_translated_from_status(server, api):
    server.on("GET", POD, Reply(404, status(404, "NotFound", 'pods "p" not found', name="p", kind="pods")))
    with pytest.raises(e.ApiNotFound) as err:
        await api.get(PODS, "p", namespace="ns")
    assert err.value.message == 'pods "p" not found'
    assert err.value.details == {"name": "p", "kind": "pods"}
    assert "GET /api/v1/namespaces/ns/pods/p: 404 NotFound" in str(err.value)
    server.on(
        "POST",
        "/api/v1/namespaces/ns/pods",
        Reply(409, status(409, "AlreadyExists", 'pods "p" already exists')),
    )
    with pytest.raises(e.ApiAlreadyExists):
        await api.create(PODS, {"metadata": {"name": "p"}}, namespace="ns")
    server.on("GET", POD, Reply(200, b"not json"))
    with pytest.raises(e.ApiProtocolError):
        await api.get(PODS, "p", namespace="ns")


async def test_idempotent_calls_are_retried_writes_are_not(server, api):
    server.on(
        "GET",
        POD,
        Reply(503, status(503, "ServiceUnavailable")),
        Reply(500, b"oops"),
        Reply(body=obj("p", "1")),
    )
    assert (await api.get(PODS, "p", namespace="ns"))["metadata"]["name"] == "p"
    assert len(server.calls("GET", POD)) == 3
    server.on("PATCH", POD, Reply(500, status(500, "InternalError")))
    with pytest.raises(e.ApiServerError):
        await api.patch(PODS, "p", merge_patch({"metadata": {}}), namespace="ns")
    assert len(server.calls("PATCH", POD)) == 1  # may have landed: not retried


async def test_429_and_retry_after_are_retried_for_any_verb(server, api):
    server.on(
        "PATCH",
        POD,
        Reply(429, status(429, "TooManyRequests"), headers={"Retry-After": "0"}),
        Reply(503, status(503, "ServiceUnavailable"), headers={"Retry-After": "0"}),
        Reply(body=obj("p", "2")),
    )
    await api.patch(PODS, "p", merge_patch({"metadata": {}}), namespace="ns")
    assert len(server.calls("PATCH", POD)) == 3


async def test_retries_are_bounded(server, api):
    server.on("GET", POD, *[Reply(503, status(503, "ServiceUnavailable"))] * 10)
    with pytest.raises(e.ApiServiceUnavailable):
        await api.get(PODS, "p", namespace="ns")
    assert len(server.calls("GET", POD)) == 1 + FAST_RETRIES.max_retries


async def test_retry_after_is_capped_and_logged(caplog):
    delays: list[float] = []

    async def sleep(d: float) -> None:
        delays.append(d)

    attempts = iter([e.ApiTooManyRequests("slow down", status=429, retry_after=3600.0)])

    async def call() -> str:
        for exc in attempts:
            raise exc
        return "ok"

    settings = NetworkingSettings(max_retry_after=5.0)
    assert (
        await call_with_retries(call, settings=settings, idempotent=False, what="PATCH x", sleep=sleep)
        == "ok"
    )
    assert delays == [5.0]
    assert "retry #1/5" in caplog.text


async def test_request_timeout_is_a_transport_error(server, api):
    server.on("PATCH", POD, Reply(body=obj("p", "1"), delay=0.5))
    with pytest.raises(e.ApiTimeoutError):
        await api.patch(PODS, "p", merge_patch({"metadata": {}}), namespace="ns", request_timeout=0.1)
    assert len(server.calls("PATCH", POD)) == 1
    server.on("GET", POD, Reply(body=obj("p", "1"), delay=0.5), Reply(body=obj("p", "1")))
    await api.get(PODS, "p", namespace="ns", request_timeout=0.1)  # a read is simply retried
    assert len(server.calls("GET", POD)) == 2


async def test_bind_pod_posts_a_binding_and_accepts_201_status(server, api):
    path = POD + "/binding"
    server.on(
        "POST",
        path,
        Reply(201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    )
    await api.bind_pod("ns", "p", "node-1", uid="u1", annotations={"hami.io/bind-phase": "allocating"})
    (call,) = server.calls("POST", path)
    assert orjson.loads(call.body) == {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u1",
            "annotations": {"hami.io/bind-phase": "allocating"},
        },
        "target": {"apiVersion": "v1", "kind": "Node", "name": "node-1"},
    }


async def test_bind_pod_is_never_blindly_retried(server, api):
    path = POD + "/binding"
    server.on(
        "POST",
        path,
        Reply(
            409,
            status(
                409,
                "Conflict",
                'Operation cannot be fulfilled on pods/binding "p": pod p is already assigned to node "n2"',
            ),
        ),
    )
    with pytest.raises(e.ApiConflict, match="already assigned"):
        await api.bind_pod("ns", "p", "n1")
    server.on("POST", path, Reply(500, status(500, "InternalError")))
    with pytest.raises(e.ApiServerError):
        await api.bind_pod("ns", "p", "n1")
    assert len(server.calls("POST", path)) == 2


async def test_create_event(server, api):
    server.on("POST", "/api/v1/namespaces/ns/events", lambda rec: Reply(201, orjson.loads(rec.body)))
    pod = obj("p", "7")
    created = await api.create_event(
        pod, reason="FilteringFailed", message="x" * 2000, type="Warning", component="hami-scheduler"
    )
    assert created["metadata"]["name"].startswith("p.")
    assert created["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "p",
        "namespace": "ns",
        "uid": "uid-p",
        "resourceVersion": "7",
    }
    assert len(created["message"]) == 1024
    body = event_body(
        pod, reason="R", message="m", type="Normal", component="c", now=datetime(2026, 1, 1, tzinfo=UTC)
    )
    assert body["firstTimestamp"] == "2026-01-01T00:00:00Z"


async def test_watch_request_errors_are_translated(server, api):
    server.on("WATCH", "/api/v1/pods", Reply(403, status(403, "Forbidden", "pods is forbidden")))
    with pytest.raises(e.ApiForbidden):
        async for _ in api.watch(PODS):
            pass


# --------------------------------------------------------------------------- auth and TLS


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
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
        "/CN=hami-test-ca",
        cwd=d,
    )
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl(
            "req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=hami-{name}", cwd=d
        )
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "1",
            "-extfile",
            f"{name}.ext",
            cwd=d,
        )
    return d


def server_tls(pki: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki / "server.crt", pki / "server.key")
    ctx.load_verify_locations(pki / "ca.crt")
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def kubeconfig(tmp_path: Path, url: str, pki: Path, user: dict) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "c", "cluster": {"server": url, "certificate-authority-data": b64(pki / "ca.crt")}}
        ],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return path


def subject_cn(rec: Recorded) -> str | None:
    if not rec.peer_cert:
        return None
    return dict(x[0] for x in rec.peer_cert["subject"])["commonName"]


async def test_kubeconfig_with_ca_client_certificate_and_token(pki, tmp_path):
    async with scripted_apiserver(server_tls(pki)) as srv:
        srv.on("GET", "/api/v1/nodes/n1", Reply(body=obj("n1", "1", namespace=None)))
        user = {
            "client-certificate-data": b64(pki / "client.crt"),
            "client-key-data": b64(pki / "client.key"),
            "token": "s3cr3t",
        }
        creds = await load_credentials(
            NetworkingSettings(kubeconfig=str(kubeconfig(tmp_path, srv.url, pki, user))), environ={}
        )
        assert creds.host == srv.url and "s3cr3t" not in repr(creds)
        async with HttpKubeApi(creds, FAST_RETRIES) as api:
            await api.get(NODES, "n1")
        (rec,) = srv.requests
        assert rec.headers["Authorization"] == "Bearer s3cr3t"
        assert subject_cn(rec) == "hami-client"


async def test_an_untrusted_server_is_rejected(pki, tmp_path):
    async with scripted_apiserver(server_tls(pki)) as srv:
        async with HttpKubeApi(Credentials.anonymous(srv.url), FAST_RETRIES) as api:
            with pytest.raises(e.ApiTransportError):
                await api.get(NODES, "n1")
        assert srv.requests == []


async def test_401_reloads_a_rotated_token_file_once(pki, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("old")

    def auth(rec: Recorded) -> Reply:
        if rec.headers.get("Authorization") == "Bearer new":
            return Reply(body=obj("l", "1"))
        return Reply(401, status(401, "Unauthorized"))

    async with scripted_apiserver(server_tls(pki)) as srv:
        lease = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/l"
        srv.on("GET", lease, auth, auth)
        path = kubeconfig(tmp_path, srv.url, pki, {"tokenFile": str(token_file)})
        creds = await load_credentials(NetworkingSettings(kubeconfig=str(path)), environ={})
        async with HttpKubeApi(creds, FAST_RETRIES) as api:
            token_file.write_text("new")  # rotated after startup
            await api.get(LEASES, "l", namespace="kube-system")
            assert [r.headers["Authorization"] for r in srv.calls("GET", lease)] == [
                "Bearer old",
                "Bearer new",
            ]
            token_file.write_text("revoked")
            srv.requests.clear()
            srv.on("GET", lease, *[Reply(401, status(401, "Unauthorized"))] * 5)
            with pytest.raises(e.ApiUnauthorized):
                await api.get(LEASES, "l", namespace="kube-system")
            # one reload, then give up (401 is not retried by the retry policy)
            assert [r.headers["Authorization"] for r in srv.requests] == ["Bearer new", "Bearer revoked"]


async def test_in_cluster_service_account(pki, tmp_path):
    token = tmp_path / "token"
    token.write_text("sa-token")
    async with scripted_apiserver(server_tls(pki)) as srv:
        srv.on("GET", "/api/v1/nodes/n1", Reply(body=obj("n1", "1", namespace=None)))
        port = srv.url.rsplit(":", 1)[1]
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port}
        creds = load_in_cluster(env, token_file=str(token), ca_file=str(pki / "ca.crt"))
        assert creds.host == f"https://127.0.0.1:{port}"
        async with HttpKubeApi(creds, FAST_RETRIES) as api:
            await api.get(NODES, "n1")
        assert srv.requests[0].headers["Authorization"] == "Bearer sa-token"


async def test_credential_selection_errors(tmp_path):
    with pytest.raises(ConfigError, match="--kubeconfig"):
        await load_credentials(NetworkingSettings(kubeconfig=str(tmp_path / "nope")), environ={})
    with pytest.raises(ConfigError, match="no apiserver configured"):
        await load_credentials(NetworkingSettings(), environ={"KUBECONFIG": str(tmp_path / "nope")})
    creds = await load_credentials(NetworkingSettings(api_server="http://127.0.0.1:1"), environ={})
    assert creds.host == "http://127.0.0.1:1" and await creds.headers() == {}
    with pytest.raises(ConfigError, match="URL"):
        Credentials.anonymous("127.0.0.1:8080")
