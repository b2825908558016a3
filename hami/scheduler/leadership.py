"""Who may decide and write: one replica leads, the others keep warm caches and refuse at once.

Without ``--leader-elect`` this process always leads (HAMi's dummy manager). With it, a
:class:`~hami.k8s.lease.LeaderElector` campaigns for the Lease named by
``--leader-elect-resource-name`` in ``--leader-elect-resource-namespace`` (issue 5; HAMi 2.8
only *observed* kube-scheduler's Lease, §1.3). Followers keep every informer running, so a new
leader serves its first filter from a warm cache; until then they answer ``/filter`` and
``/bind`` with a "not leader" error immediately (never the 2.8 hang) and ``/readyz`` with 503.

Fencing: before each binding the leader re-reads the Lease (:meth:`ElectedLeadership.fence`);
a deposed leader that wakes up late therefore cannot bind. When leadership is lost, decisions not
yet confirmed by the watch are forgotten (the watch re-commits those whose write did land).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from hami.k8s.lease import LeaderElector, NotLeader


class Leadership(Protocol):
    def refusal(self) -> str | None:
        """None while this replica may decide and write, else why not."""
        ...

    async def fence(self) -> None:
        """Raise NotLeader unless this replica still leads (checked against the API)."""
        ...


class AlwaysLeader:
    def refusal(self) -> str | None:
        return None

    async def fence(self) -> None:
        return None


class ElectedLeadership:
    def __init__(self, elector: LeaderElector) -> None:
        self.elector = elector

    def refusal(self) -> str | None:
        if self.elector.is_leader:
            return None
        leader = self.elector.leader
        who = f"the leader is {leader}" if leader else "no leader is known yet"
        return (
            f"not leader: this replica ({self.elector.identity}) follows the lease "
            f"{self.elector.namespace}/{self.elector.name}; {who}"
        )

    async def fence(self) -> None:
        if not self.elector.is_leader:
            raise NotLeader(self.refusal() or "not leader")
        await self.elector.verify_term()


def on_leadership_lost(forget: Callable[[str], object]) -> Callable[[], None]:
    """The elector's ``on_stopped_leading`` callback: drop unconfirmed decisions."""

    def stopped() -> None:
        forget("leadership lost")

    return stopped
