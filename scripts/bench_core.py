"""Filter-decision latency of the pure core: snapshot + schedule + assume.

A cluster of 1000 nodes × 8 GPUs (80 GiB, split count 10) is preloaded to a random utilisation;
each decision draws 500 candidate nodes and a pod (mostly 1 GPU with 2-20 GiB and 0-50 % cores,
some 2/4/8-GPU or exclusive pods) and runs what the scheduler's Filter runs with no ``await`` in
between. Prints p50/p99/max per phase, plus the unchanged-snapshot cost, the cost of evaluating
every candidate, and the cost of an unschedulable pod (full reasons from every candidate).
Also prints the CPU time per decision (``time.process_time``, which a busy host moves much less
than wall time) and the load average while measuring.

    python scripts/bench_core.py [--nodes 1000] [--gpus 8] [--candidates 500] [--decisions 300]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable

from hami.core.ids import DeviceID
from hami.core.ledger import Ledger
from hami.core.model import NVIDIA, ContainerDevice, ContainerDeviceRequest, DeviceInfo
from hami.core.placement import Decision, schedule
from hami.core.requests import ContainerRequest, PodRequest
from hami.core.vendor import default_registry

MIB_PER_GPU = 81920


def build(nodes: int, gpus: int, fill: float, rng: random.Random) -> Ledger:
    ledger = Ledger()
    for n in range(nodes):
        name = f"node-{n:04d}"
        ledger.set_node_devices(
            name,
            [
                DeviceInfo(
                    id=DeviceID(f"GPU-{n:04d}-{g}"),
                    index=g,
                    count=10,
                    devmem=MIB_PER_GPU,
                    devcore=100,
                    type="NVIDIA A100-SXM4-80GB",
                    numa=g // (gpus // 2 or 1),
                    mode="hami-core",
                    health=True,
                    devicevendor=NVIDIA,
                )
                for g in range(gpus)
            ],
        )
        for g in range(gpus):
            for t in range(rng.randint(0, int(6 * fill))):
                mem = rng.choice((4096, 8192, 10240))
                ledger.commit(
                    f"pre-{n}-{g}-{t}",
                    name,
                    {
                        NVIDIA: (
                            (
                                ContainerDevice(
                                    uuid=f"GPU-{n:04d}-{g}", type=NVIDIA, usedmem=mem, usedcores=10
                                ),
                            ),
                        )
                    },
                )
    return ledger


def pod(rng: random.Random, uid: str) -> PodRequest:
    roll = rng.random()
    if roll < 0.85:
        req = ContainerDeviceRequest(
            nums=1,
            type=NVIDIA,
            memreq=rng.choice((2048, 4096, 8192, 20480)),
            coresreq=rng.choice((0, 10, 30, 50)),
        )
    elif roll < 0.97:
        req = ContainerDeviceRequest(nums=rng.choice((2, 4)), type=NVIDIA, memreq=8192, coresreq=20)
    else:
        req = ContainerDeviceRequest(
            nums=rng.choice((1, 8)), type=NVIDIA, memreq=0, mem_percentage_req=100, coresreq=100
        )
    return PodRequest(
        uid=uid,
        namespace="bench",
        name=uid,
        containers=(ContainerRequest(index=0, name="main", devices={NVIDIA: req}),),
        gpu_policy=rng.choice(("binpack", "spread")),
        node_policy=rng.choice(("binpack", "spread")),
    )


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(label: str, samples: list[float]) -> None:
    ms = [s * 1000 for s in samples]
    print(
        f"{label:<34} p50 {pct(ms, 0.50):7.3f} ms   p99 {pct(ms, 0.99):7.3f} ms   "
        f"max {max(ms):7.3f} ms   mean {statistics.fmean(ms):7.3f} ms   (n={len(ms)})"
    )


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--candidates", type=int, default=500)
    ap.add_argument("--decisions", type=int, default=300)
    ap.add_argument("--fill", type=float, default=0.5, help="preload utilisation (0..1)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    ledger = build(args.nodes, args.gpus, args.fill, rng)
    ledger.snapshot()
    print(
        f"cluster: {args.nodes} nodes × {args.gpus} GPUs, {len(ledger.assumed())} assumed, "
        f"built in {time.perf_counter() - t0:.2f} s; {args.candidates} candidates per decision"
    )
    registry = default_registry()
    names = [f"node-{n:04d}" for n in range(args.nodes)]

    snap_t: list[float] = []
    sched_t: list[float] = []
    assume_t: list[float] = []
    total_t: list[float] = []
    unchanged_t: list[float] = []
    rebuild_t: list[float] = []
    placed = 0
    load_before = os.getloadavg()[0]
    cpu_decisions = 0.0
    for i in range(args.decisions):
        candidates = rng.sample(names, args.candidates)
        request = pod(rng, f"pod-{i}")
        cpu_start = time.process_time()
        start = time.perf_counter()
        snap = ledger.snapshot()
        t1 = time.perf_counter()
        result = schedule(snap, candidates, request, registry)
        t2 = time.perf_counter()
        if isinstance(result, Decision):
            ledger.assume(request.uid, result.node, result.devices, namespace=request.namespace)
            placed += 1
        t3 = time.perf_counter()
        cpu_decisions += time.process_time() - cpu_start
        snap_t.append(t1 - start)
        sched_t.append(t2 - t1)
        assume_t.append(t3 - t2)
        total_t.append(t3 - start)
        rebuild_t.append(timed(ledger.snapshot)[0])  # the assume changed one node
        unchanged_t.append(timed(ledger.snapshot)[0])
    print(
        f"decisions: {args.decisions}, placed {placed}; CPU {cpu_decisions / args.decisions * 1000:.3f} ms "
        f"per decision; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
        f"({os.cpu_count()} CPUs)"
    )
    report("decision (snapshot+schedule+assume)", total_t)
    report("  snapshot (nothing changed)", snap_t)
    report("  schedule", sched_t)
    report("  assume", assume_t)
    report("snapshot after one node changed", rebuild_t)
    report("snapshot, nothing changed", unchanged_t)

    snap = ledger.snapshot()
    full: list[float] = []
    for i in range(min(args.decisions, 50)):
        candidates = rng.sample(names, args.candidates)
        full.append(
            timed(
                lambda c=candidates, k=i: schedule(snap, c, pod(rng, f"x-{k}"), registry, evaluate_all=True)
            )[0]
        )
    report("schedule, evaluate_all=True", full)

    impossible = PodRequest(
        uid="too-big",
        containers=(
            ContainerRequest(
                index=0,
                name="main",
                devices={NVIDIA: ContainerDeviceRequest(nums=2, type=NVIDIA, memreq=MIB_PER_GPU + 1)},
            ),
        ),
    )
    unsched: list[float] = []
    for _ in range(min(args.decisions, 20)):
        candidates = rng.sample(names, args.candidates)
        unsched.append(timed(lambda c=candidates: schedule(snap, c, impossible, registry))[0])
    report("schedule, unschedulable (reasons)", unsched)
    violations = ledger.check_invariants()
    print(f"invariant violations: {len(violations)}")
    return 1 if violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
