"""The node lock value ``hami.io/mutex.lock`` (spec hami-scheduler-spec.md §6.2, node spec §4.2).

HAMi 2.8 writes ``<RFC3339 time>,<namespace>,<pod name>``; older writers wrote the time alone.
Readers: the scheduler (expiry, owner check) and the device plugin, which looks the pod up by the
namespace and name and releases the lock only if the value ends with ``,<namespace>,<name>``.

Carrying the owner's UID. Our scheduler keys reservations by pod UID, and a pod deleted and
re-created under the same name must not inherit its predecessor's lock. Any extra comma part would
make HAMi's device plugin fail Allocate (``expected 3 parts``), so the UID rides inside the time:
Go's RFC3339 parser accepts a fractional second of any length after the seconds even though the
layout has none, and keeps only the first nine digits as nanoseconds. We therefore write

    2026-01-20T07:12:17.000000000<39-digit decimal of the 128-bit UID>Z,<namespace>,<name>

which HAMi reads as 07:12:17 exactly (same expiry, same owner), and which :func:`decode_node_lock`
reads back with its UID. Only canonical UUIDs (what the API server assigns) can be carried; a lock
without a UID is written in HAMi's own shape. Whether the scheduler uses this is its decision.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Final

from hami.core import keys
from hami.core.errors import DecodeError

RFC3339_LAYOUT: Final = "2006-01-02T15:04:05Z07:00"
_UID_DIGITS: Final = 39  # len(str(2**128 - 1))
_RFC3339_RE: Final = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})T"
    r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
    r"(?:\.(?P<fraction>[0-9]+))?"
    r"(?:(?P<utc>Z)|(?P<sign>[+-])(?P<off_h>[0-9]{2}):(?P<off_m>[0-9]{2}))"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeLock:
    """A decoded lock: when it was taken and, unless it is a legacy time-only value, by which pod."""

    time: datetime  # timezone-aware
    namespace: str | None = None
    name: str | None = None
    uid: str | None = None

    @property
    def owner(self) -> str | None:
        """``namespace/name`` of the holder, None for a legacy lock."""
        if self.namespace is None or self.name is None:
            return None
        return f"{self.namespace}/{self.name}"

    def held_by(self, namespace: str, name: str, uid: str | None = None) -> bool:
        """HAMi's release test (value ends with ``,<ns>,<name>``), narrowed by UID when both sides know it."""
        if self.namespace != namespace or self.name != name:
            return False
        return uid is None or self.uid is None or self.uid == uid

    def expired(self, now: datetime, timeout: timedelta) -> bool:
        """HAMi: ``now - lockTime > timeout`` (strictly greater)."""
        return now - self.time > timeout


def format_rfc3339(when: datetime) -> str:
    """Go ``time.Format(time.RFC3339)``: seconds precision, ``Z`` for a zero offset, else ``±hh:mm``."""
    if when.tzinfo is None:
        raise ValueError("a timezone-aware datetime is required")
    offset = when.utcoffset() or timedelta(0)
    base = when.strftime("%Y-%m-%dT%H:%M:%S")
    if offset == timedelta(0):
        return base + "Z"
    total = int(offset.total_seconds()) // 60
    sign = "+" if total >= 0 else "-"
    hours, minutes = divmod(abs(total), 60)
    return f"{base}{sign}{hours:02d}:{minutes:02d}"


def _canonical_uid(uid: str) -> uuidlib.UUID:
    try:
        parsed = uuidlib.UUID(uid)
    except ValueError:
        raise ValueError(f"pod UID {uid!r} is not a canonical UUID and cannot be carried in a lock") from None
    if str(parsed) != uid.lower() or len(uid) != 36:
        raise ValueError(f"pod UID {uid!r} is not a canonical UUID and cannot be carried in a lock")
    return parsed


def encode_node_lock(lock: NodeLock) -> str:
    """The annotation value for ``lock`` (module docstring for the UID form)."""
    stamp = format_rfc3339(lock.time)
    if lock.uid is not None:
        digits = "0" * 9 + str(_canonical_uid(lock.uid).int).rjust(_UID_DIGITS, "0")
        stamp = f"{stamp[:19]}.{digits}{stamp[19:]}"
    if lock.namespace is None and lock.name is None:
        if lock.uid is not None:
            raise ValueError("a lock carrying a UID needs its namespace and name")
        return stamp
    if lock.namespace is None or lock.name is None:
        raise ValueError("a lock owner needs both namespace and name")
    for part in (lock.namespace, lock.name):
        if "," in part:
            raise ValueError(f"lock owner part {part!r} contains ','")
    return f"{stamp},{lock.namespace},{lock.name}"


def _parse_time(key: str, value: str, text: str) -> tuple[datetime, str | None]:
    match = _RFC3339_RE.fullmatch(text)
    failure = f'parsing time "{text}" as "{RFC3339_LAYOUT}": cannot parse as RFC3339'
    if match is None:
        raise DecodeError(key, value, failure)
    try:
        tz = UTC
        if match["sign"] is not None:
            off_h, off_m = int(match["off_h"]), int(match["off_m"])
            if off_h > 23 or off_m > 59:
                raise ValueError("time zone offset out of range")
            delta = timedelta(hours=off_h, minutes=off_m)
            tz = timezone(delta if match["sign"] == "+" else -delta)
        fraction = match["fraction"] or ""
        nanos = int(fraction[:9].ljust(9, "0")) if fraction else 0
        parsed = datetime(
            int(match["year"]),
            int(match["month"]),
            int(match["day"]),
            int(match["hour"]),
            int(match["minute"]),
            int(match["second"]),
            nanos // 1000,
            tzinfo=tz,
        )
    except ValueError as e:
        raise DecodeError(key, value, f"{failure}: {e}") from None
    uid: str | None = None
    if len(fraction) == 9 + _UID_DIGITS:
        number = int(fraction[9:])
        if number < 2**128:
            uid = str(uuidlib.UUID(int=number))
    return parsed, uid


def decode_node_lock(value: str, *, key: str = keys.NODE_LOCK) -> NodeLock:
    """Parse a lock value; errors carry HAMi's texts (``malformed lock annotation: expected 3 parts,
    got <n> from <value>``, ``parsing time ...``)."""
    if "," not in value:
        when, uid = _parse_time(key, value, value)
        return NodeLock(time=when, uid=uid)
    parts = value.split(",")
    if len(parts) != 3:
        raise DecodeError(
            key, value, f"malformed lock annotation: expected 3 parts, got {len(parts)} from {value}"
        )
    when, uid = _parse_time(key, value, parts[0])
    return NodeLock(time=when, namespace=parts[1], name=parts[2], uid=uid)
