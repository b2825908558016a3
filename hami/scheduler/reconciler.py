"""Settling what the request paths leave open: stale assumptions and node locks, on proof.

* **Assumptions** are confirmed by the watch (:meth:`SchedulerState.on_pod` commits the pod when
  its annotation shows the decision). One that is not confirmed is forgotten only with proof it
  never will be: its pod is gone, or its write is no longer in flight and the annotation has
  not landed ``assume_grace`` seconds after the decision. There is no TTL on a reservation whose
  write may still land (kube-scheduler's #106361 trap).
* **Node locks** (``hami.io/mutex.lock``) are released when their owner pod is gone, re-created,
  terminal, being deleted, or past Allocate — never for their age alone (:mod:`nodelock`). A
  lock older than ``--node-lock-timeout`` whose owner still waits is reported, not broken.

The sweep runs every ``reconcile_interval`` seconds and at once when a lock owner's pod changes.
Only the leader writes (lock releases); every replica settles its own in-memory assumptions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from hami.core.ledger import PodState
from hami.k8s.client import KubeApi
from hami.k8s.errors import ApiError
from hami.k8s.objects import NODES
from hami.k8s.patches import merge_patch
from hami.scheduler.nodelock import NodeLocks, stale_reason
from hami.scheduler.podinfo import PodInfo
from hami.scheduler.state import SchedulerState

logger = logging.getLogger(__name__)


class Reconciler:
    def __init__(
        self,
        state: SchedulerState,
        api: KubeApi | None,
        *,
        assume_grace: float,
        interval: float,
        lock_timeout: float,
        is_leader: Callable[[], bool] = lambda: True,
    ) -> None:
        self.state = state
        self.api = api
        self.locks = NodeLocks(state, api) if api is not None else None
        self.assume_grace = assume_grace
        self.interval = interval
        self.lock_timeout = lock_timeout
        self.is_leader = is_leader
        self._wake = asyncio.Event()
        self._reported: set[str] = set()
        self.forgotten = 0
        self.released_locks = 0
        state.pod_listeners.append(self._on_pod)
        state.node_listeners.append(self._on_node)

    def _on_pod(self, info: PodInfo, gone: bool) -> None:
        if gone or info.terminal or info.deleting or info.allocation_done:
            for node in self.state.node_infos():
                lock = node.lock
                if lock is not None and (lock.namespace, lock.name) == (info.namespace, info.name):
                    self._wake.set()  # its lock may be free now
                    return

    def _on_node(self, name: str) -> None:
        info = self.state.node_info(name)
        if info is not None and info.lock_text:
            self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.error("reconcile sweep failed", exc_info=True)

    async def sweep(self) -> None:
        self.sweep_assumptions()
        self.state.refresh_nodes()
        if self.api is not None and self.is_leader():
            await self.sweep_handshakes()
        if self.locks is not None and self.is_leader():
            await self.sweep_locks()

    async def sweep_handshakes(self) -> int:
        """Write the handshake stamps HAMi's register loop writes (spec §7.4); returns how many."""
        assert self.api is not None
        now = self.state.clock.now()
        written = 0
        for node in self.state.node_infos():
            if not node.time_dependent:
                continue
            changes = {
                v.handshake_key: value
                for v in node.vendors
                if v.handshake_key is not None and (value := v.handshake_write(now)) is not None
            }
            if not changes:
                continue
            try:
                await self.api.patch(NODES, node.name, merge_patch({"metadata": {"annotations": changes}}))
                written += len(changes)
            except ApiError as e:
                logger.warning("node %s: writing the device handshake failed: %s", node.name, e)
        return written

    def sweep_assumptions(self) -> int:
        """Forget unconfirmed decisions that provably will not land; returns how many."""
        state = self.state
        now = state.clock.monotonic()
        forgotten = 0
        for uid, assumption in list(state.assumptions.items()):
            usage = state.ledger.pod(uid)
            if usage is None or usage.state is not PodState.ASSUMED:
                if usage is not None:
                    del state.assumptions[uid]  # confirmed meanwhile
                continue
            if assumption.writing or now - assumption.since < self.assume_grace:
                continue
            info = state.pod_info(uid)
            why = "its pod is gone" if info is None else "its annotation never landed"
            logger.warning(
                "forgetting the decision for %s/%s on %s: %s",
                assumption.namespace,
                assumption.name,
                assumption.node,
                why,
            )
            state.ledger.forget(uid)
            del state.assumptions[uid]
            forgotten += 1
        for usage in state.ledger.assumed():
            if usage.uid not in state.assumptions:  # an assumption nobody tracks cannot be confirmed
                state.ledger.forget(usage.uid)
                forgotten += 1
        self.forgotten += forgotten
        return forgotten

    async def sweep_locks(self) -> int:
        """Release node locks whose owner no longer needs them; returns how many."""
        assert self.locks is not None
        released = 0
        now = self.state.clock.now()
        for node in self.state.node_infos():
            if not node.lock_text:
                self._reported.discard(node.name)
                continue
            why = stale_reason(self.state, node)
            if why is not None:
                logger.info("node %s: releasing %s (%s)", node.name, node.lock_text, why)
                if await self.locks.release(node.name, "", "", None, expected=node.lock_text):
                    released += 1
                continue
            lock = node.lock
            if (
                lock is not None
                and lock.expired(now, timedelta(seconds=self.lock_timeout))
                and node.name not in self._reported
            ):
                self._reported.add(node.name)
                logger.warning(
                    "node %s: lock of %s is older than %.0fs but its pod still waits for Allocate; kept",
                    node.name,
                    lock.owner,
                    self.lock_timeout,
                )
        self.released_locks += released
        return released
