"""Scrape-time collectors: read the current snapshot, emit families from the metric catalogue.

State gauges are never ``set()`` by handlers (style guide §3.10). A collector holds a
*snapshot provider* (a callable returning an immutable snapshot) and turns that snapshot into
metric families when Prometheus scrapes. Scrapes stay cheap: no I/O, no recomputation beyond
walking the snapshot. A provider that raises does not fail the scrape: the collector logs it,
counts it and emits nothing for that scrape.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import ClassVar, Generic, TypeVar

from prometheus_client.metrics_core import Metric

from hami.metrics.catalog import ZONE_LABEL, ZONE_VALUE, MetricSpec

logger = logging.getLogger(__name__)

SnapshotT = TypeVar("SnapshotT")


class FamilyWriter:
    """Collects samples for a fixed set of specs; label names are checked against each spec."""

    def __init__(self, specs: Iterable[MetricSpec], const_labels: Mapping[str, str]) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self._const = dict(const_labels)
        self._families = {name: Metric(name, spec.help, spec.type) for name, spec in self._specs.items()}
        # Per spec: the label names a caller must give (spec labels minus const ones).
        self._given = {
            name: frozenset(label for label in spec.labels if label not in self._const)
            for name, spec in self._specs.items()
        }

    def add(self, name: str, value: float, **labels: str) -> None:
        spec = self._specs[name]
        if labels.keys() != self._given[name]:
            raise ValueError(f"metric {name}: labels {sorted(labels)} != {sorted(self._given[name])}")
        full = {label: labels[label] if label in labels else self._const[label] for label in spec.labels}
        self._families[name].add_sample(name, full, value)

    def families(self) -> Iterator[Metric]:
        yield from self._families.values()


class SnapshotCollector(ABC, Generic[SnapshotT]):
    """Base for collectors over a snapshot provider. Subclasses set ``specs`` and implement ``fill``."""

    specs: ClassVar[tuple[MetricSpec, ...]] = ()

    def __init__(
        self,
        provider: Callable[[], SnapshotT | None],
        *,
        const_labels: Mapping[str, str] | None = None,
    ) -> None:
        self._provider = provider
        if const_labels is None:
            const_labels = {ZONE_LABEL: ZONE_VALUE} if any(ZONE_LABEL in s.labels for s in self.specs) else {}
        self._const_labels = dict(const_labels)
        self.provider_errors = 0

    def describe(self) -> Iterable[Metric]:
        # Declares names to the registry (duplicate detection) without calling the provider.
        return list(FamilyWriter(self.specs, self._const_labels).families())

    def collect(self) -> Iterable[Metric]:
        writer = FamilyWriter(self.specs, self._const_labels)
        try:
            snapshot = self._provider()
        except Exception:
            self.provider_errors += 1
            logger.exception("%s: snapshot provider failed; this scrape has no samples", type(self).__name__)
            return list(writer.families())
        if snapshot is not None:
            self.fill(snapshot, writer)
        return list(writer.families())

    @abstractmethod
    def fill(self, snapshot: SnapshotT, out: FamilyWriter) -> None:
        """Add the samples for ``snapshot`` to ``out``."""
