"""Concurrent filters need no lock: decisions are synchronous (snapshot → fit → assume).

Property: 64 ``/filter`` calls in flight at once on a nearly full cluster — with their patches
landing in random order and late — never over-commit a device (the ledger's invariant), and the
annotations written, re-read by a fresh scheduler, never over-commit either.
"""

from __future__ import annotations

import asyncio
import copy
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sched_fakes import container, gpu, make_env, node_obj, pod_obj

from hami.core import keys
from hami.k8s.errors import ApiServiceUnavailable

request = st.tuples(
    st.integers(min_value=1, max_value=2),  # GPUs
    st.integers(min_value=500, max_value=9000),  # MiB per GPU
    st.sampled_from([0, 10, 30, 50, 100]),  # cores per GPU
)


async def _run(requests: list[tuple[int, int, int]], seed: int) -> tuple[int, int]:
    rng = random.Random(seed)
    env = make_env()
    for n in range(3):
        env.api.add_node(
            node_obj(f"n{n}", [gpu(f"GPU-{n}-{i}", index=i, mem=10000, count=4) for i in range(4)])
        )
    # a nearly full cluster to start with
    for n in range(3):
        env.api.add_pod(
            pod_obj(
                f"pre{n}",
                annotations={
                    keys.VGPU_NODE: f"n{n}",
                    keys.VGPU_DEVICES_ALLOCATED: f"GPU-{n}-0,NVIDIA,9000,90:;",
                },
            )
        )
    pods = [
        env.api.add_pod(pod_obj(f"p{i}", container(gpus=g, mem=m, cores=c)))
        for i, (g, m, c) in enumerate(requests)
    ]

    original = env.api.patch

    async def jittered(*args, **kwargs):
        for _ in range(rng.randint(0, 8)):
            await asyncio.sleep(0)
        if rng.random() < 0.05:
            raise ApiServiceUnavailable("flaky apiserver", status=503)
        return await original(*args, **kwargs)

    env.api.patch = jittered  # type: ignore[method-assign]
    outcomes = await asyncio.gather(*(env.filter(p) for p in pods))
    await env.settle()
    assert env.state.ledger.check_invariants() == []
    placed = sum(1 for o in outcomes if o.node_names)
    # what landed in the annotations, read back by a fresh scheduler, is consistent too
    fresh = make_env()
    fresh.api.nodes = copy.deepcopy(env.api.nodes)
    fresh.api.pods = copy.deepcopy(env.api.pods)
    fresh.api.resync()
    assert fresh.state.ledger.check_invariants() == []
    return placed, len(outcomes)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=st.lists(request, min_size=64, max_size=64), seed=st.integers(0, 2**16))
def test_64_concurrent_filters_never_over_commit(requests, seed):
    placed, total = asyncio.run(_run(requests, seed))
    assert total == 64 and 0 < placed < 64  # the cluster fills up: some fit, some do not
