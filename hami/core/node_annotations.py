"""Codecs for the node annotations of the HAMi protocol.

* ``hami.io/node-nvidia-register`` (spec hami-scheduler-spec.md §4.4, hami-node-spec.md §3.2): JSON as
  HAMi 2.8 writes it, and the legacy ``id,count,devmem,devcore,type,numa,health[,index,mode]:`` form;
* ``hami.io/node-nvidia-score`` (node spec §3.4): topology pair scores;
* ``hami.io/node-handshake`` values (spec §7.4): ``Requesting_<time>``, ``Deleted_<time>``, ``Reported ...``.

The node lock (``hami.io/mutex.lock``) lives in :mod:`hami.core.node_lock`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal

from hami.core import gojson, keys
from hami.core.deviceconfig import MigGeometrySet
from hami.core.errors import DecodeError
from hami.core.gojson import GoJsonError, Pairs
from hami.core.ids import DeviceID
from hami.core.model import MODE_HAMI_CORE, MODE_MIG, NVIDIA, DeviceInfo, MigTemplate

INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
UINT64_MAX: Final = 2**64 - 1

LEGACY_DECODE_ERROR: Final = "node annotations not decode successfully"
NO_GPU_ERROR: Final = "no gpu found on node"

_GO_INT_RE: Final = re.compile(r"[+-]?[0-9]+")
_GO_TRUE: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE: Final = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def go_parse_bool(text: str) -> bool | None:
    """Go ``strconv.ParseBool``: the bool, or None where Go returns an error."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    return None


def _go_parse_int(text: str, lo: int, hi: int) -> int:
    """Go ``ParseInt``/``Atoi`` with the error ignored: 0 when unparsable, clamped when out of range."""
    if _GO_INT_RE.fullmatch(text) is None:
        return 0
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > 20:  # beyond any Go integer; also keeps int() away from huge digit strings
        return lo if text.startswith("-") else hi
    return max(lo, min(hi, int(text)))


# --------------------------------------------------------------------------------------- register: JSON


def _check_range(name: str, value: int, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"device field {name}={value!r} does not fit the Go type HAMi uses")
    return value


def encode_device_json(device: DeviceInfo) -> str:
    """One device object exactly as HAMi 2.8's ``MarshalNodeDevices`` writes it.

    Only the fields the device plugin copies are emitted (``migtemplate``, ``devicevendor`` and
    ``custominfo`` never are), zero values are omitted (Go ``omitempty``), and the non-pointer
    ``devicepairscore`` struct is always present as ``{}``.
    """
    parts: list[str] = []
    if device.id:
        parts.append(f'"id":{gojson.go_string(device.id)}')
    if _check_range("index", device.index, 0, UINT64_MAX):
        parts.append(f'"index":{device.index}')
    if _check_range("count", device.count, INT32_MIN, INT32_MAX):
        parts.append(f'"count":{device.count}')
    if _check_range("devmem", device.devmem, INT32_MIN, INT32_MAX):
        parts.append(f'"devmem":{device.devmem}')
    if _check_range("devcore", device.devcore, INT32_MIN, INT32_MAX):
        parts.append(f'"devcore":{device.devcore}')
    if device.type:
        parts.append(f'"type":{gojson.go_string(device.type)}')
    if _check_range("numa", device.numa, INT64_MIN, INT64_MAX):
        parts.append(f'"numa":{device.numa}')
    if device.mode:
        parts.append(f'"mode":{gojson.go_string(device.mode)}')
    if device.health:
        parts.append('"health":true')
    parts.append('"devicepairscore":{}')
    return "{" + ",".join(parts) + "}"


def encode_node_devices(devices: Iterable[DeviceInfo]) -> str:
    """The ``hami.io/node-nvidia-register`` value HAMi 2.8 writes for these devices, in the given order.

    HAMi iterates a Go map (random order); writers here should pass devices sorted by index so the
    value is stable and unchanged registrations are not re-patched (node spec §3.1).
    """
    return "[" + ",".join(encode_device_json(device) for device in devices) + "]"


def _decode_mig_template(raw: object, where: str) -> MigTemplate:
    # MigTemplate has only yaml tags in Go, so JSON uses the Go field names (matched case-insensitively).
    obj = gojson.go_object(raw, where)
    _, name = gojson.optional(obj, "Name", gojson.go_str, where)
    values: dict[str, int] = {}
    for go_name in ("Core", "Memory", "Count"):
        _, number = gojson.optional(
            obj, go_name, lambda v, w: gojson.go_int(v, w, INT32_MIN, INT32_MAX, "int32"), where
        )
        values[go_name] = number if isinstance(number, int) else 0
    return MigTemplate(
        name=name if isinstance(name, str) else "",
        core=values["Core"],
        memory=values["Memory"],
        count=values["Count"],
    )


