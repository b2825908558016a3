from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest

from hami.monitor.containers import ContainerScanner, split_directory_name

UID_A = "0b5e6a5c-1111-4c3e-9f00-00000000000a"
UID_B = "0b5e6a5c-2222-4c3e-9f00-00000000000b"


def make_container(
    root: Path, h100: Path, name: str, fixture: str | None = "vgpu_c_1_hold", *, mount: bool = True
) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    if mount:
        (directory / "libvgpu.so").touch()  # the runtime's bind-mount point
    if fixture is not None:
        (directory / "3f9e0c1a-aaaa-bbbb-cccc-0123456789ab.cache").write_bytes(
            (h100 / f"{fixture}.cache").read_bytes()
        )
    return directory


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_split_directory_name() -> None:
    assert split_directory_name(f"{UID_A}_main") == (UID_A, "main")
    assert split_directory_name("no-underscore") is None
    assert split_directory_name("_x") is None
    assert split_directory_name("uid_") is None


def test_scan_reads_regions_and_reports_states(tmp_path: Path, h100_fixtures: Path) -> None:
    make_container(tmp_path, h100_fixtures, f"{UID_A}_main")
    make_container(tmp_path, h100_fixtures, f"{UID_A}_waiting", fixture=None)  # no cuInit yet
    make_container(tmp_path, h100_fixtures, f"{UID_A}_empty", fixture=None, mount=False)
    crowded = make_container(tmp_path, h100_fixtures, f"{UID_A}_crowded")
    (crowded / "extra.cache").write_bytes(b"")
    junk = make_container(tmp_path, h100_fixtures, f"{UID_A}_junk", fixture=None)
    (junk / "x.cache").write_bytes(b"\x07" * 64)
    (tmp_path / "not-a-container").mkdir()
    (tmp_path / f"{UID_A}_file").write_text("not a directory")
    os.symlink(tmp_path / f"{UID_A}_main", tmp_path / f"{UID_A}_link")

    scanner = ContainerScanner(tmp_path, grace_seconds=60)
    result = scanner.scan({UID_A: {}}, time.time())
    assert [r.directory for r in result.readings] == [f"{UID_A}_main"]
    reading = result.readings[0]
    assert reading.pod_uid == UID_A and reading.container == "main"
    assert reading.region.memory_used(0).total == 4575985664
    assert sorted(result.waiting) == [f"{UID_A}_empty", f"{UID_A}_waiting"]
    assert set(result.unreadable) == {f"{UID_A}_crowded", f"{UID_A}_junk"}
    assert "cache num not matched" in result.unreadable[f"{UID_A}_crowded"]
    assert "bad initialized_flag" in result.unreadable[f"{UID_A}_junk"]
    assert set(scanner.loaded) == {f"{UID_A}_main"}
    scanner.close()
    assert scanner.loaded == {}


def test_stale_directory_removed_only_after_grace_and_sync(tmp_path: Path, h100_fixtures: Path) -> None:
    live = make_container(tmp_path, h100_fixtures, f"{UID_A}_main")
    gone = make_container(tmp_path, h100_fixtures, f"{UID_B}_main")
    age(gone, 120)
    age(live, 120)
    scanner = ContainerScanner(tmp_path, grace_seconds=60)

    # Unsynced pod source: nothing is deleted, everything is read.
    result = scanner.scan(None, time.time())
    assert result.removed == () and gone.exists()
    assert {r.directory for r in result.readings} == {f"{UID_A}_main", f"{UID_B}_main"}

    # Synced, pod B gone, but the directory is young: kept (informer may lag the device plugin).
    age(gone, 10)
    result = scanner.scan({UID_A: {}}, time.time())
    assert result.removed == () and gone.exists()
    assert [r.directory for r in result.readings] == [f"{UID_A}_main"]

    # Past the grace period: removed, its mapping closed; the live pod's directory stays.
    age(gone, 120)
    result = scanner.scan({UID_A: {}}, time.time())
    assert result.removed == (f"{UID_B}_main",)
    assert not gone.exists() and live.exists()
    assert set(scanner.loaded) == {f"{UID_A}_main"}
    scanner.close()


def test_live_pod_directory_never_removed_even_when_old(tmp_path: Path, h100_fixtures: Path) -> None:
    live = make_container(tmp_path, h100_fixtures, f"{UID_A}_main")
    age(live, 10**6)
    scanner = ContainerScanner(tmp_path, grace_seconds=0)
    for _ in range(3):
        assert scanner.scan({UID_A: {}}, time.time()).removed == ()
    assert live.exists()
    scanner.close()


def test_symlinked_stale_entry_is_not_followed(tmp_path: Path, h100_fixtures: Path) -> None:
    outside = tmp_path / "outside"
    keep = make_container(outside, h100_fixtures, "precious")
    root = tmp_path / "containers"
    root.mkdir()
    os.symlink(keep, root / f"{UID_B}_main")
    scanner = ContainerScanner(root, grace_seconds=0)
    result = scanner.scan({}, time.time() + 10)
    assert result.removed == ()
    assert (keep / "libvgpu.so").exists()


def test_replaced_cache_file_is_reloaded(tmp_path: Path, h100_fixtures: Path) -> None:
    directory = make_container(tmp_path, h100_fixtures, f"{UID_A}_main", fixture="vgpu_b_1_hold")
    scanner = ContainerScanner(tmp_path, grace_seconds=60)
    first = scanner.scan({UID_A: {}}, time.time()).readings[0].region
    assert first.limit[0] == 2 * 2**30
    # Container restart: the device plugin recreates the directory, HAMi-core a new cache file.
    for entry in directory.iterdir():
        entry.unlink()
    (directory / "libvgpu.so").touch()
    (directory / "new.cache").write_bytes((h100_fixtures / "vgpu_c_1_hold.cache").read_bytes())
    second = scanner.scan({UID_A: {}}, time.time()).readings[0].region
    assert second.limit[0] == 4 * 2**30
    assert second.source.endswith("new.cache")
    scanner.close()


def test_live_mapping_sees_writers(tmp_path: Path, h100_fixtures: Path) -> None:
    directory = make_container(tmp_path, h100_fixtures, f"{UID_A}_main", fixture="vgpu_b_1_hold")
    scanner = ContainerScanner(tmp_path, grace_seconds=60)
    assert scanner.scan({UID_A: {}}, time.time()).readings[0].region.procs[0].pid == 555
    cache = next(directory.glob("*.cache"))
    with cache.open("r+b") as f:  # the process exits: pid 0
        f.seek(1856)
        f.write(struct.pack("<i", 0))
    region = scanner.scan({UID_A: {}}, time.time()).readings[0].region
    assert region.procs[0].exited and region.memory_used(0).total == 0
    scanner.close()


def test_missing_root_is_empty(tmp_path: Path) -> None:
    scanner = ContainerScanner(tmp_path / "absent", grace_seconds=1)
    assert scanner.scan({}, time.time()).readings == ()


@pytest.mark.parametrize("grace", [0.0, 30.0])
def test_vanished_directory_is_forgotten(tmp_path: Path, h100_fixtures: Path, grace: float) -> None:
    directory = make_container(tmp_path, h100_fixtures, f"{UID_A}_main")
    scanner = ContainerScanner(tmp_path, grace_seconds=grace)
    scanner.scan({UID_A: {}}, time.time())
    loaded = scanner.loaded[f"{UID_A}_main"]
    for entry in directory.iterdir():
        entry.unlink()
    directory.rmdir()
    scanner.scan({UID_A: {}}, time.time())
    assert scanner.loaded == {} and loaded.closed
