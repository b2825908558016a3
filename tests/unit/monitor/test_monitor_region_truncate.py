"""Issue 7 regression: a region file truncated in place is that file's error, never a SIGBUS.

The reliability test ``test_region_truncated_under_a_running_monitor_process`` shows it on a real
``hami monitor`` process; these run in-process, so a reader that still mapped the file would kill
pytest itself with SIGBUS here.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from hami.monitor.region import (
    OFF_PROCS,
    OFF_RECENT_KERNEL,
    SLOT_OFF_SEQLOCK,
    SLOT_SIZE,
    RegionError,
    RegionFile,
)

FIXTURE = "vgpu_c_1_hold"


def region_copy(h100_fixtures: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "region.cache"
    copy.write_bytes((h100_fixtures / f"{FIXTURE}.cache").read_bytes())
    return copy


@pytest.mark.parametrize("size", [0, 512, OFF_PROCS + SLOT_SIZE // 2, OFF_RECENT_KERNEL + 2])
def test_truncated_while_open_is_a_region_error(h100_fixtures: Path, tmp_path: Path, size: int) -> None:
    path = region_copy(h100_fixtures, tmp_path)
    with RegionFile.open(path) as region:
        before = region.read()
        assert before.procs and before.live_procs
        os.truncate(path, size)  # same inode, still open: exactly what a mapping could not survive
        # (reasons, not messages, are matched: pytest's tmp_path contains the test's name)
        with pytest.raises(RegionError) as info:
            region.read()
        assert info.value.path == str(path)
        assert ("empty" if size == 0 else "truncated") in info.value.reason
        with pytest.raises(RegionError) as info:
            region.read_recent_kernel()
        assert info.value.reason.startswith("truncated while being read")
        # The monitor's feedback writes must not grow the owner's file back behind its back.
        with pytest.raises(RegionError) as info:
            region.write_recent_kernel(1)
        assert info.value.reason.startswith(f"truncated to {size} bytes")
        assert path.stat().st_size == size


def test_restored_after_truncation_reads_again(h100_fixtures: Path, tmp_path: Path) -> None:
    path = region_copy(h100_fixtures, tmp_path)
    original = path.read_bytes()
    with RegionFile.open(path) as region:
        expected = region.read()
        os.truncate(path, 512)
        with pytest.raises(RegionError):
            region.read()
        path.write_bytes(original)  # same inode rewritten: the open file sees it, no reopen needed
        assert region.read() == expected


def test_live_file_keeps_the_seqlock_discipline(h100_fixtures: Path, tmp_path: Path) -> None:
    path = region_copy(h100_fixtures, tmp_path)
    seqlock_at = OFF_PROCS + SLOT_OFF_SEQLOCK
    with RegionFile.open(path) as region:
        assert region.version == (1, 2)
        with path.open("r+b") as writer:
            writer.seek(seqlock_at)
            writer.write(struct.pack("<Q", 41))  # a writer died mid-update of slot 0
            writer.flush()
            stuck = region.read(seqlock_retries=3).procs[0]
            assert not stuck.consistent and stuck.seqlock == 41
            writer.seek(seqlock_at)
            writer.write(struct.pack("<Q", 42))
            writer.flush()
            settled = region.read(seqlock_retries=3).procs[0]
            assert settled.consistent and settled.seqlock == 42


def test_closed_region_file_says_so(h100_fixtures: Path, tmp_path: Path) -> None:
    region = RegionFile.open(region_copy(h100_fixtures, tmp_path))
    region.close()
    assert region.closed
    region.close()  # idempotent
    with pytest.raises(RegionError) as info:
        region.read()
    assert info.value.reason == "region file is closed"
