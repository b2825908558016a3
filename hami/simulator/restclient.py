"""A small HTTP client and informer for the simulator's own controllers.

The fake kube-scheduler and the fake kubelets talk to the embedded API server over HTTP, exactly as
their real counterparts do, so that the server's list/watch/patch paths are exercised by every test
that schedules a pod. They must not use ``hami.k8s.client``/``hami.k8s.watch``: a simulator built
from the client code it tests would hide that code's bugs (style guide §2). This module is the
deliberately plain replacement: raw JSON dicts, one request helper, and a list+watch informer that
re-lists on 410 and synthesises the events a re-list implies.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import aiohttp

logger = logging.getLogger(__name__)

JsonObj = dict[str, Any]

MERGE_PATCH: Final = "application/merge-patch+json"
STRATEGIC_PATCH: Final = "application/strategic-merge-patch+json"
_MESSAGE_LIMIT: Final = 256


class ApiError(Exception):
    """A non-2xx answer of the API server (or a transport failure, code 0)."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        self.code = code
        self.reason = reason
        self.message = message
        super().__init__(f"{code} {reason}: {message}")


def object_key(obj: Mapping[str, Any]) -> str:
    """``namespace/name`` (or ``name`` for cluster-scoped objects)."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace") or ""
    name = meta.get("name") or ""
    return f"{namespace}/{name}" if namespace else str(name)


def pod_path(namespace: str, name: str, subresource: str = "") -> str:
    base = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}"
    return f"{base}/{subresource}" if subresource else base


def node_path(name: str, subresource: str = "") -> str:
    base = f"/api/v1/nodes/{quote(name, safe='')}"
    return f"{base}/{subresource}" if subresource else base


class RestClient:
    """JSON over HTTP against one API server; raises :class:`ApiError` for every failure."""

    def __init__(
        self, base_url: str, *, request_timeout: float = 30.0, user_agent: str = "hami-simulator"
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = request_timeout
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers={"User-Agent": self._user_agent})
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> JsonObj:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        try:
            async with self._client().request(
                method,
                self.base_url + path,
                params=dict(params or {}),
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ApiError(0, "TransportError", f"{method} {path}: {exc!r}"[:_MESSAGE_LIMIT]) from exc
        try:
            payload = json.loads(text) if text else {}
        except ValueError:
            payload = {"message": text[:_MESSAGE_LIMIT]}
        if status >= 300:
            raise ApiError(
                status, str(payload.get("reason", "")), str(payload.get("message", ""))[:_MESSAGE_LIMIT]
            )
        if not isinstance(payload, dict):
            raise ApiError(status, "BadResponse", f"{method} {path}: expected a JSON object")
        return payload

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> JsonObj:
        return await self.request("GET", path, params=params)

    async def create(self, path: str, body: JsonObj) -> JsonObj:
        return await self.request("POST", path, body=body)

    async def patch(self, path: str, patch: Any, *, content_type: str = MERGE_PATCH) -> JsonObj:
        return await self.request("PATCH", path, body=patch, content_type=content_type)

    async def delete(self, path: str, *, grace_seconds: int | None = None, uid: str | None = None) -> JsonObj:
        options: JsonObj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        if uid is not None:
            options["preconditions"] = {"uid": uid}
        return await self.request("DELETE", path, body=options)

    async def watch(self, path: str, params: Mapping[str, str]) -> AsyncIterator[JsonObj]:
        """Yield decoded watch events until the server ends the stream."""
        query = {**params, "watch": "true"}
        try:
            async with self._client().get(
                self.base_url + path,
                params=query,
                headers={"Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout),
            ) as resp:
                if resp.status != 200:
                    text = await resp.text()
                    try:
                        payload = json.loads(text)
                    except ValueError:
                        payload = {"message": text}
                    raise ApiError(
                        resp.status, str(payload.get("reason", "")), str(payload.get("message", ""))
                    )
                buffer = b""
                # Own line splitting: aiohttp's readline caps line length below a big object's size.
                async for chunk in resp.content.iter_any():
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        if line.strip():
                            yield json.loads(line)
                if buffer.strip():
                    yield json.loads(buffer)
        except (aiohttp.ClientError, OSError) as exc:
            raise ApiError(0, "TransportError", f"watch {path}: {exc!r}"[:_MESSAGE_LIMIT]) from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class InformerEvent:
    """One change seen by an informer. ``old`` is None for ADDED, ``new`` is None for DELETED."""

    type: str
    key: str
    old: JsonObj | None
    new: JsonObj | None


Handler = Callable[[InformerEvent], None]


class Informer:
    """List+watch one collection into a dict, calling sync handlers on each change.

    Handlers run inline and must be quick (they typically wake a worker). A 410 ``Expired``
    re-lists and diffs against what is held, so a consumer sees deletes that happened while the
    watch was down (client-go ``DeltaFIFO.Replace``).
    """

    def __init__(
        self,
        client: RestClient,
        path: str,
        *,
        field_selector: str = "",
        label_selector: str = "",
        watch_timeout: int = 300,
        retry_delay: float = 0.5,
        name: str = "",
    ) -> None:
        self._client = client
        self._path = path
        self._selectors: dict[str, str] = {}
        if field_selector:
            self._selectors["fieldSelector"] = field_selector
        if label_selector:
            self._selectors["labelSelector"] = label_selector
        self._watch_timeout = watch_timeout
        self._retry_delay = retry_delay
        self.name = name or path
        self._objects: dict[str, JsonObj] = {}
        self._handlers: list[Handler] = []
        self.synced = asyncio.Event()
        self.resource_version = ""

    @property
    def objects(self) -> Mapping[str, JsonObj]:
        """Current objects by key. Treat them as read-only: they are shared with every reader."""
        return self._objects

    def get(self, key: str) -> JsonObj | None:
        return self._objects.get(key)

    def add_handler(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def _emit(self, event: InformerEvent) -> None:
        for handler in self._handlers:
            try:
                handler(event)
            except Exception:  # a broken consumer must not stop the informer for the others
                logger.exception("informer %s: handler failed on %s %s", self.name, event.type, event.key)

    async def _relist(self) -> None:
        listed = await self._client.get(self._path, self._selectors)
        fresh = {object_key(item): item for item in listed.get("items") or []}
        for key in [k for k in self._objects if k not in fresh]:
            old = self._objects.pop(key)
            self._emit(InformerEvent(type="DELETED", key=key, old=old, new=None))
        for key, obj in fresh.items():
            previous = self._objects.get(key)
            self._objects[key] = obj
            if previous is None:
                self._emit(InformerEvent(type="ADDED", key=key, old=None, new=obj))
            elif (previous.get("metadata") or {}).get("resourceVersion") != (obj.get("metadata") or {}).get(
                "resourceVersion"
            ):
                self._emit(InformerEvent(type="MODIFIED", key=key, old=previous, new=obj))
        self.resource_version = str((listed.get("metadata") or {}).get("resourceVersion", ""))
        self.synced.set()

    def _apply(self, event: JsonObj) -> bool:
        """Apply one watch event; False when the watch must re-list (410 or an unknown ERROR)."""
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            logger.info("informer %s: watch error %s, re-listing", self.name, obj.get("message", ""))
            return False
        rv = str((obj.get("metadata") or {}).get("resourceVersion", ""))
        if rv:
            self.resource_version = rv
        if kind == "BOOKMARK":
            return True
        key = object_key(obj)
        old = self._objects.get(key)
        if kind == "DELETED":
            self._objects.pop(key, None)
            self._emit(InformerEvent(type="DELETED", key=key, old=old, new=None))
        elif kind in ("ADDED", "MODIFIED"):
            self._objects[key] = obj
            self._emit(InformerEvent(type="ADDED" if old is None else "MODIFIED", key=key, old=old, new=obj))
        return True

    async def run(self) -> None:
        """Keep the dict in sync until cancelled."""
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                params = {
                    **self._selectors,
                    "resourceVersion": self.resource_version,
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": str(self._watch_timeout),
                }
                async for event in self._client.watch(self._path, params):
                    if not self._apply(event):
                        need_list = True
                        break
            except ApiError as exc:
                if exc.code == 410:
                    need_list = True
                    continue
                logger.debug("informer %s: %s; retrying", self.name, exc)
                need_list = need_list or exc.code != 0
                await asyncio.sleep(self._retry_delay)
            except ValueError as exc:  # a line that is not JSON: re-list rather than trust the stream
                logger.warning("informer %s: bad watch line (%s); re-listing", self.name, exc)
                need_list = True
                await asyncio.sleep(self._retry_delay)
