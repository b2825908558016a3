from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import ClassVar

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import DuplicateTimeseries

from hami import __version__
from hami.metrics.build_info import BuildInfo, BuildInfoCollector, detect_build_info, git_revision
from hami.metrics.catalog import MetricSpec
from hami.metrics.collectors import FamilyWriter, SnapshotCollector
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

MIB = 1048576


def samples(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def one(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    matches = [v for lab, v in found.get(name, []) if all(lab.get(k) == val for k, val in labels.items())]
    assert len(matches) == 1, (name, labels, found.get(name))
    return matches[0]


# --- build info -----------------------------------------------------------------------------


def test_build_info_from_env() -> None:
    info = detect_build_info({"HAMI_REVISION": "abc123", "HAMI_BUILD_DATE": "20261126-10:00:00"})
    assert info.version == __version__
    assert info.revision == "abc123" and info.build_date == "20261126-10:00:00"
    assert info.platform.count("/") == 1 and info.platform.startswith("linux/")
    assert info.python_version.count(".") == 2
    registry = new_registry(info)
    found = samples(registry)
    assert found["hami_build_info"] == [
        (
            {
                "version": __version__,
                "revision": "abc123",
                "build_date": "20261126-10:00:00",
                "python_version": info.python_version,
                "platform": info.platform,
            },
            1.0,
        )
    ]


def test_build_info_revision_falls_back(tmp_path: Path) -> None:
    # Outside any git checkout: unknown.
    assert git_revision(tmp_path) is None
    info = detect_build_info({}, source_dir=tmp_path)
    assert info.revision == "unknown" and info.build_date == "unknown"
    # In a git checkout: the short commit.
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    revision = detect_build_info({}, source_dir=repo).revision
    assert len(revision) == 12 and head.startswith(revision)


def test_registries_are_independent() -> None:
    info = BuildInfo(version="1", python_version="3.11.0", platform="linux/amd64")
    a, b = new_registry(info), new_registry(info)
    assert samples(a) == samples(b)
    with pytest.raises(DuplicateTimeseries):
        a.register(BuildInfoCollector(info))


# --- snapshot collector base ----------------------------------------------------------------


class _Toy(SnapshotCollector[dict[str, int]]):
    specs: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec(name="toy_value", type="gauge", labels=("key", "zone"), help="toy", origin="hami-py"),
    )

    def fill(self, snapshot: dict[str, int], out: FamilyWriter) -> None:
        for key, value in snapshot.items():
            out.add("toy_value", value, key=key)


def test_collector_reads_snapshot_at_scrape_time() -> None:
    state = {"a": 1}
    registry = CollectorRegistry()
    registry.register(_Toy(lambda: dict(state)))
    assert one(samples(registry), "toy_value", key="a", zone="vGPU") == 1
    state["a"] = 5
    state["b"] = 2
    found = samples(registry)
    assert one(found, "toy_value", key="a") == 5 and one(found, "toy_value", key="b") == 2


def test_collector_survives_a_failing_provider(caplog: pytest.LogCaptureFixture) -> None:
    def boom() -> dict[str, int]:
        raise RuntimeError("ledger gone")

    collector = _Toy(boom)
    registry = CollectorRegistry()
    registry.register(collector)
    with caplog.at_level(logging.ERROR):
        text = generate_latest(registry).decode()
    assert "toy_value" in text and "toy_value{" not in text
    assert collector.provider_errors == 1
    assert "ledger gone" in caplog.text


def test_writer_rejects_wrong_labels() -> None:
    collector = _Toy(lambda: {"a": 1})
    writer = FamilyWriter(collector.specs, {"zone": "vGPU"})
    with pytest.raises(ValueError, match="labels"):
        writer.add("toy_value", 1.0, key="a", other="b")


def test_describe_does_not_call_provider() -> None:
    def never() -> dict[str, int]:
        raise AssertionError("describe must not read the snapshot")

    registry = CollectorRegistry()
    registry.register(_Toy(never))
    with pytest.raises(DuplicateTimeseries):
        registry.register(_Toy(never))


# --- scheduler usage metrics ----------------------------------------------------------------


def _usage() -> SchedulerUsage:
    return SchedulerUsage(
        devices=(
            DeviceUsageRow(
                node="node-a",
                uuid="GPU-0",
                index=0,
                type="NVIDIA H100 80GB HBM3",
                memory_mib=81559,
                cores=100,
                used_memory_mib=6144,
                used_cores=30,
                shared=2,
            ),
            DeviceUsageRow(
                node="node-a",
                uuid="GPU-1",
                index=1,
                type="NVIDIA A100-SXM4-40GB",
                memory_mib=40960,
                cores=100,
                used_memory_mib=5120,
                used_cores=14,
                shared=1,
                mode="mig",
                mig_instances=(
                    MigInstanceRow(template="1g.5gb", position=0, in_use=True),
                    MigInstanceRow(template="1g.5gb", position=1, in_use=False),
                ),
            ),
            DeviceUsageRow(
                node="node-b",
                uuid="GPU-2",
                index=0,
                type="NVIDIA A10",
                memory_mib=0,
                cores=100,
                used_memory_mib=0,
                used_cores=0,
                shared=0,
            ),
        ),
        containers=(
            ContainerAllocationRow(
                namespace="team-a",
                node="node-a",
                pod="p1",
                container_index=0,
                uuid="GPU-0",
                memory_mib=4096,
                cores=30,
            ),
            ContainerAllocationRow(
                namespace="team-a",
                node="node-a",
                pod="p2",
                container_index=1,
                uuid="GPU-0",
                memory_mib=2048,
                cores=0,
            ),
            ContainerAllocationRow(
                namespace="team-a", node="node-a", pod="p3", container_index=0, uuid="", memory_mib=1, cores=1
            ),
        ),
        quotas=(QuotaRow(namespace="team-a", resource="nvidia.com/gpumem", used=16000, limit=20000),),
    )


def test_scheduler_usage_metrics_values_and_labels() -> None:
    registry = CollectorRegistry()
    registry.register(SchedulerUsageCollector(_usage))
    found = samples(registry)
    dev0 = {"nodeid": "node-a", "deviceuuid": "GPU-0", "deviceidx": "0", "zone": "vGPU"}
    assert one(found, "GPUDeviceMemoryLimit", **dev0) == 81559 * MIB
    assert one(found, "GPUDeviceCoreLimit", **dev0) == 100
    assert one(found, "GPUDeviceMemoryAllocated", devicecores="30", **dev0) == 6144 * MIB
    assert one(found, "GPUDeviceSharedNum", **dev0) == 2
    assert one(found, "GPUDeviceCoreAllocated", **dev0) == 30
    assert (
        one(
            found,
            "nodeGPUOverview",
            devicecores="30",
            sharedcontainers="2",
            devicememorylimit="81559",
            devicetype="NVIDIA H100 80GB HBM3",
            **dev0,
        )
        == 6144 * MIB
    )
    assert one(found, "nodeGPUMemoryPercentage", **dev0) == pytest.approx(6144 / 81559)
    assert one(found, "nodeGPUMemoryPercentage", deviceuuid="GPU-2") == 0.0
    # MIG instances only for the MIG-mode device.
    mig = found["nodeGPUMigInstance"]
    assert sorted((lab["migname"], v) for lab, v in mig) == [("1g.5gb-0", 1.0), ("1g.5gb-1", 0.0)]
    assert {lab["deviceuuid"] for lab, _ in mig} == {"GPU-1"}
    # Containers: the entry with an empty UUID is skipped, as in HAMi.
    ctr = {"podnamespace": "team-a", "nodename": "node-a", "deviceuuid": "GPU-0", "zone": "vGPU"}
    assert one(found, "vGPUMemoryAllocated", podname="p1", containeridx="0", **ctr) == 4096 * MIB
    assert one(found, "vGPUCoreAllocated", podname="p2", containeridx="1", **ctr) == 0
    assert len(found["vGPUMemoryAllocated"]) == 2
    assert (
        one(
            found,
            "QuotaUsed",
            quotanamespace="team-a",
            quotaName="nvidia.com/gpumem",
            limit="20000",
            zone="vGPU",
        )
        == 16000
    )


def test_scheduler_usage_empty_snapshot() -> None:
    registry = CollectorRegistry()
    registry.register(SchedulerUsageCollector(lambda: SchedulerUsage()))
    text = generate_latest(registry).decode()
    assert "# TYPE GPUDeviceMemoryLimit gauge" in text
    assert "GPUDeviceMemoryLimit{" not in text


# --- instruments ----------------------------------------------------------------------------


def test_scheduler_instruments() -> None:
    registry = CollectorRegistry()
    inst = SchedulerInstruments(registry)
    inst.filter_seconds.observe(0.003)
    inst.bind_seconds.observe(0.2)
    with inst.webhook_seconds.time():
        pass
    inst.filter_failed("CardInsufficientMemory", 2)
    inst.filter_failed("pod name leaked here")
    found = samples(registry)
    assert one(found, "hami_filter_duration_seconds_count") == 1
    assert one(found, "hami_filter_duration_seconds_bucket", le="0.005") == 1
    assert one(found, "hami_bind_duration_seconds_sum") == pytest.approx(0.2)
    assert one(found, "hami_webhook_duration_seconds_count") == 1
    assert one(found, "hami_filter_failures_total", reason="CardInsufficientMemory") == 2
    assert one(found, "hami_filter_failures_total", reason="Other") == 1


def test_device_plugin_instruments() -> None:
    registry = CollectorRegistry()
    DevicePluginInstruments(registry).allocate_seconds.observe(0.01)
    assert one(samples(registry), "hami_allocate_duration_seconds_count") == 1
