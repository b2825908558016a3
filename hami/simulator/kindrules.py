"""The registry strategies of the stored-only kinds, as the :class:`~hami.simulator.store.Store` applies them.

This API server runs no controller-manager: ServiceAccounts, Services, RBAC objects,
PodDisruptionBudgets, Deployments, DaemonSets, StatefulSets, ReplicaSets and Jobs are defaulted,
validated and stored as kube-apiserver does, but no controller acts on them (no ReplicaSet or pod
appears for a Deployment, no endpoints for a Service, no status is ever filled in). What the
apiserver itself does while storing is done: a Service's cluster IP and node ports are allocated
(:mod:`hami.simulator.services`), a Job gets its generated selector (:mod:`hami.simulator.workloads`).

The Store calls, per write and only for these kinds (others pass through untouched):

* :func:`default` where it applies scheme defaults (decode time, again after mutating admission, on
  every update), so admission webhooks and generation tracking see defaulted objects;
* :func:`prepare_create` / :func:`prepare_update` after its own metadata checks: ``PrepareForCreate``
  (fresh status), validation (422 ``Invalid``), then allocation;
* :func:`check_commit` right before it stores, so two writes that raced through async admission
  cannot both keep one cluster IP or node port.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from hami.simulator import disruptionbudgets, rbac, services, workloads
from hami.simulator.resources import SERVICES, ResourceType
from hami.simulator.statuses import invalid

JsonObj = dict[str, Any]
StoredObjects = Callable[[ResourceType], list[JsonObj]]
"""``Store.objects``: every stored object of a kind."""

_WORKLOADS = frozenset(
    {"deployments.apps", "daemonsets.apps", "statefulsets.apps", "replicasets.apps", "jobs.batch"}
)
_RBAC = frozenset(
    f"{plural}.{rbac.GROUP}" for plural in ("roles", "rolebindings", "clusterroles", "clusterrolebindings")
)
_PDB = "poddisruptionbudgets.policy"


def _others(obj: JsonObj, stored: StoredObjects) -> list[JsonObj]:
    """The stored Services but ``obj`` itself (whose own addresses are not taken from it)."""
    meta = obj["metadata"]
    key = (meta.get("namespace"), meta.get("name"))
    return [s for s in stored(SERVICES) if (s["metadata"].get("namespace"), s["metadata"].get("name")) != key]


def default(rt: ResourceType, obj: JsonObj) -> None:
    """Scheme defaults of the kind (in place)."""
    key = rt.store_key
    if key == SERVICES.store_key:
        services.default_service(obj)
    elif key in _WORKLOADS:
        workloads.default_workload(rt, obj)
    elif key in _RBAC:
        rbac.default_rbac(rt, obj)


def _validate(rt: ResourceType, obj: JsonObj, old: JsonObj | None) -> None:
    key = rt.store_key
    if key == SERVICES.store_key:
        causes = services.validate_service(obj)
        if old is not None:
            causes.extend(services.validate_update(old, obj))
    elif key in _WORKLOADS:
        causes = workloads.validate(rt, obj, old)
    elif key in _RBAC:
        causes = rbac.validate(rt, obj, old)
    elif key == _PDB:
        causes = disruptionbudgets.validate(obj)
    else:
        return
    if causes:
        raise invalid(rt, str(obj["metadata"].get("name", "")), causes)


def prepare_create(rt: ResourceType, obj: JsonObj, stored: StoredObjects, rng: random.Random) -> None:
    """``PrepareForCreate``, validation and allocation of a new object (in place; 422 when invalid)."""
    key = rt.store_key
    default(rt, obj)
    if key == SERVICES.store_key:
        services.initial_status(obj)
    elif key in _WORKLOADS:
        workloads.prepare_create(rt, obj)
    elif key == _PDB:
        disruptionbudgets.prepare_create(obj)
    _validate(rt, obj, None)
    if key == SERVICES.store_key:
        services.allocate(obj, _others(obj, stored), rng)


def prepare_update(
    rt: ResourceType, old: JsonObj, new: JsonObj, stored: StoredObjects, rng: random.Random
) -> None:
    """``PrepareForUpdate``, validation and allocation of an update (in place on ``new``)."""
    key = rt.store_key
    if key == SERVICES.store_key:
        services.carry_allocated(old, new)
    elif key in _WORKLOADS:
        workloads.prepare_update(rt, old, new)
    _validate(rt, new, old)
    if key == SERVICES.store_key:
        services.allocate(new, _others(new, stored), rng)


def check_commit(rt: ResourceType, obj: JsonObj, stored: StoredObjects) -> None:
    """422 if what ``obj`` was allocated has been taken since it was prepared."""
    if rt.store_key == SERVICES.store_key:
        services.check_unique(obj, _others(obj, stored))


__all__ = ["StoredObjects", "check_commit", "default", "prepare_create", "prepare_update"]
