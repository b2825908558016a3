from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hami.monitor.region import (
    FILE_SIZE,
    MAGIC,
    OFF_PROC_NUM,
    OFF_PROCS,
    SLOT_OFF_SEQLOCK,
    SLOT_SIZE,
    STRUCT_SIZE,
    V0_FILE_SIZE,
    RegionError,
    RegionFile,
    RegionNotReady,
    SharedRegion,
    parse_region,
    read_region_file,
)

FIXTURE_NAMES = (
    "vgpu_b_1_hold",
    "vgpu_b_2_after_nvml_container",
    "vgpu_b_3_after_exit",
    "vgpu_c_1_hold",
    "vgpu_c_2_after_exit",
    "vgpu_d_after_exit",
)


def test_every_fixture_is_listed(h100_fixtures: Path) -> None:
    on_disk = sorted(p.stem for p in h100_fixtures.glob("vgpu_*.cache"))
    assert on_disk == sorted(FIXTURE_NAMES)
    for name in FIXTURE_NAMES:
        assert (h100_fixtures / f"{name}.decoded.json").is_file()


def _sem_matches(sem: object, expected: dict[str, object]) -> None:
    assert sem is not None
    assert sem.value == expected["value"]  # type: ignore[attr-defined]
    assert sem.nwaiters == expected["nwaiters"]  # type: ignore[attr-defined]
    assert sem.private == expected["private"]  # type: ignore[attr-defined]
    assert sem.raw.hex() == expected["raw_hex"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_field_by_field(h100_fixtures: Path, name: str) -> None:
    path = h100_fixtures / f"{name}.cache"
    expected = json.loads((h100_fixtures / f"{name}.decoded.json").read_text())
    region = read_region_file(path)

    assert region.source == str(path)
    assert region.file_size == expected["file_size"] == FILE_SIZE
    assert region.initialized_flag == expected["initialized_flag"] == MAGIC
    assert region.major_version == expected["major_version"]
    assert region.minor_version == expected["minor_version"]
    assert region.version == (1, 2)
    for field in (
        "sm_init_flag",
        "owner_pid",
        "device_num",
        "proc_num",
        "utilization_switch",
        "recent_kernel",
        "priority",
        "last_kernel_time",
    ):
        assert getattr(region, field) == expected[field], field
    assert list(region.uuids) == expected["uuids"]
    assert list(region.limit) == expected["limit"]
    assert list(region.sm_limit) == expected["sm_limit"]
    _sem_matches(region.sem, expected["sem"])
    _sem_matches(region.sem_postinit, expected["sem_postinit"])

    assert len(region.procs) == len(expected["procs"]) == expected["proc_num"]
    for slot, exp in zip(region.procs, expected["procs"], strict=True):
        assert slot.index == exp["index"]
        assert OFF_PROCS + SLOT_SIZE * slot.index == exp["offset"]
        assert slot.pid == exp["pid"]
        assert slot.hostpid == exp["hostpid"]
        assert slot.status == exp["status"]
        assert slot.seqlock == exp["seqlock"]
        assert slot.consistent
        assert slot.exited == (exp["pid"] == 0)
        n = expected["device_num"]
        for d in range(n):
            mem = slot.used[d]
            assert {
                "context_size": mem.context_size,
                "module_size": mem.module_size,
                "data_size": mem.data_size,
                "offset": mem.offset,
                "total": mem.total,
            } == exp["used"][d]
            assert slot.monitorused[d] == exp["monitorused"][d]
            util = slot.device_util[d]
            assert {"dec_util": util.dec_util, "enc_util": util.enc_util, "sm_util": util.sm_util} == exp[
                "device_util"
            ][d]
        beyond = any(m.total or m.context_size or m.data_size for m in slot.used[n:])
        assert beyond == exp["used_nonzero_beyond_device_num"]

    raw = path.read_bytes()
    assert raw[STRUCT_SIZE:].hex() == expected["trailing_bytes_hex"]
    # Slots past proc_num are blank in every capture, as the decoded files record.
    assert expected["nonblank_slots_beyond_proc_num"] == []
    first_unused = OFF_PROCS + SLOT_SIZE * region.proc_num
    assert raw[first_unused:OFF_PROC_NUM].count(0) == OFF_PROC_NUM - first_unused


def test_fixture_facts(h100_fixtures: Path) -> None:
    # The limit is bytes in the region (the env said 2g / 4096m / 1024m).
    b1 = read_region_file(h100_fixtures / "vgpu_b_1_hold.cache")
    assert b1.limit[0] == 2 * 2**30 and b1.sm_limit[0] == 30
    assert b1.memory_used(0).total == 1885339648
    # proc_num counts slots, not live processes: one exited NVML-only process still holds slot 1.
    b2 = read_region_file(h100_fixtures / "vgpu_b_2_after_nvml_container.cache")
    assert b2.proc_num == 2 and len(b2.live_procs) == 1
    # Exited slots keep counters (d) but count as exited.
    d = read_region_file(h100_fixtures / "vgpu_d_after_exit.cache")
    assert d.procs[0].pid == 0 and d.procs[0].used[0].total == 543162368
    assert d.memory_used(0).total == 0
    # Two racing processes overshoot the 4 GiB limit (4.26 GiB).
    c1 = read_region_file(h100_fixtures / "vgpu_c_1_hold.cache")
    used = c1.memory_used(0)
    assert c1.limit[0] == 4 * 2**30
    assert used.total == 4575985664 > c1.limit[0]
    assert used.context_size == 2 * 543162368 and used.data_size == 3489660928
    assert c1.sm_util(0) == 3
    assert c1.valid_device_uuids() == ("GPU-c7a18d9c-18fd-13e6-447c-983f490b6495",)


def _fixture_bytes(h100_fixtures: Path, name: str = "vgpu_c_1_hold") -> bytearray:
    return bytearray((h100_fixtures / f"{name}.cache").read_bytes())


def test_version_1_1_has_no_seqlock_nor_postinit_semaphore(h100_fixtures: Path) -> None:
    buf = _fixture_bytes(h100_fixtures)
    struct.pack_into("<I", buf, 8, 1)
    region = parse_region(buf, source="v11.cache")
    assert region.version == (1, 1)
    assert region.sem_postinit is None
    assert all(p.seqlock is None and p.consistent for p in region.procs)
    assert region.memory_used(0).total == 4575985664


@pytest.mark.parametrize(
    ("major", "minor"),
    [(0, 0), (1, 0), (1, 3), (2, 0), (2, 2), (0xFFFFFFFF, 1)],
)
def test_other_versions_refused(h100_fixtures: Path, major: int, minor: int) -> None:
    buf = _fixture_bytes(h100_fixtures)
    struct.pack_into("<II", buf, 4, major, minor)
    with pytest.raises(RegionError) as info:
        parse_region(buf, source="/x/other.cache")
    assert info.value.path == "/x/other.cache"
    assert f"unsupported region version {major}.{minor}" in str(info.value)
    assert "/x/other.cache" in str(info.value)


def test_legacy_v0_refused(h100_fixtures: Path) -> None:
    buf = _fixture_bytes(h100_fixtures)[:V0_FILE_SIZE]
    with pytest.raises(RegionError, match="legacy v0"):
        parse_region(buf, source="v0.cache")


@pytest.mark.parametrize("size", [1, 11, 12, 4096, OFF_PROC_NUM, STRUCT_SIZE - 1])
def test_truncated_refused(h100_fixtures: Path, size: int) -> None:
    buf = _fixture_bytes(h100_fixtures)[:size]
    with pytest.raises(RegionError, match="truncated") as info:
        parse_region(buf, source="/c/short.cache")
    assert "/c/short.cache" in str(info.value)
    assert not isinstance(info.value, RegionNotReady)


def test_struct_size_without_trailing_byte_is_accepted(h100_fixtures: Path) -> None:
    region = parse_region(_fixture_bytes(h100_fixtures)[:STRUCT_SIZE], source="s")
    assert region.file_size == STRUCT_SIZE


def test_not_ready_and_bad_magic(h100_fixtures: Path) -> None:
    with pytest.raises(RegionNotReady, match="empty"):
        parse_region(b"", source="e")
    buf = _fixture_bytes(h100_fixtures)
    struct.pack_into("<i", buf, 0, 0)
    with pytest.raises(RegionNotReady, match="not initialised"):
        parse_region(buf, source="z")
    struct.pack_into("<i", buf, 0, 12345)
    with pytest.raises(RegionError, match="bad initialized_flag 12345"):
        parse_region(buf, source="m")


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "message"),
    [
        (56, "<Q", 17, "device_num 17 exceeds 16"),
        (OFF_PROC_NUM, "<i", -1, "proc_num -1"),
        (OFF_PROC_NUM, "<i", 1025, "proc_num 1025"),
    ],
)
def test_out_of_range_counts_refused(
    h100_fixtures: Path, offset: int, fmt: str, value: int, message: str
) -> None:
    buf = _fixture_bytes(h100_fixtures)
    struct.pack_into(fmt, buf, offset, value)
    with pytest.raises(RegionError, match=message):
        parse_region(buf, source="r")


