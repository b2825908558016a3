"""A fake kubelet per node: node registration and heartbeat, pod admission with device plugins,
pod phases, and graceful-deletion finalisation, all through the API server over HTTP.

Pod admission follows kubelet's order: the pods bound to the node that are new since the last
pass form a batch, sorted by ``creationTimestamp`` (``HandlePodAdditions``), and are admitted one
at a time. For each init container, then each container, every ``limits`` entry that is a
registered device-plugin resource gets devices from the :class:`DeviceManager` (``Allocate`` is
called per container, in that order: HAMi's device plugin finds "the pod being allocated" from
exactly this ordering, hami-node-spec.md §4.2). Resources no plugin registered are skipped, as
kubelet drops unknown extended resources. A failed allocation rejects the pod: phase ``Failed``,
reason ``UnexpectedAdmissionError``, message ``Pod was rejected: Allocate failed due to …, which
is unexpected``. Admitted pods go to ``Running`` with container statuses; with the annotation
:data:`RUN_SECONDS_ANNOTATION` they finish (``Succeeded``) after that many seconds. A graceful
DELETE is finished like kubelet does: containers stop, the terminal phase is written, then the pod
is deleted with grace 0 and a UID precondition.

Dynamic resources (:class:`~hami.simulator.dra_kubelet.KubeletClaims`): the plugin watcher
registers DRA drivers that put their registration socket in ``<state_dir>/plugins_registry``.
After device-plugin admission, a pod with ``spec.resourceClaims`` has its claims prepared
(``NodePrepareResources`` over the driver's socket) and each container's CDI devices resolved
from ``<state_dir>/cdi`` as a CDI-enabled runtime would (env, mounts, device nodes recorded). A
failed prepare leaves the pod ``Pending`` (containers ``ContainerCreating``) and is retried with
a doubling delay, as kubelet's pod sync retries it. Claims are unprepared (when no other pod on
the node uses them) once the pod is finished or deleted, before a graceful deletion completes.

What Allocate answered is recorded per pod, in memory (:meth:`FakeKubelet.record`) and as JSON in
``<state_dir>/pods/<namespace>_<name>_<uid>.json``; :meth:`FakeKubelet.pod_resources` is a
PodResources-``List``-like view of the device IDs and DRA claims each container holds (also
written to ``<state_dir>/pod-resources.json``); see :mod:`hami.simulator.podrecords`. The status
bodies written for the node and its pods are built by :mod:`hami.simulator.kubeletstatus`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from hami.core.quantity import QuantityError, exact_integer, parse_quantity
from hami.simulator.devicemanager import (
    AdmissionError,
    ContainerAllocation,
    DeviceManager,
    DeviceManagerSettings,
)
from hami.simulator.dra_controller import DraPrepareError
from hami.simulator.dra_kubelet import CdiResolveError, KubeletClaims, uses_claims
from hami.simulator.kubeletstatus import (
    node_conditions,
    node_info,
    running_status,
    terminated_status,
    waiting_status,
)
from hami.simulator.podrecords import PodRecord, pod_resources_listing, write_pod_resources, write_record
from hami.simulator.restclient import (
    STRATEGIC_PATCH,
    ApiError,
    Informer,
    InformerEvent,
    RestClient,
    node_path,
    pod_path,
)

logger = logging.getLogger(__name__)

JsonObj = dict[str, Any]
STATUS_RETRY_S: Final = 0.5  # how soon a failed pod status write is tried again
RUN_SECONDS_ANNOTATION: Final = "hami.io/sim-run-seconds"
"""Pod annotation: seconds after which the fake kubelet marks the running pod ``Succeeded``."""
REASON_ADMISSION: Final = "UnexpectedAdmissionError"
REASON_DRA_PREPARE: Final = "FailedPrepareDynamicResources"
"""Record reason while a pod's claims cannot be prepared (kubelet's event reason)."""
REASON_CDI: Final = "CreateContainerError"


def _now(skew_s: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=skew_s)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("spec") or {}


@dataclass(frozen=True, slots=True, kw_only=True)
class KubeletSettings:
    heartbeat_interval: float = 10.0
    """Seconds between node status heartbeats (Ready condition, device counts)."""
    devices: DeviceManagerSettings = field(default_factory=DeviceManagerSettings)
    dra_registry_poll: float = 0.2
    """Seconds between scans of ``plugins_registry`` for DRA plugin sockets."""
    dra_retry_initial: float = 0.2
    """First delay before retrying a failed prepare (doubling up to ``dra_retry_max``, which is
    also the period of unprepare retries)."""
    dra_retry_max: float = 5.0


def _device_count(value: object) -> int:
    try:
        count = exact_integer(parse_quantity(value))  # type: ignore[arg-type]
    except QuantityError:
        return 0
    return max(count or 0, 0)


class FakeKubelet:
    """One node's kubelet. :meth:`run` until cancelled; :meth:`restart` re-creates ``kubelet.sock``."""

    def __init__(
        self,
        client: RestClient,
        node: JsonObj,
        *,
        plugin_dir: Path,
        state_dir: Path,
        node_ip: str,
        pod_cidr_prefix: str,
        settings: KubeletSettings | None = None,
    ) -> None:
        self._client = client
        self._template = node
        self.name = str(_meta(node)["name"])
        self.node_ip = node_ip
        self._pod_cidr_prefix = pod_cidr_prefix
        self._next_ip = 2
        self.state_dir = state_dir
        self.settings = settings or KubeletSettings()
        self.devices = DeviceManager(
            plugin_dir, on_change=self._status_changed, settings=self.settings.devices
        )
        self._pods = Informer(
            client, "/api/v1/pods", field_selector=f"spec.nodeName={self.name}", name=f"kubelet {self.name}"
        )
        self._pods.add_handler(self._on_pod)
        self.dra = KubeletClaims(
            client,
            state_dir,
            registry_poll_s=self.settings.dra_registry_poll,
            retry_initial_s=self.settings.dra_retry_initial,
            retry_max_s=self.settings.dra_retry_max,
        )
        self._wake = asyncio.Event()
        self._status_dirty = asyncio.Event()
        self._handled: set[str] = set()  # pod UIDs admitted, rejected or adopted
        self._finalizing: set[str] = set()
        self._timers: dict[str, asyncio.Task[None]] = {}
        # Pod UID → (pod, status) whose last write failed: retried until it lands, as the real
        # kubelet's status manager does. A status lost here would leave a rejected pod Pending,
        # and its device-plugin entry would look like the next pod kubelet admits.
        self._unsynced: dict[str, tuple[JsonObj, JsonObj]] = {}
        self._published: set[str] = set()
        self._ready_since = _now()
        self.records: dict[str, PodRecord] = {}
        """Pod UID → what the kubelet did with it (kept after the pod is gone)."""
        self.ready = asyncio.Event()
        self.clock_skew_s = 0.0
        """Seconds this node's clock is off (fault injection): heartbeats, Lease and pod times."""

    @property
    def plugin_dir(self) -> Path:
        return self.devices.plugin_dir

    # ---- node ---------------------------------------------------------------------------------

    def _node_conditions(self) -> list[JsonObj]:
        return node_conditions(now=_now(self.clock_skew_s), ready_since=self._ready_since)

    def _device_status(self) -> tuple[JsonObj, JsonObj]:
        self.devices.expire_stopped()
        capacity: JsonObj = {}
        allocatable: JsonObj = {}
        current = self.devices.capacity()
        for name in self._published - current.keys():
            capacity[name] = None
            allocatable[name] = None
        for name, (total, healthy) in current.items():
            capacity[name] = str(total)
            allocatable[name] = str(healthy)
        self._published = set(current)
        return capacity, allocatable

    async def _register_node(self) -> None:
        status = dict(self._template.get("status") or {})
        status.update(
            conditions=self._node_conditions(),
            addresses=[
                {"type": "InternalIP", "address": self.node_ip},
                {"type": "Hostname", "address": self.name},
            ],
            daemonEndpoints={"kubeletEndpoint": {"Port": 10250}},
            nodeInfo=node_info(self.name),
        )
        body = {**self._template, "apiVersion": "v1", "kind": "Node", "status": status}
        try:
            await self._client.create("/api/v1/nodes", body)
        except ApiError as exc:
            if exc.code != 409:
                raise
            await self._client.patch(node_path(self.name, "status"), {"status": status})

    async def _renew_lease(self) -> None:
        """The node heartbeat Lease in ``kube-node-lease`` (what ``kubectl describe node`` shows)."""
        now = datetime.now(UTC) + timedelta(seconds=self.clock_skew_s)
        renew = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        try:
            await self._client.patch(path, {"spec": {"renewTime": renew}})
        except ApiError as exc:
            if exc.code != 404:
                raise
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": self.name, "leaseDurationSeconds": 40, "renewTime": renew},
            }
            await self._client.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", lease)

    def _status_changed(self) -> None:
        self._status_dirty.set()

    async def _status_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.heartbeat_interval):
                    await self._status_dirty.wait()
            self._status_dirty.clear()
            capacity, allocatable = self._device_status()
            patch = {
                "status": {
                    "capacity": capacity,
                    "allocatable": allocatable,
                    "conditions": self._node_conditions(),
                }
            }
            try:
                await self._client.patch(node_path(self.name, "status"), patch, content_type=STRATEGIC_PATCH)
                await self._renew_lease()
            except ApiError as exc:
                logger.warning("kubelet %s: node status update failed: %s", self.name, exc)
                self._published.clear()  # re-send everything next time
                self._status_dirty.set()
                await asyncio.sleep(0.5)

    # ---- pods ---------------------------------------------------------------------------------

    def _on_pod(self, event: InformerEvent) -> None:
        if event.type == "DELETED" and event.old is not None:
            uid = str(_meta(event.old).get("uid", ""))
            self._forget(uid)
        self._wake.set()

    def _forget(self, uid: str) -> None:
        self.devices.release(uid)
        self.dra.forget(uid)
        self._handled.discard(uid)
        self._finalizing.discard(uid)
        timer = self._timers.pop(uid, None)
        if timer is not None:
            timer.cancel()
        self._unsynced.pop(uid, None)
        self._write_pod_resources()

    async def _pod_worker(self, tg: asyncio.TaskGroup) -> None:
        await self._pods.synced.wait()
        while True:
            self._wake.clear()
            await self._resync_statuses()
            await self._sync(tg)
            # Unprepare failures (a driver that is away) and unwritten statuses are retried
            # without waiting for an event.
            waits = [self.dra.retry_max_s] if self.dra.has_due else []
            waits += [STATUS_RETRY_S] if self._unsynced else []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(waits) if waits else None):
                    await self._wake.wait()

    async def _sync(self, tg: asyncio.TaskGroup) -> None:
        await self.dra.unprepare_due()
        pods = list(self._pods.objects.values())
        for pod in pods:
            uid = str(_meta(pod).get("uid", ""))
            if _meta(pod).get("deletionTimestamp") and uid not in self._finalizing:
                self._finalizing.add(uid)
                tg.create_task(self._finalize(pod), name=f"kubelet {self.name}: finalize {uid}")
        batch = [
            p
            for p in pods
            if str(_meta(p).get("uid", "")) not in self._handled and not _meta(p).get("deletionTimestamp")
        ]
        batch.sort(
            key=lambda p: (
                str(_meta(p).get("creationTimestamp", "")),
                _meta(p).get("namespace", ""),
                _meta(p).get("name", ""),
            )
        )
        for pod in batch:
            uid = str(_meta(pod).get("uid", ""))
            self._handled.add(uid)
            if (pod.get("status") or {}).get("phase", "Pending") != "Pending":
                continue  # adopted: already running or finished before this kubelet saw it
            await self._admit(pod, tg)

    def _pod_ip(self) -> str:
        ip = f"{self._pod_cidr_prefix}.{self._next_ip}"
        self._next_ip = self._next_ip + 1 if self._next_ip < 254 else 2
        return ip

    async def _admit(self, pod: JsonObj, tg: asyncio.TaskGroup) -> None:
        meta, spec = _meta(pod), _spec(pod)
        uid = str(meta.get("uid", ""))
        record = PodRecord(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            uid=uid,
            node=self.name,
            phase="Pending",
        )
        allocations: list[ContainerAllocation] = []
        init_names = frozenset(str(c.get("name")) for c in spec.get("initContainers") or [])
        try:
            for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
                limits = (container.get("resources") or {}).get("limits") or {}
                for resource, value in limits.items():
                    needed = _device_count(value)
                    if needed and self.devices.is_device_resource(resource):
                        allocations.append(
                            await self.devices.allocate(
                                uid, str(container.get("name")), resource, needed, init_containers=init_names
                            )
                        )
        except AdmissionError as exc:
            self.devices.release(uid)
            message = f"Pod was rejected: Allocate failed due to {exc}, which is unexpected"
            logger.info("kubelet %s: rejected %s/%s: %s", self.name, record.namespace, record.name, exc)
            record = replace(
                record,
                phase="Failed",
                reason=REASON_ADMISSION,
                message=message,
                allocations=tuple(allocations),
            )
            self._store_record(record)
            await self._patch_status(pod, {"phase": "Failed", "reason": REASON_ADMISSION, "message": message})
            return
        try:
            for allocation in allocations:
                await self.devices.pre_start(allocation.resource, allocation.device_ids)
        except AdmissionError as exc:
            record = replace(
                record, allocations=tuple(allocations), reason="RunContainerError", message=str(exc)
            )
            self._store_record(record)
            await self._patch_status(pod, waiting_status(pod, "RunContainerError", str(exc)))
            return
        await self._start(pod, replace(record, allocations=tuple(allocations)), tg)

    async def _start(self, pod: JsonObj, record: PodRecord, tg: asyncio.TaskGroup) -> None:
        """Prepare the pod's claims (if any), then run its containers."""
        meta = _meta(pod)
        uid = record.uid
        if uses_claims(pod):
            try:
                prepared = await self.dra.prepare(pod)
            except DraPrepareError as exc:
                reason = REASON_CDI if isinstance(exc, CdiResolveError) else REASON_DRA_PREPARE
                await self._prepare_failed(pod, record, reason, str(exc), tg)
                return
            if uid not in self._handled or uid in self._finalizing:
                await self.dra.unprepare(uid)  # deleted while its claims were being prepared
                return
            record = replace(record, dra=prepared.containers, claims=prepared.claims)
        record = replace(record, phase="Running", reason="", message="")
        self._store_record(record)
        await self._patch_status(pod, self._running_status(pod))
        run_seconds = (meta.get("annotations") or {}).get(RUN_SECONDS_ANNOTATION)
        if run_seconds is not None:
            try:
                seconds = max(float(run_seconds), 0.0)
            except ValueError:
                logger.warning(
                    "kubelet %s: ignoring bad %s=%r", self.name, RUN_SECONDS_ANNOTATION, run_seconds
                )
            else:
                self._timers[uid] = tg.create_task(self._complete_after(pod, seconds), name=f"run {uid}")

    async def _prepare_failed(
        self, pod: JsonObj, record: PodRecord, reason: str, message: str, tg: asyncio.TaskGroup
    ) -> None:
        """Keep the pod Pending (containers ``ContainerCreating``) and try again later."""
        uid = record.uid
        delay = self.dra.retry_delay(uid)
        logger.info(
            "kubelet %s: %s/%s: %s (retry in %.1fs)", self.name, record.namespace, record.name, message, delay
        )
        if (record.reason, record.message) != (reason, message):
            record = replace(record, reason=reason, message=message)
            self._store_record(record)
            await self._patch_status(pod, waiting_status(pod, "ContainerCreating", message))
        if uid in self._handled and uid not in self._finalizing:
            self._timers[uid] = tg.create_task(
                self._retry_start(pod, record, delay, tg), name=f"kubelet {self.name}: prepare {uid}"
            )

    async def _retry_start(
        self, pod: JsonObj, record: PodRecord, delay: float, tg: asyncio.TaskGroup
    ) -> None:
        await asyncio.sleep(delay)
        # Out of _timers first: only the sleep may be cancelled, never a prepare in flight.
        self._timers.pop(record.uid, None)
        current = self._pods.objects.get(f"{_meta(pod).get('namespace')}/{_meta(pod).get('name')}")
        if (
            current is None
            or str(_meta(current).get("uid")) != record.uid
            or _meta(current).get("deletionTimestamp")
            or record.uid not in self._handled
        ):
            return
        await self._start(current, record, tg)

    def _running_status(self, pod: JsonObj) -> JsonObj:
        now = _now(self.clock_skew_s)
        pod_ip = self.node_ip if _spec(pod).get("hostNetwork") else self._pod_ip()
        return running_status(pod, now=now, host_ip=self.node_ip, pod_ip=pod_ip)

    async def _patch_status(self, pod: JsonObj, status: JsonObj) -> None:
        meta = _meta(pod)
        uid = str(meta.get("uid", ""))
        try:
            await self._client.patch(
                pod_path(str(meta.get("namespace")), str(meta.get("name")), "status"),
                {"metadata": {"uid": meta.get("uid")}, "status": status},
                content_type=STRATEGIC_PATCH,
            )
        except ApiError as exc:
            if exc.code in (404, 409):  # the pod is gone, or this name is another pod now
                self._unsynced.pop(uid, None)
                return
            logger.info(
                "kubelet %s: status of %s not written (will retry): %s", self.name, meta.get("name"), exc
            )
            self._unsynced[uid] = (pod, status)
            return
        self._unsynced.pop(uid, None)

    async def _resync_statuses(self) -> None:
        """Write again the statuses whose last write failed (latest status per pod only)."""
        for pod, status in list(self._unsynced.values()):
            await self._patch_status(pod, status)

    async def _complete_after(self, pod: JsonObj, seconds: float) -> None:
        await asyncio.sleep(seconds)
        uid = str(_meta(pod).get("uid", ""))
        self._timers.pop(uid, None)
        current = self._pods.objects.get(f"{_meta(pod).get('namespace')}/{_meta(pod).get('name')}")
        if (
            current is None
            or str(_meta(current).get("uid")) != uid
            or _meta(current).get("deletionTimestamp")
        ):
            return
        await self._patch_status(
            current, terminated_status(current, now=_now(self.clock_skew_s), exit_code=0)
        )
        self.devices.release(uid)
        self._update_record(uid, phase="Succeeded")
        await self.dra.unprepare(uid)

    async def _finalize(self, pod: JsonObj) -> None:
        meta = _meta(pod)
        uid = str(meta.get("uid", ""))
        timer = self._timers.pop(uid, None)
        if timer is not None:
            timer.cancel()
        phase = (pod.get("status") or {}).get("phase", "Pending")
        if phase == "Running":
            await self._patch_status(pod, terminated_status(pod, now=_now(self.clock_skew_s), exit_code=0))
            self._update_record(uid, phase="Succeeded")
        self.devices.release(uid)
        await self.dra.unprepare(uid)  # before the pod object goes, as kubelet does
        try:
            await self._client.delete(
                pod_path(str(meta.get("namespace")), str(meta.get("name"))), grace_seconds=0, uid=uid
            )
        except ApiError as exc:
            if exc.code not in (404, 409):
                logger.warning("kubelet %s: cannot finish deleting %s: %s", self.name, meta.get("name"), exc)
                self._finalizing.discard(uid)  # retried on the next pod event

    # ---- records ------------------------------------------------------------------------------

    def _store_record(self, record: PodRecord) -> None:
        self.records[record.uid] = record
        write_record(self.state_dir, record)
        self._write_pod_resources()

    def _update_record(self, uid: str, *, phase: str) -> None:
        record = self.records.get(uid)
        if record is not None:
            self._store_record(replace(record, phase=phase))

    def record(self, namespace: str, name: str) -> PodRecord | None:
        """The latest record of the pod with that name (newest UID wins)."""
        found = [r for r in self.records.values() if r.namespace == namespace and r.name == name]
        return found[-1] if found else None

    def pod_resources(self) -> list[dict[str, Any]]:
        """PodResources ``List``-like: running pods on this node and the device IDs per container."""
        return pod_resources_listing(
            self.records.values(), live=self._handled, assigned=self.devices.assigned
        )

    def _write_pod_resources(self) -> None:
        write_pod_resources(self.state_dir, self.pod_resources())

    # ---- lifecycle ----------------------------------------------------------------------------

    async def restart(self) -> None:
        """Re-create ``kubelet.sock`` (plugins must re-register), keeping pods and allocations."""
        await self.devices.restart()

    async def run(self) -> None:
        """Register the node, serve ``kubelet.sock`` and manage this node's pods until cancelled."""
        try:
            await self._register_node()
            await self.devices.start()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pods.run(), name=f"kubelet {self.name}: watch pods")
                tg.create_task(self._status_loop(), name=f"kubelet {self.name}: node status")
                tg.create_task(self.dra.run(), name=f"kubelet {self.name}: DRA plugin watcher")
                await self._pods.synced.wait()
                self.ready.set()
                await self._pod_worker(tg)
        finally:
            for timer in self._timers.values():
                timer.cancel()
            await asyncio.shield(self.devices.stop())
