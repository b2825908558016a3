"""The node ↔ device-plugin handoff: many pods per node between bind and Allocate, none misrouted.

The problem (issue 4 item 3; HAMi #1130, #1367, #3096)
------------------------------------------------------
kubelet's ``Allocate`` carries device IDs only, never the pod. HAMi 2.8 bridges the gap with the
node lock ``hami.io/mutex.lock = <time>,<ns>,<name>``: at most one pod per node is between bind
and Allocate, the plugin reads the pod name off the lock, and the lock expires after 5 minutes.
That serialises every node (one pod per kubelet round trip), stalls a node for 5 minutes when
the holder never reaches Allocate, and once handed a pod another pod's devices when a lock
outlived its pod.

The design
----------
1. **No lock across Allocate** (unless ``--compat-node-lock`` asks for HAMi 2.8's device plugin).
   Any number of pods of one node may be between bind and Allocate at once.

2. **The device plugin identifies the pod by what the scheduler wrote** (hami/deviceplugin/
   podlookup.py, node spec §4.2): the candidates are the pods bound to the node, ``Pending``,
   ``hami.io/bind-phase: allocating``, whose ``hami.io/vgpu-devices-to-allocate`` still has a
   non-empty container entry; the entry to serve is the first non-empty one. Kubelet's virtual
   IDs ``<GPU-UUID>-<i>`` name physical GPUs, so a pod matches when its entry names exactly
   kubelet's GPUs (as a multiset). The plugin offers ``GetPreferredAllocation`` and answers it
   with the GPUs of the pod kubelet admits next; ``Allocate`` then names that pod's GPUs.

3. **Which pod kubelet admits next is made knowable.** Kubelet admits the pods it receives in
   batches sorted by ``creationTimestamp`` (``HandlePodAdditions``), and receives them in bind
   order. So if, on every node, *pods are bound in (creationTimestamp, namespace, name) order
   among the pods still waiting for Allocate*, kubelet's admission order equals that order, and
   the plugin's rule "the oldest waiting pod (with this many devices) is next" is exact. The
   scheduler enforces the invariant here, in :class:`HandoffTracker`:

   * a bind of pod P on node N waits while any pod **newer** than P is in handoff on N (bound,
     not yet allocated), and while an **older** bind on N is waiting for its own turn;
   * binds of one node are serialised through the ``POST pods/binding`` (two binds in flight
     could land in either order);
   * the in-handoff set comes from the pod watch (an entry leaves when the plugin consumed the
     last container entry, the pod left ``Pending``, is gone, or its bind phase became
     ``success``/``failed``), plus the binds this process just made. A pod being deleted stays
     in it until it is gone: kubelet may be admitting it at that moment, and the plugin keeps its
     place in line for that reason.

   Binds arriving in creation order — kube-scheduler's queue order for fresh pods — never wait;
   a pod bound out of order waits until the newer pods of that node have been allocated (a
   kubelet round trip), then binds. A wait longer than ``--bind-wait-timeout`` fails the bind
   with the blocking pod named; kube-scheduler retries it. Binding is one call carrying the
   ``hami.io/bind-phase``/``bind-time`` annotations (the apiserver copies a Binding's
   annotations onto the pod), so ``nodeName`` and ``bind-phase`` appear atomically.

4. **Ambiguity left** is only between pods whose entries are the same GPUs with the same count,
   and there the plugin's order (oldest first) is kubelet's order by (3). Different memory or
   cores per pod are therefore still handed to the right pod.

What the device plugin must do (our plugin does it in ``HamiPendingPodSource``): never rely on
the node lock for identity; among candidate pods with the requested device count prefer exact GPU
matches, then the oldest by (creationTimestamp, namespace, name); answer
``GetPreferredAllocation`` with the GPUs of the oldest candidate with that count; consume the
entry and set ``bind-phase: success`` when no entry is left (``failed`` on error); refuse (never
guess) when candidates are indistinguishable and nothing orders them.

Residual risks, stated plainly: a real kubelet receiving several same-second pods in one batch
orders them by delivery, not by name (the embedded kubelet, like the plugin, breaks ties by
namespace/name); a pod that kubelet rejects *before* Allocate (e.g. CPU) stays a candidate until
its ``Failed`` status lands. Both affect only pods created within the same second on one node.

Compatibility mode (``--compat-node-lock``): the lock is written at bind with the pod's UID
carried inside the timestamp (:mod:`hami.core.node_lock`, readable by HAMi 2.8), the handoff
becomes exclusive per node (as 2.8), and the lock is released when its pod is deleted, terminal,
allocated, or its bind fails — never by age alone (:mod:`hami.scheduler.nodelock`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from hami.core.errors import HamiError
from hami.scheduler.podinfo import OrderKey, PodInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class HandoffView:
    """One node's handoff state, for diagnostics (``ns/name`` of each pod)."""

    node: str
    handoff: tuple[str, ...]  # bound, waiting for Allocate (oldest first)
    waiting: tuple[str, ...]  # binds waiting for their turn (oldest first)
    busy: str | None  # UID whose binding call is in flight


class HandoffTimeout(HamiError):
    """A bind did not get its turn on the node in time."""