def test_full_slot_table_parses(h100_fixtures: Path) -> None:
    buf = _fixture_bytes(h100_fixtures)
    struct.pack_into("<i", buf, OFF_PROC_NUM, 1024)
    region = parse_region(buf, source="full")
    assert len(region.procs) == 1024
    assert region.memory_used(0).total == 4575985664  # blank slots have pid 0


def test_seqlock_retries_while_odd(h100_fixtures: Path) -> None:
    buf = _fixture_bytes(h100_fixtures)
    seq_off = OFF_PROCS + SLOT_OFF_SEQLOCK
    struct.pack_into("<Q", buf, seq_off, 31)  # writer in progress on slot 0
    used_off = OFF_PROCS + 8 + 32  # slot 0, device 0, total
    calls: list[int] = []

    def writer_finishes(slot: int) -> None:
        calls.append(slot)
        if len(calls) == 3:
            struct.pack_into("<Q", buf, used_off, 123)
            struct.pack_into("<Q", buf, seq_off, 32)

    region = parse_region(buf, source="s", on_retry=writer_finishes)
    assert calls == [0, 0, 0]
    assert region.procs[0].consistent
    assert region.procs[0].seqlock == 32
    assert region.procs[0].used[0].total == 123


def test_seqlock_bounded_when_writer_died(h100_fixtures: Path) -> None:
    buf = _fixture_bytes(h100_fixtures)
    struct.pack_into("<Q", buf, OFF_PROCS + SLOT_SIZE + SLOT_OFF_SEQLOCK, 5)
    calls: list[int] = []
    region = parse_region(buf, source="s", seqlock_retries=7, on_retry=calls.append)
    assert calls == [1] * 7
    assert region.procs[0].consistent
    stuck = region.procs[1]
    assert not stuck.consistent and stuck.seqlock == 5
    assert stuck.used[0].total == 543162368  # last values are kept


