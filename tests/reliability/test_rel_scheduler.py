"""``hami scheduler`` processes killed and restarted: the ledger a new process rebuilds from the
annotations is the one the old process had (compared through the usage metrics it exports, which
are built from the ledger, and against the API's own annotations), and a leader killed in the
middle of a stream of binds is replaced without losing a pod or double-allocating a device.

CI: 50 bound pods and a 30-pod stream; ``HAMI_SOAK_SCALE=10``: 500 and 300 (more nodes)."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import defaultdict

import pytest
from rel_harness import RelCluster, SchedulerReplica, phase, rel_cluster, scaled, until, until_async

from hami.core import keys
from hami.core.pod_annotations import decode_pod_single_device, device_id_of
from hami.simulator.scenario import gpu_pod

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

LEADER_ARGS = (
    "--leader-elect",
    "--leader-elect-lease-duration", "4",
    "--leader-elect-renew-deadline", "3",
    "--leader-elect-retry-period", "0.5",
)  # fmt: skip
LEASE_DURATION = 4.0
RETRY_PERIOD = 0.5


def api_usage(rel: RelCluster) -> dict[tuple[str, str], tuple[int, int, int]]:
    """(node, device) → (memory MiB, cores, tasks) summed from the live pods' annotations."""
    usage: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for pod in rel.pods():
        ann = pod["metadata"].get("annotations") or {}
        if phase(pod) in ("Succeeded", "Failed") or keys.VGPU_DEVICES_ALLOCATED not in ann:
            continue
        for container in decode_pod_single_device(ann[keys.VGPU_DEVICES_ALLOCATED]):
            for device in container:
                row = usage[(ann[keys.VGPU_NODE], str(device_id_of(device.uuid)))]
                row[0] += device.usedmem
                row[1] += device.usedcores
                row[2] += 1
    return {k: (v[0], v[1], v[2]) for k, v in usage.items()}


def metrics_usage(ledger: dict[str, float]) -> dict[tuple[str, str], tuple[int, int, int]]:
    """The same view from a scheduler's ``GPUDevice*`` metrics (devices with any usage)."""
    rows: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for sample, value in ledger.items():
        name, _, labels = sample.partition("{")
        fields = dict(part.split("=", 1) for part in labels.rstrip("}").split('",') if "=" in part)
        fields = {k: v.strip('"') for k, v in fields.items()}
        key = (fields.get("nodeid", ""), fields.get("deviceuuid", ""))
        if name == "GPUDeviceMemoryAllocated":
            rows[key][0] = int(value) // 1048576
        elif name == "GPUDeviceCoreAllocated":
            rows[key][1] = int(value)
        elif name == "GPUDeviceSharedNum":
            rows[key][2] = int(value)
    return {k: (v[0], v[1], v[2]) for k, v in rows.items() if any(v)}


def per_container(ledger: dict[str, float], *, exclude: str) -> dict[str, float]:
    """The ``vGPU*`` rows (one per pod container and device), without pods whose name has ``exclude``."""
    return {k: v for k, v in ledger.items() if k.startswith("vGPU") and exclude not in k}


async def fill(rel: RelCluster, count: int, rng: random.Random, prefix: str) -> list[str]:
    names = []
    for i in range(count):
        name = f"{prefix}-{i:04d}"
        gpus = 2 if rng.random() < 0.1 else 1
        await rel.create(
            gpu_pod(name, gpus=gpus, gpumem=rng.randrange(500, 2001, 250), gpucores=rng.choice((0, 5, 10)))
        )
        names.append(name)
    return names


def pod_story(pod: dict | None) -> str:
    """Where a pod is stuck: phase, node, bind phase and its latest condition."""
    if pod is None:
        return "gone"
    meta, status = pod["metadata"], pod.get("status") or {}
    ann = meta.get("annotations") or {}
    conditions = [f"{c.get('type')}={c.get('status')} {c.get('reason', '')} {c.get('message', '')}".strip()
                  for c in status.get("conditions") or []]  # fmt: skip
    return (
        f"{meta['name']}: {phase(pod)} on {pod['spec'].get('nodeName') or '-'}, "
        f"vgpu-node={ann.get(keys.VGPU_NODE, '-')}, bind-phase={ann.get(keys.BIND_PHASE, '-')}, "
        f"to-allocate={ann.get(keys.VGPU_DEVICES_TO_ALLOCATE, '-')!r}, conditions={conditions}"
    )


async def all_running(rel: RelCluster, names: list[str], within: float) -> None:
    try:
        await until(lambda: all(phase(rel.pod(n)) == "Running" for n in names), within=within)
    except TimeoutError:
        stuck = [pod_story(rel.pod(n)) for n in names if phase(rel.pod(n)) != "Running"]
        raise AssertionError(
            f"{len(stuck)}/{len(names)} pods not Running after {within}s:\n" + "\n".join(stuck[:10])
        ) from None


