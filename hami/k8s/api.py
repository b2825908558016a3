"""``KubeApi``: the port every role talks to the apiserver through.

Raw dicts in and out (``hami.k8s.objects``), the ``hami.k8s.errors`` tree on failure. The
production adapter is ``hami.k8s.client.HttpKubeApi``; tests may pass any object with
these methods (a fake at this boundary), never patch our internals.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any, Protocol

from hami.k8s.events import EventType
from hami.k8s.objects import RawList, RawObject, RawStatus, RawWatchEvent, Resource
from hami.k8s.patches import Patch

__all__ = ["KubeApi"]


class KubeApi(Protocol):
    """The apiserver as roles see it: raw dicts in and out, ``ApiError`` on failure.

    ``namespace`` is required for namespaced resources' items; ``timeout`` overrides the
    per-request total timeout (the lease client bounds calls by its renew deadline).
    """

    async def get(
        self,
        resource: Resource,
        name: str,
        *,
        namespace: str | None = None,
        request_timeout: float | None = None,
    ) -> RawObject: ...

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
    ) -> RawList: ...

    async def list_all(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resource_version: str | None = None,
        page_size: int | None = None,
    ) -> RawList: ...

    async def create(
        self,
        resource: Resource,
        body: Mapping[str, Any],
        *,
        namespace: str | None = None,
        request_timeout: float | None = None,
    ) -> RawObject: ...

    async def replace(
        self,
        resource: Resource,
        name: str,
        body: Mapping[str, Any],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
        request_timeout: float | None = None,
    ) -> RawObject: ...

    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Patch,
        *,
        namespace: str | None = None,
        subresource: str | None = None,
        request_timeout: float | None = None,
    ) -> RawObject: ...

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
    ) -> RawObject | RawStatus: ...

    async def bind_pod(
        self,
        namespace: str,
        name: str,
        node: str,
        *,
        uid: str | None = None,
        annotations: Mapping[str, str] | None = None,
        request_timeout: float | None = None,
    ) -> None: ...

    async def create_event(
        self,
        involved: RawObject,
        *,
        reason: str,
        message: str,
        type: EventType = "Normal",
        component: str = "hami",
        action: str = "",
    ) -> RawObject: ...

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
    ) -> AsyncGenerator[RawWatchEvent, None]: ...

    async def close(self) -> None: ...
