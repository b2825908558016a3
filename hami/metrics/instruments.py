"""Event metrics updated at boundaries: latency histograms and failure counters (hami-py additions).

Roles build one instrument set per process on their registry and observe at the edge, e.g.
``with instruments.filter_seconds.time(): ...`` or prometheus-async's ``aio.time(hist)`` on a
coroutine. Label values come from closed sets only (style guide §3.10): a filter-failure reason
outside HAMi's catalogue is counted as ``Other``.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram

from hami.metrics.catalog import DEVICE_PLUGIN_METRICS, DRA_PLUGIN_METRICS, SCHEDULER_METRICS, MetricSpec

# HAMi's fit reasons (hami-scheduler-spec.md §5.2/§5.5) plus a catch-all.
FILTER_FAILURE_REASONS: Final = frozenset(
    {
        "NodeInsufficientDevice",
        "NodeUnfitPod",
        "DeviceTypeNotFound",
        "CardNotHealth",
        "CardTypeMismatch",
        "NumaNotFit",
        "CardUuidMismatch",
        "CardTimeSlicingExhausted",
        "ResourceQuotaNotFit",
        "CardInsufficientMemory",
        "CardInsufficientCore",
        "ExclusiveDeviceAllocateConflict",
        "CardComputeUnitsExhausted",
        "CardNotFoundCustomFilterRule",
        "AllocatedCardsInsufficientRequest",
        "Other",
    }
)

# Filter and bind talk to the apiserver: spread buckets from 1 ms to 30 s.
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _spec(specs: tuple[MetricSpec, ...], name: str) -> MetricSpec:
    return next(s for s in specs if s.name == name)


def _histogram(registry: CollectorRegistry, spec: MetricSpec) -> Histogram:
    return Histogram(spec.name, spec.help, labelnames=spec.labels, buckets=LATENCY_BUCKETS, registry=registry)


class SchedulerInstruments:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.webhook_seconds = _histogram(registry, _spec(SCHEDULER_METRICS, "hami_webhook_duration_seconds"))
        self.filter_seconds = _histogram(registry, _spec(SCHEDULER_METRICS, "hami_filter_duration_seconds"))
        self.bind_seconds = _histogram(registry, _spec(SCHEDULER_METRICS, "hami_bind_duration_seconds"))
        failures = _spec(SCHEDULER_METRICS, "hami_filter_failures_total")
        self.filter_failures = Counter(
            failures.name, failures.help, labelnames=failures.labels, registry=registry
        )

    def filter_failed(self, reason: str, count: int = 1) -> None:
        """Count ``count`` rejections for ``reason`` (unknown reasons go to ``Other``)."""
        label = reason if reason in FILTER_FAILURE_REASONS else "Other"
        self.filter_failures.labels(reason=label).inc(count)


class DevicePluginInstruments:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.allocate_seconds = _histogram(
            registry, _spec(DEVICE_PLUGIN_METRICS, "hami_allocate_duration_seconds")
        )


class DraPluginInstruments:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.prepare_seconds = _histogram(
            registry, _spec(DRA_PLUGIN_METRICS, "hami_dra_prepare_duration_seconds")
        )
