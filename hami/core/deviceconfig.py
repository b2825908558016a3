"""HAMi's device configuration: ``device-config.yaml`` (ConfigMap ``hami-scheduler-device``, spec
hami-scheduler-spec.md §9). The device plugin's per-node ``config.json`` is parsed by
:mod:`hami.core.nodeconfig` (re-exported here: :func:`parse_node_config`, :func:`node_settings`).

Pure: callers read the files and pass the text. Rules:

* A key that is absent (or ``null``) takes the chart's value, so a partial file behaves like the
  chart-rendered one (HAMi itself would take Go zero values, and panic on some of them).
* A key of the wrong type is a :class:`ConfigError` naming the dotted key
  (``nvidia.defaultMemory: expected integer, got 'abc'``).
* Unknown keys are kept (``extra`` of the enclosing section) and reported in ``warnings``, which the
  caller logs; sections not described by §9 are kept raw in :attr:`DeviceConfig.extra`.
* String fields accept any YAML scalar (Go's yaml.v2 stores the scalar's text, and the chart
  renders e.g. ``libCudaLogLevel: 1`` unquoted); integer fields accept integral numbers only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from hami.core import keys
from hami.core.configfields import (
    Parser,
    bool_field,
    describe,
    field_meta,
    float_field,
    int32_field,
    integer_field,
    list_field,
    parse_section,
    section_field,
    setting,
    str_field,
    str_list_field,
    uint_field,
)
from hami.core.errors import ConfigError
from hami.core.model import MigTemplate
from hami.core.nodeconfig import (
    FilterDevices,
    NodeConfig,
    NodeConfigEntry,
    NodeSettings,
    node_settings,
    parse_node_config,
)

# --------------------------------------------------------------------------------------- MIG geometries


@dataclass(frozen=True, slots=True, kw_only=True)
class MigGeometrySet:
    """One ``knownMigGeometries`` entry: the GPU models it applies to and their ordered geometries."""

    models: tuple[str, ...]
    geometries: tuple[tuple[MigTemplate, ...], ...]


def _mig_template(raw: object, where: str, warnings: list[str]) -> MigTemplate:
    if not isinstance(raw, Mapping):
        raise ConfigError(where, f"expected mapping, got {describe(raw)}")
    known = {"name", "core", "memory", "count"}
    for key in raw:
        if key not in known:
            warnings.append(f"{where}.{key}: unknown key (ignored)")

    def get(key: str, parser: Parser, default: Any) -> Any:
        value = raw.get(key)
        return default if value is None else parser(value, f"{where}.{key}", warnings)

    return MigTemplate(
        name=get("name", str_field, ""),
        core=get("core", int32_field, 0),
        memory=get("memory", int32_field, 0),
        count=get("count", int32_field, 0),
    )


def _geometry_set(raw: object, where: str, warnings: list[str]) -> MigGeometrySet:
    if not isinstance(raw, Mapping):
        raise ConfigError(where, f"expected mapping, got {describe(raw)}")
    for key in raw:
        if key not in ("models", "allowedGeometries"):
            warnings.append(f"{where}.{key}: unknown key (ignored)")
    models = raw.get("models")
    geometries = raw.get("allowedGeometries")
    return MigGeometrySet(
        models=() if models is None else str_list_field(models, f"{where}.models", warnings),
        geometries=()
        if geometries is None
        else list_field(list_field(_mig_template))(geometries, f"{where}.allowedGeometries", warnings),
    )


def _geometry(name: str, core: int, memory: int, count: int) -> MigTemplate:
    return MigTemplate(name=name, core=core, memory=memory, count=count)


def _standard_geometries(sizes: tuple[int, int, int, int], names: tuple[str, str, str, str]) -> Any:
    """The 7 × 1g / 1g + 3 × 2g / 2 × 3g / 1 × 7g pattern the chart uses for A100/H100-class GPUs."""
    one, two, three, seven = sizes
    n1, n2, n3, n7 = names
    return (
        (_geometry(n1, 14, one, 7),),
        (_geometry(n1, 14, one, 1), _geometry(n2, 28, two, 3)),
        (_geometry(n3, 42, three, 2),),
        (_geometry(n7, 100, seven, 1),),
    )


# A30 and A100-40GB are the chart's values (node spec §6); the other entries follow the same
# 7/1+3/2/1 pattern (node spec §6) with NVIDIA's profile sizes in MiB.
DEFAULT_MIG_GEOMETRIES: Final = (
    MigGeometrySet(
        models=("A30",),
        geometries=(
            (_geometry("1g.6gb", 25, 6144, 4),),
            (_geometry("2g.12gb", 50, 12288, 2),),
            (_geometry("4g.24gb", 100, 24576, 1),),
        ),
    ),
    MigGeometrySet(
        models=("A100-SXM4-40GB", "A100-40GB-PCIe", "A100-PCIE-40GB"),
        geometries=_standard_geometries(
            (5120, 10240, 20480, 40960), ("1g.5gb", "2g.10gb", "3g.20gb", "7g.40gb")
        ),
    ),
    MigGeometrySet(
        models=("A100-SXM4-80GB", "A100-80GB-PCIe", "A100-PCIE-80GB"),
        geometries=_standard_geometries(
            (10240, 20480, 40960, 80896), ("1g.10gb", "2g.20gb", "3g.40gb", "7g.79gb")
        ),
    ),
    MigGeometrySet(
        models=("H100-PCIE-80GB", "H100-SXM5-80GB", "H100 80GB HBM3"),
        geometries=_standard_geometries(
            (10240, 20480, 40960, 81920), ("1g.10gb", "2g.20gb", "3g.40gb", "7g.80gb")
        ),
    ),
    MigGeometrySet(
        models=("H100-PCIE-94GB", "H100-SXM5-94GB", "H100 NVL"),
        geometries=_standard_geometries(
            (12288, 24576, 48128, 96256), ("1g.12gb", "2g.24gb", "3g.47gb", "7g.94gb")
        ),
    ),
    MigGeometrySet(
        models=("H20", "H100 on GH200"),
        geometries=_standard_geometries(
            (12288, 24576, 49152, 98304), ("1g.12gb", "2g.24gb", "3g.48gb", "7g.96gb")
        ),
    ),
    MigGeometrySet(
        models=("H200 NVL", "H200-SXM5"),
        geometries=_standard_geometries(
            (18432, 35840, 72704, 144384), ("1g.18gb", "2g.35gb", "3g.71gb", "7g.141gb")
        ),
    ),
    MigGeometrySet(
        models=("B200",),
        geometries=_standard_geometries(
            (23552, 46080, 92160, 184320), ("1g.23gb", "2g.45gb", "3g.90gb", "7g.180gb")
        ),
    ),
)


# --------------------------------------------------------------------------------------- vendor sections


@dataclass(frozen=True, slots=True, kw_only=True)
class NvidiaConfig:
    """The ``nvidia:`` section (spec §9 table; defaults are the chart's)."""

    resource_count_name: str = setting("resourceCountName", keys.RESOURCE_GPU)
    resource_memory_name: str = setting("resourceMemoryName", keys.RESOURCE_GPUMEM)
    resource_memory_percentage_name: str = setting(
        "resourceMemoryPercentageName", keys.RESOURCE_GPUMEM_PERCENTAGE
    )
    resource_core_name: str = setting("resourceCoreName", keys.RESOURCE_GPUCORES)
    resource_priority_name: str = setting("resourcePriorityName", keys.RESOURCE_PRIORITY)
    overwrite_env: bool = setting("overwriteEnv", False, bool_field)
    default_memory: int = setting("defaultMemory", 0, int32_field)  # MiB; 0 = whole card (100 %)
    default_cores: int = setting("defaultCores", 0, int32_field)
    default_gpu_num: int = setting("defaultGPUNum", 1, int32_field)
    memory_factor: int = setting("memoryFactor", 1, int32_field)
    device_split_count: int = setting("deviceSplitCount", 10, uint_field)
    device_memory_scaling: float = setting("deviceMemoryScaling", 1.0, float_field)
    device_core_scaling: float = setting("deviceCoreScaling", 1.0, float_field)
    lib_cuda_log_level: str = setting("libCudaLogLevel", "1")
    disable_core_limit: bool = setting("disableCoreLimit", False, bool_field)
    gpu_core_policy: str = setting("gpuCorePolicy", "default")
    runtime_class_name: str = setting("runtimeClassName", "")
    known_mig_geometries: tuple[MigGeometrySet, ...] = setting(
        "knownMigGeometries", DEFAULT_MIG_GEOMETRIES, list_field(_geometry_set)
    )
    extra: Mapping[str, object] = field(default_factory=dict)

    def mig_geometries_for(self, device_type: str) -> tuple[tuple[MigTemplate, ...], ...]:
        """Geometries of the first entry one of whose models occurs in ``device_type`` (spec §4.4)."""
        for entry in self.known_mig_geometries:
            if any(model in device_type for model in entry.models):
                return entry.geometries
        return ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CambriconConfig:
    resource_count_name: str = setting("resourceCountName", "cambricon.com/vmlu")
    resource_memory_name: str = setting("resourceMemoryName", "cambricon.com/mlu.smlu.vmemory")
    resource_core_name: str = setting("resourceCoreName", "cambricon.com/mlu.smlu.vcore")
    extra: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class HygonConfig:
    resource_count_name: str = setting("resourceCountName", "hygon.com/dcunum")
    resource_memory_name: str = setting("resourceMemoryName", "hygon.com/dcumem")
    resource_core_name: str = setting("resourceCoreName", "hygon.com/dcucores")
    memory_factor: int = setting("memoryFactor", 1, int32_field)
    extra: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class MetaxConfig:
    resource_count_name: str = setting("resourceCountName", "metax-tech.com/gpu")
    resource_vcount_name: str = setting("resourceVCountName", "metax-tech.com/sgpu")
    resource_vmemory_name: str = setting("resourceVMemoryName", "metax-tech.com/vmemory")
    resource_vcore_name: str = setting("resourceVCoreName", "metax-tech.com/vcore")
    sgpu_topology_aware: bool = setting("sgpuTopologyAware", False, bool_field)
    extra: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class EnflameConfig:
    resource_name_gcu: str = setting("resourceNameGCU", "enflame.com/gcu")
    resource_name_vgcu: str = setting("resourceNameVGCU", "enflame.com/vgcu")
    resource_name_vgcu_percentage: str = setting("resourceNameVGCUPercentage", "enflame.com/vgcu-percentage")
    extra: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class MthreadsConfig:
    resource_count_name: str = setting("resourceCountName", "mthreads.com/vgpu")
    resource_memory_name: str = setting("resourceMemoryName", "mthreads.com/sgpu-memory")
    resource_core_name: str = setting("resourceCoreName", "mthreads.com/sgpu-core")
    extra: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class IluvatarConfig:
    chip_name: str = setting("chipName", "")
    common_word: str = setting("commonWord", "")
    resource_count_name: str = setting("resourceCountName", "")
    resource_memory_name: str = setting("resourceMemoryName", "")
    resource_core_name: str = setting("resourceCoreName", "")
    extra: Mapping[str, object] = field(default_factory=dict)


def _iluvatar(chip: str) -> IluvatarConfig:
    return IluvatarConfig(
        chip_name=chip,
        common_word=chip,
        resource_count_name=f"iluvatar.ai/{chip}-vgpu",
        resource_memory_name=f"iluvatar.ai/{chip}.vMem",
        resource_core_name=f"iluvatar.ai/{chip}.vCore",
    )


DEFAULT_ILUVATARS: Final = tuple(_iluvatar(chip) for chip in ("MR-V100", "MR-V50", "BI-V150", "BI-V100"))


@dataclass(frozen=True, slots=True, kw_only=True)
class KunlunConfig:
    resource_count_name: str = setting("resourceCountName", "kunlunxin.com/xpu")
    resource_vcount_name: str = setting("resourceVCountName", "kunlunxin.com/vxpu")
    resource_vmemory_name: str = setting("resourceVMemoryName", "kunlunxin.com/vxpu-memory")
    extra: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class AWSNeuronConfig:
    resource_count_name: str = setting("resourceCountName", "aws.amazon.com/neuron")
    resource_core_name: str = setting("resourceCoreName", "aws.amazon.com/neuroncore")
    extra: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class AMDConfig:
    resource_count_name: str = setting("resourceCountName", "amd.com/gpu")
    resource_memory_name: str = setting("resourceMemoryName", "")
    extra: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class VNPUTemplate:
    name: str = setting("name", "")
    memory: int = setting("memory", 0, int32_field)
    ai_core: int = setting("aiCore", 0, int32_field)
    ai_cpu: int = setting("aiCPU", 0, int32_field)
    extra: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class VNPUConfig:
    """One ``vnpus[]`` entry (Ascend); the chart's list is :data:`DEFAULT_VNPUS`."""

    chip_name: str = setting("chipName", "")
    common_word: str = setting("commonWord", "")
    resource_name: str = setting("resourceName", "")
    resource_memory_name: str = setting("resourceMemoryName", "")
    memory_allocatable: int = setting("memoryAllocatable", 0, integer_field(0, 2**63 - 1))
    memory_capacity: int = setting("memoryCapacity", 0, integer_field(0, 2**63 - 1))
    memory_factor: int = setting("memoryFactor", 1, int32_field)
    ai_core: int = setting("aiCore", 0, int32_field)
    ai_cpu: int = setting("aiCPU", 0, int32_field)
    templates: tuple[VNPUTemplate, ...] = setting("templates", (), list_field(section_field(VNPUTemplate)))
    extra: Mapping[str, object] = field(default_factory=dict)


def _vnpu(
    chip: str,
    word: str,
    allocatable: int,
    capacity: int,
    ai_core: int,
    ai_cpu: int,
    templates: tuple[tuple[str, int, int, int], ...],
) -> VNPUConfig:
    return VNPUConfig(
        chip_name=chip,
        common_word=word,
        resource_name=f"huawei.com/{word}",
        resource_memory_name=f"huawei.com/{word}-memory",
        memory_allocatable=allocatable,
        memory_capacity=capacity,
        ai_core=ai_core,
        ai_cpu=ai_cpu,
        templates=tuple(VNPUTemplate(name=n, memory=m, ai_core=c, ai_cpu=p) for n, m, c, p in templates),
    )


# The chart's ``vnpus`` (charts/hami device-configmap; spec §9): 910A, 910B2, 910B3, 910B4-1, 910B4, 310P3.
DEFAULT_VNPUS: Final = (
    _vnpu("910A", "Ascend910A", 32768, 32768, 30, 0,
          (("vir02", 2184, 2, 0), ("vir04", 4369, 4, 0), ("vir08", 8738, 8, 0), ("vir16", 17476, 16, 0))),
    _vnpu("910B2", "Ascend910B2", 65536, 65536, 24, 6,
          (("vir03_1c_8g", 8192, 3, 1), ("vir06_1c_16g", 16384, 6, 1), ("vir12_3c_32g", 32768, 12, 3))),
    _vnpu("910B3", "Ascend910B3", 65536, 65536, 20, 7,
          (("vir05_1c_16g", 16384, 5, 1), ("vir10_3c_32g", 32768, 10, 3))),
    _vnpu("910B4-1", "Ascend910B4-1", 65536, 65536, 20, 7,
          (("vir05_1c_16g", 16384, 5, 1), ("vir10_3c_32g", 32768, 10, 3))),
    _vnpu("910B4", "Ascend910B4", 32768, 32768, 20, 7,
          (("vir05_1c_8g", 8192, 5, 1), ("vir10_3c_16g", 16384, 10, 3))),
    _vnpu("310P3", "Ascend310P", 21527, 24576, 8, 7,
          (("vir01", 3072, 1, 1), ("vir02", 6144, 2, 2), ("vir04", 12288, 4, 4))),
)  # fmt: skip


_DEFAULTS: Final[Mapping[str, Any]] = {
    "nvidia": NvidiaConfig(),
    "cambricon": CambriconConfig(),
    "hygon": HygonConfig(),
    "metax": MetaxConfig(),
    "mthreads": MthreadsConfig(),
    "enflame": EnflameConfig(),
    "kunlun": KunlunConfig(),
    "awsneuron": AWSNeuronConfig(),
    "amd": AMDConfig(),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceConfig:
    """The whole ``device-config.yaml``. ``warnings`` lists unknown keys for the caller to log."""

    nvidia: NvidiaConfig = field(
        default=_DEFAULTS["nvidia"], metadata=field_meta("nvidia", section_field(NvidiaConfig))
    )
    cambricon: CambriconConfig = field(
        default=_DEFAULTS["cambricon"], metadata=field_meta("cambricon", section_field(CambriconConfig))
    )
    hygon: HygonConfig = field(
        default=_DEFAULTS["hygon"], metadata=field_meta("hygon", section_field(HygonConfig))
    )
    metax: MetaxConfig = field(
        default=_DEFAULTS["metax"], metadata=field_meta("metax", section_field(MetaxConfig))
    )
    mthreads: MthreadsConfig = field(
        default=_DEFAULTS["mthreads"], metadata=field_meta("mthreads", section_field(MthreadsConfig))
    )
    iluvatars: tuple[IluvatarConfig, ...] = setting(
        "iluvatars", DEFAULT_ILUVATARS, list_field(section_field(IluvatarConfig))
    )
    enflame: EnflameConfig = field(
        default=_DEFAULTS["enflame"], metadata=field_meta("enflame", section_field(EnflameConfig))
    )
    kunlun: KunlunConfig = field(
        default=_DEFAULTS["kunlun"], metadata=field_meta("kunlun", section_field(KunlunConfig))
    )
    awsneuron: AWSNeuronConfig = field(
        default=_DEFAULTS["awsneuron"], metadata=field_meta("awsneuron", section_field(AWSNeuronConfig))
    )
    amd: AMDConfig = field(default=_DEFAULTS["amd"], metadata=field_meta("amd", section_field(AMDConfig)))
    vnpus: tuple[VNPUConfig, ...] = setting("vnpus", DEFAULT_VNPUS, list_field(section_field(VNPUConfig)))
    extra: Mapping[str, object] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def parse_device_config(text: str) -> DeviceConfig:
    """Parse the YAML text of ``device-config.yaml``. Empty text gives the chart defaults."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("device-config.yaml", f"invalid YAML: {e}") from None
    warnings: list[str] = []
    config: DeviceConfig = parse_section(DeviceConfig, raw, "", warnings)
    return dataclasses.replace(config, warnings=tuple(warnings))


def known_vendor_sections() -> Sequence[str]:
    """The top-level keys :class:`DeviceConfig` types (others are kept raw in ``extra``)."""
    return tuple(f.metadata["key"] for f in dataclasses.fields(DeviceConfig) if "key" in f.metadata)


__all__ = [
    "DEFAULT_ILUVATARS",
    "DEFAULT_MIG_GEOMETRIES",
    "DEFAULT_VNPUS",
    "AMDConfig",
    "AWSNeuronConfig",
    "CambriconConfig",
    "DeviceConfig",
    "EnflameConfig",
    "FilterDevices",
    "HygonConfig",
    "IluvatarConfig",
    "KunlunConfig",
    "MetaxConfig",
    "MigGeometrySet",
    "MthreadsConfig",
    "NodeConfig",
    "NodeConfigEntry",
    "NodeSettings",
    "NvidiaConfig",
    "Parser",
    "VNPUConfig",
    "VNPUTemplate",
    "known_vendor_sections",
    "node_settings",
    "parse_device_config",
    "parse_node_config",
]
