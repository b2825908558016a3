"""The scheduler's per-vendor wiring, piece by piece (no servers): which node locks a bind takes,
Cambricon's time-only lock, handshake health after ``Deleted``, ``/why`` predicates, and the
chart's managedResources against the vendor registry (spec §6.1, §7.4, §11; chart §1.2)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from hami.cache.informer import Delta
from hami.core import keys
from hami.core.deviceconfig import DeviceConfig
from hami.core.placement import NodeFailure
from hami.core.vendors import build_registry, managed_resources, resource_names
from hami.k8s.errors import ApiError
from hami.k8s.objects import NODES, Resource
from hami.k8s.patches import Patch
from hami.scheduler.binder import Binder, BinderSettings
from hami.scheduler.events import EventSink
from hami.scheduler.explain import predicates_of
from hami.scheduler.nodelock import (
    NodeLockError,
    NodeLocks,
    VendorLocks,
    parse_time_lock,
    time_lock_value,
)
from hami.scheduler.podinfo import PodInfo
from hami.scheduler.registrar import decode_node
from hami.scheduler.state import SchedulerState

REPO = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 1, 20, 7, 12, 17, tzinfo=UTC)
MLU_LOCK = "cambricon.com/dsmlu.lock"
EXPIRY = timedelta(minutes=2)


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self.time = now

    def now(self) -> datetime:
        return self.time

    def monotonic(self) -> float:
        return self.time.timestamp()


class NodeApi:
    """Merge-patches node annotations and feeds the result back into the state, like a watch."""

    def __init__(self, state: SchedulerState) -> None:
        self.state = state
        self.nodes: dict[str, dict[str, Any]] = {}
        self.patches: list[dict[str, Any]] = []
        self.fail: ApiError | None = None
        self._rv = 1

    def put(self, name: str, annotations: Mapping[str, str]) -> None:
        self._rv += 1
        meta = {"name": name, "resourceVersion": str(self._rv), "annotations": dict(annotations)}
        node = {"metadata": meta}
        self.nodes[name] = node
        decoded = self.state.decode_node(node)
        self.state.on_node(Delta(type="modified", key=name, object=node, decoded=decoded))

    async def patch(self, resource: Resource, name: str, patch: Patch, **_: Any) -> dict[str, Any]:
        assert resource == NODES
        if self.fail is not None:
            raise self.fail
        changes = patch.decoded()["metadata"]["annotations"]
        self.patches.append(dict(changes))
        annotations = dict(self.nodes[name]["metadata"]["annotations"])
        for key, value in changes.items():
            if value is None:
                annotations.pop(key, None)
            else:
                annotations[key] = value
        self.put(name, annotations)
        return self.nodes[name]


def pod_info(name: str, **kw: Any) -> PodInfo:
    return PodInfo(uid=f"uid-{name}", namespace="default", name=name, **kw)


def waiting(name: str) -> PodInfo:
    """A pod bound to ``mlu`` that its device plugin has not served yet (between bind and Allocate)."""
    return pod_info(name, node_name="mlu", bind_phase=keys.BIND_PHASE_ALLOCATING, to_allocate_pending=True)


def fixture_locks(live: dict[str, PodInfo] | None = None) -> tuple[NodeApi, VendorLocks]:
    """Vendor locks over a state whose pod cache holds ``live`` (by name)."""
    state = SchedulerState(build_registry(), clock=FixedClock(NOW))  # type: ignore[arg-type]
    pods = live if live is not None else {}
    state.pod_by_key = lambda ns, name: ({}, pods[name]) if name in pods else None  # type: ignore[method-assign]
    api = NodeApi(state)
    locks = NodeLocks(state, api)  # type: ignore[arg-type]
    return api, VendorLocks(locks)


# ----------------------------------------------------------------------------- locks


def test_bind_takes_each_vendors_lock_key_once() -> None:
    state = SchedulerState(build_registry(DeviceConfig(), enable_ascend=True))
    binder = Binder(
        state,
        NodeApi(state),  # type: ignore[arg-type]
        settings=BinderSettings(compat_node_lock=True),
        events=EventSink(None, component="t"),  # type: ignore[arg-type]
    )
    # NVIDIA, Hygon and Ascend share hami.io/mutex.lock (taken once); Cambricon has its own.
    assert binder.lock_keys(["NVIDIA", "DCU", "Ascend910A", "MLU"]) == {
        keys.NODE_LOCK: timedelta(minutes=5),
        MLU_LOCK: EXPIRY,
    }
    # Vendors HAMi does not lock.
    assert binder.lock_keys(["Mthreads", "AMDGPU", "AWSNeuron", "Metax-GPU", "kunlun"]) == {}


def test_cambricon_lock_value_is_hamis_rfc3339() -> None:
    assert time_lock_value(NOW) == "2026-01-20T07:12:17Z"
    assert parse_time_lock("2026-01-20T07:12:17Z") == NOW
    assert parse_time_lock("2026-01-20T15:12:17+08:00") == NOW
    for bad in ("lock", "2026-01-20 07:12:17", "2026-01-20T07:12:17", ""):
        assert parse_time_lock(bad) is None


async def test_cambricon_lock_is_held_within_two_minutes_then_taken_over() -> None:
    live = {"a": waiting("a")}
    api, locks = fixture_locks(live)
    api.put("mlu", {MLU_LOCK: time_lock_value(NOW - timedelta(seconds=30))})  # someone else's
    with pytest.raises(NodeLockError, match="has been locked within 2m0s"):
        await locks.acquire("mlu", MLU_LOCK, EXPIRY, pod_info("a"))
    assert api.patches == []
    api.put("mlu", {MLU_LOCK: time_lock_value(NOW - timedelta(minutes=3))})
    await locks.acquire("mlu", MLU_LOCK, EXPIRY, pod_info("a"))
    assert api.patches == [{MLU_LOCK: "2026-01-20T07:12:17Z"}]
    # a retried bind of the same pod keeps its lock; another live pod waits
    await locks.acquire("mlu", MLU_LOCK, EXPIRY, pod_info("a"))
    assert len(api.patches) == 1
    with pytest.raises(NodeLockError, match="has been locked within 2m0s"):
        await locks.acquire("mlu", MLU_LOCK, EXPIRY, pod_info("b"))
    # only the pod it was set for releases it
    assert not await locks.release("mlu", MLU_LOCK, pod_info("b"))
    assert await locks.release("mlu", MLU_LOCK, pod_info("a"))
    assert MLU_LOCK not in api.nodes["mlu"]["metadata"]["annotations"]
    assert not await locks.release("mlu", MLU_LOCK, pod_info("a"))


async def test_cambricon_lock_of_a_pod_past_allocate_or_gone_or_unreadable_is_taken_over_at_once() -> None:
    live = {"first": waiting("first")}
    api, locks = fixture_locks(live)
    api.put("mlu", {})
    await locks.acquire("mlu", MLU_LOCK, EXPIRY, pod_info("first"))
    with pytest.raises(NodeLockError):
        await locks.acquire("mlu", MLU_LOCK, EXPIRY, pod_info("second"))
    live["first"] = pod_info("first", node_name="mlu", phase="Running")  # past Allocate
    await locks.acquire("mlu", MLU_LOCK, EXPIRY, pod_info("second"))  # "second" is not cached: gone
    await locks.acquire("mlu", MLU_LOCK, EXPIRY, pod_info("third"))
    assert len(api.patches) == 3
    api.put("mlu", {MLU_LOCK: "garbage"})
    await locks.acquire("mlu", MLU_LOCK, EXPIRY, pod_info("third"))
    assert api.nodes["mlu"]["metadata"]["annotations"][MLU_LOCK] == "2026-01-20T07:12:17Z"


async def test_cambricon_lock_write_failure_is_a_bind_error() -> None:
    api, locks = fixture_locks()
    api.put("mlu", {})
    api.fail = ApiError("boom", status=500)
    locks._locks._sleep = lambda _s: asyncio.sleep(0)  # type: ignore[assignment]
    with pytest.raises(NodeLockError, match=r"failed to set node lock cambricon.com/dsmlu.lock \(node=mlu\)"):
        await locks.acquire("mlu", MLU_LOCK, EXPIRY, pod_info("a"))
    with pytest.raises(NodeLockError, match="failed to get node nowhere"):
        await locks.acquire("nowhere", MLU_LOCK, EXPIRY, pod_info("a"))


def test_node_info_carries_vendor_lock_values() -> None:
    registry = build_registry()
    node = {"metadata": {"name": "n", "annotations": {MLU_LOCK: "2026-01-20T07:12:17Z", "x": "y"}}}
    assert decode_node(node, registry).vendor_locks == {MLU_LOCK: "2026-01-20T07:12:17Z"}
    assert decode_node({"metadata": {"name": "n"}}, registry).vendor_locks == {}


# ----------------------------------------------------------------------------- health


def test_spec_7_4_deleted_handshake_keeps_devices_out_until_the_plugin_reports() -> None:
    registry = build_registry()
    register = "DCU-0,4,16368,100,DCU-Z100,0,true,0,hami-core:"

    def dcu_node(handshake: str) -> dict[str, Any]:
        notes = {"hami.io/node-dcu-register": register, "hami.io/node-handshake-dcu": handshake}
        return {"metadata": {"name": "dcu", "annotations": notes}}

    deleted = decode_node(dcu_node("Deleted_2026-01-20 07:10:00"), registry)
    assert deleted.devices(NOW) == ()
    assert next(v for v in deleted.vendors if v.vendor == "DCU").handshake_write(NOW) is None
    reported = decode_node(dcu_node("Reported 2026-01-20 07:12:00"), registry)
    assert [d.id for d in reported.devices(NOW)] == ["DCU-0"]


# ----------------------------------------------------------------------------- why


def test_why_predicates_name_what_failed() -> None:
    counted = NodeFailure(
        node="n",  # type: ignore[arg-type]
        reason="NodeUnfitPod",
        counts={"CardInsufficientMemory": 2, "CardTypeMismatch": 1},
        considered=3,
        vendor="MLU",
    )
    assert predicates_of(counted) == ("CardInsufficientMemory", "CardTypeMismatch")
    rejected = NodeFailure(
        node="n",  # type: ignore[arg-type]
        reason="NodeUnfitPod",
        vendor="MLU",
        raw_rejections=(("MLU", "NodeInsufficientDevice", 0, 1, "MLU: no devices"),),
    )
    assert predicates_of(rejected) == ("NodeInsufficientDevice",)
    assert predicates_of(NodeFailure(node="n", reason="node unregistered")) == ("node unregistered",)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- chart


def _managed(helm: Path, *sets: str) -> list[str]:
    args = [str(helm), "template", "t", str(REPO / "helm" / "hami")]
    for item in sets:
        args += ["--set", item]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    for doc in yaml.safe_load_all(out):
        if doc and doc.get("kind") == "ConfigMap" and "config.yaml" in (doc.get("data") or {}):
            config = yaml.safe_load(doc["data"]["config.yaml"])
            return [m["name"] for m in config["extenders"][0]["managedResources"]]
    raise AssertionError("no kube-scheduler configuration rendered")


VENDORS = (
    *("cambricon", "hygon", "iluvatar", "ascend", "metax"),
    *("mthreads", "enflame", "kunlun", "awsneuron", "amd"),
)


def test_chart_managed_resources_cover_every_vendor_of_the_registry(helm: Path) -> None:
    registry = build_registry(DeviceConfig(), enable_ascend=True, enable_iluvatar=True)
    nvidia = list(resource_names(registry["NVIDIA"]).all)
    default = _managed(helm)
    assert sorted(default) == sorted(nvidia)  # vendors are opt-in in values
    every = _managed(helm, *(f"devices.{v}.enabled=true" for v in VENDORS))
    assert sorted(every) == sorted(managed_resources(registry))
    one = _managed(helm, "devices.cambricon.enabled=true")
    assert one[len(default) :] == list(resource_names(registry["MLU"]).all)
