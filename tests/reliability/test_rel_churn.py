"""Churn: pods of random sizes created, finished and deleted at random through the real roles
(``hami scheduler`` and one ``hami device-plugin --backend mock`` per node as processes), with
API faults thrown in, while the invariants are checked every 200 ms.

CI: ~100 pods; ``HAMI_SOAK_SCALE=20``: 2,000 pods."""

from __future__ import annotations

import asyncio
import random
import re
import time

import pytest
from rel_harness import RelCluster, phase, rel_cluster, scaled

from hami.simulator.kubelet import RUN_SECONDS_ANNOTATION
from hami.simulator.scenario import gpu_pod

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

RUNNING_OR_DONE = ("Running", "Succeeded")
FAULTS = (
    "drop", "drop-clean", "expire", "throttle", "fail-patch", "delay", "reorder", "pause",
    "hang-bind", "cut-bind", "monitor-sigkill", "monitor-sigterm", "clock-skew",
)  # fmt: skip


def random_pod(rng: random.Random, name: str) -> dict:
    gpus = 2 if rng.random() < 0.15 else 1
    run_seconds = rng.uniform(0.5, 4.0) if rng.random() < 0.7 else None
    return gpu_pod(
        name,
        gpus=gpus,
        gpumem=rng.randrange(1000, 12001, 500),
        gpucores=rng.choice((0, 0, 10, 20, 30, 50)),
        run_seconds=run_seconds,
    )


LONG_RUNNING_MAX = 15  # about 40 % of what the 12 GPUs' memory holds at the mean pod size
STALL_S = 120.0  # no room for the next pod for this long, with deletes going on: a stall


def census(rel: RelCluster) -> str:
    """Phases of the live pods, and how many of the running ones never finish: for stall reports."""
    counts: dict[str, int] = {}
    for pod in rel.pods():
        key = phase(pod)
        if key == "Running" and long_running(pod):
            key = "Running (long-running)"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def expected_rejection(name: str, message: str, deleted: set[str]) -> bool:
    """Kubelet rejections that are right: the device plugin refusing to allocate a pod this test
    deleted while kubelet admitted it (serving it could hand its devices to a neighbour), or a
    write the plugin could not make through its retries of injected 500s."""
    return (name in deleted and "is being deleted" in message) or "injected fault" in message


def live(pod: dict | None) -> bool:
    return phase(pod) in ("Pending", "Running")


def long_running(pod: dict) -> bool:
    """A pod the fake kubelet never finishes (no run-time annotation): only a delete ends it."""
    return RUN_SECONDS_ANNOTATION not in (pod["metadata"].get("annotations") or {})


def pick_victim(rng: random.Random, rel: RelCluster, *, stuck: bool) -> str | None:
    """A live pod to delete, in any state, between bind and Allocate included (the device plugin
    must never hand a deleted pod's devices to its neighbour).

    ``stuck``: the cluster is full of pods that never finish, so delete one of those that runs,
    as the users of a real cluster end their services; without this, a long enough churn fills every
    GPU with long-running pods and nothing can be placed any more."""
    pods = [p for p in rel.pods() if live(p)]
    if stuck:
        pods = [p for p in pods if phase(p) == "Running" and long_running(p)]
    return str(rng.choice(pods)["metadata"]["name"]) if pods else None


async def inject_api_faults(rel: RelCluster, rng: random.Random, stop: asyncio.Event) -> list[str]:
    """One API fault about every second, each kind at least once, until ``stop``.

    Reordering is applied to node events only: one watch stream never reorders in a real
    apiserver, and a kubelet that sees pods bound out of order would be handed the wrong devices by
    any HAMi-protocol device plugin (Allocate carries only device IDs) — that is not a fault we can
    survive, it is a broken apiserver."""
    api = rel.chaos.api
    done: list[str] = []
    while not stop.is_set() or len(done) < len(FAULTS):
        await asyncio.sleep(rng.uniform(0.5, 1.5))
        fault = FAULTS[len(done) % len(FAULTS)]
        if fault == "drop":
            api.drop_watches("pods")
        elif fault == "drop-clean":
            api.drop_watches(None, abrupt=False)
        elif fault == "expire":
            api.expire_watches("pods", count=2)
        elif fault == "throttle":
            api.throttle(verbs={"patch"}, resources={"pods"}, times=3, retry_after_s=1)
        elif fault == "fail-patch":
            api.fail(verbs={"patch"}, resources={"pods"}, status=500, times=2)
        elif fault == "delay":
            api.delay_events("pods", 0.3)
            await asyncio.sleep(1.0)
            api.delay_events("pods", 0)
        elif fault == "reorder":
            api.reorder_events("nodes", window_s=0.05)
            await asyncio.sleep(1.0)
            api.reorder_events("nodes", window_s=0)
        elif fault == "hang-bind":  # the scheduler's bind call times out (its --networking-request-timeout)
            api.time_out(verbs={"create"}, resources={"pods/binding"}, times=1)
        elif fault == "cut-bind":  # ... or loses its connection
            api.time_out(verbs={"create"}, resources={"pods/binding"}, times=1, after_s=0.3)
        elif fault == "clock-skew":  # kubelet heartbeats, Lease renewals and pod times an hour off
            rel.chaos.skew_clock("node-2", 3600)
            rel.chaos.skew_clock("node-3", -3600)
        elif fault == "monitor-sigkill":
            await rel.monitors["node-1"].kill()
            await rel.monitors["node-1"].start()
            await rel.wait_monitor("node-1")
        elif fault == "monitor-sigterm":  # must drain and exit within its shutdown timeout
            await rel.monitors["node-1"].restart()
            await rel.wait_monitor("node-1")
        else:
            async with api.paused_for():
                await asyncio.sleep(0.5)
        done.append(fault)
    rel.chaos.clear()
    return done


