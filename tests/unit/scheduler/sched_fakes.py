"""Test doubles for the scheduler role: object builders and a loopback KubeApi.

``LoopbackApi`` keeps pods and nodes in memory, applies merge patches and bindings like the
apiserver, and echoes every write into the scheduler's informers on the next loop turn (a watch
that is fast but, as a real one, delivers after the write's response).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import uuid as uuidlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hami.core import keys
from hami.core.deviceconfig import NvidiaConfig
from hami.core.ids import DeviceID
from hami.core.model import DeviceInfo
from hami.core.node_annotations import encode_node_devices
from hami.core.policy import GpuPolicy, NodePolicy
from hami.core.vendor import default_registry
from hami.k8s.errors import ApiConflict, ApiNotFound
from hami.k8s.objects import NODES, PODS, Resource
from hami.k8s.patches import Patch
from hami.k8s.watch import Change, Listed
from hami.scheduler.binder import BindArgs, Binder, BinderSettings
from hami.scheduler.cycle import CycleSettings, FilterCycle, FilterOutcome
from hami.scheduler.events import EventSink
from hami.scheduler.explain import WhyBook
from hami.scheduler.handoff import HandoffTracker
from hami.scheduler.reconciler import Reconciler
from hami.scheduler.state import SchedulerState

JsonObj = dict[str, Any]
_counter = itertools.count(1)


def gpu(
    uuid: str,
    *,
    mem: int = 8000,
    cores: int = 100,
    count: int = 10,
    model: str = "NVIDIA A100",
    numa: int = 0,
    index: int = 0,
    mode: str = "hami-core",
    health: bool = True,
) -> DeviceInfo:
    return DeviceInfo(
        id=DeviceID(uuid),
        index=index,
        count=count,
        devmem=mem,
        devcore=cores,
        type=model,
        numa=numa,
        mode=mode,
        health=health,
    )


def node_obj(
    name: str,
    devices: Iterable[DeviceInfo] = (),
    *,
    register: str | None = None,
    allocatable: int | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> JsonObj:
    devices = list(devices)
    ann = dict(annotations or {})
    if register is not None:
        ann[keys.NODE_NVIDIA_REGISTER] = register
    elif devices:
        ann[keys.NODE_NVIDIA_REGISTER] = encode_node_devices(devices)
    count = allocatable if allocatable is not None else sum(d.count for d in devices)
    alloc = {"cpu": "32"}
    if count:
        alloc[keys.RESOURCE_GPU] = str(count)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": ann,
            "labels": dict(labels or {}),
            "resourceVersion": "1",
            "uid": str(uuidlib.uuid4()),
        },
        "status": {"allocatable": alloc, "capacity": dict(alloc)},
    }


def container(
    name: str = "main",
    *,
    gpus: int | None = 1,
    mem: int | None = None,
    pct: int | None = None,
    cores: int | None = None,
) -> JsonObj:
    limits: dict[str, str] = {}
    if gpus is not None:
        limits[keys.RESOURCE_GPU] = str(gpus)
    if mem is not None:
        limits[keys.RESOURCE_GPUMEM] = str(mem)
    if pct is not None:
        limits[keys.RESOURCE_GPUMEM_PERCENTAGE] = str(pct)
    if cores is not None:
        limits[keys.RESOURCE_GPUCORES] = str(cores)
    return {"name": name, "image": "pause", "resources": {"limits": limits}}


def pod_obj(
    name: str,
    *containers: JsonObj,
    namespace: str = "default",
    uid: str | None = None,
    annotations: Mapping[str, str] | None = None,
    node_name: str | None = None,
    phase: str = "Pending",
    created: str | None = None,
) -> JsonObj:
    n = next(_counter)
    meta: JsonObj = {
        "name": name,
        "namespace": namespace,
        "uid": uid or str(uuidlib.uuid4()),
        "resourceVersion": "1",
        "creationTimestamp": created or f"2026-01-01T00:{n // 60 % 60:02d}:{n % 60:02d}Z",
        "annotations": dict(annotations or {}),
    }
    spec: JsonObj = {
        "schedulerName": keys.DEFAULT_SCHEDULER_NAME,
        "containers": list(containers) or [container()],
    }
    if node_name:
        spec["nodeName"] = node_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": {"phase": phase}}


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


class LoopbackApi:
    """The KubeApi calls the scheduler makes, against in-memory objects echoed to its informers."""

    def __init__(self) -> None:
        self.pods: dict[str, JsonObj] = {}
        self.nodes: dict[str, JsonObj] = {}
        self.rv = 100
        self.state: SchedulerState | None = None
        self.patches: list[tuple[str, str, Any]] = []
        self.bindings: list[tuple[str, str, str, dict[str, str]]] = []
        self.events: list[tuple[str, str, str]] = []
        self.fail_patch: Callable[[str, str], Exception | None] | None = None
        self.fail_bind: Callable[[str, str], Exception | None] | None = None
        self.patch_delay = 0.0
        self.echo = True

    # -------------------------------------------------------------- wiring
    def attach(self, state: SchedulerState) -> None:
        self.state = state
        state.create_informers(self)  # type: ignore[arg-type]
        self.resync()

    def resync(self) -> None:
        """A (re)list: Listed events with the current objects (tombstones for vanished ones)."""
        assert self.state is not None and self.state.pods and self.state.nodes and self.state.quota_informer
        self.state.nodes.apply(
            Listed(objects=tuple(copy.deepcopy(list(self.nodes.values()))), resource_version=str(self.rv))
        )
        self.state.pods.apply(
            Listed(objects=tuple(copy.deepcopy(list(self.pods.values()))), resource_version=str(self.rv))
        )
        self.state.quota_informer.apply(Listed(objects=(), resource_version=str(self.rv)))

    def _bump(self, obj: JsonObj) -> JsonObj:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        return obj

    def _deliver(self, resource: Resource, kind: str, obj: JsonObj) -> None:
        if self.state is None or not self.echo:
            return
        informer = self.state.pods if resource is PODS else self.state.nodes
        assert informer is not None
        event = Change(type=kind, object=copy.deepcopy(obj), resource_version=str(self.rv))  # type: ignore[arg-type]
        asyncio.get_running_loop().call_soon(informer.apply, event)

    def deliver_now(self, resource: Resource, kind: str, obj: JsonObj) -> None:
        assert self.state is not None
        informer = self.state.pods if resource is PODS else self.state.nodes
        assert informer is not None
        informer.apply(Change(type=kind, object=copy.deepcopy(obj), resource_version=str(self.rv)))  # type: ignore[arg-type]

    # -------------------------------------------------------------- test-side writes
    def add_node(self, obj: JsonObj) -> JsonObj:
        name = obj["metadata"]["name"]
        kind = "MODIFIED" if name in self.nodes else "ADDED"
        self.nodes[name] = self._bump(copy.deepcopy(obj))
        if self.state is not None:
            self.deliver_now(NODES, kind, self.nodes[name])
        return self.nodes[name]

    def add_pod(self, obj: JsonObj) -> JsonObj:
        key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        kind = "MODIFIED" if key in self.pods else "ADDED"
        self.pods[key] = self._bump(copy.deepcopy(obj))
        if self.state is not None:
            self.deliver_now(PODS, kind, self.pods[key])
        return self.pods[key]

    def update_pod(self, namespace: str, name: str, change: Mapping[str, Any]) -> JsonObj:
        key = f"{namespace}/{name}"
        self.pods[key] = self._bump(merge(self.pods[key], change))
        self.deliver_now(PODS, "MODIFIED", self.pods[key])
        return self.pods[key]

    def delete_pod(self, namespace: str, name: str) -> None:
        obj = self.pods.pop(f"{namespace}/{name}")
        self._bump(obj)
        self.deliver_now(PODS, "DELETED", obj)

    # -------------------------------------------------------------- KubeApi
    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Patch,
        *,
        namespace: str | None = None,
        subresource: str | None = None,
        request_timeout: float | None = None,
    ) -> JsonObj:
        if self.patch_delay:
            await asyncio.sleep(self.patch_delay)
        key = f"{namespace}/{name}" if resource is PODS else name
        self.patches.append((resource.plural, key, patch.decoded()))
        if self.fail_patch is not None:
            error = self.fail_patch(resource.plural, key)
            if error is not None:
                raise error
        table = self.pods if resource is PODS else self.nodes
        if key not in table:
            raise ApiNotFound(f'{resource.plural} "{name}" not found', status=404)
        body = patch.decoded()
        want_rv = (body.get("metadata") or {}).pop("resourceVersion", None)
        if want_rv is not None and want_rv != table[key]["metadata"]["resourceVersion"]:
            raise ApiConflict("the object has been modified", status=409)
        table[key] = self._bump(merge(table[key], body))
        self._deliver(resource, "MODIFIED", table[key])
        return copy.deepcopy(table[key])

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
        key = f"{namespace}/{name}"
        self.bindings.append((namespace, name, node, dict(annotations or {})))
        if self.fail_bind is not None:
            error = self.fail_bind(key, node)
            if error is not None:
                raise error
        pod = self.pods.get(key)
        if pod is None:
            raise ApiNotFound(f'pods "{name}" not found', status=404)
        if uid and pod["metadata"]["uid"] != uid:
            raise ApiConflict("Precondition failed: UID", status=409)
        if pod["spec"].get("nodeName"):
            raise ApiConflict(f"pod {name} is already assigned to node", status=409)
        pod = merge(pod, {"spec": {"nodeName": node}, "metadata": {"annotations": dict(annotations or {})}})
        self.pods[key] = self._bump(pod)
        self._deliver(PODS, "MODIFIED", pod)

    async def create_event(
        self,
        involved: Any,
        *,
        reason: str,
        message: str,
        type: str = "Normal",
        component: str = "hami",
        action: str = "",
    ) -> JsonObj:
        self.events.append((involved["metadata"]["name"], reason, message))
        return {}

    async def close(self) -> None:
        return None


# ------------------------------------------------------------------------------- an assembled scheduler


@dataclass
class Env:
    api: LoopbackApi
    state: SchedulerState
    cycle: FilterCycle
    binder: Binder
    reconciler: Reconciler
    why: WhyBook
    sink: EventSink
    extra: dict[str, Any] = field(default_factory=dict)

    async def filter(self, pod: JsonObj, nodes: Iterable[str] | None = None) -> FilterOutcome:
        names = list(nodes) if nodes is not None else sorted(self.api.nodes)
        return await self.cycle.filter(self.api.pods.get(_key(pod), pod), names)

    async def bind(self, pod: JsonObj, node: str) -> str:
        current = self.api.pods[_key(pod)]
        meta = current["metadata"]
        return await self.binder.bind(
            BindArgs(pod_name=meta["name"], pod_namespace=meta["namespace"], pod_uid=meta["uid"], node=node)
        )

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    def pod(self, pod: JsonObj) -> JsonObj:
        return self.api.pods[_key(pod)]

    def event_messages(self, name: str, reason: str | None = None) -> list[str]:
        return [m for (n, r, m) in self.api.events if n == name and (reason is None or r == reason)]


def _key(pod: JsonObj) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


def make_env(
    *,
    node_policy: NodePolicy = NodePolicy.BINPACK,
    gpu_policy: GpuPolicy = GpuPolicy.SPREAD,
    nvidia: NvidiaConfig | None = None,
    compat_node_lock: bool = False,
    bind_wait_timeout: float = 2.0,
    exact_events_max_nodes: int = 64,
) -> Env:
    nvidia = nvidia or NvidiaConfig()
    api = LoopbackApi()
    state = SchedulerState(default_registry(nvidia), tracker=HandoffTracker(exclusive=compat_node_lock))
    api.attach(state)
    sink = EventSink(api, component="hami-scheduler")  # type: ignore[arg-type]
    why = WhyBook(100)
    cycle = FilterCycle(
        state,
        api,  # type: ignore[arg-type]
        nvidia=nvidia,
        settings=CycleSettings(
            node_policy=node_policy, gpu_policy=gpu_policy, exact_events_max_nodes=exact_events_max_nodes
        ),
        events=sink,
        why=why,
    )
    binder = Binder(
        state,
        api,  # type: ignore[arg-type]
        settings=BinderSettings(
            bind_wait_timeout=bind_wait_timeout, cache_wait=0.1, compat_node_lock=compat_node_lock
        ),
        events=sink,
        wants_devices=cycle.wants_devices,
    )
    reconciler = Reconciler(state, api, assume_grace=30.0, interval=5.0, lock_timeout=300.0)  # type: ignore[arg-type]
    return Env(api=api, state=state, cycle=cycle, binder=binder, reconciler=reconciler, why=why, sink=sink)


async def drain_events(env: Env) -> None:
    """Post the queued events to the fake API (the sink's task is not running in unit tests)."""
    await env.sink.flush(1.0)
