"""Certificate hot reload of the HTTPS listener (spec §1.1 ``--cert_file``/``--key_file``, HAMi #1573)."""

from __future__ import annotations

import asyncio
import shutil
import ssl

import aiohttp
import pytest
from aiohttp import web
from webhook_pki import SecretVolume, der, hami_webhook_configuration, make_ca, presented_certificate

from hami.core.errors import ConfigError
from hami.scheduler.tls import ReloadingCertificate
from hami.simulator.resources import MUTATING_WEBHOOKS, PODS

GPU = "nvidia.com/gpu"


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def serve(certificate: ReloadingCertificate) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_get("/", ok)
    runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=certificate.context)
    await site.start()
    return runner, runner.addresses[0][1]


async def test_rotation_is_served_to_the_next_connection(webhook, secret, ca):
    before = await presented_certificate(webhook.port)
    assert before == der(secret.cert)
    new_cert = secret.publish(ca)  # kubelet-style atomic symlink swap
    after = await presented_certificate(webhook.port)
    assert after == der(new_cert) != before
    assert webhook.certificate.generation == 2
    assert await presented_certificate(webhook.port) == after  # no reload without a change
    assert webhook.certificate.generation == 2


async def test_api_server_trusts_the_rotated_certificate_of_a_new_ca(apiserver, webhook, secret, tmp_path):
    # failurePolicy Fail: a certificate the API server cannot verify would fail pod creation.
    old_ca = make_ca(tmp_path / "ca-old", "old")
    new_ca = make_ca(tmp_path / "ca-new", "new")
    secret.publish(old_ca)
    apiserver.store.create(
        MUTATING_WEBHOOKS, None, hami_webhook_configuration(old_ca.pem, failure_policy="Fail")
    )
    body = {"metadata": {"generateName": "p-"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    body["spec"]["containers"][0]["resources"] = {"limits": {GPU: "1"}}
    created = await apiserver_create(apiserver, body)
    assert created["spec"]["schedulerName"] == "hami-scheduler"

    secret.publish(new_ca)
    apiserver.store.delete(MUTATING_WEBHOOKS, None, "hami-webhook")
    apiserver.store.create(
        MUTATING_WEBHOOKS, None, hami_webhook_configuration(new_ca.pem, failure_policy="Fail")
    )
    created = await apiserver_create(apiserver, body)
    assert created["spec"]["schedulerName"] == "hami-scheduler"
    stored = apiserver.store.get(PODS, "default", created["metadata"]["name"])
    assert stored["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpucores"] == "100"


async def apiserver_create(apiserver, body: dict) -> dict:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{apiserver.url}/api/v1/namespaces/default/pods", json=body) as resp,
    ):
        answer = await resp.json()
        assert resp.status == 201, answer
        return answer


async def test_half_written_pair_keeps_the_old_certificate(webhook, secret, ca, tmp_path):
    served = await presented_certificate(webhook.port)
    other_cert, other_key = ca.issue(tmp_path / "other")
    shutil.copyfile(other_cert, secret.cert)  # certificate written, key not yet
    assert await presented_certificate(webhook.port) == served
    assert webhook.certificate.last_error is not None
    assert webhook.certificate.generation == 1
    shutil.copyfile(other_key, secret.key)  # now the pair matches
    assert await presented_certificate(webhook.port) == der(other_cert)
    assert webhook.certificate.last_error is None and webhook.certificate.generation == 2


async def test_poll_task_reloads_without_connections(secret, ca):
    certificate = ReloadingCertificate(secret.cert, secret.key)
    task = asyncio.create_task(certificate.watch(interval=0.01), name="watch certificate")
    try:
        secret.publish(ca)
        for _ in range(500):
            if certificate.generation == 2:
                break
            await asyncio.sleep(0.01)
        assert certificate.generation == 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_checks_can_be_throttled(secret, ca):
    now = [0.0]
    certificate = ReloadingCertificate(secret.cert, secret.key, min_check_interval=30.0, clock=lambda: now[0])
    runner, port = await serve(certificate)
    try:
        first = await presented_certificate(port)
        new_cert = secret.publish(ca)
        now[0] = 10.0
        assert await presented_certificate(port) == first  # within the interval: not looked at
        now[0] = 31.0
        assert await presented_certificate(port) == der(new_cert)
    finally:
        await runner.cleanup()


def test_unusable_files_at_start_name_the_problem(secret: SecretVolume, tmp_path, ca):
    with pytest.raises(ConfigError, match="no such file"):
        ReloadingCertificate(tmp_path / "missing.crt", secret.key)
    _, other_key = ca.issue(tmp_path / "other")
    with pytest.raises(ConfigError, match=r"cannot serve certificate .*tls.crt with key .*tls.key"):
        ReloadingCertificate(secret.cert, other_key)


async def negotiated_alpn(port: int) -> str | None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        return writer.get_extra_info("ssl_object").selected_alpn_protocol()
    finally:
        writer.close()
        await writer.wait_closed()


async def test_context_settings_survive_a_reload(secret, ca):
    certificate = ReloadingCertificate(
        secret.cert, secret.key, configure=lambda context: context.set_alpn_protocols(["http/1.1"])
    )
    runner, port = await serve(certificate)
    try:
        assert await negotiated_alpn(port) == "http/1.1"
        new_cert = secret.publish(ca)
        assert await negotiated_alpn(port) == "http/1.1"
        assert certificate.generation == 2
        assert await presented_certificate(port) == der(new_cert)
    finally:
        await runner.cleanup()
