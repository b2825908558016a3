"""Pod Events (hami-scheduler-spec.md §5.9), posted off the request path.

Handlers call :meth:`EventSink.emit` (synchronous, never blocks, never raises); a background task
posts the events. The queue is bounded: under a storm the oldest unsent events are dropped and
counted, so events can never slow ``/filter`` down or grow memory without bound. Identical events
(same pod, reason and message) already queued are folded, a little like client-go's aggregation.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from hami.k8s.client import KubeApi
from hami.k8s.errors import ApiError

logger = logging.getLogger(__name__)

DEFAULT_CAPACITY: Final = 1000

EventType = Literal["Normal", "Warning"]

FILTERING_SUCCEED: Final = "FilteringSucceed"
FILTERING_FAILED: Final = "FilteringFailed"
BINDING_SUCCEED: Final = "BindingSucceed"
BINDING_FAILED: Final = "BindingFailed"


@dataclass(frozen=True, slots=True, kw_only=True)
class PodRef:
    namespace: str
    name: str
    uid: str
    resource_version: str = ""

    def involved(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace, "uid": self.uid}
        if self.resource_version:
            meta["resourceVersion"] = self.resource_version
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta}


def pod_ref(pod: Mapping[str, Any]) -> PodRef:
    meta = pod.get("metadata") or {}
    return PodRef(
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        resource_version=str(meta.get("resourceVersion", "")),
    )


class EventSink:
    """Bounded, folding event queue drained by :meth:`run`."""

    def __init__(self, api: KubeApi | None, *, component: str, capacity: int = DEFAULT_CAPACITY) -> None:
        self._api = api
        self.component = component or "hami-scheduler"
        self.capacity = capacity
        self._queue: OrderedDict[tuple[str, str, str, str], tuple[PodRef, EventType, str, str]] = (
            OrderedDict()
        )
        self._ready = asyncio.Event()
        self.dropped = 0
        self.failed = 0
        self.sent = 0

    def emit(self, pod: PodRef, type: EventType, reason: str, message: str) -> None:
        if self._api is None:
            return
        key = (pod.uid or f"{pod.namespace}/{pod.name}", type, reason, message)
        if key in self._queue:
            self._queue.move_to_end(key)
            return
        self._queue[key] = (pod, type, reason, message)
        while len(self._queue) > self.capacity:
            self._queue.popitem(last=False)
            self.dropped += 1
        self._ready.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def run(self) -> None:
        """Post queued events until cancelled."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                _, (pod, type, reason, message) = self._queue.popitem(last=False)
                await self._send(pod, type, reason, message)

    async def flush(self, time_limit: float) -> None:
        """Post what is queued (bounded), e.g. on shutdown."""
        try:
            async with asyncio.timeout(time_limit):
                while self._queue:
                    _, (pod, type, reason, message) = self._queue.popitem(last=False)
                    await self._send(pod, type, reason, message)
        except TimeoutError:
            self.dropped += len(self._queue)
            self._queue.clear()

    async def _send(self, pod: PodRef, type: EventType, reason: str, message: str) -> None:
        assert self._api is not None
        try:
            await self._api.create_event(
                pod.involved(),  # type: ignore[arg-type]
                reason=reason,
                message=message,
                type=type,
                component=self.component,
            )
            self.sent += 1
        except ApiError as e:
            self.failed += 1
            logger.debug("event %s for %s/%s not recorded: %s", reason, pod.namespace, pod.name, e)
        except Exception as e:
            # Events are best effort: one that cannot even be addressed (a pod name from a
            # malformed extender request) must not stop the queue, or the role with it.
            self.failed += 1
            logger.warning("event %s for %r/%r not recorded: %s", reason, pod.namespace, pod.name, e)
