from __future__ import annotations

import pytest

from hami.core.deviceconfig import DeviceConfig, NvidiaConfig, known_vendor_sections, parse_device_config
from hami.core.errors import ConfigError
from hami.core.model import MigTemplate
from hami.core.nodeconfig import FilterDevices, node_settings, parse_node_config

CHART_LIKE = """
nvidia:
  resourceCountName: nvidia.com/gpu
  resourceMemoryName: nvidia.com/gpumem
  resourceMemoryPercentageName: nvidia.com/gpumem-percentage
  resourceCoreName: nvidia.com/gpucores
  resourcePriorityName: nvidia.com/priority
  overwriteEnv: false
  defaultMemory: 0
  defaultCores: 0
  defaultGPUNum: 1
  memoryFactor: 1
  deviceSplitCount: 10
  deviceMemoryScaling: 1
  deviceCoreScaling: 1
  gpuCorePolicy: default
  libCudaLogLevel: 1
  runtimeClassName: ""
  knownMigGeometries:
  - models: [ "A100-SXM4-40GB", "A100-40GB-PCIe", "A100-PCIE-40GB" ]
    allowedGeometries:
      - - name: 1g.5gb
          core: 14
          memory: 5120
          count: 7
      - - name: 1g.5gb
          core: 14
          memory: 5120
          count: 1
        - name: 2g.10gb
          core: 28
          memory: 10240
          count: 3
cambricon:
  resourceCountName: cambricon.com/vmlu
  resourceMemoryName: cambricon.com/mlu.smlu.vmemory
  resourceCoreName: cambricon.com/mlu.smlu.vcore
hygon:
  resourceCountName: hygon.com/dcunum
  memoryFactor: 1
iluvatars:
- chipName: MR-V100
  commonWord: MR-V100
  resourceCountName: iluvatar.ai/MR-V100-vgpu
  resourceMemoryName: iluvatar.ai/MR-V100.vMem
  resourceCoreName: iluvatar.ai/MR-V100.vCore
vnpus:
- chipName: 910B3
  commonWord: Ascend910B3
  resourceName: huawei.com/Ascend910B3
  resourceMemoryName: huawei.com/Ascend910B3-memory
  memoryAllocatable: 65536
  memoryCapacity: 65536
  aiCore: 20
  aiCPU: 7
  templates:
    - name: vir05_1c_16g
      memory: 16384
      aiCore: 5
      aiCPU: 1
"""


def test_empty_text_gives_chart_defaults():
    config = parse_device_config("")
    assert config == DeviceConfig()
    nvidia = config.nvidia
    assert (nvidia.resource_count_name, nvidia.resource_memory_name, nvidia.resource_core_name) == (
        "nvidia.com/gpu",
        "nvidia.com/gpumem",
        "nvidia.com/gpucores",
    )
    assert nvidia.resource_memory_percentage_name == "nvidia.com/gpumem-percentage"
    assert nvidia.resource_priority_name == "nvidia.com/priority"
    assert (nvidia.default_memory, nvidia.default_cores, nvidia.default_gpu_num, nvidia.memory_factor) == (
        0,
        0,
        1,
        1,
    )
    assert (nvidia.device_split_count, nvidia.device_memory_scaling, nvidia.device_core_scaling) == (
        10,
        1.0,
        1.0,
    )
    assert (nvidia.gpu_core_policy, nvidia.lib_cuda_log_level, nvidia.overwrite_env) == (
        "default",
        "1",
        False,
    )
    assert config.cambricon.resource_count_name == "cambricon.com/vmlu"
    assert [i.common_word for i in config.iluvatars] == ["MR-V100", "MR-V50", "BI-V150", "BI-V100"]
    assert config.iluvatars[3].resource_memory_name == "iluvatar.ai/BI-V100.vMem"
    assert config.warnings == ()


