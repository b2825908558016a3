from __future__ import annotations

import aiohttp
from aiohttp import web
from prometheus_async import aio

from hami.metrics.build_info import BuildInfo
from hami.metrics.http import Readiness, add_metrics_routes, serve_metrics
from hami.metrics.instruments import SchedulerInstruments
from hami.metrics.registry import new_registry

INFO = BuildInfo(version="0.1.0", python_version="3.11.7", platform="linux/amd64")


async def test_standalone_metrics_server() -> None:
    registry = new_registry(INFO)
    instruments = SchedulerInstruments(registry)

    @aio.time(instruments.bind_seconds)  # prometheus-async's decorator on our histogram
    async def bind() -> str:
        return "bound"

    assert await bind() == "bound"
    readiness = Readiness()
    server = await serve_metrics(registry, "127.0.0.1", 0, readiness)
    try:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession(base_url=server.url) as http:
            async with http.get("/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = await resp.text()
            assert 'hami_build_info{build_date="unknown"' in text
            assert "hami_bind_duration_seconds_count 1.0" in text
            headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
            async with http.get("/metrics", headers=headers) as resp:
                assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
                assert (await resp.text()).endswith("# EOF\n")
            async with http.get("/healthz") as resp:
                assert resp.status == 200 and await resp.text() == ""
            async with http.get("/readyz") as resp:
                assert resp.status == 503 and await resp.text() == "starting"
            readiness.set_ready()
            async with http.get("/readyz") as resp:
                assert resp.status == 200 and await resp.text() == ""
            readiness.set_not_ready("shutting down")
            async with http.get("/readyz") as resp:
                assert resp.status == 503 and await resp.text() == "shutting down"
    finally:
        await server.close()


async def test_routes_on_an_existing_app() -> None:
    async def filter_handler(request: web.Request) -> web.Response:
        return web.json_response({"Nodes": None})

    app = web.Application()
    app.router.add_post("/filter", filter_handler)
    readiness = add_metrics_routes(app, new_registry(INFO))
    assert readiness.ready  # a role that does not pass one is ready at once
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http:
            async with http.get("/metrics") as resp:
                assert "hami_build_info" in await resp.text()
            async with http.post("/filter", json={}) as resp:
                assert resp.status == 200
            async with http.get("/readyz") as resp:
                assert resp.status == 200
    finally:
        await runner.cleanup()