@dataclass(slots=True)
class _Node:
    handoff: dict[str, OrderKey] = field(default_factory=dict)  # uid -> order key, bound & waiting Allocate
    waiting: dict[str, OrderKey] = field(default_factory=dict)  # binds waiting for their turn
    busy: str | None = None  # uid whose binding call is in flight
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    @property
    def idle(self) -> bool:
        return not self.handoff and not self.waiting and self.busy is None


class HandoffTracker:
    """Per node: the pods between bind and Allocate, and the turn of each waiting bind.

    ``exclusive=True`` (compat node-lock mode) allows one pod per node in handoff, like HAMi 2.8.
    Synchronous methods are called from the pod informer's handler; :meth:`turn` from binds.
    """

    def __init__(self, *, exclusive: bool = False) -> None:
        self.exclusive = exclusive
        self._nodes: dict[str, _Node] = {}
        self._where: dict[str, str] = {}  # uid -> node of its handoff entry

    # ------------------------------------------------------------------ reads

    def in_handoff(self, node: str) -> dict[str, OrderKey]:
        n = self._nodes.get(node)
        return dict(n.handoff) if n is not None else {}

    def counts(self) -> dict[str, int]:
        return {name: len(n.handoff) for name, n in self._nodes.items() if n.handoff}

    def views(self) -> list[HandoffView]:
        """Every node with pods in handoff, binds waiting or a bind in flight, by node name."""
        return [
            HandoffView(
                node=name,
                handoff=tuple(_name(k) for k in sorted(n.handoff.values())),
                waiting=tuple(_name(k) for k in sorted(n.waiting.values())),
                busy=n.busy,
            )
            for name, n in sorted(self._nodes.items())
        ]

    def blocker(self, node: str, uid: str, key: OrderKey) -> str | None:
        """Why a bind of ``uid`` on ``node`` must wait now (None: it may go)."""
        n = self._nodes.get(node)
        if n is None:
            return None
        if n.busy is not None and n.busy != uid:
            return f"the binding of pod {n.busy} to {node} is in flight"
        for other, other_key in n.handoff.items():
            if other == uid:
                continue
            if self.exclusive:
                return f"pod {_name(other_key)} is between bind and Allocate on {node} (one at a time)"
            if other_key > key:
                return (
                    f"newer pod {_name(other_key)} is between bind and Allocate on {node}; binding "
                    f"{_name(key)} before it is allocated could hand it the wrong devices"
                )
        for other, other_key in n.waiting.items():
            if other != uid and other_key < key:
                return f"older pod {_name(other_key)} binds to {node} first"
        return None

    # ------------------------------------------------------------------ watch side

    def observe(self, info: PodInfo) -> None:
        """The watch delivered ``info``: enter or leave the handoff set."""
        if info.in_handoff:
            self._enter(info.uid, info.node_name, info.order_key)
        else:
            self.forget(info.uid)

    def forget(self, uid: str) -> None:
        """``uid`` left handoff (allocated, deleted, terminal...)."""
        node = self._where.pop(uid, None)
        if node is None:
            return
        n = self._nodes.get(node)
        if n is None:
            return
        if n.handoff.pop(uid, None) is not None:
            n.notify()
        self._gc(node)

    def bound(self, node: str, uid: str, key: OrderKey, cached: PodInfo | None) -> None:
        """Our binding call succeeded. ``cached`` is the pod as the watch shows it right now: if the
        watch already reports it bound, its state wins (it may even be allocated already);
        otherwise it is in handoff until the watch says otherwise."""
        if cached is not None and cached.uid == uid and cached.node_name:
            self.observe(cached)
            return
        self._enter(uid, node, key)

    def _enter(self, uid: str, node: str, key: OrderKey) -> None:
        old = self._where.get(uid)
        if old is not None and old != node:
            self.forget(uid)
        n = self._nodes.setdefault(node, _Node())
        if n.handoff.get(uid) != key:
            n.handoff[uid] = key
            self._where[uid] = node
            n.notify()

    def _gc(self, node: str) -> None:
        n = self._nodes.get(node)
        if n is not None and n.idle:
            del self._nodes[node]

    # ------------------------------------------------------------------ bind side

    @asynccontextmanager
    async def turn(self, node: str, uid: str, key: OrderKey, *, wait_limit: float) -> AsyncIterator[None]:
        """Wait until ``uid`` may bind on ``node`` (see the module docstring), hold the node's turn
        while the body runs. Raises :class:`HandoffTimeout` naming what blocked it."""
        n = self._nodes.setdefault(node, _Node())
        n.waiting[uid] = key
        n.notify()
        reason: str | None = None
        try:
            try:
                async with asyncio.timeout(wait_limit):
                    while (reason := self.blocker(node, uid, key)) is not None:
                        await n.changed.wait()
            except TimeoutError:
                raise HandoffTimeout(
                    f"waited {wait_limit:g}s to bind {_name(key)} to {node}: {reason}"
                ) from None
            n.busy = uid
        finally:
            n.waiting.pop(uid, None)
            n.notify()
            if n.busy != uid:
                self._gc(node)
        try:
            yield
        finally:
            if n.busy == uid:
                n.busy = None
            n.notify()
            self._gc(node)


def _name(key: OrderKey) -> str:
    return f"{key[1]}/{key[2]}"
