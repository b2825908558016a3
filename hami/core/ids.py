"""Identifiers. A PodUID is not a PodKey: reservations are keyed by UID, store lookups by ns/name."""

from __future__ import annotations

from typing import NewType

PodUID = NewType("PodUID", str)
PodKey = NewType("PodKey", str)  # "namespace/name"
NodeName = NewType("NodeName", str)
DeviceID = NewType("DeviceID", str)  # GPU UUID as registered (e.g. "GPU-8e1c..."), no MIG suffix
Vendor = NewType("Vendor", str)  # vendor common word, e.g. "NVIDIA"


def pod_key(namespace: str, name: str) -> PodKey:
    return PodKey(f"{namespace}/{name}")