def _decode_geometries(raw: object, where: str) -> tuple[tuple[MigTemplate, ...], ...]:
    geometries: list[tuple[MigTemplate, ...]] = []
    for g, geometry in enumerate(gojson.go_array(raw, where)):
        if geometry is None:
            geometries.append(())
            continue
        templates = gojson.go_array(geometry, f"{where}[{g}]")
        geometries.append(
            tuple(
                MigTemplate(name="", core=0, memory=0, count=0)
                if t is None
                else _decode_mig_template(t, f"{where}[{g}][{i}]")
                for i, t in enumerate(templates)
            )
        )
    return tuple(geometries)


def _decode_pair_score(raw: object, where: str) -> DevicePairScore:
    obj = gojson.go_object(raw, where)
    _, uuid = gojson.optional(obj, "uuid", gojson.go_str, where)
    scores: dict[str, int] = {}
    found, score_raw = obj.field("score")
    if found and score_raw is not None:
        for key, value in gojson.go_object(score_raw, f"{where}.score"):
            if value is None:
                scores[key] = 0
                continue
            scores[key] = gojson.go_int(value, f"{where}.score[{key}]", INT64_MIN, INT64_MAX, "int")
    return DevicePairScore(uuid=uuid if isinstance(uuid, str) else "", scores=scores)


def _decode_device_json(raw: object, where: str) -> DeviceInfo:
    if raw is None:
        raise GoJsonError(f"{where}: null device entry")
    obj = gojson.go_object(raw, where)

    def int_field(name: str, lo: int, hi: int, type_name: str) -> int:
        _, value = gojson.optional(obj, name, lambda v, w: gojson.go_int(v, w, lo, hi, type_name), where)
        return value if isinstance(value, int) else 0

    def str_field(name: str) -> str:
        _, value = gojson.optional(obj, name, gojson.go_str, where)
        return value if isinstance(value, str) else ""

    _, health = gojson.optional(obj, "health", gojson.go_bool, where)
    _, geometries = gojson.optional(obj, "migtemplate", _decode_geometries, where)
    _, custom = gojson.optional(obj, "custominfo", gojson.go_object, where)
    _, pair = gojson.optional(obj, "devicepairscore", _decode_pair_score, where)
    return DeviceInfo(
        id=DeviceID(str_field("id")),
        index=int_field("index", 0, UINT64_MAX, "uint"),
        count=int_field("count", INT32_MIN, INT32_MAX, "int32"),
        devmem=int_field("devmem", INT32_MIN, INT32_MAX, "int32"),
        devcore=int_field("devcore", INT32_MIN, INT32_MAX, "int32"),
        type=str_field("type"),
        numa=int_field("numa", INT64_MIN, INT64_MAX, "int"),
        mode=str_field("mode"),
        health=health is True,
        devicevendor=str_field("devicevendor"),
        migtemplate=geometries if isinstance(geometries, tuple) else (),
        custominfo=custom.as_dict() if isinstance(custom, Pairs) else {},
        pair_scores=pair.scores if isinstance(pair, DevicePairScore) else {},
    )


def decode_node_devices_json(value: str, *, key: str = keys.NODE_NVIDIA_REGISTER) -> tuple[DeviceInfo, ...]:
    """A JSON register value, read as Go ``json.Unmarshal`` into ``[]*DeviceInfo`` would (except that a
    ``null`` entry, on which HAMi would crash later, is an error). ``[]`` gives ``()``."""
    try:
        parsed = gojson.loads(value)
        if parsed is None:
            return ()
        entries = gojson.go_array(parsed, "devices")
        return tuple(_decode_device_json(entry, f"devices[{i}]") for i, entry in enumerate(entries))
    except GoJsonError as e:
        raise DecodeError(key, value, str(e)) from None


# --------------------------------------------------------------------------------------- register: legacy


