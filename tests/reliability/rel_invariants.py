"""Cluster invariants, read only from the API (pods, nodes) and the fake kubelets' records.

Safety (checked on every poll, counted at once — "hard"):

* ``over-memory`` / ``over-cores`` / ``over-split``: the bound, non-terminal pods' allocations on a
  device exceed what its node registered (``hami.io/node-nvidia-register``);
* ``double-accounted``: two kubelets hold devices for the same pod UID;
* ``env-mismatch``: the env a container got from Allocate (``NVIDIA_VISIBLE_DEVICES``,
  ``CUDA_DEVICE_MEMORY_LIMIT_<i>``, ``CUDA_DEVICE_SM_LIMIT``) differs from its pod's
  ``hami.io/vgpu-devices-allocated`` entry for that container.

Accounting (counted when they persist longer than ``persist_s``, since the kubelet and the API
move one after the other — "soft"):

* ``unaccounted``: a Running GPU pod no kubelet holds devices for, or a pod a kubelet holds devices
  for that has no allocation annotation, or whose annotation names another node;
* ``orphan-allocation``: a kubelet holds devices for a pod that is gone or terminal.

Liveness (soft, and only while the cluster is not disturbed, see ``rel_monitor.InvariantMonitor``):

* ``stale-lock``: a node lock (``hami.io/mutex.lock``) older than ``lock_max_age_s`` whose owner
  is not a live pod in handoff;
* ``stuck-handoff``: a pod bound with bind phase ``allocating`` for longer than ``handoff_max_age_s``;
* ``stuck-pending``: a pod of the HAMi scheduler Pending for longer than ``pending_settle_s`` while a
  node has devices it fits on (request rules of hami-scheduler-spec.md §5.1/§5.5, simplified, and
  only for unconstrained single-container pods).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from hami.core import keys
from hami.core.errors import DecodeError
from hami.core.model import ContainerDevices, DeviceInfo, PodSingleDevice
from hami.core.node_annotations import decode_node_devices
from hami.core.node_lock import decode_node_lock
from hami.core.pod_annotations import decode_pod_single_device, device_id_of
from hami.simulator.kubelet import FakeKubelet

JsonObj = dict[str, Any]
TERMINAL = frozenset({"Succeeded", "Failed"})
CONSTRAINT_ANNOTATIONS = frozenset(
    {
        keys.USE_GPUTYPE,
        keys.NOUSE_GPUTYPE,
        keys.USE_GPUUUID,
        keys.NOUSE_GPUUUID,
        keys.NUMA_BIND,
        keys.VGPU_MODE,
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Violation:
    kind: str
    subject: str
    detail: str
    hard: bool = True

    def __str__(self) -> str:
        return f"{self.kind} {self.subject}: {self.detail}"


@dataclass(frozen=True, slots=True, kw_only=True)
class InvariantSettings:
    poll_s: float = 0.2
    persist_s: float = 2.0
    """A soft violation counts once it has been seen continuously this long."""
    lock_max_age_s: float = 30.0
    handoff_max_age_s: float = 30.0
    pending_settle_s: float = 8.0
    """Liveness is judged only this long after the last disturbance and after a pod's creation."""
    scheduler_name: str = keys.DEFAULT_SCHEDULER_NAME
    ignore_pods: frozenset[str] = frozenset()
    """``namespace/name`` of pods a scenario deliberately broke (malformed annotations)."""


class ClusterView(Protocol):
    """What the checker reads: API objects and the kubelets."""

    def pods(self) -> list[JsonObj]: ...

    def nodes(self) -> list[JsonObj]: ...

    def kubelets(self) -> Mapping[str, FakeKubelet]: ...


# ------------------------------------------------------------------------------------ helpers


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return _meta(obj).get("annotations") or {}


