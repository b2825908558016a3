"""Which pod an Allocate call belongs to, and how its outcome is recorded.

Kubelet's Allocate carries only device IDs (k8s-apis.md §1.4 item 9), so the plugin finds the
pod itself. Two ports keep that decision replaceable:

* :class:`PendingPodSource` answers "node + requested device IDs -> pod and container";
* :class:`AllocationRecorder` patches the outcome (consume the container's entry of
  ``hami.io/vgpu-devices-to-allocate``, set the bind phase, release the node lock).

:class:`HamiPendingPodSource` is the HAMi-2.8-compatible lookup (node lock ``ns/name`` first,
then pending pods with bind phase ``allocating`` on this node) with the checks HAMi lacks:
the pod must really be bound to this node and waiting, its next container entry must have as
many devices as kubelet asked for, and when kubelet's IDs name GPUs (GetPreferredAllocation)
they must be exactly that entry's GPUs. Several plausible pods and no way to tell them apart
is an error, never a guess (HAMi #781, #2640, #3096).

A pod being deleted while it waits still owns its entry for matching: kubelet may be
allocating it right now (the Allocate was in flight when the delete landed). Were it dropped,
that Allocate would match the only other waiting pod and hand it the neighbour's devices, and
the neighbour's own Allocate would then find nothing. So it stays a candidate, in its place in
the order, and when it is the match the call fails with :class:`PodBeingDeleted` (the service
marks the pod failed, which takes it out of the candidates): never a neighbour's devices, and
no devices for a container that is going away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hami.core import keys
from hami.core.errors import DecodeError, HamiError
from hami.core.model import ContainerDevices, PodSingleDevice
from hami.core.node_lock import NodeLock, decode_node_lock
from hami.core.pod_annotations import decode_pod_single_device, device_id_of, encode_pod_single_device
from hami.core.requests import container_resources
from hami.k8s.errors import ApiServerError, ApiTransportError

logger = logging.getLogger(__name__)

RawObject = Mapping[str, Any]


# ----------------------------------------------------------------------------------- API ports


class PodApi(Protocol):
    """The pod calls the plugin needs (the lead wires hami.k8s behind it)."""

    async def get_pod(self, namespace: str, name: str) -> RawObject: ...

    async def list_pods_on_node(self, node: str) -> Sequence[RawObject]:
        """Pods with ``spec.nodeName == node`` in every namespace."""
        ...

    async def patch_pod(self, namespace: str, name: str, patch: Mapping[str, Any]) -> RawObject:
        """JSON merge patch (``application/merge-patch+json``)."""
        ...


class NodeApi(Protocol):
    async def get_node(self, name: str) -> RawObject: ...

    async def patch_node(self, name: str, patch: Mapping[str, Any]) -> RawObject:
        """JSON merge patch; a ``metadata.resourceVersion`` in the patch is a precondition."""
        ...

    async def patch_node_status(self, name: str, patch: Mapping[str, Any]) -> RawObject:
        """JSON merge patch of the ``status`` subresource."""
        ...


# ----------------------------------------------------------------------------------- errors


class PodLookupError(HamiError):
    """No pod can be safely matched to this Allocate call."""


class AmbiguousAllocation(PodLookupError):
    """Several pending pods fit the request and nothing tells them apart."""


class ForeignPodFirst(AmbiguousAllocation):
    """A pod HAMi did not place asks for this resource on the node and is first in kubelet's line:
    the call is most likely its own, and HAMi has nothing to give it but another pod's slice."""


class MalformedAllocation(PodLookupError):
    """The matched pod can never be allocated: its annotations cannot be read (``cause``).

    The caller fails the call and marks ``pod`` failed (the service does, for this class and
    its subclasses).
    """

    def __init__(self, pod: RawObject, cause: DecodeError | None, *, reason: str | None = None) -> None:
        self.pod = pod
        self.cause = cause
        super().__init__(f"pod {pod_ref(pod)}: {reason if reason is not None else cause}")


class PodBeingDeleted(MalformedAllocation):
    """The Allocate belongs to a pod that is being deleted: failed (and the pod marked failed)
    rather than served with another pod's devices or with devices for a container going away."""

    def __init__(self, pod: RawObject, why: str) -> None:
        super().__init__(
            pod,
            None,
            reason=f"is being deleted (deletionTimestamp {_meta(pod).get('deletionTimestamp')}); "
            f"{why}; refusing this Allocate rather than serving another pod's devices",
        )


# ----------------------------------------------------------------------------------- values


