"""The invariant checker itself: each invariant fires on a cluster state that breaks it and stays
quiet on one that does not (so a clean soak means something)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rel_invariants import InvariantChecker, InvariantSettings, expected_env
from rel_monitor import InvariantMonitor

from hami.core import keys
from hami.core.ids import DeviceID
from hami.core.model import ContainerDevice, DeviceInfo
from hami.core.node_annotations import encode_node_devices
from hami.core.node_lock import NodeLock, encode_node_lock

pytestmark = pytest.mark.reliability

UID_A = "11111111-1111-4111-8111-111111111111"
UID_B = "22222222-2222-4222-8222-222222222222"


@dataclass
class FakeDevices:
    held: dict[str, dict[str, dict[str, tuple[str, ...]]]] = field(default_factory=dict)

    def assigned(self, uid: str) -> dict[str, dict[str, tuple[str, ...]]]:
        return self.held.get(uid, {})


@dataclass(frozen=True)
class FakeRecord:
    namespace: str
    name: str
    uid: str
    phase: str
    env: dict[str, str]

    def envs(self, container: str) -> dict[str, str]:
        return self.env if container == "main" else {}


@dataclass
class FakeKubelet:
    records: dict[str, FakeRecord] = field(default_factory=dict)
    devices: FakeDevices = field(default_factory=FakeDevices)

    def runs(self, pod: dict[str, Any], env: dict[str, str]) -> None:
        meta = pod["metadata"]
        self.records[meta["uid"]] = FakeRecord(meta["namespace"], meta["name"], meta["uid"], "Running", env)
        self.devices.held[meta["uid"]] = {"main": {keys.RESOURCE_GPU: ("GPU-0-0",)}}


@dataclass
class View:
    pod_list: list[dict[str, Any]] = field(default_factory=list)
    node_list: list[dict[str, Any]] = field(default_factory=list)
    kubelet_map: dict[str, FakeKubelet] = field(default_factory=dict)

    def pods(self) -> list[dict[str, Any]]:
        return self.pod_list

    def nodes(self) -> list[dict[str, Any]]:
        return self.node_list

    def kubelets(self) -> dict[str, FakeKubelet]:
        return self.kubelet_map


def node(name: str = "n1", *, count: int = 2, mem: int = 10000, lock: str | None = None) -> dict[str, Any]:
    annotations = {
        keys.NODE_NVIDIA_REGISTER: encode_node_devices(
            [
                DeviceInfo(
                    id=DeviceID("GPU-0"),
                    index=0,
                    count=count,
                    devmem=mem,
                    devcore=100,
                    type="NVIDIA",
                    health=True,
                )
            ]
        )
    }
    if lock is not None:
        annotations[keys.NODE_LOCK] = lock
    return {"metadata": {"name": name, "resourceVersion": "1", "annotations": annotations}, "spec": {}}


def pod(
    name: str,
    uid: str,
    *,
    mem: int = 1000,
    cores: int = 10,
    node_name: str | None = "n1",
    phase: str = "Running",
    created: datetime | None = None,
    extra: dict[str, str] | None = None,
    allocated: bool = True,
) -> dict[str, Any]:
    annotations = {keys.VGPU_NODE: "n1", **(extra or {})}
    if allocated:
        annotations[keys.VGPU_DEVICES_ALLOCATED] = f"GPU-0,NVIDIA,{mem},{cores}:;"
    spec: dict[str, Any] = {
        "schedulerName": keys.DEFAULT_SCHEDULER_NAME,
        "containers": [
            {
                "name": "main",
                "resources": {"limits": {keys.RESOURCE_GPU: "1", keys.RESOURCE_GPUMEM: str(mem)}},
            }
        ],
    }
    if node_name:
        spec["nodeName"] = node_name
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": uid,
            "resourceVersion": "5",
            "creationTimestamp": (created or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "annotations": annotations,
        },
        "spec": spec,
        "status": {"phase": phase},
    }


def env_of(mem: int, cores: int) -> dict[str, str]:
    return expected_env((ContainerDevice(uuid="GPU-0", type="NVIDIA", usedmem=mem, usedcores=cores),))


def kinds(view: View, *, liveness: bool = True, **settings: Any) -> list[str]:
    checker = InvariantChecker(view, InvariantSettings(**settings))  # type: ignore[arg-type]
    return sorted(v.kind for v in checker.check(time.time(), liveness=liveness))


def test_a_consistent_cluster_has_no_violations() -> None:
    a, b = pod("a", UID_A, mem=4000), pod("b", UID_B, mem=6000, cores=90)
    kubelet = FakeKubelet()
    kubelet.runs(a, env_of(4000, 10))
    kubelet.runs(b, env_of(6000, 90))
    assert kinds(View([a, b], [node()], {"n1": kubelet})) == []


def test_over_memory_cores_and_split_count() -> None:
    pods = [pod("a", UID_A, mem=6000, cores=60), pod("b", UID_B, mem=6000, cores=60)]
    pods.append(pod("c", "33333333-3333-4333-8333-333333333333", mem=1, cores=0))
    assert kinds(View(pods, [node(count=2)], {"n1": FakeKubelet()}), liveness=False) == [
        "over-cores",
        "over-memory",
        "over-split",
        "unaccounted",
        "unaccounted",
        "unaccounted",
    ]
    # unbound decisions and finished pods do not count
    done = [
        pod("a", UID_A, mem=9000, phase="Succeeded"),
        pod("b", UID_B, mem=9000, node_name=None, phase="Pending"),
    ]
    assert kinds(View(done, [node()], {"n1": FakeKubelet()})) == []


def test_env_must_match_the_allocation() -> None:
    a = pod("a", UID_A, mem=4000)
    kubelet = FakeKubelet()
    kubelet.runs(a, env_of(5000, 10))  # another pod's devices
    assert kinds(View([a], [node()], {"n1": kubelet})) == ["env-mismatch"]


def test_double_accounting_and_orphans() -> None:
    a = pod("a", UID_A)
    one, two = FakeKubelet(), FakeKubelet()
    one.runs(a, env_of(1000, 10))
    two.runs(a, env_of(1000, 10))
    found = kinds(View([a], [node(), node("n2")], {"n1": one, "n2": two}))
    assert "double-accounted" in found and "unaccounted" in found  # n2 holds it, the annotation says n1
    gone = FakeKubelet()
    gone.runs(pod("a", UID_A), env_of(1000, 10))
    assert kinds(View([], [node()], {"n1": gone})) == ["orphan-allocation"]


def test_stale_locks_and_stuck_handoffs() -> None:
    old = datetime.now(UTC) - timedelta(minutes=10)
    lock = encode_node_lock(NodeLock(time=old, namespace="default", name="gone", uid=UID_B))
    handoff = pod(
        "h",
        UID_A,
        phase="Pending",
        extra={keys.BIND_PHASE: keys.BIND_PHASE_ALLOCATING, keys.BIND_TIME: str(int(old.timestamp()))},
    )
    view = View([handoff], [node(lock=lock)], {"n1": FakeKubelet()})
    assert kinds(view) == ["stale-lock", "stuck-handoff"]
    assert kinds(view, liveness=False) == []
    # a lock whose owner is still in handoff is not stale
    owner_lock = encode_node_lock(NodeLock(time=old, namespace="default", name="h", uid=UID_A))
    assert kinds(View([handoff], [node(lock=owner_lock)], {}), handoff_max_age_s=3600) == []


def test_pending_while_a_fitting_device_is_free() -> None:
    long_ago = datetime.now(UTC) - timedelta(minutes=1)
    waiting = pod("w", UID_A, mem=3000, node_name=None, phase="Pending", created=long_ago, allocated=False)
    assert kinds(View([waiting], [node(mem=10000)], {})) == ["stuck-pending"]
    assert kinds(View([waiting], [node(mem=2000)], {})) == []  # does not fit: fine to wait
    busy = pod("b", UID_B, mem=8000)
    assert kinds(View([waiting, busy], [node(mem=10000)], {})) == []  # 2000 MiB left: too little
    pinned = pod(
        "p",
        UID_A,
        node_name=None,
        phase="Pending",
        created=long_ago,
        allocated=False,
        extra={keys.USE_GPUUUID: "x"},
    )
    assert kinds(View([pinned], [node()], {})) == []  # constrained pods are not judged


def test_monitor_counts_soft_violations_only_when_they_persist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HAMI_SOAK_REPORT", raising=False)  # these deliberate violations are not the soak's
    a = pod("a", UID_A)
    view = View([a], [node()], {"n1": FakeKubelet()})  # Running, no kubelet record: soft
    monitor = InvariantMonitor(view, InvariantSettings(persist_s=60), scenario="unit")
    monitor.observe()
    assert monitor.report().violations == {}
    monitor.observe(final=True)
    assert monitor.report().counts() == {"unaccounted": 1}
    hard = InvariantMonitor(
        View([pod("x", UID_A, mem=20000)], [node()], {}), InvariantSettings(persist_s=60), scenario="unit"
    )
    hard.observe()
    assert hard.report().counts()["over-memory"] == 1
    with pytest.raises(AssertionError, match="over-memory"):
        hard.assert_clean()
