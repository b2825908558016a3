"""``/metrics``, ``/healthz`` and ``/readyz`` for every role, on an existing aiohttp app or standalone.

``/metrics`` serves the role's own registry (never the global one) with the Python client's content
negotiation: classic text by default, OpenMetrics when the scraper asks for it. ``/healthz`` always
answers 200 with an empty body (HAMi 2.8); ``/readyz`` answers 200 while the role's
:class:`Readiness` says so, else 503 with the reason (HAMi 2.8 answers 503 for a follower).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

logger = logging.getLogger(__name__)


class Readiness:
    """A role's readiness flag; flipped to not-ready first on shutdown (style guide §3.6)."""

    def __init__(self, *, ready: bool = False, reason: str = "starting") -> None:
        self._ready = ready
        self._reason = "" if ready else reason

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def reason(self) -> str:
        return self._reason

    def set_ready(self) -> None:
        self._ready = True
        self._reason = ""

    def set_not_ready(self, reason: str) -> None:
        self._ready = False
        self._reason = reason


METRICS_REGISTRY = web.AppKey("hami_metrics_registry", CollectorRegistry)
READINESS = web.AppKey("hami_readiness", Readiness)


async def _metrics(request: web.Request) -> web.Response:
    registry = request.app[METRICS_REGISTRY]
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(registry)
    # Set as a header: aiohttp's content_type setter rejects the parameters of this media type.
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def _readyz(request: web.Request) -> web.Response:
    readiness = request.app[READINESS]
    if readiness.ready:
        return web.Response(status=200)
    return web.Response(status=503, text=readiness.reason)


def add_metrics_routes(
    app: web.Application,
    registry: CollectorRegistry,
    readiness: Readiness | None = None,
    *,
    metrics_path: str = "/metrics",
    health: bool = True,
) -> Readiness:
    """Add the three routes to ``app`` (before it starts); return the readiness object used."""
    if readiness is None:
        readiness = Readiness(ready=True)
    app[METRICS_REGISTRY] = registry
    app[READINESS] = readiness
    app.router.add_get(metrics_path, _metrics)
    if health:
        app.router.add_get("/healthz", _healthz)
        app.router.add_get("/readyz", _readyz)
    return readiness


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsServer:
    """A running standalone metrics listener; ``port`` is the bound one (useful with port 0)."""

    runner: web.AppRunner
    host: str
    port: int
    readiness: Readiness

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    readiness: Readiness | None = None,
) -> MetricsServer:
    """Start a standalone listener for ``/metrics``, ``/healthz``, ``/readyz``; call ``close()`` to stop."""
    app = web.Application()
    readiness = add_metrics_routes(app, registry, readiness)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            bound = int(address[1])
            break
    logger.info("metrics listening on %s:%d", host, bound)
    return MetricsServer(runner=runner, host=host, port=bound, readiness=readiness)


async def serve_metrics_best_effort(
    registry: CollectorRegistry,
    host: str,
    port: int,
    readiness: Readiness | None = None,
    *,
    role: str,
) -> MetricsServer | None:
    """:func:`serve_metrics` for node agents whose metrics are auxiliary (device plugin, DRA plugin):
    a port that cannot be bound is logged and None returned, so the agent keeps offering GPUs."""
    try:
        return await serve_metrics(registry, host, port, readiness)
    except OSError as e:
        logger.error(
            "%s: running without /metrics: cannot listen on %s:%d: %s (see --metrics-port, --no-metrics)",
            role,
            host,
            port,
            e.strerror or e,
        )
        return None
