"""The HAMi wire codecs in one import (spec hami-scheduler-spec.md §4.3-§4.5, §6.2; node spec §3-§4).

Every decoder raises :class:`~hami.core.errors.DecodeError` (key, value, reason) on bad input; the
functions suffixed ``_v28`` reproduce HAMi 2.8's lossy behaviour and never raise. Which one to use:

* usage accounting (ledger, informers): :func:`decode_pod_devices` / :func:`decode_pod_single_device`
  (position-preserving, strict: an undecodable value must quarantine the node, not count as zero);
* node registration: :func:`decode_node_devices` (JSON or legacy) or :func:`nvidia_node_devices`
  (HAMi ``GetNodeDevices``: errors, vendor, MIG geometries, pair scores);
* writing: :func:`encode_pod_devices`, :func:`encode_node_devices`, :func:`encode_node_lock` — all
  byte-identical to HAMi 2.8 for the same input.
"""

from __future__ import annotations

from hami.core.node_annotations import (
    LEGACY_DECODE_ERROR,
    NO_GPU_ERROR,
    DevicePairScore,
    Handshake,
    HandshakeState,
    decode_handshake,
    decode_node_devices,
    decode_node_devices_json,
    decode_node_devices_legacy,
    decode_node_scores,
    encode_device_json,
    encode_handshake,
    encode_node_devices,
    encode_node_devices_legacy,
    encode_node_scores,
    go_parse_bool,
    nvidia_node_devices,
)
from hami.core.node_lock import NodeLock, decode_node_lock, encode_node_lock, format_rfc3339
from hami.core.pod_annotations import (
    BIND_PHASES,
    DEFAULT_POD_DEVICE_KEYS,
    NVIDIA_POD_KEYS,
    BindPhase,
    MigInstanceRef,
    PodDeviceKeys,
    decode_bind_phase,
    decode_mig_uuid,
    decode_pod_devices,
    decode_pod_devices_v28,
    decode_pod_single_device,
    decode_pod_single_device_v28,
    decode_unix_time,
    device_id_of,
    encode_bind_phase,
    encode_container_devices,
    encode_pod_devices,
    encode_pod_single_device,
    encode_unix_time,
    has_mig_suffix,
    iter_devices,
)

__all__ = [
    "BIND_PHASES",
    "DEFAULT_POD_DEVICE_KEYS",
    "LEGACY_DECODE_ERROR",
    "NO_GPU_ERROR",
    "NVIDIA_POD_KEYS",
    "BindPhase",
    "DevicePairScore",
    "Handshake",
    "HandshakeState",
    "MigInstanceRef",
    "NodeLock",
    "PodDeviceKeys",
    "decode_bind_phase",
    "decode_handshake",
    "decode_mig_uuid",
    "decode_node_devices",
    "decode_node_devices_json",
    "decode_node_devices_legacy",
    "decode_node_lock",
    "decode_node_scores",
    "decode_pod_devices",
    "decode_pod_devices_v28",
    "decode_pod_single_device",
    "decode_pod_single_device_v28",
    "decode_unix_time",
    "device_id_of",
    "encode_bind_phase",
    "encode_container_devices",
    "encode_device_json",
    "encode_handshake",
    "encode_node_devices",
    "encode_node_devices_legacy",
    "encode_node_lock",
    "encode_node_scores",
    "encode_pod_devices",
    "encode_pod_single_device",
    "encode_unix_time",
    "format_rfc3339",
    "go_parse_bool",
    "has_mig_suffix",
    "iter_devices",
    "nvidia_node_devices",
]
