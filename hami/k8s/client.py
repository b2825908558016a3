"""``KubeApi``: the port every role talks to the apiserver through, and its aiohttp adapter.

Why aiohttp directly rather than kubernetes-asyncio's generated ``ApiClient``
(TOOLS.md measurements and quirks):

* **Speed.** Model objects decode at ~1.5-1.9k pods/s; raw bytes + orjson at ~20k pods/s
  and watch lines at 32-71k events/s. Informers need raw dicts anyway (``Raw*``).
* **Arbitrary resources.** One code path for any group/version/resource (``Resource``),
  including ``pods/binding`` whose 201 ``Status`` reply the generated client mis-decodes.
* **One translation point and one retry policy** (style guide §3.4): aiohttp/``OSError``
  → the ``hami.k8s.errors`` tree here and nowhere else; ``Retry-After`` honoured; the
  watch stream's lines, deadlines and size limits under our control (the library's
  ``Watch`` retries a 410 with the same RV and swallows stream ends).

kubernetes-asyncio is still used for what it does well: parsing kubeconfig and in-cluster
credentials (``hami.k8s.auth``), so bearer tokens (rotated), exec plugins, CA bundles and
client certificates work against a real apiserver.

Retries follow ``hami.k8s.retrying`` (429/Retry-After/connect failures for any verb,
other transient failures only for GET/LIST), plus one resend after a 401 with reloaded
credentials. ``POST pods/binding`` is therefore never blindly retried: after an
ambiguous failure or a 409 the caller must re-read the pod, because the bind may have
landed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any, Final, cast

import aiohttp
import orjson

from hami import __version__
from hami.config.settings import NetworkingSettings
from hami.k8s.api import KubeApi
from hami.k8s.auth import Credentials
from hami.k8s.errors import (
    ApiConnectionError,
    ApiError,
    ApiProtocolError,
    ApiTimeoutError,
    ApiTransportError,
    ApiUnauthorized,
    error_from_response,
    parse_retry_after,
)
from hami.k8s.events import EventType, event_body
from hami.k8s.objects import (
    EVENTS,
    PODS,
    RawList,
    RawObject,
    RawStatus,
    RawWatchEvent,
    Resource,
)
from hami.k8s.patches import Patch
from hami.k8s.retrying import call_with_retries
from hami.runtime.clock import Clock, LoopClock
from hami.runtime.logs import truncate

__all__ = ["HttpKubeApi", "KubeApi"]

_logger = logging.getLogger(__name__)

USER_AGENT: Final = f"hami-py/{__version__}"
MAX_WATCH_LINE: Final = 16 * 1024 * 1024
"""Largest watch event accepted. etcd caps objects at ~1.5 MiB; anything near this is garbage."""
_WATCH_TYPES: Final = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"})


# --------------------------------------------------------------------------- the adapter


def _query(**params: object) -> dict[str, str]:
    """Query parameters as strings (aiohttp rejects bools; the apiserver wants ``true``)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def _loads(data: bytes, *, method: str, path: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ApiProtocolError(
            f"response is not JSON ({exc}): {truncate(data)}", method=method, path=path
        ) from exc


class HttpKubeApi:
    """``KubeApi`` over one aiohttp session. Create it inside the running loop; ``close()``
    (or ``async with``) releases the connections."""

    def __init__(
        self,
        credentials: Credentials,
        settings: NetworkingSettings | None = None,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.credentials = credentials
        self.settings = settings or NetworkingSettings()
        self._clock = clock or LoopClock()
        self._rng = rng
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpKubeApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.settings.connection_limit,
                ssl=self.credentials.ssl_context if self.credentials.ssl_context is not None else True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
                read_bufsize=2**20,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ----------------------------------------------------------------- one attempt

    async def _send_once(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None,
        body: bytes | None,
        content_type: str,
        request_timeout: float | None,
    ) -> tuple[int, bytes]:
        session = self._get_session()
        headers = await self.credentials.headers()
        if body is not None:
            headers["Content-Type"] = content_type
        client_timeout = aiohttp.ClientTimeout(
            total=request_timeout or self.settings.request_timeout, connect=self.settings.connect_timeout
        )
        try:
            async with session.request(
                method,
                self.credentials.host + path,
                params=query,
                data=body,
                headers=headers,
                timeout=client_timeout,
                server_hostname=self.credentials.server_hostname,
                proxy=self.credentials.proxy,
            ) as resp:
                data = await resp.read()
                if resp.status >= 400:
                    raise error_from_response(
                        resp.status,
                        data,
                        method=method,
                        path=path,
                        retry_after=parse_retry_after(resp.headers.get("Retry-After")),
                    )
                return resp.status, data
        except ApiError:
            raise
        except Exception as exc:
            raise _translate(exc, method=method, path=path) from exc

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: object = None,
        content_type: str = "application/json",
        request_timeout: float | None = None,
        idempotent: bool,
    ) -> tuple[int, bytes]:
        encoded = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
        refreshed = False

        async def attempt() -> tuple[int, bytes]:
            nonlocal refreshed
            try:
                return await self._send_once(
                    method,
                    path,
                    query=query,
                    body=encoded,
                    content_type=content_type,
                    request_timeout=request_timeout,
                )
            except ApiUnauthorized:
                # An expired exec/OIDC token: the request was rejected by authn, safe to resend once.
                if refreshed or not await self.credentials.refresh():
                    raise
                refreshed = True
                return await self._send_once(
                    method,
                    path,
                    query=query,
                    body=encoded,
                    content_type=content_type,
                    request_timeout=request_timeout,
                )

        return await call_with_retries(
            attempt,
            settings=self.settings,
            idempotent=idempotent,
            what=f"{method} {path}",
            sleep=self._sleep,
            clock=self._clock,
            rng=self._rng,
        )

    async def _object(self, method: str, path: str, **kwargs: Any) -> Any:
        _, data = await self._call(method, path, **kwargs)
        doc = _loads(data, method=method, path=path)
        if not isinstance(doc, dict):
            raise ApiProtocolError(
                f"expected a JSON object, got {type(doc).__name__}", method=method, path=path
            )
        return doc

    # ----------------------------------------------------------------- verbs

    async def get(
        self,
        resource: Resource,
        name: str,
        *,
        namespace: str | None = None,
        request_timeout: float | None = None,
    ) -> RawObject:
        return cast(
            RawObject,
            await self._object(
                "GET", resource.item_path(name, namespace), request_timeout=request_timeout, idempotent=True
            ),
        )

    async def list_page(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resource_version: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> RawList:
        query = _query(
            labelSelector=label_selector or None,
            fieldSelector=field_selector or None,
            resourceVersion=resource_version,
            limit=limit or None,
            **{"continue": continue_token or None},
        )
        path = resource.collection_path(namespace)
        doc = await self._object("GET", path, query=query, idempotent=True)
        if not isinstance(doc.get("items"), list) or not isinstance(doc.get("metadata"), dict):
            raise ApiProtocolError("list response without items/metadata", method="GET", path=path)
        return cast(RawList, doc)

    async def list_all(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resource_version: str | None = None,
        page_size: int | None = None,
    ) -> RawList:
        """All pages as one list carrying the first page's resourceVersion (the continue
        token pins every page to that snapshot; an expired token raises ``ApiGone``)."""
        first = await self.list_page(
            resource,
            namespace=namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            resource_version=resource_version,
            limit=page_size,
        )
        items = list(first["items"])
        token = first["metadata"].get("continue")
        while token:
            page = await self.list_page(
                resource,
                namespace=namespace,
                label_selector=label_selector,
                field_selector=field_selector,
                limit=page_size,
                continue_token=token,
            )
            items.extend(page["items"])
            token = page["metadata"].get("continue")
        result: RawList = {
            "metadata": {"resourceVersion": first["metadata"].get("resourceVersion", "")},
            "items": items,
        }
        if "kind" in first:
            result["kind"] = first["kind"]
        if "apiVersion" in first:
            result["apiVersion"] = first["apiVersion"]
        return result

    async def create(
        self,
        resource: Resource,
        body: Mapping[str, Any],
        *,
        namespace: str | None = None,
        request_timeout: float | None = None,
    ) -> RawObject:
        if resource.namespaced and namespace is None:
            raise ValueError(f"creating {resource.qualified} needs a namespace")
        path = resource.collection_path(namespace if resource.namespaced else None)
        return cast(
            RawObject,
            await self._object("POST", path, body=body, request_timeout=request_timeout, idempotent=False),
        )

    async def replace(
        self,
        resource: Resource,
        name: str,
        body: Mapping[str, Any],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
        request_timeout: float | None = None,
    ) -> RawObject:
        path = resource.item_path(name, namespace, subresource)
        return cast(
            RawObject,
            await self._object("PUT", path, body=body, request_timeout=request_timeout, idempotent=False),
        )

    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Patch,
        *,
        namespace: str | None = None,
        subresource: str | None = None,
        request_timeout: float | None = None,
    ) -> RawObject:
        path = resource.item_path(name, namespace, subresource)
        return cast(
            RawObject,
            await self._object(
                "PATCH",
                path,
                body=patch.body,
                content_type=patch.content_type,
                request_timeout=request_timeout,
                idempotent=False,
            ),
        )

    async def delete(
        self,
        resource: Resource,
        name: str,
        *,
        namespace: str | None = None,
        uid: str | None = None,
        resource_version: str | None = None,
        grace_period_seconds: int | None = None,
        request_timeout: float | None = None,
    ) -> RawObject | RawStatus:
        """DELETE with optional UID/RV preconditions (409 when they fail). Returns the
        deleted/terminating object, or a ``Status`` for kinds that return one."""
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        preconditions = {k: v for k, v in (("uid", uid), ("resourceVersion", resource_version)) if v}
        if preconditions:
            options["preconditions"] = preconditions
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        path = resource.item_path(name, namespace)
        # A DELETE that timed out may have happened; repeating it is safe only without
        # preconditions (a re-created object must not be deleted by our retry).
        return cast(
            RawObject,
            await self._object(
                "DELETE", path, body=options, request_timeout=request_timeout, idempotent=not preconditions
            ),
        )

    async def bind_pod(
        self,
        namespace: str,
        name: str,
        node: str,
        *,
        uid: str | None = None,
        annotations: Mapping[str, str] | None = None,
        request_timeout: float | None = None,
    ) -> None:
        """POST ``pods/{name}/binding``; success is 201 with a ``Status``, not a Binding.

        Never blindly retried (see module docstring): on ``ApiConflict`` or a transport
        error re-read the pod; it may already be bound by this very call.
        """
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        if uid:
            meta["uid"] = uid
        if annotations:
            meta["annotations"] = dict(annotations)
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": meta,
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        path = PODS.item_path(name, namespace, "binding")
        status, data = await self._call(
            "POST", path, body=body, request_timeout=request_timeout, idempotent=False
        )
        if status not in (200, 201):
            raise ApiProtocolError(
                f"unexpected binding reply {status}: {truncate(data)}", method="POST", path=path
            )

    async def create_event(
        self,
        involved: RawObject,
        *,
        reason: str,
        message: str,
        type: EventType = "Normal",
        component: str = "hami",
        action: str = "",
    ) -> RawObject:
        """Create a core/v1 Event about ``involved`` (in its namespace, else ``default``)."""
        body = event_body(
            involved,
            reason=reason,
            message=message,
            type=type,
            component=component,
            action=action,
            now=self._clock.now(),
        )
        return await self.create(EVENTS, body, namespace=body["metadata"]["namespace"])

    # ----------------------------------------------------------------- watch

    async def watch(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int | None = None,
        allow_bookmarks: bool = True,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> AsyncGenerator[RawWatchEvent, None]:
        """Raw watch events until the server ends the stream.

        ``ERROR`` events are yielded as they are (the reflector interprets their Status).
        A failed request raises from the ``ApiError`` tree; a dropped stream raises
        ``ApiTransportError``; a clean end just stops. There is no read timeout here:
        the reflector owns the inactivity timeout.
        """
        path = resource.collection_path(namespace)
        query = _query(
            watch=True,
            allowWatchBookmarks=allow_bookmarks or None,
            resourceVersion=resource_version or None,
            timeoutSeconds=timeout_seconds,
            labelSelector=label_selector or None,
            fieldSelector=field_selector or None,
        )
        session = self._get_session()
        headers = await self.credentials.headers()
        client_timeout = aiohttp.ClientTimeout(
            total=None, connect=self.settings.connect_timeout, sock_connect=self.settings.connect_timeout
        )
        try:
            resp = await session.get(
                self.credentials.host + path,
                params=query,
                headers=headers,
                timeout=client_timeout,
                server_hostname=self.credentials.server_hostname,
                proxy=self.credentials.proxy,
            )
        except Exception as exc:
            raise _translate(exc, method="WATCH", path=path) from exc
        try:
            if resp.status != 200:
                data = await _read_error_body(resp)
                raise error_from_response(
                    resp.status,
                    data,
                    method="WATCH",
                    path=path,
                    retry_after=parse_retry_after(resp.headers.get("Retry-After")),
                )
            while True:
                try:
                    line = await resp.content.readuntil(b"\n", max_size=MAX_WATCH_LINE)
                except Exception as exc:
                    raise _translate(exc, method="WATCH", path=path) from exc
                if not line:
                    return
                line = line.strip()
                if not line:
                    continue
                yield _watch_event(line, path)
        finally:
            # Never return a half-read stream to the pool.
            resp.close()


async def _read_error_body(resp: aiohttp.ClientResponse) -> bytes:
    try:
        return await resp.read()
    except Exception:  # a failure to read an error body must not hide the status code
        return b""


def _watch_event(line: bytes, path: str) -> RawWatchEvent:
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ApiProtocolError(
            f"watch line is not JSON: {truncate(line)}", method="WATCH", path=path
        ) from exc
    if (
        not isinstance(event, dict)
        or event.get("type") not in _WATCH_TYPES
        or not isinstance(event.get("object"), dict)
    ):
        raise ApiProtocolError(f"malformed watch event: {truncate(line)}", method="WATCH", path=path)
    return cast(RawWatchEvent, event)


def _translate(exc: BaseException, *, method: str, path: str) -> ApiError:
    """The single mapping of transport exceptions to the ApiError tree."""
    if isinstance(exc, asyncio.CancelledError):
        raise exc
    if isinstance(exc, aiohttp.ClientConnectorError):
        refused = isinstance(exc.os_error, ConnectionRefusedError)
        return ApiConnectionError(str(exc), refused=refused, method=method, path=path)
    if isinstance(exc, ConnectionRefusedError):
        return ApiConnectionError(str(exc), refused=True, method=method, path=path)
    if isinstance(exc, TimeoutError):
        return ApiTimeoutError(f"timed out: {exc}" if str(exc) else "timed out", method=method, path=path)
    if isinstance(exc, aiohttp.ClientResponseError | ValueError):
        # ValueError covers aiohttp's LineTooLong and malformed HTTP.
        return ApiProtocolError(f"{type(exc).__name__}: {exc}", method=method, path=path)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return ApiTransportError(
            f"{type(exc).__name__}: {exc}", reason="ConnectionError", method=method, path=path
        )
    return ApiTransportError(f"{type(exc).__name__}: {exc}", method=method, path=path)