def test_region_file_reads_and_writes_a_copy(h100_fixtures: Path, tmp_path: Path) -> None:
    copy = tmp_path / "x.cache"
    copy.write_bytes((h100_fixtures / "vgpu_b_1_hold.cache").read_bytes())
    with RegionFile.open(copy) as rf:
        assert rf.writable and rf.version == (1, 2)
        assert rf.read_recent_kernel() == 2
        rf.write_recent_kernel(-1)
        rf.write_utilization_switch(0)
        region = rf.read()
        assert region.recent_kernel == -1 and region.utilization_switch == 0
    assert rf.closed
    again = read_region_file(copy)
    assert again.recent_kernel == -1 and again.utilization_switch == 0
    assert again.procs == read_region_file(h100_fixtures / "vgpu_b_1_hold.cache").procs


def test_region_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.cache"
    with pytest.raises(RegionError, match="cannot open") as info:
        RegionFile.open(missing)
    assert str(missing) in str(info.value)
    empty = tmp_path / "empty.cache"
    empty.write_bytes(b"")
    with pytest.raises(RegionNotReady):
        read_region_file(empty)
    junk = tmp_path / "junk.cache"
    junk.write_bytes(b"\x01" * 100)
    with pytest.raises(RegionError, match="bad initialized_flag"):
        read_region_file(junk)


def test_read_only_mapping_refuses_writes(h100_fixtures: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ro.cache"
    copy.write_bytes((h100_fixtures / "vgpu_b_1_hold.cache").read_bytes())
    with RegionFile.open(copy, writable=False) as rf, pytest.raises(RegionError, match="read-only"):
        rf.write_recent_kernel(0)


# --- fuzzing: random, truncated and corrupted inputs never crash the reader -----------------


def _parse_or_region_error(data: bytes | bytearray) -> SharedRegion | None:
    try:
        return parse_region(data, source="fuzz", seqlock_retries=2)
    except RegionError:
        return None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes(data: bytes) -> None:
    assert _parse_or_region_error(data) is None  # nothing this short is a valid region


FIXTURE_BLOB: dict[str, bytes] = {}


def _blob(h100_fixtures: Path) -> bytes:
    if "c1" not in FIXTURE_BLOB:
        FIXTURE_BLOB["c1"] = (h100_fixtures / "vgpu_c_1_hold.cache").read_bytes()
    return FIXTURE_BLOB["c1"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=FILE_SIZE))
def test_fuzz_truncation(h100_fixtures: Path, cut: int) -> None:
    result = _parse_or_region_error(_blob(h100_fixtures)[:cut])
    assert (result is not None) == (cut >= STRUCT_SIZE)


_HOT_OFFSETS = st.one_of(
    st.integers(min_value=0, max_value=OFF_PROCS + 2 * SLOT_SIZE),
    st.integers(min_value=OFF_PROC_NUM, max_value=FILE_SIZE - 1),
    st.integers(min_value=0, max_value=FILE_SIZE - 1),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(_HOT_OFFSETS, st.binary(min_size=1, max_size=8)), min_size=1, max_size=6))
def test_fuzz_corruption(h100_fixtures: Path, edits: list[tuple[int, bytes]]) -> None:
    buf = bytearray(_blob(h100_fixtures))
    for offset, chunk in edits:
        buf[offset : offset + len(chunk)] = chunk[: FILE_SIZE - offset]
    region = _parse_or_region_error(buf)
    if region is not None:
        assert 0 <= region.device_num <= 16
        assert len(region.procs) == region.proc_num <= 1024
        for d in range(16):
            assert region.memory_used(d).total >= 0