def _meta(obj: RawObject) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def annotations_of(obj: RawObject) -> Mapping[str, str]:
    ann = _meta(obj).get("annotations")
    return ann if isinstance(ann, Mapping) else {}


def pod_ref(pod: RawObject) -> str:
    meta = _meta(pod)
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingAllocation:
    """The pod, the container kubelet is allocating, its devices, and what is left afterwards."""

    pod: RawObject
    container_index: int
    devices: ContainerDevices
    remaining: PodSingleDevice  # the to-allocate list with this container's entry emptied

    @property
    def namespace(self) -> str:
        return str(_meta(self.pod).get("namespace", ""))

    @property
    def name(self) -> str:
        return str(_meta(self.pod).get("name", ""))

    @property
    def uid(self) -> str:
        return str(_meta(self.pod).get("uid", ""))

    @property
    def container(self) -> Mapping[str, Any]:
        containers = self.pod.get("spec", {}).get("containers", [])
        return containers[self.container_index] if self.container_index < len(containers) else {}

    @property
    def container_name(self) -> str:
        return str(self.container.get("name", ""))

    @property
    def complete(self) -> bool:
        """Nothing left to allocate after this container."""
        return not any(self.remaining)


class PendingPodSource(Protocol):
    async def find(self, node: str, device_ids: Sequence[str]) -> PendingAllocation:
        """The allocation kubelet's ``device_ids`` belong to; raises :class:`PodLookupError`."""
        ...

    async def expected(self, node: str, count: int) -> PendingAllocation | None:
        """The allocation kubelet most likely serves next with ``count`` devices (a preference
        for GetPreferredAllocation only; :meth:`find` still verifies)."""
        ...


class AllocationRecorder(Protocol):
    async def consume(self, allocation: PendingAllocation) -> None:
        """Erase the container's entry from ``hami.io/vgpu-devices-to-allocate``."""
        ...

    async def finish(self, pod: RawObject, node: str, *, success: bool) -> None:
        """Set ``hami.io/bind-phase`` to success/failed, then release the node lock if it is this pod's.

        Never raises: failures are logged (the lock then expires on the scheduler side).
        """
        ...


# ----------------------------------------------------------------------------------- matching


def _key_of(pod: RawObject) -> tuple[str, str]:
    meta = _meta(pod)
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def _creation_key(pod: RawObject) -> tuple[str, str, str]:
    meta = _meta(pod)
    return (str(meta.get("creationTimestamp", "")), str(meta.get("namespace", "")), str(meta.get("name", "")))


def deleting(pod: RawObject) -> bool:
    return bool(_meta(pod).get("deletionTimestamp"))


def pending_entry(
    pod: RawObject, node: str, *, include_deleting: bool = False
) -> tuple[int, ContainerDevices, PodSingleDevice] | str:
    """The next container entry this pod waits for on ``node``, or why it is not waiting.

    A pod being deleted is "not waiting" unless ``include_deleting`` (the matcher wants it: a
    delete can land while kubelet allocates the pod). Raises :class:`DecodeError` when the
    to-allocate annotation is malformed.
    """
    if deleting(pod) and not include_deleting:
        return "being deleted"
    status = pod.get("status")
    phase = status.get("phase") if isinstance(status, Mapping) else None
    if phase not in (None, "Pending"):
        return f"phase {phase}"
    spec = pod.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    if spec.get("nodeName") != node:
        return f"bound to {spec.get('nodeName')!r}, not {node!r}"
    ann = annotations_of(pod)
    if ann.get(keys.VGPU_NODE) != node:
        return f"{keys.VGPU_NODE} is {ann.get(keys.VGPU_NODE)!r}"
    if ann.get(keys.BIND_PHASE) != keys.BIND_PHASE_ALLOCATING:
        return f"{keys.BIND_PHASE} is {ann.get(keys.BIND_PHASE)!r}"
    raw = ann.get(keys.VGPU_DEVICES_TO_ALLOCATE)
    if raw is None:
        return f"no {keys.VGPU_DEVICES_TO_ALLOCATE}"
    psd = decode_pod_single_device(raw, key=keys.VGPU_DEVICES_TO_ALLOCATE)
    containers = spec.get("containers")
    n_containers = len(containers) if isinstance(containers, list) else 0
    if len(psd) > n_containers:
        raise DecodeError(
            keys.VGPU_DEVICES_TO_ALLOCATE, raw, f"{len(psd)} container entries but the pod has {n_containers}"
        )
    for index, devices in enumerate(psd):
        if devices:
            return index, devices, psd
    return "all containers already allocated"


