"""The metric contract: every name, type and label set users' dashboards and alerts rely on.

The table is written out by hand on purpose: changing a name or a label must fail here and be a
deliberate decision (HAMi 2.8's names come from hami-scheduler-spec.md §10 and hami-node-spec.md
§7.5). Each table is checked against the catalogue and against what the collectors really emit.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hami.metrics.build_info import BuildInfo
from hami.metrics.catalog import ROLE_METRICS, all_specs
from hami.metrics.instruments import DevicePluginInstruments, SchedulerInstruments
from hami.metrics.registry import new_registry
from hami.metrics.scheduler import (
    ContainerAllocationRow,
    DeviceUsageRow,
    MigInstanceRow,
    QuotaRow,
    SchedulerUsage,
    SchedulerUsageCollector,
)
from hami.monitor.gpuinfo import HostGpu
from hami.monitor.metrics import ContainerUsage, MigDevice, MonitorCollector, MonitorSnapshot, VDeviceUsage
from hami.scheduler.leadership import LeadershipCollector, LeadershipSnapshot

DEV = ("nodeid", "deviceuuid", "deviceidx", "zone")
VGPU = ("podnamespace", "nodename", "podname", "containeridx", "deviceuuid", "zone")
CTR = ("podnamespace", "podname", "ctrname", "vdeviceid", "deviceuuid", "zone")
HOST = ("deviceidx", "deviceuuid", "devicetype", "node", "zone")
BUILD = ("version", "revision", "build_date", "python_version", "platform")

SCHEDULER: dict[str, tuple[str, frozenset[str]]] = {
    "hami_build_info": ("gauge", frozenset(BUILD)),
    "GPUDeviceMemoryLimit": ("gauge", frozenset(DEV)),
    "GPUDeviceCoreLimit": ("gauge", frozenset(DEV)),
    "GPUDeviceMemoryAllocated": ("gauge", frozenset((*DEV, "devicecores"))),
    "GPUDeviceSharedNum": ("gauge", frozenset(DEV)),
    "GPUDeviceCoreAllocated": ("gauge", frozenset(DEV)),
    "nodeGPUOverview": (
        "gauge",
        frozenset((*DEV, "devicecores", "sharedcontainers", "devicememorylimit", "devicetype")),
    ),
    "nodeGPUMemoryPercentage": ("gauge", frozenset(DEV)),
    "nodeGPUMigInstance": ("gauge", frozenset((*DEV, "migname"))),
    "vGPUMemoryAllocated": ("gauge", frozenset(VGPU)),
    "vGPUCoreAllocated": ("gauge", frozenset(VGPU)),
    "QuotaUsed": ("gauge", frozenset(("quotanamespace", "quotaName", "limit", "zone"))),
    "hami_device_info": ("gauge", frozenset(("nodeid", "deviceuuid", "deviceidx", "vendor", "devicetype"))),
    "hami_webhook_duration_seconds": ("histogram", frozenset()),
    "hami_filter_duration_seconds": ("histogram", frozenset()),
    "hami_bind_duration_seconds": ("histogram", frozenset()),
    "hami_filter_failures_total": ("counter", frozenset({"reason"})),
    "hami_leader": ("gauge", frozenset()),
    "hami_leader_transitions_total": ("counter", frozenset()),
    "hami_leader_renew_age_seconds": ("gauge", frozenset()),
}

MONITOR: dict[str, tuple[str, frozenset[str]]] = {
    "hami_build_info": ("gauge", frozenset(BUILD)),
    "HostGPUMemoryUsage": ("gauge", frozenset(HOST)),
    "HostCoreUtilization": ("gauge", frozenset(HOST)),
    "vGPU_device_memory_usage_in_bytes": ("gauge", frozenset(CTR)),
    "vGPU_device_memory_limit_in_bytes": ("gauge", frozenset(CTR)),
    "Device_memory_desc_of_container": ("unknown", frozenset((*CTR, "context", "module", "data", "offset"))),
    "Device_utilization_desc_of_container": ("gauge", frozenset(CTR)),
    "Device_last_kernel_of_container": ("gauge", frozenset(CTR)),
    "MigInfo": ("gauge", frozenset((*CTR, "instanceid"))),
    "hami_vgpu_memory_over_limit_bytes": ("gauge", frozenset(CTR)),
    "hami_monitor_unreadable_regions": ("gauge", frozenset()),
}

DEVICE_PLUGIN: dict[str, tuple[str, frozenset[str]]] = {
    "hami_build_info": ("gauge", frozenset(BUILD)),
    "hami_allocate_duration_seconds": ("histogram", frozenset()),
}

# The three metrics HAMi 2.8 removed (#1562) stay removed.
REMOVED_IN_28 = {"vGPUPodsDeviceAllocated", "vGPUMemoryPercentage", "vGPUCorePercentage"}

BUILD_INFO = BuildInfo(
    version="0.1.0", revision="abc", build_date="d", python_version="3.11.7", platform="linux/amd64"
)


def table_of(role: str) -> dict[str, tuple[str, frozenset[str]]]:
    return {s.name: (s.type, frozenset(s.labels)) for s in ROLE_METRICS[role]}


def test_catalogue_matches_the_contract() -> None:
    assert table_of("scheduler") == SCHEDULER
    assert table_of("monitor") == MONITOR
    assert table_of("device-plugin") == DEVICE_PLUGIN
    assert not REMOVED_IN_28 & set(all_specs())
    for spec in all_specs().values():
        assert len(spec.labels) == len(set(spec.labels)), spec.name
        assert spec.help, spec.name
        if spec.origin == "hami-py":
            assert spec.name.startswith("hami_"), spec.name


def exposed(registry: CollectorRegistry) -> dict[str, tuple[str, set[frozenset[str]]]]:
    """name → (type, label sets seen) as a scraper reads the text exposition."""
    out: dict[str, tuple[str, set[frozenset[str]]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.name.endswith("_created"):
            continue  # the Python client's creation timestamps of counters/histograms
        name = family.name + ("_total" if family.type == "counter" else "")
        labelsets: set[frozenset[str]] = set()
        for sample in family.samples:
            if family.type == "histogram":
                keys = set(sample.labels) - {"le"}
            elif sample.name.endswith("_created"):
                continue
            else:
                keys = set(sample.labels)
            labelsets.add(frozenset(keys))
        out[name] = (family.type, labelsets)
    return out


def check(registry: CollectorRegistry, contract: dict[str, tuple[str, frozenset[str]]]) -> None:
    seen = exposed(registry)
    assert set(seen) == set(contract)
    for name, (type_, labels) in contract.items():
        got_type, labelsets = seen[name]
        assert got_type == type_, name
        assert labelsets == {labels}, (name, labelsets)


class RenewedLeader:
    """A leadership that leads and renewed 0.5 s ago (every leader metric has a sample)."""

    def snapshot(self) -> LeadershipSnapshot:
        return LeadershipSnapshot(leading=True, transitions=2, renew_age=0.5, term=7)


def test_scheduler_exposes_the_contract() -> None:
    registry = new_registry(BUILD_INFO)
    usage = SchedulerUsage(
        devices=(
            DeviceUsageRow(
                node="n", uuid="GPU-1", index=0, type="A100", memory_mib=40960, cores=100,
                used_memory_mib=1, used_cores=1, shared=1, mode="mig",
                mig_instances=(MigInstanceRow(template="1g.5gb", position=0, in_use=True),),
            ),
        ),
        containers=(
            ContainerAllocationRow(namespace="ns", node="n", pod="p", container_index=0, uuid="GPU-1",
                                   memory_mib=1, cores=1),
        ),
        quotas=(QuotaRow(namespace="ns", resource="nvidia.com/gpumem", used=1, limit=2),),
    )  # fmt: skip
    registry.register(SchedulerUsageCollector(lambda: usage))
    instruments = SchedulerInstruments(registry)
    for hist in (instruments.webhook_seconds, instruments.filter_seconds, instruments.bind_seconds):
        hist.observe(0.01)
    instruments.filter_failed("CardInsufficientMemory")
    registry.register(LeadershipCollector(RenewedLeader()))
    check(registry, SCHEDULER)


def test_monitor_exposes_the_contract() -> None:
    registry = new_registry(BUILD_INFO)
    dev = VDeviceUsage(
        index=0, uuid="GPU-1", limit=10, used=11, context=1, module=2, data=8, offset=0, sm_util=5
    )
    snapshot = MonitorSnapshot(
        node="n",
        taken_at=0.0,
        host_gpus=(
            HostGpu(index=0, uuid="GPU-1", name="A100", memory_used=1, memory_total=2, utilization=3),
        ),
        containers=(
            ContainerUsage(
                namespace="ns", pod="p", pod_uid="u", container="c", devices=(dev,), last_kernel_time=5,
                priority=1, utilization_switch=1, recent_kernel=2, live_processes=1,
            ),
        ),
        mig_devices=(
            MigDevice(namespace="ns", pod="p", container="c", position=1, parent_uuid="GPU-1", instance_id=3),
        ),
        unreadable=1,
    )  # fmt: skip
    registry.register(MonitorCollector(lambda: snapshot, wall_time=lambda: 10.0))
    check(registry, MONITOR)


def test_device_plugin_exposes_the_contract() -> None:
    registry = new_registry(BUILD_INFO)
    DevicePluginInstruments(registry).allocate_seconds.observe(0.1)
    check(registry, DEVICE_PLUGIN)
