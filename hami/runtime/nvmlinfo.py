"""Small NVML/sysfs readings shared by every role that talks to NVML (device plugin, DRA, monitor).

Roles may not import each other, so the conversions they all need live here, once.
"""

from __future__ import annotations

from pathlib import Path


def nvml_text(value: object) -> str:
    """NVML strings arrive as bytes (older bindings) or str, sometimes NUL-padded."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").rstrip("\x00")
    return str(value).rstrip("\x00")


def normalize_bus_id(raw: object) -> str:
    """NVML bus id ("00000000:3B:00.0") -> sysfs form ("0000:3b:00.0"); "" if unparsable."""
    parts = nvml_text(raw).strip().lower().split(":")
    if len(parts) != 3 or not parts[0]:
        return ""
    return f"{parts[0][-4:].rjust(4, '0')}:{parts[1]}:{parts[2]}"


def read_numa_node(sysfs_root: Path, bus_id: str) -> int | None:
    """NUMA node of a PCI device from sysfs; None when the platform has none (-1) or it is unreadable."""
    if not bus_id:
        return None
    try:
        value = int((sysfs_root / "bus" / "pci" / "devices" / bus_id / "numa_node").read_text().strip())
    except (OSError, ValueError):
        return None
    return value if value >= 0 else None
