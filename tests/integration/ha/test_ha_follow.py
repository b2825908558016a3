"""``--leader-elect-mode follow-kube-scheduler``: replicas lead while their pod's kube-scheduler
holds its Lease, as HAMi 2.8 does, without 2.8's hostname-prefix collision.

The kube-scheduler sidecars are played by client-go-style candidates in the test process
(:class:`~hami.k8s.lease.LeaderElector`, identities ``<hostname>_<uuid>``), campaigning on Lease
``hami-scheduler``; the replicas are ``hami scheduler`` subprocesses whose hostnames are
``sched-1`` and ``sched-10`` (a prefix of each other, on purpose).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from ha_harness import (
    LEASE_DURATION,
    RENEW_DEADLINE,
    RETRY_PERIOD,
    HaCluster,
    allocation_problems,
    bound,
    ha_cluster,
    ha_pod,
    until,
)

from hami.config.settings import LeaderElectionSettings, NetworkingSettings
from hami.core import keys
from hami.k8s.auth import Credentials
from hami.k8s.client import HttpKubeApi
from hami.k8s.lease import LeaderElector

pytestmark = pytest.mark.slow

KUBE_SCHEDULER_LEASE = "hami-scheduler"


@contextlib.asynccontextmanager
async def kube_scheduler(h: HaCluster, hostname: str) -> AsyncIterator[LeaderElector]:
    """The kube-scheduler sidecar of pod ``hostname``: campaigns until the block ends, then releases."""
    api = HttpKubeApi(Credentials.anonymous(h.cluster.api_url), NetworkingSettings())
    elector = LeaderElector(
        api,
        LeaderElectionSettings(
            enabled=True,
            lease_name=KUBE_SCHEDULER_LEASE,
            lease_namespace="default",
            lease_duration=LEASE_DURATION,
            renew_deadline=RENEW_DEADLINE,
            retry_period=RETRY_PERIOD,
        ),
        identity=f"{hostname}_{uuid.uuid4()}",
    )
    task = asyncio.create_task(elector.run(), name=f"kube-scheduler {hostname}")
    try:
        yield elector
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()


async def schedule(h: HaCluster, first: int, count: int) -> None:
    for i in range(first, first + count):
        await h.cluster.create_pod(ha_pod(i, 2000))
    deadline = time.monotonic() + 30
    while len(bound(await h.pods())) < first + count:
        assert time.monotonic() < deadline, "pods not bound"
        await asyncio.sleep(0.2)


async def ready_names(h: HaCluster) -> list[str]:
    return [r.name for r in await h.ready()]


async def test_follows_the_kube_scheduler_of_its_own_pod() -> None:
    async with (
        ha_cluster(
            replicas=("sched-1", "sched-10"),
            lease=KUBE_SCHEDULER_LEASE,
            extra=("--leader-elect-mode=follow-kube-scheduler",),
        ) as h,
        contextlib.AsyncExitStack() as sidecar10,
    ):
        one, ten = h.replicas
        for replica in h.replicas:  # no Lease yet: nobody leads, both refuse at once
            await h.wait_following(replica)

        ks10 = await sidecar10.enter_async_context(kube_scheduler(h, "sched-10"))
        await until(lambda: ks10.is_leader, within=10, what="kube-scheduler sched-10 leads")
        assert await h.wait_leader(within=10) is ten
        # HAMi 2.8 compared a bare prefix: "sched-10_..." starts with "sched-1" too.
        for _ in range(3):
            assert await ready_names(h) == ["sched-10"]
            await asyncio.sleep(RETRY_PERIOD)
        await schedule(h, 0, 4)
        term = str(ks10.term)

        async with kube_scheduler(h, "sched-1") as ks1:  # the standby sidecar
            await asyncio.sleep(RETRY_PERIOD)
            assert not ks1.is_leader
            await sidecar10.aclose()  # kube-scheduler sched-10 shuts down cleanly: Lease released
            released_at = time.monotonic()
            await until(lambda: ks1.is_leader, within=5, what="kube-scheduler sched-1 takes over")
            while await ready_names(h) != ["sched-1"]:  # each extender sees its kube-scheduler's move
                assert time.monotonic() - released_at < 2 * RETRY_PERIOD + 1.0, await ready_names(h)
                await asyncio.sleep(0.02)
            assert await h.wait_leader(within=1) is one
            await schedule(h, 4, 4)
            new_term = str(ks1.term)

        pods = await h.pods()
        assert allocation_problems(pods, await h.nodes()) == []
        terms = {p["metadata"]["annotations"].get(keys.SCHEDULER_TERM) for p in pods}
        assert terms == {term, new_term} and term != new_term