async def test_churn_of_random_pods_under_api_faults() -> None:
    total = scaled(100, cap=100_000)
    rng = random.Random(11)
    async with rel_cluster(nodes=3, gpus=4, gpu_memory=24000) as rel:
        await rel.start_monitor("node-1")
        monitor = rel.monitor("churn", pending_settle_s=8.0)
        stop = asyncio.Event()
        created: list[str] = []
        deleted: set[str] = set()
        ended = 0

        async def delete(victim: str | None) -> bool:
            if victim is None:
                return False
            await rel.delete(victim)
            deleted.add(victim)
            return True

        async with monitor.running():
            with monitor.disturbed():
                chaos = asyncio.create_task(inject_api_faults(rel, rng, stop))
                started = time.monotonic()
                for i in range(total):
                    name = f"churn-{i:05d}"
                    await rel.create(random_pod(rng, name))
                    created.append(name)
                    if rng.random() < 0.2 and len(created) > 5:
                        victim = pick_victim(rng, rel, stuck=False)
                        if victim != name:
                            await delete(victim)
                    # Users end their services too: at most LONG_RUNNING_MAX run at once, so the
                    # short pods keep a share of the GPUs and the churn keeps going.
                    if (
                        sum(1 for p in rel.pods() if phase(p) == "Running" and long_running(p))
                        > LONG_RUNNING_MAX
                    ):
                        ended += await delete(pick_victim(rng, rel, stuck=True))
                    # Keep roughly 60 pods in flight (the cluster has 120 task slots); when nothing
                    # finishes for 2 s, the long-running pods hold the GPUs: end one.
                    waited_since = blocked_since = time.monotonic()
                    while sum(1 for p in rel.pods() if live(p)) > 60:
                        now = time.monotonic()
                        if now - waited_since > 2.0:
                            ended += await delete(pick_victim(rng, rel, stuck=True))
                            waited_since = now
                        if now - blocked_since > STALL_S:
                            raise AssertionError(f"churn stalled at pod {i}: {census(rel)}")
                        await asyncio.sleep(0.1)
                    await asyncio.sleep(rng.uniform(0.0, 0.05))
                stop.set()
                injected = await chaos
            # Leave the long-running pods be; the rest must finish, and nothing may stay stuck.
            await monitor.settle(within=60.0)
        elapsed = time.monotonic() - started
        report = monitor.report()
        monitor.write_report()
        placed = {
            r.uid for n in rel.cluster.nodes for r in n.kubelet.records.values() if r.phase in RUNNING_OR_DONE
        }
        rejected = [
            f"{r.namespace}/{r.name}: {r.message}"
            for n in rel.cluster.nodes
            for r in n.kubelet.records.values()
            if r.phase == "Failed" and not expected_rejection(r.name, r.message, deleted)
        ]
        print(
            f"churn: {total} pods in {elapsed:.0f}s, {len(placed)} ran, {len(deleted)} deleted "
            f"({ended} of them long-running pods ended), faults {len(injected)}"
        )
        problems = [str(v) for v in report.violations.values()][:20]
        for violation in [v for v in report.violations.values() if v.kind == "env-mismatch"][:3]:
            namespace, name = violation.subject.split("/")[:2]
            problems.append(rel.kubelet_story(namespace, name))
            problems.append(
                rel.log_lines_about(
                    [f"{namespace}/{name}", *re.findall(r"GPU-[0-9a-f-]{36}", str(violation))]
                )
            )
        problems += rel.crashed()
        problems += [f"rejected by the kubelet: {r}" for r in rejected[:5]]
        if len(placed) < total * 0.7:
            problems.append(f"only {len(placed)} of {total} pods ran in {elapsed:.0f}s")
        if await rel.monitor_metrics("node-1") is None:
            problems.append("the restarted hami monitor does not serve /metrics")
        if set(injected) != set(FAULTS):
            problems.append(f"faults injected: {injected}")
        assert report.checks > 0 and not problems, "\n".join(problems)