def encode_node_devices_legacy(devices: Iterable[DeviceInfo]) -> str:
    """HAMi ``EncodeNodeDevices``: 9 fields per device, each followed by ``:``.

    >>> encode_node_devices_legacy([DeviceInfo(id=DeviceID("GPU-0"), count=10, devmem=7680, devcore=100,
    ...     type="NVIDIA-Tesla P4", health=True, mode="hami-core")])
    'GPU-0,10,7680,100,NVIDIA-Tesla P4,0,true,0,hami-core:'
    """
    out: list[str] = []
    for device in devices:
        for name, text in (("id", device.id), ("type", device.type), ("mode", device.mode)):
            if "," in text or ":" in text:
                raise ValueError(f"device {name} {text!r} contains ',' or ':' and cannot be encoded")
        # Go prints the uint index through int(): indices >= 2**63 come out negative.
        index = _check_range("index", device.index, 0, UINT64_MAX)
        signed_index = index - 2**64 if index > INT64_MAX else index
        out.append(
            f"{device.id},{device.count},{device.devmem},{device.devcore},{device.type},{device.numa},"
            f"{'true' if device.health else 'false'},{signed_index},{device.mode}:"
        )
    return "".join(out)


def decode_node_devices_legacy(value: str, *, key: str = keys.NODE_NVIDIA_REGISTER) -> tuple[DeviceInfo, ...]:
    """HAMi 2.8 ``DecodeNodeDevices`` with its quirks: segments without a comma are skipped, numbers
    that do not parse become 0, out-of-range counts are clamped to int32, an unparsable health is
    false, a negative index wraps like Go's ``uint(int)``. Any field count other than 7 or 9, or a
    value without ``:``, is ``node annotations not decode successfully``."""
    if ":" not in value:
        raise DecodeError(key, value, f"{LEGACY_DECODE_ERROR} (no ':' separator)")
    devices: list[DeviceInfo] = []
    for segment in value.split(":"):
        if "," not in segment:
            continue
        items = segment.split(",")
        if len(items) not in (7, 9):
            raise DecodeError(key, value, f"{LEGACY_DECODE_ERROR} ({len(items)} fields in {segment[:40]!r})")
        mode = MODE_HAMI_CORE
        index = 0
        if len(items) == 9:
            index = _go_parse_int(items[7], INT64_MIN, INT64_MAX) % 2**64
            mode = items[8]
        devices.append(
            DeviceInfo(
                id=DeviceID(items[0]),
                count=_go_parse_int(items[1], INT32_MIN, INT32_MAX),
                devmem=_go_parse_int(items[2], INT32_MIN, INT32_MAX),
                devcore=_go_parse_int(items[3], INT32_MIN, INT32_MAX),
                type=items[4],
                numa=_go_parse_int(items[5], INT64_MIN, INT64_MAX),
                health=go_parse_bool(items[6]) is True,
                index=index,
                mode=mode,
            )
        )
    return tuple(devices)


def decode_node_devices(value: str, *, key: str = keys.NODE_NVIDIA_REGISTER) -> tuple[DeviceInfo, ...]:
    """Either register form: JSON when the value starts with ``[`` (after whitespace), else legacy."""
    if value.lstrip(" \t\r\n").startswith("["):
        return decode_node_devices_json(value, key=key)
    return decode_node_devices_legacy(value, key=key)


# --------------------------------------------------------------------------------------- topology score


@dataclass(frozen=True, slots=True, kw_only=True)
class DevicePairScore:
    """One entry of ``hami.io/node-nvidia-score``: this GPU's link score to each other GPU."""

    uuid: str
    scores: Mapping[str, int] = field(default_factory=dict)


def encode_node_scores(entries: Iterable[DevicePairScore]) -> str:
    """``[{"uuid":..,"score":{..}},..]`` as Go marshals ``DevicePairScores`` (omitempty on both fields)."""
    out: list[str] = []
    for entry in entries:
        parts: list[str] = []
        if entry.uuid:
            parts.append(f'"uuid":{gojson.go_string(entry.uuid)}')
        if entry.scores:
            for name, score in entry.scores.items():
                _check_range(f"score[{name}]", score, INT64_MIN, INT64_MAX)
            parts.append(f'"score":{gojson.go_int_map(entry.scores)}')
        out.append("{" + ",".join(parts) + "}")
    return "[" + ",".join(out) + "]"


def decode_node_scores(value: str, *, key: str = keys.NODE_NVIDIA_SCORE) -> tuple[DevicePairScore, ...]:
    try:
        parsed = gojson.loads(value)
        if parsed is None:
            return ()
        entries = gojson.go_array(parsed, "scores")
        return tuple(
            DevicePairScore(uuid="") if entry is None else _decode_pair_score(entry, f"scores[{i}]")
            for i, entry in enumerate(entries)
        )
    except GoJsonError as e:
        raise DecodeError(key, value, str(e)) from None


