"""Codecs for the pod annotations HAMi writes (spec hami-scheduler-spec.md §4.3, §4.5, §5.8).

Pod device annotations (``hami.io/vgpu-devices-to-allocate`` / ``-allocated`` and the other vendors'
``*-devices-*`` keys) encode a :data:`~hami.core.model.PodSingleDevice`: per container, every device
as ``UUID,Type,Usedmem,Usedcores:``, each container followed by ``;``.

Two decoders exist because HAMi 2.8's own decoder loses information:

* :func:`decode_pod_single_device` keeps container positions (``";GPU-a,NVIDIA,1,2:;;"`` has three
  containers, the middle one holding one device) and raises :class:`DecodeError` on anything it cannot
  read exactly. **The ledger uses this one**: we are the writer, positions are what the device plugin
  needs, and an unreadable value must quarantine the node rather than count as zero usage.
* :func:`decode_pod_single_device_v28` reproduces HAMi 2.8 byte for byte in behaviour: empty
  container segments are dropped (indices collapse), non-numeric numbers become 0, out-of-range ones
  are clamped to int32, and a device with fewer than 4 fields makes the whole value decode to empty.
  Use it only to predict what a HAMi 2.8 component will see (metrics ``containeridx``, interop tests).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from hami.core import keys
from hami.core.errors import DecodeError
from hami.core.ids import DeviceID
from hami.core.model import NVIDIA, ContainerDevice, ContainerDevices, PodDevices, PodSingleDevice

DEVICE_SEPARATOR: Final = ":"
CONTAINER_SEPARATOR: Final = ";"
INT32_MAX: Final = 2**31 - 1
INT32_MIN: Final = -(2**31)

_STRICT_INT_RE: Final = re.compile(r"[0-9]{1,10}")
# Go strconv.ParseInt(s, 10, 32): optional sign, decimal digits, underscores are NOT allowed in base 10.
_GO_INT_RE: Final = re.compile(r"[+-]?[0-9]+")
_MIG_RE: Final = re.compile(r"(?P<id>[^\[\]]*)\[(?P<geometry>[0-9]{1,9})-(?P<instance>[0-9]{1,9})\]")
_FORBIDDEN_IN_FIELDS: Final = frozenset(",:;")


@dataclass(frozen=True, slots=True, kw_only=True)
class PodDeviceKeys:
    """The pair of pod annotation keys a vendor writes its allocation under (HAMi
    ``InRequestDevices`` / ``SupportDevices``). ``to_allocate`` is None for vendors that only write
    the allocated key."""

    to_allocate: str | None
    allocated: str


NVIDIA_POD_KEYS: Final = PodDeviceKeys(
    to_allocate=keys.VGPU_DEVICES_TO_ALLOCATE, allocated=keys.VGPU_DEVICES_ALLOCATED
)
# Vendor common word -> keys. Other vendors are added by passing a larger mapping (vendors task).
DEFAULT_POD_DEVICE_KEYS: Final[Mapping[str, PodDeviceKeys]] = {NVIDIA: NVIDIA_POD_KEYS}


# --------------------------------------------------------------------------------------- encoding


def _check_field(name: str, value: str) -> None:
    if _FORBIDDEN_IN_FIELDS.intersection(value):
        raise ValueError(f"device {name} {value!r} contains ',', ':' or ';' and cannot be encoded")


def encode_container_devices(devices: ContainerDevices) -> str:
    """``UUID,Type,Usedmem,Usedcores:`` per device (HAMi ``EncodeContainerDevices``)."""
    parts: list[str] = []
    for device in devices:
        _check_field("uuid", device.uuid)
        _check_field("type", device.type)
        parts.append(f"{device.uuid},{device.type},{device.usedmem},{device.usedcores}{DEVICE_SEPARATOR}")
    return "".join(parts)


def encode_pod_single_device(psd: PodSingleDevice) -> str:
    """Every container's devices followed by ``;`` (HAMi ``EncodePodSingleDevice``).

    >>> encode_pod_single_device(((), (ContainerDevice(uuid="uuid1", type="NVIDIA", usedmem=1000,
    ...     usedcores=30),), ()))
    ';uuid1,NVIDIA,1000,30:;;'
    """
    return "".join(encode_container_devices(container) + CONTAINER_SEPARATOR for container in psd)


def encode_pod_devices(
    pod_devices: PodDevices, *, device_keys: Mapping[str, PodDeviceKeys] = DEFAULT_POD_DEVICE_KEYS
) -> dict[str, str]:
    """The annotations the scheduler's Filter writes for a decision (vendor ``PatchAnnotations``).

    Per vendor with a non-empty per-container list, the same encoded value under both of its keys;
    a vendor with an empty list, and an empty ``pod_devices``, produce no keys at all.
    """
    out: dict[str, str] = {}
    for vendor, psd in pod_devices.items():
        if len(psd) == 0:
            continue
        vendor_keys = device_keys.get(vendor)
        if vendor_keys is None:
            raise ValueError(f"no pod annotation keys known for vendor {vendor!r}")
        value = encode_pod_single_device(psd)
        if vendor_keys.to_allocate is not None:
            out[vendor_keys.to_allocate] = value
        out[vendor_keys.allocated] = value
    return out


# --------------------------------------------------------------------------------------- decoding


def _strict_int(key: str, value: str, text: str, what: str) -> int:
    if _STRICT_INT_RE.fullmatch(text) is None or int(text) > INT32_MAX:
        raise DecodeError(key, value, f"{what} {text!r} is not a non-negative 32-bit integer")
    return int(text)


def _decode_container_strict(key: str, value: str, segment: str) -> ContainerDevices:
    devices: list[ContainerDevice] = []
    for entry in segment.split(DEVICE_SEPARATOR):
        if entry == "":
            continue  # the terminator after the last device (and harmless doubled separators)
        fields = entry.split(",")
        if len(fields) != 4:
            raise DecodeError(key, value, f"device entry {entry!r} has {len(fields)} fields, expected 4")
        uuid, vendor, mem, cores = fields
        if uuid == "" or vendor == "":
            raise DecodeError(key, value, f"device entry {entry!r} has an empty uuid or type")
        devices.append(
            ContainerDevice(
                uuid=uuid,
                type=vendor,
                usedmem=_strict_int(key, value, mem, "usedmem"),
                usedcores=_strict_int(key, value, cores, "usedcores"),
            )
        )
    return tuple(devices)


def decode_pod_single_device(value: str, *, key: str = keys.VGPU_DEVICES_ALLOCATED) -> PodSingleDevice:
    """Position-preserving strict decode: one entry per container segment, empty ones included.

    The ``;`` after the last container is a terminator, not an extra empty container; a value
    missing that final ``;`` is still accepted. Raises :class:`DecodeError` naming ``key``.
    """
    if not isinstance(value, str):
        raise DecodeError(key, repr(value), f"expected a string, got {type(value).__name__}")
    if value == "":
        return ()
    segments = value.split(CONTAINER_SEPARATOR)
    if segments[-1] == "":
        segments.pop()
    return tuple(_decode_container_strict(key, value, segment) for segment in segments)


def _go_parse_int32(text: str) -> int:
    """Go ``strconv.ParseInt(text, 10, 32)``, error ignored: 0 if unparsable, clamped if out of range."""
    if _GO_INT_RE.fullmatch(text) is None:
        return 0
    return _clamp_decimal(text, INT32_MIN, INT32_MAX)


def _clamp_decimal(text: str, lo: int, hi: int) -> int:
    """A validated signed decimal clamped to [lo, hi] without converting huge digit strings
    (Python refuses int() on more than 4300 digits)."""
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > 20:
        return lo if text.startswith("-") else hi
    return max(lo, min(hi, int(text)))


def decode_pod_single_device_v28(value: str) -> PodSingleDevice:
    """HAMi 2.8's decode, quirks included (module docstring); never raises, returns ``()`` where
    2.8 returns an empty result."""
    decoded = _decode_v28(value)
    return () if decoded is None else decoded


def _decode_v28(value: str) -> PodSingleDevice | None:
    """None where 2.8 hits "pod annotation format error; information missing"."""
    containers: list[ContainerDevices] = []
    for segment in value.split(CONTAINER_SEPARATOR):
        devices: list[ContainerDevice] = []
        for entry in segment.split(DEVICE_SEPARATOR):
            if "," not in entry:
                continue
            fields = entry.split(",")
            if len(fields) < 4:
                return None
            devices.append(
                ContainerDevice(
                    uuid=fields[0],
                    type=fields[1],
                    usedmem=_go_parse_int32(fields[2]),
                    usedcores=_go_parse_int32(fields[3]),
                )
            )
        if devices:
            containers.append(tuple(devices))
    return tuple(containers)


def decode_pod_devices(
    annotations: Mapping[str, str],
    *,
    device_keys: Mapping[str, PodDeviceKeys] = DEFAULT_POD_DEVICE_KEYS,
    allocated: bool = True,
) -> dict[str, PodSingleDevice]:
    """Every vendor's allocation found in a pod's annotations (strict, position-preserving).

    ``allocated=True`` reads the ``*-allocated`` keys (usage accounting, spec §7.2); ``False`` reads
    the ``*-to-allocate`` keys (what the device plugin still has to hand out). Vendors whose key is
    absent are absent from the result.
    """
    out: dict[str, PodSingleDevice] = {}
    for vendor, vendor_keys in device_keys.items():
        key = vendor_keys.allocated if allocated else vendor_keys.to_allocate
        if key is None or key not in annotations:
            continue
        out[vendor] = decode_pod_single_device(annotations[key], key=key)
    return out


def decode_pod_devices_v28(
    annotations: Mapping[str, str], *, device_keys: Mapping[str, PodDeviceKeys] = DEFAULT_POD_DEVICE_KEYS
) -> dict[str, PodSingleDevice]:
    """HAMi 2.8 ``DecodePodDevices`` on the allocated keys: one malformed vendor value empties the
    whole result (2.8 returns an empty map without error)."""
    out: dict[str, PodSingleDevice] = {}
    for vendor, vendor_keys in device_keys.items():
        raw = annotations.get(vendor_keys.allocated)
        if raw is None:
            continue
        decoded = _decode_v28(raw)
        if decoded is None:
            return {}
        out[vendor] = decoded
    return out


# --------------------------------------------------------------------------------------- MIG suffix


@dataclass(frozen=True, slots=True, kw_only=True)
class MigInstanceRef:
    """A dynamic-MIG allocation ``GPU-xxxx[<geometry>-<instance>]`` (spec §4.5, §5.6)."""

    device_id: DeviceID
    geometry: int
    instance: int

    def encode(self) -> str:
        return f"{self.device_id}[{self.geometry}-{self.instance}]"


def device_id_of(uuid: str) -> DeviceID:
    """The registered device ID an allocation refers to (any ``[...]`` MIG suffix stripped, as HAMi does)."""
    return DeviceID(uuid.split("[", 1)[0])


def has_mig_suffix(uuid: str) -> bool:
    return "[" in uuid


def decode_mig_uuid(uuid: str, *, key: str = keys.VGPU_DEVICES_ALLOCATED) -> MigInstanceRef:
    """Parse ``GPU-x[g-i]``; no ``[``, ``]``, ``-`` or non-numeric parts is a DecodeError."""
    match = _MIG_RE.fullmatch(uuid)
    if match is None:
        if "[" not in uuid:
            reason = "missing '[' delimiter"
        elif "]" not in uuid:
            reason = "missing ']' delimiter"
        elif "-" not in uuid.split("[", 1)[1]:
            reason = "missing '-' delimiter"
        else:
            reason = "geometry and instance must be decimal integers: <uuid>[<geometry>-<instance>]"
        raise DecodeError(key, uuid, f"invalid MIG device reference: {reason}")
    return MigInstanceRef(
        device_id=DeviceID(match["id"]), geometry=int(match["geometry"]), instance=int(match["instance"])
    )


# --------------------------------------------------------------------------------------- bind phase, times

BindPhase = Literal["allocating", "success", "failed"]
BIND_PHASES: Final[tuple[BindPhase, ...]] = (
    keys.BIND_PHASE_ALLOCATING,
    keys.BIND_PHASE_SUCCESS,
    keys.BIND_PHASE_FAILED,
)


def decode_bind_phase(value: str, *, key: str = keys.BIND_PHASE) -> BindPhase:
    for phase in BIND_PHASES:
        if value == phase:
            return phase
    raise DecodeError(key, value, f"unknown bind phase, expected one of {', '.join(BIND_PHASES)}")


def encode_bind_phase(phase: BindPhase) -> str:
    if phase not in BIND_PHASES:
        raise ValueError(f"unknown bind phase {phase!r}")
    return phase


def encode_unix_time(when: datetime) -> str:
    """``hami.io/vgpu-time`` / ``hami.io/bind-time``: Unix seconds as a decimal string (Go ``Unix()``)."""
    if when.tzinfo is None:
        raise ValueError("a timezone-aware datetime is required")
    return str(int(when.timestamp() // 1))


def decode_unix_time(value: str, *, key: str = keys.BIND_TIME) -> datetime:
    if re.fullmatch(r"-?[0-9]{1,12}", value) is None:
        raise DecodeError(key, value, "expected Unix seconds as a decimal integer")
    try:
        return datetime.fromtimestamp(int(value), tz=UTC)
    except (OverflowError, OSError, ValueError) as e:
        raise DecodeError(key, value, f"Unix time out of range: {e}") from None


def iter_devices(psd: PodSingleDevice) -> Iterable[tuple[int, ContainerDevice]]:
    """(container position, device) for every device of a per-container list."""
    for position, container in enumerate(psd):
        for device in container:
            yield position, device
