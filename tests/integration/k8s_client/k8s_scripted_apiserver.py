"""A tiny scripted apiserver (aiohttp on 127.0.0.1:0) for exact fault cases.

Each (verb, path) has a queue of scripted replies, consumed in order; every request is
recorded. A watch reply is a list of steps: send an event, pause, hang until closed,
drop the connection mid-stream, or end cleanly. Unscripted watches hang (so a test that
stops consuming is not disturbed by reconnects); other unscripted requests get a 500.
The simulator (hami.simulator) covers realistic semantics; this covers exact timing.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Event:
    type: str
    object: dict[str, Any]


@dataclass
class Pause:
    seconds: float


@dataclass
class Hang:
    pass


@dataclass
class Drop:
    """Abort the TCP connection mid-stream."""


@dataclass
class Raw:
    line: bytes


WatchStep = Event | Pause | Hang | Drop | Raw


@dataclass
class Watch:
    steps: list[WatchStep]


@dataclass
class Recorded:
    verb: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    peer_cert: dict[str, Any] | None = None


Handler = Callable[[Recorded], Reply]
Scripted = Reply | Watch | Handler


def status(code: int, reason: str, message: str = "", **details: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message or reason,
        "reason": reason,
        "code": code,
    }
    if details:
        doc["details"] = details
    return doc


def obj(name: str, rv: str, namespace: str | None = "ns", **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "resourceVersion": rv, "uid": f"uid-{name}"}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, **extra}


def pod_list(rv: str, *items: dict[str, Any], cont: str | None = None) -> Reply:
    meta: dict[str, Any] = {"resourceVersion": rv}
    if cont:
        meta["continue"] = cont
    return Reply(body={"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": list(items)})


def bookmark(rv: str) -> Event:
    return Event("BOOKMARK", {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": rv}})


def expired(rv: str = "1") -> Event:
    return Event("ERROR", status(410, "Expired", f"too old resource version: {rv} (100)"))


class ScriptedApiServer:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._scripts: dict[tuple[str, str], deque[Scripted]] = defaultdict(deque)
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def on(self, verb: str, path: str, *replies: Scripted) -> None:
        """Script replies for ``verb`` (GET, POST, ..., or WATCH) on ``path``."""
        self._scripts[(verb, path)].extend(replies)

    def calls(self, verb: str, path: str | None = None) -> list[Recorded]:
        return [r for r in self.requests if r.verb == verb and (path is None or r.path == path)]

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        watch = query.get("watch", "").lower() not in ("", "0", "false")
        verb = "WATCH" if request.method == "GET" and watch else request.method
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        rec = Recorded(verb, request.path, query, dict(request.headers), await request.read(), peer)
        self.requests.append(rec)
        queue = self._scripts.get((verb, request.path))
        scripted: Scripted | None = queue.popleft() if queue else None
        if scripted is None:
            if verb == "WATCH":
                scripted = Watch([Hang()])
            else:
                scripted = Reply(500, status(500, "InternalError", f"no script for {verb} {request.path}"))
        if isinstance(scripted, Watch):
            return await self._stream(request, scripted)
        reply = scripted if isinstance(scripted, Reply) else scripted(rec)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        body = reply.body if isinstance(reply.body, bytes) else orjson.dumps(reply.body)
        return web.Response(
            status=reply.status, body=body, headers=reply.headers, content_type="application/json"
        )

    async def _stream(self, request: web.Request, watch: Watch) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for step in watch.steps:
            if isinstance(step, Event):
                await resp.write(orjson.dumps({"type": step.type, "object": step.object}) + b"\n")
            elif isinstance(step, Raw):
                await resp.write(step.line)
            elif isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
            elif isinstance(step, Hang):
                await self._closing.wait()
                return resp
            elif isinstance(step, Drop):
                assert request.transport is not None
                request.transport.abort()
                return resp
        await resp.write_eof()
        return resp


@asynccontextmanager
async def scripted_apiserver(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[ScriptedApiServer]:
    server = ScriptedApiServer()
    await server.start(ssl_context)
    try:
        yield server
    finally:
        await server.close()


class RecordingSleep:
    """The reflector's ``sleep`` seam: records delays, yields to the loop, never waits."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


async def eventually(predicate: Callable[[], object], limit: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` every 10 ms until true; fail the test after ``limit`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        if predicate():
            return
        if loop.time() >= deadline:
            raise AssertionError(f"{what} not reached within {limit}s")
        await asyncio.sleep(0.01)
