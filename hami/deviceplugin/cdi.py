"""CDI spec for the node's GPUs, written when a CDI device-list strategy is selected.

The container runtime resolves ``k8s.device-plugin.nvidia.com/gpu=<GPU-UUID>`` through this
file (k8s-apis.md §5). Upstream generates it with nvcdi from the driver installation; we write
the part every GPU container needs: the GPU's device node, the control devices, and
``NVIDIA_VISIBLE_DEVICES=void`` so the NVIDIA runtime hook does not inject devices twice.
Driver libraries are left to the runtime's own NVIDIA integration.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from hami.deviceplugin.allocate import CDI_KIND
from hami.deviceplugin.backend import PhysicalGpu

CDI_VERSION: Final = "0.6.0"
DEFAULT_CDI_DIR: Final = Path("/var/run/cdi")
CONTROL_DEVICES: Final = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")

_NAME_RE: Final = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?")
_VENDOR_RE: Final = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


def spec_file_name(kind: str = CDI_KIND) -> str:
    """``<vendor>-<class>.json`` (CDI ``GenerateSpecName``)."""
    vendor, cls = kind.split("/", 1)
    return f"{vendor}-{cls}.json"


def _device_node(path: str) -> dict[str, Any]:
    return {"path": path}


def cdi_spec(
    gpus: Sequence[PhysicalGpu],
    *,
    kind: str = CDI_KIND,
    control_devices: Iterable[str] = CONTROL_DEVICES,
) -> dict[str, Any]:
    """A CDI spec with one device per GPU (named by UUID) plus ``all``."""
    if not gpus:
        raise ValueError("a CDI spec needs at least one device")
    devices: list[dict[str, Any]] = []
    for gpu in gpus:
        devices.append(
            {"name": gpu.uuid, "containerEdits": {"deviceNodes": [_device_node(p) for p in gpu.device_paths]}}
        )
    devices.append(
        {
            "name": "all",
            "containerEdits": {"deviceNodes": [_device_node(p) for g in gpus for p in g.device_paths]},
        }
    )
    spec = {
        "cdiVersion": CDI_VERSION,
        "kind": kind,
        "devices": devices,
        "containerEdits": {
            "env": ["NVIDIA_VISIBLE_DEVICES=void"],
            "deviceNodes": [_device_node(p) for p in control_devices],
        },
    }
    problems = validate_spec(spec)
    if problems:
        raise ValueError("invalid CDI spec: " + "; ".join(problems))
    return spec


def validate_spec(spec: Mapping[str, Any]) -> list[str]:
    """Structural checks a CDI loader applies (k8s-apis.md §5.1); returns the problems found."""
    problems: list[str] = []
    version = spec.get("cdiVersion")
    if not isinstance(version, str) or re.fullmatch(r"\d+\.\d+\.\d+", version) is None:
        problems.append(f"cdiVersion {version!r} is not a semantic version")
    kind = spec.get("kind")
    if not isinstance(kind, str) or kind.count("/") != 1:
        problems.append(f"kind {kind!r} is not <vendor>/<class>")
    else:
        vendor, cls = kind.split("/")
        if len(vendor) > 253 or _VENDOR_RE.fullmatch(vendor) is None:
            problems.append(f"kind vendor {vendor!r} is not a DNS subdomain")
        if len(cls) > 63 or _NAME_RE.fullmatch(cls) is None:
            problems.append(f"kind class {cls!r} is not a valid name")
    devices = spec.get("devices")
    if not isinstance(devices, list) or not devices:
        problems.append("devices must be a non-empty list")
        devices = []
    seen: set[str] = set()
    for i, device in enumerate(devices):
        name = device.get("name") if isinstance(device, Mapping) else None
        if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
            problems.append(f"devices[{i}].name {name!r} is not a valid device name")
            continue
        if name in seen:
            problems.append(f"devices[{i}].name {name!r} is duplicated")
        seen.add(name)
        edits = device.get("containerEdits")
        if not isinstance(edits, Mapping):
            problems.append(f"devices[{i}].containerEdits must be an object")
        else:
            problems.extend(f"devices[{i}].{p}" for p in _edit_problems(edits))
    top = spec.get("containerEdits")
    if top is not None:
        if not isinstance(top, Mapping):
            problems.append("containerEdits must be an object")
        else:
            problems.extend(f"containerEdits.{p}" for p in _edit_problems(top))
    allowed = {"cdiVersion", "kind", "annotations", "devices", "containerEdits"}
    problems.extend(f"unknown top-level field {k!r}" for k in spec if k not in allowed)
    return problems


def _edit_problems(edits: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    allowed = {"env", "deviceNodes", "hooks", "mounts", "netDevices", "intelRdt", "additionalGids"}
    problems.extend(f"unknown field {k!r}" for k in edits if k not in allowed)
    for j, env in enumerate(edits.get("env", [])):
        if not isinstance(env, str) or "=" not in env:
            problems.append(f"env[{j}] {env!r} is not NAME=value")
    for j, node in enumerate(edits.get("deviceNodes", [])):
        path = node.get("path") if isinstance(node, Mapping) else None
        if not isinstance(path, str) or not path.startswith("/"):
            problems.append(f"deviceNodes[{j}].path {path!r} is not absolute")
    for j, mount in enumerate(edits.get("mounts", [])):
        if not isinstance(mount, Mapping) or not mount.get("hostPath") or not mount.get("containerPath"):
            problems.append(f"mounts[{j}] needs hostPath and containerPath")
    return problems


def write_spec(spec: Mapping[str, Any], directory: Path) -> Path:
    """Write the spec atomically (temp file + rename) as ``<vendor>-<class>.json``; returns the path."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / spec_file_name(str(spec["kind"]))
    fd, tmp = tempfile.mkstemp(prefix=".hami-cdi-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(spec, f, indent=2, sort_keys=False)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
