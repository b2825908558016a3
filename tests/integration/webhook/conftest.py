"""A real HTTPS webhook server (hot-reloaded certificate) and the simulated API server calling it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from webhook_pki import SERVICE_NAME, SERVICE_NAMESPACE, Ca, SecretVolume, make_ca

from hami.core.admission import AdmissionOptions, PodAdmission
from hami.core.ledger import Ledger
from hami.scheduler.tls import ReloadingCertificate
from hami.scheduler.webhook import SnapshotCapacity, WebhookHandler, add_webhook_routes
from hami.simulator.server import ApiServer, ApiServerSettings


@dataclass
class Webhook:
    port: int
    certificate: ReloadingCertificate
    ledger: Ledger
    synced: bool = True
    calls: list[int] = field(default_factory=list)


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> Ca:
    return make_ca(tmp_path_factory.mktemp("pki") / "ca", "hami-test-ca")


@pytest.fixture
def secret(tmp_path: Path, ca: Ca) -> SecretVolume:
    volume = SecretVolume(tmp_path / "secret")
    volume.root.mkdir()
    volume.publish(ca)
    return volume


@pytest.fixture
async def webhook(secret: SecretVolume) -> AsyncIterator[Webhook]:
    certificate = ReloadingCertificate(secret.cert, secret.key)
    ledger = Ledger()
    state = Webhook(port=0, certificate=certificate, ledger=ledger)

    def synced() -> bool:
        state.calls.append(1)
        return state.synced

    handler = WebhookHandler(
        PodAdmission(options=AdmissionOptions()),
        capacity=SnapshotCapacity(ledger.snapshot, synced),
        max_body=64 * 1024,
    )
    app = web.Application()
    add_webhook_routes(app, handler)
    runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=certificate.context)
    await site.start()
    state.port = runner.addresses[0][1]
    yield state
    await runner.cleanup()


@pytest.fixture
async def apiserver(webhook: Webhook) -> AsyncIterator[ApiServer]:
    def resolve(namespace: str, name: str, port: int) -> str:
        assert (namespace, name, port) == (SERVICE_NAMESPACE, SERVICE_NAME, 443)
        return f"127.0.0.1:{webhook.port}"

    async with ApiServer.running(settings=ApiServerSettings(webhook_service_resolver=resolve)) as server:
        yield server
