"""ResourceQuota limits for HAMi resources (hami-scheduler-spec.md §8), enforced at filter time.

*Limits* come from ResourceQuota objects: every ``spec.hard`` key ``limits.<resource>`` whose
resource is a registered vendor's memory or core resource (``limits.nvidia.com/gpumem``,
``limits.nvidia.com/gpucores``) with an integer value. *Used* is not a counter kept beside the
pods, as in HAMi 2.8 (whose re-filter and patch-failure paths leak, §8): it is read from the
ledger, which sums the pods it accounts per namespace (assumed and committed), so a pod that is
deleted, finishes, is re-filtered or whose write is forgotten stops counting by construction.

Deliberate fixes of 2.8 (spec §8): several ResourceQuotas in one namespace all apply (the
smallest limit wins) instead of "last event wins"; deleting one quota removes only its limits.
Kept from 2.8: a limit of 0 means "no limit", totals equal to the limit fit, and the memory
limit is scaled by ``memoryFactor`` like ``gpumem`` requests. Totals are count × per-GPU: the
vendor Fit adds every picked device's memory and cores (spec §5.5 step 8).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from hami.core.fit import NamespaceQuota, QuotaAmounts
from hami.core.ledger import Ledger
from hami.core.quantity import QuantityError, exact_integer, parse_quantity
from hami.core.vendor import NvidiaVendor, VendorRegistry
from hami.core.vendors import resource_names

LIMITS_PREFIX: Final = "limits."


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaResources:
    """One vendor's quota-managed resource names (HAMi ``GetResourceNames``)."""

    vendor: str
    memory: str
    cores: str
    memory_factor: int = 1


def quota_resources(registry: VendorRegistry) -> tuple[QuotaResources, ...]:
    """Every vendor with a memory or core resource; ``memoryFactor`` where its config has one."""
    out: list[QuotaResources] = []
    for impl in registry:
        names = resource_names(impl)
        if not names.memory and not names.cores:
            continue
        config = impl.config if isinstance(impl, NvidiaVendor) else getattr(impl, "config", None)
        factor = getattr(config, "memory_factor", 1)
        out.append(
            QuotaResources(
                vendor=impl.name,
                memory=names.memory,
                cores=names.cores,
                memory_factor=factor if isinstance(factor, int) and factor > 1 else 1,
            )
        )
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaInfo:
    """A ResourceQuota reduced to the HAMi limits it sets: resource name → limit."""

    namespace: str
    name: str
    limits: Mapping[str, int] = field(default_factory=dict)


def decode_quota(obj: Mapping[str, Any], resources: tuple[QuotaResources, ...]) -> QuotaInfo:
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    spec = obj.get("spec")
    hard = spec.get("hard") if isinstance(spec, Mapping) else None
    managed = {r.memory for r in resources if r.memory} | {r.cores for r in resources if r.cores}
    limits: dict[str, int] = {}
    if isinstance(hard, Mapping):
        for key, raw in hard.items():
            if not isinstance(key, str) or not key.startswith(LIMITS_PREFIX):
                continue
            resource = key[len(LIMITS_PREFIX) :]
            if resource not in managed:
                continue
            try:
                value = exact_integer(parse_quantity(str(raw)))
            except QuantityError:
                continue
            if value is not None and value >= 0:
                limits[resource] = value
    return QuotaInfo(namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")), limits=limits)


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaRowView:
    namespace: str
    resource: str
    used: int
    limit: int


class QuotaBook:
    """Limits per namespace from the watched ResourceQuotas; usage from the ledger."""

    def __init__(self, ledger: Ledger, resources: tuple[QuotaResources, ...]) -> None:
        self._ledger = ledger
        self._resources = resources
        self._quotas: dict[str, dict[str, Mapping[str, int]]] = {}  # namespace -> quota name -> limits

    @property
    def resources(self) -> tuple[QuotaResources, ...]:
        return self._resources

    def upsert(self, info: QuotaInfo) -> None:
        if info.limits:
            self._quotas.setdefault(info.namespace, {})[info.name] = dict(info.limits)
        else:
            self.remove(info.namespace, info.name)

    def remove(self, namespace: str, name: str) -> None:
        per_ns = self._quotas.get(namespace)
        if per_ns is None:
            return
        per_ns.pop(name, None)
        if not per_ns:
            del self._quotas[namespace]

    def limit(self, namespace: str, resource: str) -> int:
        """The effective limit (smallest over the namespace's quotas); 0 = none."""
        values = [q[resource] for q in self._quotas.get(namespace, {}).values() if resource in q]
        positive = [v for v in values if v > 0]
        return min(positive) if positive else 0

    def check_for(self, namespace: str) -> NamespaceQuota | None:
        """The Fit's quota check for a pod of ``namespace``; None when no limit applies (fast path)."""
        if namespace not in self._quotas:
            return None
        vendors: dict[str, QuotaAmounts] = {}
        for r in self._resources:
            mem_limit = self.limit(namespace, r.memory)
            cores_limit = self.limit(namespace, r.cores)
            if mem_limit == 0 and cores_limit == 0:
                continue
            mem_used, cores_used = self._ledger.namespace_usage(namespace, r.vendor)
            vendors[r.vendor] = QuotaAmounts(
                mem_used=mem_used,
                mem_limit=mem_limit,
                cores_used=cores_used,
                cores_limit=cores_limit,
                memory_factor=r.memory_factor,
            )
        return NamespaceQuota(vendors=vendors) if vendors else None

    def rows(self) -> Iterator[QuotaRowView]:
        """``QuotaUsed`` rows: every namespace with a limit on a managed resource."""
        for namespace in sorted(self._quotas):
            for r in self._resources:
                mem_used, cores_used = self._ledger.namespace_usage(namespace, r.vendor)
                for resource, used in ((r.memory, mem_used), (r.cores, cores_used)):
                    if resource and any(resource in q for q in self._quotas[namespace].values()):
                        yield QuotaRowView(
                            namespace=namespace,
                            resource=resource,
                            used=used,
                            limit=self.limit(namespace, resource),
                        )
