"""The DynamicResources part of the fake kube-scheduler: :class:`DraScheduling`.

It keeps informers on ResourceSlices, ResourceClaims and DeviceClasses and, per scheduling
cycle, plans each of a pod's claims with :func:`~hami.simulator.dra_allocator.allocate_claim`:
``filter`` per node, ``reserve`` (assume, synchronous, so the next cycle counts it), ``pre_bind``
(finalizer, ``status.allocation`` and ``reservedFor`` written before the pod is bound,
k8s-apis.md §3.9) and ``unreserve``. An assumed allocation counts until the informer shows it
written, so two pods never get the same device between reserve and the watch catching up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from hami.simulator.dra_allocator import (
    DELETE_PROTECTION,
    RESOURCE_API,
    Unallocatable,
    Usage,
    allocate_claim,
    allocation_node,
    node_devices,
    pod_claim_names,
    usage_of,
)
from hami.simulator.dra_cel import CelSelectors
from hami.simulator.restclient import ApiError, Informer, InformerEvent, RestClient

JsonObj = dict[str, Any]
_CONFLICT_RETRIES: Final = 5


class DraBindError(Exception):
    """Writing the allocation failed (the bind must be undone and retried)."""


def _reserved_for(claim: Mapping[str, Any]) -> list[JsonObj]:
    return list((claim.get("status") or {}).get("reservedFor") or [])


class DraScheduling:
    """The DynamicResources part of the fake kube-scheduler.

    Wiring (``FakeKubeScheduler``): build it with the scheduler's client and ``on_change`` =
    the scheduler's "cluster changed" callback; run :meth:`run` beside the informers and wait for
    :attr:`synced`; add :meth:`filter` reasons per node; call :meth:`reserve` when the host is
    chosen, :meth:`pre_bind` before binding and :meth:`unreserve` if binding fails.
    """

    def __init__(self, client: RestClient, *, on_change: Callable[[], None] | None = None) -> None:
        self._client = client
        self._on_change = on_change
        self._slices = Informer(client, f"{RESOURCE_API}/resourceslices", name="dra resourceslices")
        self._claims = Informer(client, f"{RESOURCE_API}/resourceclaims", name="dra resourceclaims")
        self._classes = Informer(client, f"{RESOURCE_API}/deviceclasses", name="dra deviceclasses")
        for informer in (self._slices, self._claims, self._classes):
            informer.add_handler(self._changed)
        self._cel = CelSelectors()
        self._assumed: dict[str, JsonObj] = {}  # claim key → allocation not yet seen in the informer
        self._reserved: dict[str, dict[str, JsonObj]] = {}  # pod key → claim key → allocation to write
        self.synced = asyncio.Event()

    def _changed(self, event: InformerEvent) -> None:
        if (
            event.new is not None
            and event.key in self._assumed
            and (event.new.get("status") or {}).get("allocation")
        ):
            self._assumed.pop(event.key, None)
        if self._on_change is not None:
            self._on_change()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for informer in (self._slices, self._claims, self._classes):
                tg.create_task(informer.run(), name=f"watch {informer.name}")
            for informer in (self._slices, self._claims, self._classes):
                await informer.synced.wait()
            self.synced.set()

    # ---- state ---------------------------------------------------------------------------------

    def _usage(self, skip: Iterable[str] = ()) -> Usage:
        skipped = set(skip)
        allocations: list[Mapping[str, Any]] = []
        for key, claim in self._claims.objects.items():
            allocation = (claim.get("status") or {}).get("allocation")
            if allocation and key not in skipped:
                allocations.append(allocation)
        for key, allocation in self._assumed.items():
            claim = self._claims.get(key) or {}
            if not (claim.get("status") or {}).get("allocation") and key not in skipped:
                allocations.append(allocation)
        return usage_of(allocations)

    def _classes_by_name(self) -> dict[str, Mapping[str, Any]]:
        return {k: v for k, v in self._classes.objects.items()}

    @staticmethod
    def is_dra_pod(pod: Mapping[str, Any]) -> bool:
        return bool((pod.get("spec") or {}).get("resourceClaims"))

    def _plan(self, pod: Mapping[str, Any], node: str) -> dict[str, JsonObj]:
        """Claim key → allocation to write ({} for claims already allocated here)."""
        namespace = str((pod.get("metadata") or {}).get("namespace", "default"))
        devices = node_devices(self._slices.objects.values(), node)
        classes = self._classes_by_name()
        usage = self._usage()
        plan: dict[str, JsonObj] = {}
        for pod_claim, claim_name in pod_claim_names(pod):
            if claim_name is None:
                raise Unallocatable(f"waiting for the ResourceClaim of pod claim {pod_claim!r} to be created")
            key = f"{namespace}/{claim_name}"
            claim = self._claims.get(key)
            if claim is None:
                raise Unallocatable(f"resourceclaim {claim_name!r} not found")
            if (claim.get("metadata") or {}).get("deletionTimestamp"):
                raise Unallocatable(f"resourceclaim {claim_name!r} is being deleted")
            allocation = (claim.get("status") or {}).get("allocation") or self._assumed.get(key)
            if allocation:
                pinned = allocation_node(allocation)
                if pinned is not None and pinned != node:
                    raise Unallocatable(f"resourceclaim {claim_name!r} is allocated on node {pinned}")
                plan[key] = {}
                continue
            allocation = allocate_claim(claim, node, devices, usage, classes, self._cel)
            usage.add_allocation(allocation)
            plan[key] = allocation
        return plan

    # ---- scheduler hooks ---------------------------------------------------------------------

    def filter(self, pod: Mapping[str, Any], node: str) -> list[str]:
        """Why the pod's claims cannot be satisfied on ``node`` (empty: they can, or no claims)."""
        if not self.is_dra_pod(pod):
            return []
        try:
            self._plan(pod, node)
        except Unallocatable as e:
            return [f"cannot allocate all claims: {e}"]
        return []

    def reserve(self, pod: Mapping[str, Any], node: str) -> None:
        """Assume the pod's allocations on ``node`` (sync). Raises :class:`Unallocatable`."""
        if not self.is_dra_pod(pod):
            return
        key = _pod_key(pod)
        plan = self._plan(pod, node)
        for claim_key, allocation in plan.items():
            if allocation:
                self._assumed[claim_key] = allocation
        self._reserved[key] = plan

    def unreserve(self, pod: Mapping[str, Any]) -> None:
        """Forget what :meth:`reserve` assumed for the pod (nothing to do for a pod without claims)."""
        plan = self._reserved.pop(_pod_key(pod), None)
        if plan is None:
            return
        for claim_key, allocation in plan.items():
            if allocation and self._assumed.get(claim_key) is allocation:
                self._assumed.pop(claim_key, None)
        if self._on_change is not None:
            self._on_change()

    async def pre_bind(self, pod: Mapping[str, Any]) -> None:
        """Write finalizer, allocation and ``reservedFor`` for every claim of the reserved pod."""
        key = _pod_key(pod)
        plan = self._reserved.get(key)
        if plan is None:
            return
        meta = pod.get("metadata") or {}
        consumer = {"resource": "pods", "name": str(meta.get("name")), "uid": str(meta.get("uid"))}
        for claim_key, allocation in plan.items():
            namespace, _, name = claim_key.partition("/")
            path = f"{RESOURCE_API}/namespaces/{namespace}/resourceclaims/{name}"
            await self._write_claim(path, allocation, consumer)
        self._reserved.pop(key, None)

    async def _write_claim(self, path: str, allocation: JsonObj, consumer: JsonObj) -> None:
        for _ in range(_CONFLICT_RETRIES):
            try:
                claim = await self._client.get(path)
                meta = claim.setdefault("metadata", {})
                if allocation and DELETE_PROTECTION not in (meta.get("finalizers") or []):
                    meta["finalizers"] = [*(meta.get("finalizers") or []), DELETE_PROTECTION]
                    claim = await self._client.request("PUT", path, body=claim)
                status = claim.setdefault("status", {})
                current = status.get("allocation")
                if allocation and current and current != allocation:
                    raise DraBindError(f"{path}: allocated by someone else meanwhile")
                if allocation and not current:
                    status["allocation"] = allocation
                if not allocation and not current:
                    raise DraBindError(f"{path}: the allocation vanished before binding")
                reserved = _reserved_for(claim)
                if all(r.get("uid") != consumer["uid"] for r in reserved):
                    status["reservedFor"] = [*reserved, consumer]
                await self._client.request("PUT", f"{path}/status", body=claim)
                return
            except ApiError as e:
                if e.code == 409:
                    continue
                raise DraBindError(f"{path}: {e}") from e
        raise DraBindError(f"{path}: conflicts persisted after {_CONFLICT_RETRIES} attempts")


def _pod_key(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', 'default')}/{meta.get('name', '')}"