# --------------------------------------------------------------------------------------- scheduler view


def nvidia_node_devices(
    annotations: Mapping[str, str], *, known_mig_geometries: Iterable[MigGeometrySet] = ()
) -> tuple[DeviceInfo, ...]:
    """The NVIDIA devices of a node as the scheduler uses them (HAMi ``GetNodeDevices``, spec §4.4).

    Missing register annotation → ``annos not found hami.io/node-nvidia-register``; no devices →
    ``no gpu found on node``; every device gets ``devicevendor = NVIDIA``; ``mig``-mode devices get
    the geometries of the first ``known_mig_geometries`` entry one of whose model strings occurs in
    the device type (pass ``NvidiaConfig.known_mig_geometries``); pair scores from
    ``hami.io/node-nvidia-score`` are attached by uuid (an undecodable score annotation fails the
    whole vendor, as in HAMi).
    """
    register = annotations.get(keys.NODE_NVIDIA_REGISTER)
    if register is None:
        raise DecodeError(keys.NODE_NVIDIA_REGISTER, "", f"annos not found {keys.NODE_NVIDIA_REGISTER}")
    devices = decode_node_devices(register)
    if not devices:
        raise DecodeError(keys.NODE_NVIDIA_REGISTER, register, NO_GPU_ERROR)
    scores: dict[str, Mapping[str, int]] = {}
    raw_scores = annotations.get(keys.NODE_NVIDIA_SCORE)
    if raw_scores is not None:
        for entry in decode_node_scores(raw_scores):
            scores.setdefault(entry.uuid, entry.scores)
    known = tuple(known_mig_geometries)
    out: list[DeviceInfo] = []
    for device in devices:
        migtemplate = device.migtemplate
        if device.mode == MODE_MIG:
            for geometry_set in known:
                if any(model in device.type for model in geometry_set.models):
                    migtemplate = geometry_set.geometries
                    break
        out.append(
            DeviceInfo(
                id=device.id,
                index=device.index,
                count=device.count,
                devmem=device.devmem,
                devcore=device.devcore,
                type=device.type,
                numa=device.numa,
                mode=device.mode,
                health=device.health,
                devicevendor=NVIDIA,
                migtemplate=migtemplate,
                custominfo=device.custominfo,
                pair_scores=scores.get(device.id, device.pair_scores),
            )
        )
    return tuple(out)


# --------------------------------------------------------------------------------------- handshake

HANDSHAKE_TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S"  # Go time.DateTime
_HANDSHAKE_TIME_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
HandshakeState = Literal["requesting", "deleted", "other"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Handshake:
    """A decoded ``hami.io/node-handshake*`` value (spec §7.4).

    ``time`` is the stamp after the first ``_`` for ``Requesting_``/``Deleted_`` values, read as UTC
    (HAMi 2.8 writes local time and parses it as UTC); None for other values (``Reported <...>``).
    """

    state: HandshakeState
    time: datetime | None
    raw: str


def encode_handshake(state: Literal["requesting", "deleted"], when: datetime) -> str:
    """``Requesting_YYYY-MM-DD HH:MM:SS`` / ``Deleted_...`` with ``when`` formatted as given."""
    prefix = "Requesting_" if state == "requesting" else "Deleted_"
    return prefix + when.strftime(HANDSHAKE_TIME_FORMAT)


def decode_handshake(value: str, *, key: str = keys.NODE_HANDSHAKE) -> Handshake:
    """Classify a handshake value with HAMi's substring rules (``Requesting`` wins over ``Deleted``).

    A ``Requesting`` value whose time does not parse is a DecodeError (HAMi reads it as the zero
    time, i.e. long expired, or panics when there is no ``_``): callers treat it as expired.
    """
    if "Requesting" in value or "Deleted" in value:
        state: HandshakeState = "requesting" if "Requesting" in value else "deleted"
        _, sep, stamp = value.partition("_")
        stamp = stamp.split("_", 1)[0]
        parsed: datetime | None = None
        if sep and _HANDSHAKE_TIME_RE.fullmatch(stamp):
            try:
                parsed = datetime.strptime(stamp, HANDSHAKE_TIME_FORMAT).replace(tzinfo=UTC)
            except ValueError:
                parsed = None
        if parsed is None and state == "requesting":
            raise DecodeError(
                key, value, "Requesting handshake without a 'YYYY-MM-DD HH:MM:SS' time after '_'"
            )
        return Handshake(state=state, time=parsed, raw=value)
    return Handshake(state="other", time=None, raw=value)
