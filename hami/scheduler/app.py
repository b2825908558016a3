"""The scheduler's aiohttp application and listeners.

:func:`build_app` returns the main application: the extender routes
(:mod:`hami.scheduler.extender`) plus any ``extra_routes`` (the admission webhook's
``POST /webhook`` comes through this seam, see :data:`RouteFactory`). State is attached with typed
``web.AppKey``s only. :func:`listen` serves it over HTTP, or HTTPS with the hot-reloading
context of :class:`hami.scheduler.tls.ReloadingCertificate`.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from hami.scheduler.extender import ExtenderService, add_extender_routes

logger = logging.getLogger(__name__)

MAX_BODY: Final = 8 * 1024 * 1024  # a Pod plus thousands of node names; HAMi HEAD caps at 1 MiB

RouteFactory = Callable[[web.Application], Iterable[web.AbstractRouteDef]]
"""Adds routes to the main app; called once, before it starts (e.g. the webhook's ``/webhook``)."""


def build_app(
    service: ExtenderService,
    *,
    extra_routes: Iterable[RouteFactory] = (),
    client_max_size: int = MAX_BODY,
) -> web.Application:
    app = web.Application(client_max_size=client_max_size)
    add_extender_routes(app, service)
    for factory in extra_routes:
        app.router.add_routes(list(factory(app)))
    return app


@dataclass(frozen=True, slots=True, kw_only=True)
class Listener:
    runner: web.AppRunner
    site: web.TCPSite
    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


async def listen(
    app: web.Application,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    shutdown_timeout: float = 10.0,
) -> Listener:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            bound = int(address[1])
            break
    return Listener(runner=runner, site=site, host=host, port=bound, tls=ssl_context is not None)