def _phase(pod: Mapping[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def _key(pod: Mapping[str, Any]) -> str:
    return f"{_meta(pod).get('namespace', '')}/{_meta(pod).get('name', '')}"


def _timestamp(text: object) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _int(value: object, default: int = 0) -> int:
    try:
        return int(str(value))
    except ValueError:
        return default


def _containers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((pod.get("spec") or {}).get("containers") or [])


def _requests_gpu(pod: Mapping[str, Any]) -> bool:
    return any(
        _int(((c.get("resources") or {}).get("limits") or {}).get(keys.RESOURCE_GPU, 0)) > 0
        for c in _containers(pod)
    )


@dataclass(slots=True)
class _DeviceUse:
    mem: int = 0
    cores: int = 0
    tasks: int = 0
    pods: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Request:
    nums: int
    mem: int | None
    percentage: int | None
    cores: int


def expected_env(devices: ContainerDevices) -> dict[str, str]:
    """What HAMi's device plugin puts in a container's env for these devices (node spec §4.5)."""
    visible: list[str] = []
    for device in devices:
        uuid = device.uuid.split("::", 1)[0]
        if uuid not in visible:
            visible.append(uuid)
    env = {"NVIDIA_VISIBLE_DEVICES": ",".join(visible)}
    for i, device in enumerate(devices):
        env[f"CUDA_DEVICE_MEMORY_LIMIT_{i}"] = f"{device.usedmem}m"
    env["CUDA_DEVICE_SM_LIMIT"] = str(devices[0].usedcores)
    return env


# ------------------------------------------------------------------------------------ checker


class InvariantChecker:
    """One pass over the cluster; decoded annotations are cached per resourceVersion."""

    def __init__(self, view: ClusterView, settings: InvariantSettings) -> None:
        self.view = view
        self.settings = settings
        self._pod_cache: dict[str, tuple[str, PodSingleDevice | DecodeError | None]] = {}
        self._node_cache: dict[str, tuple[str, tuple[DeviceInfo, ...] | None]] = {}

    def _allocation(self, pod: Mapping[str, Any]) -> PodSingleDevice | DecodeError | None:
        meta = _meta(pod)
        uid, rv = str(meta.get("uid", "")), str(meta.get("resourceVersion", ""))
        cached = self._pod_cache.get(uid)
        if cached is not None and cached[0] == rv:
            return cached[1]
        raw = _annotations(pod).get(keys.VGPU_DEVICES_ALLOCATED)
        value: PodSingleDevice | DecodeError | None = None
        if raw is not None:
            try:
                value = decode_pod_single_device(raw)
            except DecodeError as e:
                value = e
        self._pod_cache[uid] = (rv, value)
        return value

    def _devices(self, node: Mapping[str, Any]) -> tuple[DeviceInfo, ...] | None:
        meta = _meta(node)
        name, rv = str(meta.get("name", "")), str(meta.get("resourceVersion", ""))
        cached = self._node_cache.get(name)
        if cached is not None and cached[0] == rv:
            return cached[1]
        raw = _annotations(node).get(keys.NODE_NVIDIA_REGISTER)
        devices: tuple[DeviceInfo, ...] | None = None
        if raw:
            try:
                devices = decode_node_devices(raw)
            except DecodeError:
                devices = None
        self._node_cache[name] = (rv, devices)
        return devices

    def check(self, now: float, *, liveness: bool) -> list[Violation]:
        s = self.settings
        pods = [p for p in self.view.pods() if _key(p) not in s.ignore_pods]
        nodes = {str(_meta(n).get("name")): n for n in self.view.nodes()}
        registered = {name: self._devices(n) for name, n in nodes.items()}
        by_uid = {str(_meta(p).get("uid")): p for p in pods}
        live_uids = {str(_meta(p).get("uid")) for p in pods}
        self._pod_cache = {u: v for u, v in self._pod_cache.items() if u in live_uids}
        out: list[Violation] = []
        out += self._capacity(pods, registered)
        out += self._accounting(by_uid, now)
        if liveness:
            out += self._locks(nodes, pods, now)
            out += self._handoffs(pods, now)
            out += self._pending(pods, nodes, registered, now)
        return out

    # ---- safety -------------------------------------------------------------------------

    def _usage(
        self, pods: Iterable[Mapping[str, Any]], *, bound_only: bool
    ) -> dict[tuple[str, str], _DeviceUse]:
        usage: dict[tuple[str, str], _DeviceUse] = defaultdict(_DeviceUse)
        for pod in pods:
            if _phase(pod) in TERMINAL:
                continue
            node = str((pod.get("spec") or {}).get("nodeName") or "")
            if not node:
                if bound_only:
                    continue
                node = _annotations(pod).get(keys.VGPU_NODE, "")
                if not node:
                    continue
            allocation = self._allocation(pod)
            if not isinstance(allocation, tuple):
                continue
            for container in allocation:
                for device in container:
                    use = usage[(node, str(device_id_of(device.uuid)))]
                    use.mem += device.usedmem
                    use.cores += device.usedcores
                    use.tasks += 1
                    use.pods.append(_key(pod))
        return usage

    def _capacity(
        self, pods: list[JsonObj], registered: Mapping[str, tuple[DeviceInfo, ...] | None]
    ) -> list[Violation]:
        out: list[Violation] = []
        for (node, uuid), use in self._usage(pods, bound_only=True).items():
            devices = registered.get(node)
            if devices is None:
                continue  # unregistered or quarantined node: nothing to compare with
            device = next((d for d in devices if d.id == uuid), None)
            subject = f"{node}/{uuid}"
            if device is None:
                out.append(Violation(kind="unknown-device", subject=subject, detail=f"used by {use.pods}"))
                continue
            if use.mem > device.devmem:
                out.append(
                    Violation(
                        kind="over-memory",
                        subject=subject,
                        detail=f"{use.mem} > {device.devmem} MiB: {use.pods}",
                    )
                )
            if use.cores > device.devcore:
                out.append(
                    Violation(
                        kind="over-cores",
                        subject=subject,
                        detail=f"{use.cores} > {device.devcore}: {use.pods}",
                    )
                )
            if use.tasks > device.count:
                out.append(
                    Violation(
                        kind="over-split", subject=subject, detail=f"{use.tasks} > {device.count}: {use.pods}"
                    )
                )
        return out

    def _accounting(self, by_uid: Mapping[str, JsonObj], now: float) -> list[Violation]:
        out: list[Violation] = []
        holders: dict[str, list[str]] = defaultdict(list)
        for node, kubelet in self.view.kubelets().items():
            for uid, record in list(kubelet.records.items()):
                if record.phase in TERMINAL or not kubelet.devices.assigned(uid):
                    continue
                holders[uid].append(node)
                pod = by_uid.get(uid)
                subject = f"{record.namespace}/{record.name}"
                if pod is None or _phase(pod) in TERMINAL:
                    if pod is not None or f"{subject}" not in self.settings.ignore_pods:
                        out.append(
                            Violation(
                                kind="orphan-allocation",
                                subject=subject,
                                detail=f"kubelet {node} holds devices of a "
                                f"{'gone' if pod is None else 'terminal'} pod (uid {uid})",
                                hard=False,
                            )
                        )
                    continue
                allocation = self._allocation(pod)
                ann_node = _annotations(pod).get(keys.VGPU_NODE)
                if not isinstance(allocation, tuple) or ann_node != node:
                    out.append(
                        Violation(
                            kind="unaccounted",
                            subject=subject,
                            detail=f"kubelet {node} holds devices; annotation node {ann_node!r}, "
                            f"allocation {allocation!r}",
                            hard=False,
                        )
                    )
                    continue
                out += self._env(pod, allocation, record.envs, node)
        for uid, nodes in holders.items():
            if len(nodes) > 1:
                pod = by_uid.get(uid)
                out.append(
                    Violation(
                        kind="double-accounted",
                        subject=_key(pod) if pod is not None else uid,
                        detail=f"held by kubelets {nodes}",
                    )
                )
        for uid, pod in by_uid.items():
            spec = pod.get("spec") or {}
            node = str(spec.get("nodeName") or "")
            if _phase(pod) != "Running" or not node or not _requests_gpu(pod) or uid in holders:
                continue
            if node not in self.view.kubelets():
                continue
            out.append(
                Violation(
                    kind="unaccounted",
                    subject=_key(pod),
                    detail=f"Running on {node} but its kubelet holds no devices for it",
                    hard=False,
                )
            )
        return out

    def _env(
        self,
        pod: Mapping[str, Any],
        allocation: PodSingleDevice,
        envs: Callable[[str], dict[str, str]],
        node: str,
    ) -> list[Violation]:
        out: list[Violation] = []
        for index, container in enumerate(_containers(pod)):
            name = str(container.get("name"))
            got = envs(name)
            devices = allocation[index] if index < len(allocation) else ()
            if not devices:
                if "CUDA_DEVICE_SM_LIMIT" in got:
                    out.append(
                        Violation(
                            kind="env-mismatch",
                            subject=f"{_key(pod)}/{name}",
                            detail=f"no allocation but got HAMi env {got}",
                        )
                    )
                continue
            want = expected_env(devices)
            seen = {k: got.get(k) for k in want}
            extra = [k for k in got if k.startswith("CUDA_DEVICE_MEMORY_LIMIT_") and k not in want]
            if seen != want or extra:
                out.append(
                    Violation(
                        kind="env-mismatch",
                        subject=f"{_key(pod)}/{name}",
                        detail=f"on {node}: expected {want}, got {seen}"
                        + (f", extra {extra}" if extra else ""),
                    )
                )
        return out

    # ---- liveness -----------------------------------------------------------------------

    def _locks(self, nodes: Mapping[str, JsonObj], pods: list[JsonObj], now: float) -> list[Violation]:
        out: list[Violation] = []
        by_key = {_key(p): p for p in pods}
        for name, node in nodes.items():
            value = _annotations(node).get(keys.NODE_LOCK)
            if not value:
                continue
            try:
                lock = decode_node_lock(value)
            except DecodeError as e:
                out.append(Violation(kind="stale-lock", subject=name, detail=f"unreadable: {e}", hard=False))
                continue
            age = now - lock.time.timestamp()
            if age <= self.settings.lock_max_age_s:
                continue
            owner = by_key.get(lock.owner or "")
            live = (
                owner is not None
                and (lock.uid is None or str(_meta(owner).get("uid")) == lock.uid)
                and _phase(owner) not in TERMINAL
                and _annotations(owner).get(keys.BIND_PHASE) == keys.BIND_PHASE_ALLOCATING
            )
            if not live:
                out.append(
                    Violation(
                        kind="stale-lock",
                        subject=name,
                        detail=f"{value!r} is {age:.0f}s old and its owner is not a live pod in handoff",
                        hard=False,
                    )
                )
        return out

    def _handoffs(self, pods: list[JsonObj], now: float) -> list[Violation]:
        out: list[Violation] = []
        for pod in pods:
            ann = _annotations(pod)
            if (
                ann.get(keys.BIND_PHASE) != keys.BIND_PHASE_ALLOCATING
                or _phase(pod) in TERMINAL
                or _meta(pod).get("deletionTimestamp")
                or not (pod.get("spec") or {}).get("nodeName")
            ):
                continue
            since = _int(ann.get(keys.BIND_TIME, ""), default=-1)
            if since < 0 or now - since <= self.settings.handoff_max_age_s:
                continue
            out.append(
                Violation(
                    kind="stuck-handoff",
                    subject=_key(pod),
                    detail=f"bound to {pod['spec']['nodeName']}, "
                    f"bind phase allocating for {now - since:.0f}s",
                    hard=False,
                )
            )
        return out

    def _request(self, pod: Mapping[str, Any]) -> _Request | None:
        spec = pod.get("spec") or {}
        containers = _containers(pod)
        if (
            len(containers) != 1
            or spec.get("nodeSelector")
            or spec.get("affinity")
            or spec.get("initContainers")
            or CONSTRAINT_ANNOTATIONS.intersection(_annotations(pod))
        ):
            return None
        limits = (containers[0].get("resources") or {}).get("limits") or {}
        nums = _int(limits.get(keys.RESOURCE_GPU, 0))
        if nums <= 0:
            return None
        mem = limits.get(keys.RESOURCE_GPUMEM)
        pct = limits.get(keys.RESOURCE_GPUMEM_PERCENTAGE)
        return _Request(
            nums=nums,
            mem=_int(mem) if mem is not None else None,
            percentage=_int(pct) if pct is not None else None,
            cores=min(_int(limits.get(keys.RESOURCE_GPUCORES, 0)), 100),
        )

    def _pending(
        self,
        pods: list[JsonObj],
        nodes: Mapping[str, JsonObj],
        registered: Mapping[str, tuple[DeviceInfo, ...] | None],
        now: float,
    ) -> list[Violation]:
        waiting = []
        for pod in pods:
            spec = pod.get("spec") or {}
            created = _timestamp(_meta(pod).get("creationTimestamp"))
            if (
                spec.get("nodeName")
                or spec.get("schedulerName") != self.settings.scheduler_name
                or _phase(pod) != "Pending"
                or _meta(pod).get("deletionTimestamp")
                or created is None
                or now - created < self.settings.pending_settle_s
            ):
                continue
            request = self._request(pod)
            if request is not None:
                waiting.append((pod, request))
        if not waiting:
            return []
        usage = self._usage(pods, bound_only=False)
        out: list[Violation] = []
        for pod, request in waiting:
            uid = str(_meta(pod).get("uid"))
            for name, devices in registered.items():
                node_spec = nodes[name].get("spec") or {}
                if devices is None or node_spec.get("unschedulable") or node_spec.get("taints"):
                    continue
                fitting = [
                    d.id
                    for d in devices
                    if _fits(d, usage.get((name, d.id), _DeviceUse()), request, _key(pod))
                ]
                if len(fitting) >= request.nums:
                    out.append(
                        Violation(
                            kind="stuck-pending",
                            subject=_key(pod),
                            detail=f"Pending (uid {uid}) while {name} has free devices "
                            f"{fitting[: request.nums]} for {request}",
                            hard=False,
                        )
                    )
                    break
        return out


def _fits(device: DeviceInfo, use: _DeviceUse, request: _Request, pod: str) -> bool:
    """hami-scheduler-spec.md §5.5 checks 1, 5, 7, 9-12 for an unconstrained request."""
    if pod in use.pods:
        use = _DeviceUse(mem=use.mem, cores=use.cores, tasks=use.tasks, pods=[])  # its own stale decision
    if not device.health or device.count <= use.tasks:
        return False
    if request.mem:
        mem = request.mem
    elif request.percentage is not None:
        mem = device.devmem * request.percentage // 100
    else:
        mem = device.devmem
    if device.devmem - use.mem < mem or device.devcore - use.cores < request.cores:
        return False
    if device.devcore == 100 and request.cores == 100 and use.tasks > 0:
        return False
    return not (device.devcore != 0 and use.cores == device.devcore and request.cores == 0)
