"""The device plugin's per-node configuration ``config.json`` (node spec hami-node-spec.md §2.2).

ConfigMap ``hami-device-plugin`` key ``config.json``: ``{"nodeconfig": [{"name": ..., "operatingmode":
..., "devicesplitcount": ..., "devicememoryscaling": ..., "devicecorescaling": ..., "libcudaloglevel":
..., "migstrategy": ..., "filterdevices": {"uuid": [...], "index": [...]}}]}``. Keys match
case-insensitively (Go ``encoding/json``); unknown keys are kept and reported; wrong types are a
:class:`ConfigError` naming the dotted key. :func:`node_settings` merges an entry over the YAML values.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from hami.core.configfields import Parser, describe, float_field, list_field, uint_field
from hami.core.errors import ConfigError

if TYPE_CHECKING:  # deviceconfig re-exports this module, so only the type is imported
    from hami.core.deviceconfig import NvidiaConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class FilterDevices:
    uuid: tuple[str, ...] = ()
    index: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfigEntry:
    """One ``nodeconfig[]`` entry of the device plugin's ``config.json``; None = not overridden."""

    name: str
    operating_mode: str = ""
    device_split_count: int | None = None
    device_memory_scaling: float | None = None
    device_core_scaling: float | None = None
    lib_cuda_log_level: str | None = None
    mig_strategy: str = ""  # parsed but unused by HAMi 2.8
    filter_devices: FilterDevices | None = None
    extra: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    entries: tuple[NodeConfigEntry, ...] = ()
    extra: Mapping[str, object] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def entry_for(self, node_name: str) -> NodeConfigEntry | None:
        """The first entry named ``node_name`` (HAMi stops at the first match)."""
        for entry in self.entries:
            if entry.name == node_name:
                return entry
        return None


def _json_field(obj: Mapping[str, object], name: str) -> object:
    # encoding/json matches object keys to struct fields case-insensitively; last match wins.
    found: object = None
    for key, value in obj.items():
        if key.casefold() == name:
            found = value
    return found


_NODE_ENTRY_FIELDS: Final = (
    "name",
    "operatingmode",
    "devicesplitcount",
    "devicememoryscaling",
    "devicecorescaling",
    "libcudaloglevel",
    "migstrategy",
    "filterdevices",
)


def _strict_str(raw: object, where: str, warnings: list[str]) -> str:
    if not isinstance(raw, str):
        raise ConfigError(where, f"expected string, got {describe(raw)}")
    return raw


def _node_entry(raw: object, where: str, warnings: list[str]) -> NodeConfigEntry:
    if not isinstance(raw, Mapping):
        raise ConfigError(where, f"expected object, got {describe(raw)}")
    extra = {k: v for k, v in raw.items() if k.casefold() not in _NODE_ENTRY_FIELDS}
    for key in extra:
        warnings.append(f"{where}.{key}: unknown key (kept, not used)")

    def get(name: str, parser: Parser) -> Any:
        value = _json_field(raw, name)
        return None if value is None else parser(value, f"{where}.{name}", warnings)

    filter_devices = None
    raw_filter = _json_field(raw, "filterdevices")
    if raw_filter is not None:
        if not isinstance(raw_filter, Mapping):
            raise ConfigError(f"{where}.filterdevices", f"expected object, got {describe(raw_filter)}")
        uuids = _json_field(raw_filter, "uuid")
        indexes = _json_field(raw_filter, "index")
        filter_devices = FilterDevices(
            uuid=()
            if uuids is None
            else list_field(_strict_str)(uuids, f"{where}.filterdevices.uuid", warnings),
            index=()
            if indexes is None
            else list_field(uint_field)(indexes, f"{where}.filterdevices.index", warnings),
        )
    return NodeConfigEntry(
        name=get("name", _strict_str) or "",
        operating_mode=get("operatingmode", _strict_str) or "",
        device_split_count=get("devicesplitcount", uint_field),
        device_memory_scaling=get("devicememoryscaling", float_field),
        device_core_scaling=get("devicecorescaling", float_field),
        lib_cuda_log_level=get("libcudaloglevel", _strict_str),
        mig_strategy=get("migstrategy", _strict_str) or "",
        filter_devices=filter_devices,
        extra=extra,
    )


def parse_node_config(text: str) -> NodeConfig:
    """Parse ``config.json`` (``{"nodeconfig": [...]}``), keys matched case-insensitively like Go."""
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise ConfigError("config.json", f"invalid JSON: {e}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError("config.json", f"expected object, got {describe(raw)}")
    warnings: list[str] = []
    extra = {k: v for k, v in raw.items() if k.casefold() != "nodeconfig"}
    for key in extra:
        warnings.append(f"{key}: unknown key (kept, not used)")
    entries_raw = _json_field(raw, "nodeconfig")
    entries = () if entries_raw is None else list_field(_node_entry)(entries_raw, "nodeconfig", warnings)
    return NodeConfig(entries=entries, extra=extra, warnings=tuple(warnings))


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSettings:
    """What the device plugin on one node actually uses (node spec §2.2 merge)."""

    operating_mode: str
    device_split_count: int
    device_memory_scaling: float
    device_core_scaling: float
    lib_cuda_log_level: str
    filter_devices: FilterDevices | None


def node_settings(config: NvidiaConfig, node_config: NodeConfig | None, node_name: str) -> NodeSettings:
    """Merge the YAML values with the node's ``config.json`` entry.

    ``node_config=None`` means the file is missing or unparsable: YAML values and an **empty**
    operating mode (HAMi 2.8 quirk; behaves like ``hami-core``). A file without an entry for this
    node gives the YAML values and ``hami-core``; an entry's non-null fields override.
    """
    base = NodeSettings(
        operating_mode="" if node_config is None else "hami-core",
        device_split_count=config.device_split_count,
        device_memory_scaling=config.device_memory_scaling,
        device_core_scaling=config.device_core_scaling,
        lib_cuda_log_level=config.lib_cuda_log_level,
        filter_devices=None,
    )
    entry = None if node_config is None else node_config.entry_for(node_name)
    if entry is None:
        return base
    overrides: dict[str, Any] = {"operating_mode": entry.operating_mode or "hami-core"}
    for name in ("device_split_count", "device_memory_scaling", "device_core_scaling", "lib_cuda_log_level"):
        value = getattr(entry, name)
        if value is not None:
            overrides[name] = value
    overrides["filter_devices"] = entry.filter_devices
    return dataclasses.replace(base, **overrides)