def _gpu_of(virtual_id: str) -> str:
    return virtual_id.rpartition("-")[0]


def names_gpus_of(device_ids: Sequence[str], devices: ContainerDevices) -> bool:
    """Kubelet's virtual IDs (``<uuid>-<i>``) name exactly the entry's GPUs (as a multiset)."""
    wanted = sorted(device_id_of(d.uuid) for d in devices)
    got = sorted(_gpu_of(vid) for vid in device_ids)
    return wanted == got


def names_gpus_of_others(
    device_ids: Sequence[str], chosen: PendingAllocation, others: Sequence[PendingAllocation]
) -> list[str]:
    """The other waiting pods whose entries hold a GPU kubelet named that ``chosen`` does not.

    Kubelet without a preference picks any free IDs, so IDs naming no waiting pod's GPU say
    nothing; IDs naming another pod's GPU say the call may well be that pod's.
    """
    named = {_gpu_of(vid) for vid in device_ids} - {device_id_of(d.uuid) for d in chosen.devices}
    return [
        pod_ref(o.pod)
        for o in others
        if o is not chosen and named & {device_id_of(d.uuid) for d in o.devices}
    ]


def _requested(pod: RawObject, resource: str) -> list[int]:
    """Per container, how many of ``resource`` it asks (HAMi's read; 0 when absent or unreadable)."""
    spec = pod.get("spec")
    containers = spec.get("containers") if isinstance(spec, Mapping) else None
    counts: list[int] = []
    for i, container in enumerate(containers if isinstance(containers, list) else []):
        try:
            count = container_resources(container, f"spec.containers[{i}]").integer(resource, [])
        except HamiError:
            count = None
        counts.append(count or 0)
    return counts


def awaits_admission_outside_hami(pod: RawObject, node: str, resource: str) -> bool:
    """A pod bound to ``node`` without HAMi's placement that asks for ``resource`` and is not
    through kubelet admission yet (this plugin can never allocate such a pod: it fails there)."""
    if deleting(pod) or annotations_of(pod).get(keys.VGPU_NODE):
        return False
    status = pod.get("status")
    phase = status.get("phase") if isinstance(status, Mapping) else None
    spec = pod.get("spec")
    bound = spec.get("nodeName") if isinstance(spec, Mapping) else None
    return phase in (None, "Pending") and bound == node and any(_requested(pod, resource))


def first_in_line(
    allocation: PendingAllocation, foreign: Sequence[RawObject], count: int, resource: str
) -> None:
    """Raise :class:`ForeignPodFirst` when a pod outside HAMi asking ``count`` devices was created no
    later than ``allocation``'s pod: kubelet admits in creation order, so this call is likely its.

    Serving it would run that pod on the HAMi pod's slice, which the scheduler frees again when the
    HAMi pod then fails: one device handed out twice. Refused, it fails admission, as in HAMi.
    """
    created = str(_meta(allocation.pod).get("creationTimestamp", ""))
    rivals = [
        f for f in foreign
        if count in _requested(f, resource) and str(_meta(f).get("creationTimestamp", "")) <= created
    ]  # fmt: skip
    if rivals:
        raise ForeignPodFirst(
            f"pod {pod_ref(rivals[0])} asks {count} {resource} without a HAMi placement (not scheduled by "
            f"HAMi) and is in kubelet's line before {pod_ref(allocation.pod)}; refusing this Allocate "
            f"rather than handing it {pod_ref(allocation.pod)}'s devices"
        )


@dataclass(frozen=True, slots=True)
class _Candidate:
    allocation: PendingAllocation
    from_lock: bool


