"""A scheduler extender for tests: records the exact JSON kube-scheduler sends, answers as told.

Its bind verb binds like HAMi's does (``POST pods/binding`` to the API server itself).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

Json = Any


def pass_all(args: Json) -> Json:
    names = args.get("NodeNames")
    if names is not None:
        return {"NodeNames": names, "FailedNodes": {}, "Error": ""}
    return {"Nodes": args["Nodes"], "FailedNodes": {}, "Error": ""}


class RecordingExtender:
    def __init__(self, api_url: str) -> None:
        self.api_url = api_url
        self.calls: dict[str, list[Json]] = {"filter": [], "prioritize": [], "bind": []}
        self.filter_answer: Callable[[Json], Json] = pass_all
        self.prioritize_answer: Callable[[Json], Json] = lambda args: []
        self.filter_delay = 0.0
        """Seconds the filter verb stalls before answering (to trip ``httpTimeout``)."""
        self.bind_errors: list[str] = []
        """Errors answered to the next bind calls, one per call."""
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _filter(self, request: web.Request) -> web.Response:
        args = json.loads(await request.read())
        self.calls["filter"].append(args)
        if self.filter_delay:
            await asyncio.sleep(self.filter_delay)
        return web.json_response(self.filter_answer(args))

    async def _prioritize(self, request: web.Request) -> web.Response:
        args = json.loads(await request.read())
        self.calls["prioritize"].append(args)
        return web.json_response(self.prioritize_answer(args))

    async def _bind(self, request: web.Request) -> web.Response:
        args = json.loads(await request.read())
        self.calls["bind"].append(args)
        if self.bind_errors:
            return web.json_response({"Error": self.bind_errors.pop(0)})
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": args["PodName"], "namespace": args["PodNamespace"], "uid": args["PodUID"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": args["Node"]},
        }
        url = f"{self.api_url}/api/v1/namespaces/{args['PodNamespace']}/pods/{args['PodName']}/binding"
        async with aiohttp.ClientSession() as session, session.post(url, json=binding) as resp:
            if resp.status != 201:
                return web.json_response({"Error": f"binding failed: {resp.status} {await resp.text()}"})
        return web.json_response({"Error": ""})

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        app = web.Application()
        app.router.add_post("/filter", self._filter)
        app.router.add_post("/prioritize", self._prioritize)
        app.router.add_post("/bind", self._bind)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
