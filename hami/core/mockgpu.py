"""Mock GPUs shared by every role of a GPU-less node: one mock node, one set of UUIDs.

The device plugin's and the DRA plugin's mock backends and the monitor's mock host GPUs all read
a mock GPU through this module (``--mock-gpu-file``: the embedded cluster's per-node
``mock-gpus.json``, or ``--mock-gpus N``), so the UUIDs the monitor reports
(``HostGPUMemoryUsage{deviceuuid}``) are the ones the device plugin registers in
``hami.io/node-nvidia-register`` and the scheduler allocates.

UUIDs are derived from the node name and index with a fixed UUIDv5 namespace: stable across
processes, restarts and machines. The GPU file is JSON or YAML in one of two forms::

    {"count": 4, "model": "NVIDIA H100 80GB HBM3", "memory": 81559}
    {"gpus": [{"uuid": "GPU-...", "model": "...", "memory": 81559, "numa": 0,
               "pciBusId": "0000:10:00.0", "computeCapability": "9.0"}, ...]}

(memory in MiB; every list field is optional, a missing ``uuid`` is derived as above). Parsing is
pure; reading the file is the caller's business.
"""

from __future__ import annotations

import json
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import yaml

from hami.core.errors import ConfigError

MOCK_UUID_NAMESPACE: Final = uuidlib.UUID("6f1d3a52-6a43-4a3e-9c1b-2f0f3e5a7d11")
DEFAULT_MOCK_MODEL: Final = "NVIDIA A100-PCIE-40GB"
DEFAULT_MOCK_MEMORY_MIB: Final = 40960
DEFAULT_COMPUTE_CAPABILITY: Final = "8.0"


def mock_gpu_uuid(node_name: str, index: int) -> str:
    """Deterministic NVIDIA-style UUID for GPU ``index`` of mock node ``node_name``."""
    return "GPU-" + str(uuidlib.uuid5(MOCK_UUID_NAMESPACE, f"{node_name}/{index}"))


def mock_pci_bus_id(index: int) -> str:
    return f"0000:{0x10 + index:02x}:00.0"


@dataclass(frozen=True, slots=True, kw_only=True)
class MockGpu:
    """One mock GPU as the GPU file describes it (each role maps it to its own GPU type)."""

    uuid: str
    index: int
    model: str
    memory_mib: int
    numa_node: int | None = None  # None: no NUMA affinity reported
    pci_bus_id: str = ""
    compute_capability: str = DEFAULT_COMPUTE_CAPABILITY


def mock_gpu_specs(
    node_name: str,
    count: int,
    *,
    model: str = DEFAULT_MOCK_MODEL,
    memory_mib: int = DEFAULT_MOCK_MEMORY_MIB,
) -> tuple[MockGpu, ...]:
    """``count`` identical GPUs of ``node_name`` (flag values, so errors name the flags)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigError("--mock-gpus", f"must be an integer >= 0, got {count!r}")
    if isinstance(memory_mib, bool) or not isinstance(memory_mib, int) or memory_mib <= 0:
        raise ConfigError("--mock-memory", f"must be > 0 MiB, got {memory_mib!r}")
    if not model.strip():
        raise ConfigError("--mock-model", "must not be empty")
    return tuple(
        MockGpu(
            uuid=mock_gpu_uuid(node_name, i),
            index=i,
            model=model,
            memory_mib=memory_mib,
            pci_bus_id=mock_pci_bus_id(i),
        )
        for i in range(count)
    )


def _int_field(entry: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}.{key}", f"expected an integer, got {value!r}")
    return value


def parse_mock_gpu_document(node_name: str, doc: object, *, source: str) -> tuple[MockGpu, ...]:
    """The GPUs of a decoded GPU file (either form, see the module docstring)."""
    if not isinstance(doc, Mapping):
        raise ConfigError(source, "expected a mapping at the top level")
    if "gpus" not in doc:
        count = _int_field(doc, "count", source)
        if count < 0:
            raise ConfigError(f"{source}.count", f"must be >= 0, got {count}")
        memory = _int_field(doc, "memory", source, DEFAULT_MOCK_MEMORY_MIB)
        if memory <= 0:
            raise ConfigError(f"{source}.memory", f"must be > 0 MiB, got {memory}")
        model = str(doc.get("model", DEFAULT_MOCK_MODEL))
        if not model.strip():
            raise ConfigError(f"{source}.model", "must not be empty")
        return mock_gpu_specs(node_name, count, model=model, memory_mib=memory)
    entries = doc["gpus"]
    if not isinstance(entries, list):
        raise ConfigError(f"{source}.gpus", "expected a list")
    gpus: list[MockGpu] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{source}.gpus[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(where, "expected a mapping")
        uuid = str(entry.get("uuid") or mock_gpu_uuid(node_name, i))
        if uuid in seen:
            raise ConfigError(f"{where}.uuid", f"duplicate UUID {uuid}")
        seen.add(uuid)
        memory = _int_field(entry, "memory", where, DEFAULT_MOCK_MEMORY_MIB)
        if memory <= 0:
            raise ConfigError(f"{where}.memory", f"must be > 0 MiB, got {memory}")
        numa = entry.get("numa")
        if numa is not None and (isinstance(numa, bool) or not isinstance(numa, int)):
            raise ConfigError(f"{where}.numa", f"expected an integer or null, got {numa!r}")
        gpus.append(
            MockGpu(
                uuid=uuid,
                index=i,
                model=str(entry.get("name", entry.get("model", DEFAULT_MOCK_MODEL))),
                memory_mib=memory,
                numa_node=numa if numa is None or numa >= 0 else None,
                pci_bus_id=str(entry.get("pciBusId", mock_pci_bus_id(i))),
                compute_capability=str(entry.get("computeCapability", DEFAULT_COMPUTE_CAPABILITY)),
            )
        )
    return tuple(gpus)


def parse_mock_gpu_text(node_name: str, text: str, *, source: str) -> tuple[MockGpu, ...]:
    """Parse a GPU file's text: JSON when ``source`` ends in ``.json``, else YAML."""
    is_json = source.endswith(".json")
    try:
        doc = json.loads(text) if is_json else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(source, f"not valid {'JSON' if is_json else 'YAML'}: {e}") from e
    return parse_mock_gpu_document(node_name, doc, source=source)


def mock_gpu_document(gpus: Sequence[MockGpu]) -> dict[str, Any]:
    """The explicit GPU file (``{"gpus": [...]}``) for ``gpus``: readers need no node name."""
    return {
        "gpus": [
            {
                "uuid": g.uuid,
                "model": g.model,
                "memory": g.memory_mib,
                "numa": g.numa_node,
                "pciBusId": g.pci_bus_id,
                "computeCapability": g.compute_capability,
            }
            for g in gpus
        ]
    }
