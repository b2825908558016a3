"""Fenced writes: the API the leader's writers use (:mod:`hami.scheduler.leadership`).

Reads and watches pass through. Every write (pod patches, bindings, node locks, handshake stamps)
first asks the leadership for its *write budget*: refused with :class:`NotLeaderWrite` (a
definite 4xx-like failure, so callers drop what they reserved) unless this replica leads, and
otherwise bounded by the time left before it would have to step down, which is before any
successor can be elected. A write held up in the network therefore cannot land under a
successor. Events are not fenced: they record, they decide nothing.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any

from hami.k8s.api import KubeApi
from hami.k8s.errors import ApiClientError
from hami.k8s.events import EventType
from hami.k8s.lease import NotLeader
from hami.k8s.objects import RawList, RawObject, RawStatus, RawWatchEvent, Resource
from hami.k8s.patches import Patch
from hami.scheduler.leadership import Leadership


class NotLeaderWrite(ApiClientError):
    """A write refused before it was sent: this replica does not lead (a definite failure)."""


class FencedApi:
    """A :class:`~hami.k8s.api.KubeApi` whose writes are fenced by ``leadership``."""

    def __init__(self, api: KubeApi, leadership: Leadership) -> None:
        # A pass-through: each call names its resource at the call site (cycle, binder, reconciler),
        # which is where the chart's RBAC scan attributes it; nothing here adds an API use.
        self._inner = api
        self._leadership = leadership
        self.refused = 0

    def _timeout(self, method: str, what: str, given: float | None) -> float | None:
        try:
            budget = self._leadership.write_budget()
        except NotLeader as exc:
            self.refused += 1
            raise NotLeaderWrite(str(exc), reason="NotLeader", method=method, path=what) from exc
        if budget is None:
            return given
        return budget if given is None else min(given, budget)

    async def get(
        self,
        resource: Resource,
        name: str,
        *,
        namespace: str | None = None,
        request_timeout: float | None = None,
    ) -> RawObject:
        return await self._inner.get(resource, name, namespace=namespace, request_timeout=request_timeout)

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
        return await self._inner.list_page(
            resource,
            namespace=namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            resource_version=resource_version,
            limit=limit,
            continue_token=continue_token,
        )

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
        return await self._inner.list_all(
            resource,
            namespace=namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            resource_version=resource_version,
            page_size=page_size,
        )

    async def create(
        self,
        resource: Resource,
        body: Mapping[str, Any],
        *,
        namespace: str | None = None,
        request_timeout: float | None = None,
    ) -> RawObject:
        timeout = self._timeout("POST", resource.plural, request_timeout)
        return await self._inner.create(resource, body, namespace=namespace, request_timeout=timeout)

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
        timeout = self._timeout("PUT", f"{resource.plural}/{name}", request_timeout)
        return await self._inner.replace(
            resource, name, body, namespace=namespace, subresource=subresource, request_timeout=timeout
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
        timeout = self._timeout("PATCH", f"{resource.plural}/{name}", request_timeout)
        return await self._inner.patch(
            resource, name, patch, namespace=namespace, subresource=subresource, request_timeout=timeout
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
        timeout = self._timeout("DELETE", f"{resource.plural}/{name}", request_timeout)
        return await self._inner.delete(
            resource,
            name,
            namespace=namespace,
            uid=uid,
            resource_version=resource_version,
            grace_period_seconds=grace_period_seconds,
            request_timeout=timeout,
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
        timeout = self._timeout("POST", f"pods/{name}/binding", request_timeout)
        await self._inner.bind_pod(
            namespace, name, node, uid=uid, annotations=annotations, request_timeout=timeout
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
        return await self._inner.create_event(
            involved, reason=reason, message=message, type=type, component=component, action=action
        )

    def watch(
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
        return self._inner.watch(
            resource,
            namespace=namespace,
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
            allow_bookmarks=allow_bookmarks,
            label_selector=label_selector,
            field_selector=field_selector,
        )

    async def close(self) -> None:
        await self._inner.close()
