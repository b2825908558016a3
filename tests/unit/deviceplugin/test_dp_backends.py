"""Health policy parsing and the mock backend."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from hami.core.errors import ConfigError
from hami.deviceplugin.backend import APPLICATION_XIDS, HealthEvent, health_policy
from hami.deviceplugin.backends.mock import (
    MockBackend,
    gpus_from_document,
    load_gpu_file,
    mock_gpus,
    mock_uuid,
)


def test_health_policy_from_env_values() -> None:
    default = health_policy()
    assert default.enabled and default.ignored_xids == APPLICATION_XIDS
    assert not default.is_critical_xid(13) and default.is_critical_xid(79)
    assert not health_policy("all").enabled
    assert not health_policy("XIDs").enabled
    extra = health_policy("48, 63", "13")
    assert not extra.is_critical_xid(48) and not extra.is_critical_xid(63)
    assert extra.is_critical_xid(13)  # forced on overrides the application list
    with pytest.raises(ValueError, match="DP_DISABLE_HEALTHCHECKS: 'gpu'"):
        health_policy("gpu")
    with pytest.raises(ValueError, match=">= 0"):
        health_policy(recovery_after_s=-1)


def test_mock_gpus_are_deterministic_per_node() -> None:
    first = mock_gpus("node-1", 2, model="NVIDIA A10", memory_mib=24576)
    assert first == mock_gpus("node-1", 2, model="NVIDIA A10", memory_mib=24576)
    assert first[0].uuid == mock_uuid("node-1", 0) and first[0].uuid.startswith("GPU-")
    assert mock_uuid("node-2", 0) != first[0].uuid
    assert [g.index for g in first] == [0, 1] and first[1].memory_mib == 24576
    with pytest.raises(ConfigError, match="--mock-memory"):
        mock_gpus("n", 1, memory_mib=0)


def test_mock_gpu_file_forms(tmp_path: Path) -> None:
    counted = tmp_path / "gpus.yaml"
    counted.write_text("count: 3\nmodel: NVIDIA H100 80GB HBM3\nmemory: 81559\n")
    assert [g.name for g in load_gpu_file("n", counted)] == ["NVIDIA H100 80GB HBM3"] * 3
    listed = tmp_path / "gpus.json"
    listed.write_text(
        json.dumps({"gpus": [{"uuid": "GPU-x", "memory": 1024, "numa": 1}, {"name": "NVIDIA T4"}]})
    )
    gpus = load_gpu_file("n", listed)
    assert [(g.uuid, g.memory_mib, g.numa_node, g.name) for g in gpus] == [
        ("GPU-x", 1024, 1, "NVIDIA A100-PCIE-40GB"),
        (mock_uuid("n", 1), 40960, None, "NVIDIA T4"),
    ]
    with pytest.raises(ConfigError, match=r"gpus\[0\].memory"):
        gpus_from_document("n", {"gpus": [{"memory": "lots"}]}, source="f")
    with pytest.raises(ConfigError, match="duplicate UUID"):
        gpus_from_document("n", {"gpus": [{"uuid": "GPU-a"}, {"uuid": "GPU-a"}]}, source="f")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_gpu_file("n", bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_gpu_file("n", tmp_path / "missing.yaml")


async def test_mock_injection_respects_policy() -> None:
    gpus = mock_gpus("n", 2)
    backend = MockBackend(gpus, policy=health_policy("48"))
    events = backend.health_events()
    pending = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0)
    assert not backend.inject_xid(gpus[0].uuid, 13)
    assert not backend.inject_xid(gpus[0].uuid, 48)
    assert backend.inject_xid(gpus[1].uuid, 79)
    assert await pending == HealthEvent(uuid=gpus[1].uuid, healthy=False, reason="XID 79", xid=79)
    backend.recover(gpus[1].uuid)
    assert (await anext(events)).healthy
    with pytest.raises(ValueError, match="unknown mock GPU"):
        backend.inject(HealthEvent(uuid="GPU-nope", healthy=False, reason="x"))
    await events.aclose()


async def test_mock_health_file_drives_events(tmp_path: Path) -> None:
    gpus = mock_gpus("n", 2)
    path = tmp_path / "health.json"
    backend = MockBackend(gpus, health_file=path, health_poll_s=0.01)
    events = backend.health_events()
    pending = asyncio.ensure_future(asyncio.wait_for(anext(events), 5))
    await asyncio.sleep(0.05)
    path.write_text(json.dumps({"unhealthy": {gpus[0].uuid: "XID 79", "GPU-unknown": "ignored"}}))
    assert await pending == HealthEvent(uuid=gpus[0].uuid, healthy=False, reason="XID 79")
    path.write_text("not json")  # unreadable: ignored, state kept
    await asyncio.sleep(0.05)
    path.write_text(json.dumps({"unhealthy": {}}))
    assert (await asyncio.wait_for(anext(events), 5)).healthy
    await events.aclose()