def test_default_mig_geometries_match_the_chart_a100_example():
    geometries = NvidiaConfig().mig_geometries_for("NVIDIA A100-PCIE-40GB")
    assert geometries == (
        (MigTemplate(name="1g.5gb", core=14, memory=5120, count=7),),
        (
            MigTemplate(name="1g.5gb", core=14, memory=5120, count=1),
            MigTemplate(name="2g.10gb", core=28, memory=10240, count=3),
        ),
        (MigTemplate(name="3g.20gb", core=42, memory=20480, count=2),),
        (MigTemplate(name="7g.40gb", core=100, memory=40960, count=1),),
    )
    assert NvidiaConfig().mig_geometries_for("NVIDIA A30")[0] == (
        MigTemplate(name="1g.6gb", core=25, memory=6144, count=4),
    )
    assert NvidiaConfig().mig_geometries_for("NVIDIA A10") == ()


def test_chart_like_file():
    config = parse_device_config(CHART_LIKE)
    assert config.warnings == ()
    assert config.nvidia.lib_cuda_log_level == "1"  # unquoted YAML int into a string field
    assert len(config.nvidia.known_mig_geometries) == 1
    (entry,) = config.nvidia.known_mig_geometries
    assert entry.models == ("A100-SXM4-40GB", "A100-40GB-PCIe", "A100-PCIE-40GB")
    assert entry.geometries[1][1] == MigTemplate(name="2g.10gb", core=28, memory=10240, count=3)
    assert config.hygon.resource_memory_name == "hygon.com/dcumem"  # absent key -> chart default
    assert [i.chip_name for i in config.iluvatars] == ["MR-V100"]
    (vnpu,) = config.vnpus
    assert (vnpu.common_word, vnpu.memory_capacity, vnpu.templates[0].ai_core) == ("Ascend910B3", 65536, 5)


def test_unknown_keys_are_kept_and_reported():
    config = parse_device_config(
        "nvidia:\n  preConfiguredDeviceMemory: 0\n  deviceSplitCount: 4\n"
        "vastai:\n  resourceCountName: vastaitech.com/va\n"
        "metax:\n  sgpuTopologyAware: true\n  newKnob: x\n"
    )
    assert config.nvidia.device_split_count == 4
    assert config.nvidia.extra == {"preConfiguredDeviceMemory": 0}
    assert config.extra == {"vastai": {"resourceCountName": "vastaitech.com/va"}}
    assert config.metax.sgpu_topology_aware is True and config.metax.extra == {"newKnob": "x"}
    assert config.warnings == (
        "nvidia.preConfiguredDeviceMemory: unknown key (kept, not used)",
        "vastai: unknown key (kept, not used)",
        "metax.newKnob: unknown key (kept, not used)",
    )


def test_null_means_chart_default():
    assert parse_device_config("nvidia:\n  deviceSplitCount: null\n").nvidia.device_split_count == 10
    assert parse_device_config("nvidia:\n").nvidia == NvidiaConfig()


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("nvidia:\n  defaultMemory: abc\n", "nvidia.defaultMemory", "expected integer, got 'abc'"),
        ("nvidia:\n  defaultMemory: true\n", "nvidia.defaultMemory", "expected integer, got True"),
        ("nvidia:\n  defaultCores: 1.5\n", "nvidia.defaultCores", "expected integer, got 1.5"),
        ("nvidia:\n  memoryFactor: 3000000000\n", "nvidia.memoryFactor", "out of range"),
        ("nvidia:\n  deviceSplitCount: -1\n", "nvidia.deviceSplitCount", "out of range"),
        ("nvidia:\n  deviceMemoryScaling: lots\n", "nvidia.deviceMemoryScaling", "expected number"),
        ("nvidia:\n  deviceCoreScaling: .nan\n", "nvidia.deviceCoreScaling", "finite"),
        ("nvidia:\n  overwriteEnv: 'false'\n", "nvidia.overwriteEnv", "expected boolean, got 'false'"),
        ("nvidia:\n  resourceCountName: [a]\n", "nvidia.resourceCountName", "expected string, got list"),
        ("nvidia: 3\n", "nvidia", "expected mapping"),
        ("nvidia:\n  knownMigGeometries: {}\n", "nvidia.knownMigGeometries", "expected list"),
        (
            "nvidia:\n  knownMigGeometries:\n  - models: [A30]\n"
            "    allowedGeometries: [[{name: x, memory: big}]]\n",
            "nvidia.knownMigGeometries[0].allowedGeometries[0][0].memory",
            "expected integer",
        ),
        ("iluvatars: {}\n", "iluvatars", "expected list"),
        ("vnpus:\n- templates:\n  - aiCore: x\n", "vnpus[0].templates[0].aiCore", "expected integer"),
        ("- a\n", "", "expected mapping"),
        ("nvidia: [\n", "device-config.yaml", "invalid YAML"),
    ],
)
def test_wrong_types_name_the_dotted_key(text, key, reason):
    with pytest.raises(ConfigError) as info:
        parse_device_config(text)
    assert info.value.key == key
    assert reason in info.value.reason
    assert key in str(info.value)


