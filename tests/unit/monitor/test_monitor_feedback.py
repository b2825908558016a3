from __future__ import annotations

import struct
from pathlib import Path

import pytest

from hami.monitor.feedback import run_feedback
from hami.monitor.region import (
    OFF_PRIORITY,
    OFF_RECENT_KERNEL,
    OFF_UTILIZATION_SWITCH,
    RegionFile,
    read_region_file,
)

GPU0 = "GPU-c7a18d9c-18fd-13e6-447c-983f490b6495"  # what every capture holds


def region_copy(
    tmp_path: Path,
    h100: Path,
    name: str,
    *,
    priority: int,
    recent_kernel: int,
    switch: int = 1,
    uuid: str | None = None,
) -> Path:
    data = bytearray((h100 / "vgpu_c_1_hold.cache").read_bytes())
    struct.pack_into("<i", data, OFF_PRIORITY, priority)
    struct.pack_into("<i", data, OFF_RECENT_KERNEL, recent_kernel)
    struct.pack_into("<i", data, OFF_UTILIZATION_SWITCH, switch)
    if uuid is not None:
        data[64 : 64 + 96] = uuid.encode().ljust(96, b"\0")
    path = tmp_path / f"{name}.cache"
    path.write_bytes(data)
    return path


def state(path: Path) -> tuple[int, int]:
    region = read_region_file(path)
    return region.recent_kernel, region.utilization_switch


@pytest.fixture
def opened() -> list[RegionFile]:
    handles: list[RegionFile] = []
    yield handles
    for h in handles:
        h.close()


def open_all(paths: dict[str, Path], opened: list[RegionFile]) -> dict[str, RegionFile]:
    out = {name: RegionFile.open(path) for name, path in paths.items()}
    opened.extend(out.values())
    return out


def test_lone_low_priority_task_runs_unthrottled(
    tmp_path: Path, h100_fixtures: Path, opened: list[RegionFile]
) -> None:
    paths = {"low": region_copy(tmp_path, h100_fixtures, "low", priority=1, recent_kernel=2)}
    report = run_feedback(open_all(paths, opened))
    assert report.active == ("low",)
    assert report.switched_off == ("low",) and report.blocked == ()
    assert state(paths["low"]) == (1, 0)


def test_high_priority_pauses_low_priority_on_same_gpu(
    tmp_path: Path, h100_fixtures: Path, opened: list[RegionFile]
) -> None:
    paths = {
        "high": region_copy(tmp_path, h100_fixtures, "high", priority=0, recent_kernel=2),
        "low": region_copy(tmp_path, h100_fixtures, "low", priority=1, recent_kernel=2),
    }
    regions = open_all(paths, opened)
    report = run_feedback(regions)
    assert set(report.active) == {"high", "low"}
    assert report.blocked == ("low",)
    assert state(paths["low"]) == (-1, 1)  # paused, and throttled when it runs again
    assert state(paths["high"]) == (1, 0)  # alone among high-priority tasks: unthrottled
    assert report.switched_off == ("high",)

    # Next round: the high-priority task launched nothing since (recent_kernel 1 → 0, inactive).
    report = run_feedback(regions)
    assert report.active == ()
    assert report.released == ("low",)
    assert state(paths["low"]) == (0, 0)
    assert state(paths["high"]) == (0, 0)


def test_two_high_priority_tasks_are_both_core_limited(
    tmp_path: Path, h100_fixtures: Path, opened: list[RegionFile]
) -> None:
    paths = {
        "a": region_copy(tmp_path, h100_fixtures, "a", priority=0, recent_kernel=2, switch=0),
        "b": region_copy(tmp_path, h100_fixtures, "b", priority=0, recent_kernel=2, switch=0),
    }
    report = run_feedback(open_all(paths, opened))
    assert report.switched_on == ("a", "b") and report.blocked == ()
    assert state(paths["a"]) == (1, 1) and state(paths["b"]) == (1, 1)


def test_tasks_on_different_gpus_do_not_interact(
    tmp_path: Path, h100_fixtures: Path, opened: list[RegionFile]
) -> None:
    paths = {
        "high": region_copy(tmp_path, h100_fixtures, "high", priority=0, recent_kernel=2),
        "low": region_copy(tmp_path, h100_fixtures, "low", priority=1, recent_kernel=2, uuid="GPU-other"),
    }
    report = run_feedback(open_all(paths, opened))
    assert report.blocked == ()
    assert state(paths["low"]) == (1, 0) and state(paths["high"]) == (1, 0)


def test_inactive_low_priority_is_blocked_while_high_runs(
    tmp_path: Path, h100_fixtures: Path, opened: list[RegionFile]
) -> None:
    # recent_kernel 1 decrements to 0: the low task is not active, but the high one is.
    paths = {
        "high": region_copy(tmp_path, h100_fixtures, "high", priority=0, recent_kernel=3),
        "low": region_copy(tmp_path, h100_fixtures, "low", priority=1, recent_kernel=1),
    }
    report = run_feedback(open_all(paths, opened))
    assert report.active == ("high",)
    assert report.blocked == ("low",)
    assert state(paths["low"]) == (-1, 1)
    assert state(paths["high"]) == (2, 0)


def test_unwritten_fields_stay_untouched(
    tmp_path: Path, h100_fixtures: Path, opened: list[RegionFile]
) -> None:
    path = region_copy(tmp_path, h100_fixtures, "idle", priority=1, recent_kernel=0, switch=0)
    before = path.read_bytes()
    report = run_feedback(open_all({"idle": path}, opened))
    assert report == type(report)()
    assert path.read_bytes() == before  # nothing changed, nothing written


def test_priorities_outside_hami_range_do_not_crash(
    tmp_path: Path, h100_fixtures: Path, opened: list[RegionFile]
) -> None:
    paths = {
        "p0": region_copy(tmp_path, h100_fixtures, "p0", priority=0, recent_kernel=2),
        "p7": region_copy(tmp_path, h100_fixtures, "p7", priority=7, recent_kernel=2),
        "neg": region_copy(tmp_path, h100_fixtures, "neg", priority=-3, recent_kernel=2),
    }
    report = run_feedback(open_all(paths, opened))
    # Lower number = higher priority: -3 pauses both others.
    assert set(report.blocked) == {"p0", "p7"}


def test_read_only_regions_are_skipped(tmp_path: Path, h100_fixtures: Path, opened: list[RegionFile]) -> None:
    path = region_copy(tmp_path, h100_fixtures, "ro", priority=1, recent_kernel=2)
    handle = RegionFile.open(path, writable=False)
    opened.append(handle)
    assert run_feedback({"ro": handle}).active == ()
    assert state(path) == (2, 1)


def test_fixture_files_are_never_written(h100_fixtures: Path) -> None:
    # The shared fixtures are read-only inputs: tests only ever map copies for writing.
    for cache in h100_fixtures.glob("vgpu_*.cache"):
        region = read_region_file(cache)
        assert (region.recent_kernel, region.utilization_switch, region.priority) == (2, 1, 1)
    assert GPU0 in read_region_file(h100_fixtures / "vgpu_c_1_hold.cache").uuids