class HamiPendingPodSource:
    """HAMi-2.8-compatible lookup with verification (module docstring).

    ``resource``: the resource name this plugin serves; with it, pods that ask for it but were not
    placed by HAMi (:func:`first_in_line`) are never handed a HAMi pod's devices.
    """

    def __init__(self, pods: PodApi, nodes: NodeApi, *, resource: str | None = None) -> None:
        self._pods = pods
        self._nodes = nodes
        self._resource = resource

    async def _lock(self, node: str) -> NodeLock | None:
        value = annotations_of(await self._nodes.get_node(node)).get(keys.NODE_LOCK)
        if not value:
            return None
        try:
            lock = decode_node_lock(value)
        except DecodeError as e:
            # The lock only orders candidates here; every candidate is verified anyway.
            logger.warning("node %s: ignoring unreadable node lock: %s", node, e)
            return None
        return lock if lock.owner is not None else None

    async def _candidates(
        self, node: str
    ) -> tuple[list[_Candidate], list[str], list[tuple[MalformedAllocation, bool]], list[RawObject]]:
        """Waiting HAMi pods (lock holder first, then by creation), why others are not, the
        unreadable ones, and the pods outside HAMi waiting for kubelet admission."""
        lock = await self._lock(node)
        holder = (lock.namespace, lock.name) if lock is not None and lock.namespace and lock.name else None
        pods = list(await self._pods.list_pods_on_node(node))
        if holder is not None and not any(_key_of(p) == holder for p in pods):
            try:
                pods.append(await self._pods.get_pod(*holder))
            except Exception as e:  # a lock naming a deleted pod: nothing to serve there
                logger.info("node %s: lock holder %s/%s not readable: %s", node, holder[0], holder[1], e)
        pods.sort(key=lambda p: (_key_of(p) != holder, *_creation_key(p)))
        candidates: list[_Candidate] = []
        skipped: list[str] = []
        malformed: list[tuple[MalformedAllocation, bool]] = []
        foreign = [
            p for p in pods if self._resource and awaits_admission_outside_hami(p, node, self._resource)
        ]
        for pod in pods:
            from_lock = _key_of(pod) == holder
            if from_lock and lock is not None and lock.uid is not None and lock.uid != _meta(pod).get("uid"):
                # Same name, different pod (deleted and re-created): the lock is not this pod's.
                logger.info("node %s: lock names %s but UID %s, not this pod's", node, pod_ref(pod), lock.uid)
                from_lock = False
            try:
                entry = pending_entry(pod, node, include_deleting=True)
            except DecodeError as e:
                malformed.append((MalformedAllocation(pod, e), from_lock))
                continue
            if isinstance(entry, str):
                if from_lock or keys.VGPU_DEVICES_TO_ALLOCATE in annotations_of(pod):
                    skipped.append(f"{pod_ref(pod)}: {entry}")
                continue
            index, devices, psd = entry
            remaining = tuple(() if i == index else c for i, c in enumerate(psd))
            allocation = PendingAllocation(
                pod=pod, container_index=index, devices=devices, remaining=remaining
            )
            candidates.append(_Candidate(allocation, from_lock))
        return candidates, skipped, malformed, foreign

    async def find(self, node: str, device_ids: Sequence[str]) -> PendingAllocation:
        if not device_ids:
            raise PodLookupError("Allocate asked for no devices")
        candidates, skipped, malformed, foreign = await self._candidates(node)
        count = len(device_ids)

        def servable(allocation: PendingAllocation, why: str) -> PendingAllocation:
            if self._resource:
                first_in_line(allocation, foreign, count, self._resource)
            return _servable(allocation, why)

        sized = [c for c in candidates if len(c.allocation.devices) == count]
        exact = [c for c in sized if names_gpus_of(device_ids, c.allocation.devices)]
        if exact:
            # Same GPUs requested: the lock holder, else the oldest (kubelet admits in creation order).
            return servable(exact[0].allocation, "kubelet's device IDs name its GPUs")
        locked = [c for c in sized if c.from_lock]
        if locked:
            return servable(locked[0].allocation, "it holds the node lock")
        if len(sized) == 1:
            only = sized[0].allocation
            others = names_gpus_of_others(device_ids, only, [c.allocation for c in candidates])
            if others:
                raise AmbiguousAllocation(
                    f"node {node}: only {pod_ref(only.pod)} waits for {len(device_ids)} device(s) but "
                    f"kubelet's device IDs {list(device_ids)} name GPUs of {', '.join(others)}; "
                    "refusing to guess"
                )
            return servable(only, "it is the only pod waiting for this many devices")
        if len(sized) > 1:
            names = ", ".join(pod_ref(c.allocation.pod) for c in sized)
            raise AmbiguousAllocation(
                f"node {node}: {len(sized)} pods wait for {len(device_ids)} device(s) ({names}) and "
                "kubelet's device IDs match none of them exactly; refusing to guess"
            )
        if malformed:
            # A pod whose annotation cannot be read can never be served; fail it when it is
            # the one meant: the lock holder, or the only pod that could be.
            held = [m for m, from_lock in malformed if from_lock]
            if held:
                raise held[0]
            if len(malformed) == 1 and not candidates:
                raise malformed[0][0]
        reasons = [
            f"{pod_ref(c.allocation.pod)}: waits for {len(c.allocation.devices)} device(s)"
            for c in candidates
        ]
        reasons += skipped + [str(m) for m, _ in malformed]
        reasons += [f"{pod_ref(f)}: not scheduled by HAMi (no {keys.VGPU_NODE})" for f in foreign]
        detail = "; ".join(reasons) if reasons else "no pod is being allocated there"
        raise PodLookupError(f"no pod on node {node} waits for {len(device_ids)} device(s) ({detail})")

    async def expected(self, node: str, count: int) -> PendingAllocation | None:
        # Pods being deleted keep their place: kubelet may be allocating one right now, and
        # steering that call to a neighbour's GPUs is exactly what must not happen.
        candidates, _skipped, _malformed, _foreign = await self._candidates(node)
        sized = [c for c in candidates if len(c.allocation.devices) == count]
        return sized[0].allocation if sized else None