def test_integral_float_is_an_integer():
    assert parse_device_config("nvidia:\n  defaultMemory: 2048.0\n").nvidia.default_memory == 2048


def test_known_vendor_sections():
    assert set(known_vendor_sections()) == {
        "nvidia",
        "cambricon",
        "hygon",
        "metax",
        "mthreads",
        "iluvatars",
        "enflame",
        "kunlun",
        "awsneuron",
        "amd",
        "vnpus",
    }


# ---------------------------------------------------------------- per-node config.json (node spec §2.2)

NODE_JSON = """
{"nodeconfig": [
  {"name": "node-a", "operatingmode": "mig", "devicesplitcount": 7, "devicememoryscaling": 1.5,
   "devicecorescaling": null, "libcudaloglevel": "3", "migstrategy": "none",
   "filterdevices": {"uuid": ["GPU-x"], "index": [2]}},
  {"Name": "node-b", "DeviceSplitCount": 3, "extra": 1},
  {"name": "node-a", "devicesplitcount": 99}
]}
"""


def test_node_config_parse_and_merge():
    node_config = parse_node_config(NODE_JSON)
    assert node_config.warnings == ("nodeconfig[1].extra: unknown key (kept, not used)",)
    base = NvidiaConfig(device_split_count=10, device_core_scaling=2.0)

    a = node_settings(base, node_config, "node-a")  # the first matching entry wins
    assert (a.operating_mode, a.device_split_count, a.device_memory_scaling) == ("mig", 7, 1.5)
    assert a.device_core_scaling == 2.0  # null does not override
    assert a.lib_cuda_log_level == "3"
    assert a.filter_devices == FilterDevices(uuid=("GPU-x",), index=(2,))

    b = node_settings(base, node_config, "node-b")  # keys match case-insensitively, like Go
    assert (b.operating_mode, b.device_split_count) == ("hami-core", 3)

    other = node_settings(base, node_config, "node-z")
    assert (other.operating_mode, other.device_split_count, other.filter_devices) == ("hami-core", 10, None)

    missing = node_settings(base, None, "node-a")  # file missing or unparsable: 2.8 quirk, empty mode
    assert (missing.operating_mode, missing.device_split_count) == ("", 10)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('{"nodeconfig": [{"name": "a", "devicesplitcount": "7"}]}', "nodeconfig[0].devicesplitcount"),
        ('{"nodeconfig": [{"name": 3}]}', "nodeconfig[0].name"),
        ('{"nodeconfig": {}}', "nodeconfig"),
        ('{"nodeconfig": [{"filterdevices": {"index": [-1]}}]}', "nodeconfig[0].filterdevices.index[0]"),
        ("[]", "config.json"),
        ("{", "config.json"),
    ],
)
def test_node_config_errors(text, key):
    with pytest.raises(ConfigError) as info:
        parse_node_config(text)
    assert info.value.key == key
