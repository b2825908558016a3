"""The scheduler's view of the cluster: watch caches wired into the allocation ledger.

Three informers (pods in all namespaces, nodes matching ``--node-label-selector``,
ResourceQuotas) decode each object once at ingest into typed side tables (:class:`PodInfo`,
:class:`NodeInfo`, :class:`QuotaInfo`), and their handlers keep the ledger equal to what the
cluster says:

* a pod with ``hami.io/vgpu-node`` and a readable ``*-devices-allocated`` is **committed** (or
  confirms this process's assumption); terminal phases, deletes and relist tombstones
  **release** it; an unreadable allocation **quarantines** its node (ledger.quarantine);
* a node's registration annotation sets its capacity (:mod:`hami.scheduler.registrar`);
* ResourceQuotas set the namespace limits (:mod:`hami.scheduler.quota`).

It also remembers what the cycle is writing (:class:`Assumption`), so a watch event older than
our own patch cannot overwrite a fresh assumption, and which allocations a failed bind voided,
so the still-annotated pod does not count again until it is re-filtered or really bound.
Nothing here awaits: handlers run inside the informers' loops, and the filter's critical section
(snapshot → fit → assume) runs between them on the same event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hami.cache.informer import Delta, Informer
from hami.cache.store import BY_UID, POD_INDEXERS
from hami.config.settings import WatchingSettings
from hami.core.ledger import Ledger, PodState
from hami.core.vendor import VendorRegistry
from hami.core.vendors import vendor_traits
from hami.k8s.client import KubeApi
from hami.k8s.objects import NODES, PODS, RESOURCE_QUOTAS, RawObject
from hami.runtime.clock import Clock, LoopClock
from hami.scheduler.handoff import HandoffTracker
from hami.scheduler.podinfo import PodInfo, decode_pod
from hami.scheduler.quota import QuotaBook, QuotaInfo, decode_quota, quota_resources
from hami.scheduler.registrar import NodeInfo, NodeRegistrar, decode_node

logger = logging.getLogger(__name__)

Allocated = tuple[tuple[str, str], ...]


@dataclass(slots=True, kw_only=True)
class Assumption:
    """A decision of this process whose annotation the watch has not shown yet."""

    uid: str
    namespace: str
    name: str
    node: str
    allocated: Allocated  # the (key, value) pairs being written
    since: float  # monotonic time of the decision
    writing: bool = True  # the patch is in flight (never forget then: it may land)
    pod: RawObject | None = field(default=None, repr=False)  # the pod as kube-scheduler sent it


class SchedulerState:
    """Ledger + side tables + handlers. Build with :meth:`create` (informers) or feed
    :meth:`on_pod`/:meth:`on_node`/:meth:`on_quota` directly in tests."""

    def __init__(
        self,
        registry: VendorRegistry,
        *,
        ledger: Ledger | None = None,
        tracker: HandoffTracker | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.registry = registry
        self.device_keys = registry.pod_device_keys()
        self.ledger = ledger or Ledger()
        self.registrar = NodeRegistrar(self.ledger)
        self.traits = vendor_traits(registry)
        self.quotas = QuotaBook(self.ledger, quota_resources(registry))
        self.tracker = tracker or HandoffTracker()
        self.clock = clock or LoopClock()
        self.assumptions: dict[str, Assumption] = {}
        self.voided: dict[str, Allocated] = {}
        self.pods: Informer[PodInfo] | None = None
        self.nodes: Informer[NodeInfo] | None = None
        self.quota_informer: Informer[QuotaInfo] | None = None
        # Called with the pod's latest info and whether it is gone (deleted or replaced).
        self.pod_listeners: list[Callable[[PodInfo, bool], None]] = []
        self.node_listeners: list[Callable[[str], None]] = []
        # Pods seen by the watch, by UID (the cache's side table is keyed by ns/name).
        self._infos: dict[str, PodInfo] = {}
        self._nodes: dict[str, NodeInfo] = {}

    # ------------------------------------------------------------------ construction

    def decode_pod(self, raw: RawObject) -> PodInfo:
        return decode_pod(raw, self.registry)

    def decode_node(self, raw: RawObject) -> NodeInfo:
        return decode_node(raw, self.registry, self.traits)

    def decode_quota(self, raw: RawObject) -> QuotaInfo:
        return decode_quota(raw, self.quotas.resources)

    def create_informers(
        self, api: KubeApi, *, watching: WatchingSettings | None = None, node_selector: str | None = None
    ) -> tuple[Informer[PodInfo], Informer[NodeInfo], Informer[QuotaInfo]]:
        self.pods = Informer(
            api,
            PODS,
            settings=watching,
            indexers=POD_INDEXERS,
            decoder=self.decode_pod,
            name="scheduler pods",
        )
        self.nodes = Informer(
            api,
            NODES,
            settings=watching,
            label_selector=node_selector,
            decoder=self.decode_node,
            name="scheduler nodes",
        )
        self.quota_informer = Informer(
            api,
            RESOURCE_QUOTAS,
            settings=watching,
            decoder=self.decode_quota,
            name="scheduler resourcequotas",
        )
        self.pods.add_handler(self.on_pod)
        self.nodes.add_handler(self.on_node)
        self.quota_informer.add_handler(self.on_quota)
        return self.pods, self.nodes, self.quota_informer

    async def run_informers(self) -> None:
        assert self.pods is not None and self.nodes is not None and self.quota_informer is not None
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.pods.run(), name="watch pods")
            tg.create_task(self.nodes.run(), name="watch nodes")
            tg.create_task(self.quota_informer.run(), name="watch resourcequotas")

    @property
    def synced(self) -> bool:
        informers = (self.pods, self.nodes, self.quota_informer)
        return all(i is None or i.has_synced.is_set() for i in informers) and any(
            i is not None for i in informers
        )

    async def wait_synced(self) -> None:
        for informer in (self.pods, self.nodes, self.quota_informer):
            if informer is not None:
                await informer.wait_synced()

    # ------------------------------------------------------------------ reads

    def pod_info(self, uid: str) -> PodInfo | None:
        return self._infos.get(uid)

    def pod_by_key(self, namespace: str, name: str) -> tuple[RawObject, PodInfo] | None:
        if self.pods is None:
            return None
        key = f"{namespace}/{name}"
        raw = self.pods.store.get(key)
        info = self.pods.store.decoded(key)
        if raw is None or info is None:
            return None
        return raw, info

    def pods_by_uid(self, uid: str) -> list[RawObject]:
        if self.pods is None:
            return []
        return self.pods.store.by_index(BY_UID, uid)

    def node_info(self, name: str) -> NodeInfo | None:
        return self._nodes.get(name)

    def node_infos(self) -> list[NodeInfo]:
        return list(self._nodes.values())

    def infos(self) -> list[PodInfo]:
        return list(self._infos.values())

    # ------------------------------------------------------------ decisions (called by the cycle/binder)

    def begin_decision(self, uid: str) -> None:
        """A pod is being (re-)filtered: its previous decision, whatever its state, is void."""
        self.ledger.release(uid)
        self.assumptions.pop(uid, None)
        self.voided.pop(uid, None)

    def assumed(self, assumption: Assumption) -> None:
        self.assumptions[assumption.uid] = assumption

    def write_failed(self, assumption: Assumption, *, definite: bool) -> None:
        """The decision's patch failed. Definite (4xx): forget it. Otherwise it may have landed:
        keep the reservation until the watch or the stale sweep settles it. A newer decision for
        the same pod (re-filtered meanwhile) is left alone."""
        if self.assumptions.get(assumption.uid) is not assumption:
            return
        if definite:
            self.ledger.forget(assumption.uid)
            del self.assumptions[assumption.uid]
        else:
            assumption.writing = False

    def write_done(self, assumption: Assumption) -> None:
        if self.assumptions.get(assumption.uid) is not assumption:
            return
        assumption.writing = False
        info = self._infos.get(assumption.uid)
        if info is not None:
            self._account(info)  # the watch may already have shown the annotation

    def void(self, uid: str) -> None:
        """A bind failed for certain: release the reservation; the pod's annotation (still there)
        must not count again until the pod is re-filtered or turns out bound after all."""
        entry = self.ledger.pod(uid)
        info = self._infos.get(uid)
        allocated = info.allocated if info is not None else ()
        assumption = self.assumptions.pop(uid, None)
        if assumption is not None:
            allocated = assumption.allocated
        self.voided[uid] = allocated
        if entry is not None:
            self.ledger.release(uid)

    def forget_assumptions(self, reason: str) -> int:
        """Drop every assumption not yet confirmed (e.g. leadership lost); the watch re-commits
        the ones whose annotation did land."""
        count = 0
        for usage in self.ledger.assumed():
            self.ledger.forget(usage.uid)
            self.assumptions.pop(usage.uid, None)
            count += 1
        if count:
            logger.warning("forgot %d unconfirmed decision(s): %s", count, reason)
        return count

    # ------------------------------------------------------------------ handlers

    def on_pod(self, delta: Delta[PodInfo]) -> None:
        info = delta.decoded
        old = delta.old_decoded
        if delta.type == "deleted":
            gone = info or old
            if gone is not None:
                self._gone(gone.uid, gone)
            return
        if old is not None and info is not None and old.uid != info.uid:
            self._gone(old.uid, old)  # deleted and re-created under the same name while we looked away
        if info is None:
            return
        self._infos[info.uid] = info
        self.tracker.observe(info)
        self._account(info)
        for listener in self.pod_listeners:
            listener(info, False)

    def _gone(self, uid: str, last: PodInfo | None = None) -> None:
        info = self._infos.pop(uid, None) or last
        self.ledger.release(uid)
        self.tracker.forget(uid)
        self.assumptions.pop(uid, None)
        self.voided.pop(uid, None)
        if info is not None:
            for listener in self.pod_listeners:
                listener(info, True)

    def _account(self, info: PodInfo) -> None:
        uid = info.uid
        ledger = self.ledger
        if info.terminal:
            ledger.release(uid)
            self.assumptions.pop(uid, None)
            self.voided.pop(uid, None)
            return
        entry = ledger.pod(uid)
        if not info.placed:
            if entry is not None and entry.state is PodState.COMMITTED:
                ledger.release(uid)  # the decision was removed from the pod
            return
        node = info.vgpu_node
        assert node is not None
        if info.decode_error is not None:
            ledger.quarantine(node, uid, info.decode_error)
            return
        assumption = self.assumptions.get(uid)
        if assumption is not None and entry is not None and entry.state is PodState.ASSUMED:
            if assumption.allocated != info.allocated or assumption.node != node:
                return  # an event from before our write: the assumption stands
        void = self.voided.get(uid)
        if void is not None:
            if not info.node_name and void == info.allocated:
                return  # a failed bind's leftover annotation
            del self.voided[uid]
        ledger.commit(uid, node, info.devices or {}, namespace=info.namespace)
        if assumption is not None and assumption.allocated == info.allocated:
            del self.assumptions[uid]

    def on_node(self, delta: Delta[NodeInfo]) -> None:
        info = delta.decoded
        if delta.type == "deleted":
            gone = info or delta.old_decoded
            name = gone.name if gone is not None else delta.key
            self._nodes.pop(name, None)
            self.registrar.remove(name)
        elif info is not None:
            self._nodes[info.name] = info
            self.registrar.apply(info, self.clock.now())
        else:
            # The object could not be decoded at all: treat as unregistered rather than stale.
            self._nodes.pop(delta.key, None)
            self.registrar.remove(delta.key)
        for listener in self.node_listeners:
            listener(delta.key)

    def refresh_nodes(self) -> int:
        """Re-evaluate nodes whose health depends on time alone (handshake windows)."""
        now = self.clock.now()
        count = 0
        for info in self._nodes.values():
            if info.time_dependent:
                self.registrar.apply(info, now)
                count += 1
        return count

    def on_quota(self, delta: Delta[QuotaInfo]) -> None:
        info = delta.decoded or delta.old_decoded
        if info is None:
            return
        if delta.type == "deleted":
            self.quotas.remove(info.namespace, info.name)
        else:
            if delta.old_decoded is not None and delta.old_decoded.name != info.name:
                self.quotas.remove(delta.old_decoded.namespace, delta.old_decoded.name)
            self.quotas.upsert(info)

    # ------------------------------------------------------------------ diagnostics

    def debug_view(self) -> dict[str, Any]:
        return {
            "generation": self.ledger.generation,
            "registered": sorted(self.registrar.registered),
            "quarantinedNodes": self.registrar.quarantined,
            "quarantinedPods": {uid: node for uid, node in self.ledger.quarantined().items()},
            "assumed": [u.uid for u in self.ledger.assumed()],
            "handoff": self.tracker.counts(),
        }