def _servable(allocation: PendingAllocation, why: str) -> PendingAllocation:
    if deleting(allocation.pod):
        raise PodBeingDeleted(allocation.pod, f"this Allocate matches it ({why})")
    return allocation


# ----------------------------------------------------------------------------------- recorder


class KubeAllocationRecorder:
    """:class:`AllocationRecorder` over merge patches, as HAMi 2.8 writes them (node spec §4.6)."""

    def __init__(
        self,
        pods: PodApi,
        nodes: NodeApi,
        *,
        lock_retries: int = 5,
        write_retries: int = 3,
        retry_delay_s: float = 0.1,
    ) -> None:
        self._pods = pods
        self._nodes = nodes
        self._lock_retries = lock_retries
        self._write_retries = write_retries
        self._retry_delay_s = retry_delay_s

    async def consume(self, allocation: PendingAllocation) -> None:
        value = encode_pod_single_device(allocation.remaining)
        patch = {"metadata": {"annotations": {keys.VGPU_DEVICES_TO_ALLOCATE: value}}}
        await self._patch_pod_settled(allocation.namespace, allocation.name, patch)

    async def _patch_pod_settled(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """A pod merge patch retried after a server error or a lost connection.

        The generic client retries writes only when the server surely did not run them; these two
        can be repeated safely: each sets a fixed value of a key that, while kubelet allocates
        the pod (it serialises a pod's Allocate calls), only this plugin writes. Failing instead
        would make kubelet reject the pod for good over a transient 500 (HAMi 2.8 does).
        """
        for attempt in range(self._write_retries + 1):
            try:
                await self._pods.patch_pod(namespace, name, patch)
                return
            except (ApiServerError, ApiTransportError) as e:
                if attempt >= self._write_retries:
                    raise
                delay = self._retry_delay_s * 2**attempt
                logger.warning(
                    "pod %s/%s: patch failed (%s); retry #%d/%d in %.2fs",
                    namespace, name, e, attempt + 1, self._write_retries, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)

    async def finish(self, pod: RawObject, node: str, *, success: bool) -> None:
        meta = _meta(pod)
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        phase = keys.BIND_PHASE_SUCCESS if success else keys.BIND_PHASE_FAILED
        try:
            await self._patch_pod_settled(
                namespace, name, {"metadata": {"annotations": {keys.BIND_PHASE: phase}}}
            )
        except Exception as e:  # still release the lock (HAMi 2.8 would keep it until expiry)
            logger.error("pod %s/%s: cannot set %s=%s: %s", namespace, name, keys.BIND_PHASE, phase, e)
        uid = meta.get("uid")
        await self.release_lock(node, namespace, name, uid=str(uid) if uid else None)

    async def release_lock(self, node: str, namespace: str, name: str, *, uid: str | None = None) -> None:
        """Remove ``hami.io/mutex.lock`` if it is held by this pod (and this UID, when the lock has one)."""
        for attempt in range(1, self._lock_retries + 1):
            try:
                obj = await self._nodes.get_node(node)
                value = annotations_of(obj).get(keys.NODE_LOCK)
                if not value:
                    return
                try:
                    held = decode_node_lock(value).held_by(namespace, name, uid)
                except DecodeError:
                    held = False
                if not held:
                    logger.info(
                        "node %s: lock %r is not held by %s/%s; leaving it", node, value, namespace, name
                    )
                    return
                patch = {
                    "metadata": {
                        "annotations": {keys.NODE_LOCK: None},
                        "resourceVersion": _meta(obj).get("resourceVersion"),
                    }
                }
                await self._nodes.patch_node(node, patch)
                return
            except Exception as e:
                logger.warning("node %s: releasing lock failed (attempt %d): %s", node, attempt, e)
                await asyncio.sleep(self._retry_delay_s)
        logger.error("node %s: could not release the lock of %s/%s", node, namespace, name)
