"""The node agents' /metrics listener: served on a free port, and a busy port never stops the agent."""

from __future__ import annotations

import logging
import socket

import aiohttp
import pytest
from metrics_roles import scrape, value

from hami.metrics.build_info import BuildInfo
from hami.metrics.http import Readiness, serve_metrics_best_effort
from hami.metrics.instruments import DraPluginInstruments
from hami.metrics.registry import new_registry

BUILD = BuildInfo(
    version="0.1.0", revision="abc", build_date="d", python_version="3.11.7", platform="linux/amd64"
)


async def test_served_with_build_info_and_the_prepare_histogram() -> None:
    registry = new_registry(BUILD)
    DraPluginInstruments(registry).prepare_seconds.observe(0.02)
    readiness = Readiness()
    server = await serve_metrics_best_effort(registry, "127.0.0.1", 0, readiness, role="dra-plugin")
    assert server is not None and server.port > 0
    try:
        async with aiohttp.ClientSession() as session:
            samples = await scrape(session, server.url)
            async with session.get(server.url + "/readyz") as resp:
                assert resp.status == 503 and await resp.text() == "starting"
            readiness.set_ready()
            async with session.get(server.url + "/readyz") as resp:
                assert resp.status == 200
    finally:
        await server.close()
    assert value(samples, "hami_build_info", version="0.1.0", revision="abc") == 1.0
    assert value(samples, "hami_dra_prepare_duration_seconds_count") == 1
    assert value(samples, "hami_dra_prepare_duration_seconds_bucket", le="0.025") == 1


async def test_a_busy_port_is_logged_and_returns_none(caplog: pytest.LogCaptureFixture) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    busy = blocker.getsockname()[1]
    try:
        with caplog.at_level(logging.ERROR, logger="hami.metrics.http"):
            server = await serve_metrics_best_effort(
                new_registry(BUILD), "127.0.0.1", busy, role="device-plugin"
            )
    finally:
        blocker.close()
    assert server is None
    assert f"device-plugin: running without /metrics: cannot listen on 127.0.0.1:{busy}" in caplog.text
