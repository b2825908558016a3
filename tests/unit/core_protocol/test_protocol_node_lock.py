from __future__ import annotations

import uuid as uuidlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hami.core import keys
from hami.core.annotations import NodeLock, decode_node_lock, encode_node_lock, format_rfc3339
from hami.core.errors import DecodeError

T = datetime(2026, 1, 20, 7, 12, 17, tzinfo=UTC)


def test_golden_three_part_value():
    lock = decode_node_lock("2026-01-20T07:12:17Z,hami-ns,hami")
    assert lock == NodeLock(time=T, namespace="hami-ns", name="hami")
    assert lock.owner == "hami-ns/hami"
    assert encode_node_lock(lock) == "2026-01-20T07:12:17Z,hami-ns,hami"


def test_legacy_time_only_value_has_no_owner():
    lock = decode_node_lock("2026-01-20T07:12:17Z")
    assert lock.owner is None and lock.time == T
    assert encode_node_lock(lock) == "2026-01-20T07:12:17Z"


def test_golden_lock_value_lock_fails():
    with pytest.raises(DecodeError) as info:
        decode_node_lock("lock")
    assert info.value.key == keys.NODE_LOCK
    assert info.value.reason.startswith('parsing time "lock" as "2006-01-02T15:04:05Z07:00"')


@pytest.mark.parametrize(("value", "n"), [("a,b", 2), ("2026-01-20T07:12:17Z,a,b,c", 4), (",", 2)])
def test_exact_part_count_error_text(value, n):
    with pytest.raises(DecodeError) as info:
        decode_node_lock(value)
    assert info.value.reason == f"malformed lock annotation: expected 3 parts, got {n} from {value}"


def test_bad_time_in_three_parts():
    with pytest.raises(DecodeError, match="parsing time"):
        decode_node_lock("2026-13-20T07:12:17Z,ns,name")
    with pytest.raises(DecodeError, match="parsing time"):
        decode_node_lock("2026-01-20 07:12:17Z,ns,name")


def test_rfc3339_formatting_like_go():
    assert format_rfc3339(T) == "2026-01-20T07:12:17Z"
    cst = timezone(timedelta(hours=8))
    assert format_rfc3339(T.astimezone(cst)) == "2026-01-20T15:12:17+08:00"
    assert format_rfc3339(datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=-3, minutes=-30)))) == (
        "2026-01-01T00:00:00-03:30"
    )
    assert decode_node_lock("2026-01-20T15:12:17+08:00").time == T
    with pytest.raises(ValueError):
        format_rfc3339(datetime(2026, 1, 1))


def test_uid_rides_in_the_fraction_and_hami_reads_the_same_second():
    uid = "5f0c1d4e-9a7b-4c1d-8e2f-0123456789ab"
    value = encode_node_lock(NodeLock(time=T, namespace="ns", name="pod", uid=uid))
    stamp, ns, name = value.split(",")
    assert (ns, name) == ("ns", "pod")  # still HAMi's 3 parts, owner-check suffix unchanged
    assert value.endswith(",ns,pod")
    assert stamp.startswith("2026-01-20T07:12:17.000000000") and stamp.endswith("Z")
    # HAMi keeps the first 9 fraction digits as nanoseconds: 0, i.e. the same lock time
    assert len(stamp.split(".")[1].rstrip("Z")) == 48
    lock = decode_node_lock(value)
    assert lock == NodeLock(time=T, namespace="ns", name="pod", uid=uid)
    assert lock.held_by("ns", "pod", uid) and not lock.held_by("ns", "pod", str(uuidlib.uuid4()))
    assert lock.held_by("ns", "pod") and not lock.held_by("ns", "other")


def test_uid_requires_canonical_uuid_and_owner():
    with pytest.raises(ValueError, match="canonical"):
        encode_node_lock(NodeLock(time=T, namespace="a", name="b", uid="not-a-uuid"))
    with pytest.raises(ValueError, match="namespace and name"):
        encode_node_lock(NodeLock(time=T, uid=str(uuidlib.uuid4())))
    with pytest.raises(ValueError, match="','"):
        encode_node_lock(NodeLock(time=T, namespace="a,b", name="c"))


def test_expiry_is_strictly_greater():
    lock = NodeLock(time=T, namespace="a", name="b")
    assert not lock.expired(T + timedelta(minutes=5), timedelta(minutes=5))
    assert lock.expired(T + timedelta(minutes=5, seconds=1), timedelta(minutes=5))


def test_fraction_of_other_length_is_plain_nanoseconds():
    lock = decode_node_lock("2026-01-20T07:12:17.123456789123Z,a,b")
    assert lock.uid is None and lock.time == T.replace(microsecond=123456)


names = st.text(alphabet=st.characters(exclude_characters=",", exclude_categories=("Cs",)), max_size=20)
times = st.datetimes(
    min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
).map(lambda t: t.replace(microsecond=0))
locks = st.one_of(
    st.builds(NodeLock, time=times),
    st.builds(NodeLock, time=times, namespace=names, name=names),
    st.builds(NodeLock, time=times, namespace=names, name=names, uid=st.uuids().map(str)),
)


@given(locks)
def test_roundtrip(lock):
    assert decode_node_lock(encode_node_lock(lock)) == lock


near_valid = st.builds(
    lambda t, tail: format_rfc3339(t)[: len(format_rfc3339(t)) - 1] + tail,
    times,
    st.text(alphabet="0123456789.Z+-:,abc", max_size=60),
)


@given(st.one_of(st.text(max_size=70), near_valid))
def test_decoder_only_raises_decode_error(value):
    try:
        decode_node_lock(value)
    except DecodeError:
        pass