async def test_scheduler_restarted_with_bound_pods_rebuilds_an_identical_ledger() -> None:
    bound = scaled(50, cap=500)
    # 4 GPUs × 10 tasks per node and ~1.1 GPUs per pod: 25 pods per node leaves room for the pods
    # created during the restarts (36 per node filled the split count at scale and they stayed Pending).
    nodes = max(3, math.ceil(bound / 25))
    rng = random.Random(5)
    async with rel_cluster(nodes=nodes, gpus=4) as rel:
        monitor = rel.monitor("scheduler-restart", pending_settle_s=6.0)
        async with monitor.running():
            # A burst of `bound` pods at once: kube-scheduler places them one at a time, so the last
            # ones wait their turn; all_running bounds the whole burst, liveness is judged after it.
            with monitor.disturbed():
                names = await fill(rel, bound, rng, "bound")
                await all_running(rel, names, within=60 + bound * 0.2)
            first = rel.replicas[-1]
            before = await rel.ledger(first)
            assert len(per_container(before, exclude="\0")) >= 2 * bound  # memory and cores rows per pod
            assert metrics_usage(before) == api_usage(rel)  # the ledger agrees with the annotations
            for stop in ("sigkill", "sigterm"):
                with monitor.disturbed():
                    old = rel.replicas[-1]
                    await (old.process.kill() if stop == "sigkill" else old.process.terminate())
                    # Pods created while no scheduler runs wait, then land after the restart.
                    waiting = await fill(rel, 3, rng, f"during-{stop}")
                    new = await rel.start_scheduler()
                    after = await rel.ledger(new)
                    await all_running(rel, waiting, within=30)
                    names += waiting
                # Every container the old process accounted is accounted identically by the new one
                # (the pods created meanwhile may already be placed too).
                assert per_container(after, exclude="during-") == per_container(before, exclude="during-"), (
                    stop
                )
                before = await rel.ledger(new)
                assert metrics_usage(before) == api_usage(rel), stop
            await monitor.settle(within=20)
        assert not rel.crashed(), "\n".join(rel.crashed())
        monitor.assert_clean()


async def leader_of(rel: RelCluster, replicas: list[SchedulerReplica]) -> SchedulerReplica | None:
    ready = [r for r in replicas if r.process.alive and await rel.ready(r)]
    assert len(ready) <= 1, f"{len(ready)} replicas lead at once"
    return ready[0] if ready else None


async def test_leader_killed_mid_bind_hands_over_without_losing_or_doubling_pods() -> None:
    total = scaled(30, cap=400)
    nodes = max(3, math.ceil(total / 36))
    rng = random.Random(7)
    async with rel_cluster(nodes=nodes, gpus=4, scheduler_args=LEADER_ARGS) as rel:
        second = await rel.start_scheduler(*LEADER_ARGS, wait=False)
        await rel.wait_scheduler(second, leader=False)
        replicas = list(rel.replicas)
        leader = await leader_of(rel, replicas)
        assert leader is rel.replicas[0], "the first replica should lead"
        monitor = rel.monitor("leader-kill", pending_settle_s=6.0)
        async with monitor.running():
            with monitor.disturbed():
                stream = asyncio.create_task(fill(rel, total, rng, "stream"))
                await until(
                    lambda: sum(1 for p in rel.pods() if p["spec"].get("nodeName")) >= total // 4,
                    within=60,
                    what="a quarter of the stream bound",
                )
                await leader.process.kill()  # mid-stream: binds in flight die with it
                killed = time.monotonic()
                await until_async(
                    lambda: rel.ready(second), within=LEASE_DURATION + 10, what="a follower took over"
                )
                takeover = time.monotonic() - killed
                names = await stream
                await all_running(rel, names, within=60 + total * 0.2)
            # A clean SIGTERM hands over within about one retry period.
            third = await rel.start_scheduler(*LEADER_ARGS, wait=False)
            await rel.wait_scheduler(third, leader=False)
            with monitor.disturbed():
                await second.process.terminate()
                stopped = time.monotonic()
                await until_async(lambda: rel.ready(third), within=10, what="the third replica took over")
                handover = time.monotonic() - stopped
                late = await fill(rel, 3, rng, "after-handover")
                await all_running(rel, late, within=30)
            await monitor.settle(within=20)
        assert not rel.crashed(), "\n".join(rel.crashed())
        assert takeover <= LEASE_DURATION + 2, f"takeover took {takeover:.1f}s"
        assert handover <= RETRY_PERIOD + 2, f"SIGTERM handover took {handover:.1f}s"
        monitor.assert_clean()
