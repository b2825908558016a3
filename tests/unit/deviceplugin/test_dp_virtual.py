"""Virtual device IDs, registration entries and the node-config merge (node spec §2.2, §2.6, §3)."""

from __future__ import annotations

import json

import pytest

from hami.core.deviceconfig import parse_device_config
from hami.core.node_annotations import encode_node_devices
from hami.core.nodeconfig import parse_node_config
from hami.deviceplugin.backend import PhysicalGpu
from hami.deviceplugin.virtual import (
    NodeDeviceSettings,
    device_type,
    kubelet_devices,
    node_device_settings,
    offered_gpus,
    physical_uuid,
    registered_devices,
    virtual_ids,
)

A = "GPU-0b3c1e2a-1111-2222-3333-444455556666"
B = "GPU-7f1a9d00-aaaa-bbbb-cccc-ddddeeeeffff"
GPUS = (
    PhysicalGpu(uuid=A, index=0, name="NVIDIA A100-PCIE-40GB", memory_mib=40960, numa_node=None),
    PhysicalGpu(uuid=B, index=1, name="NVIDIA A100-PCIE-40GB", memory_mib=40960, numa_node=1),
)


def test_virtual_ids_are_uuid_dash_index() -> None:
    assert virtual_ids(A, 3) == (f"{A}-0", f"{A}-1", f"{A}-2")
    assert physical_uuid(f"{A}-7", [A, B]) == A
    assert physical_uuid(f"{A}-x", [A]) is None
    assert physical_uuid(A, [A]) is None  # the bare UUID is not a virtual ID
    assert physical_uuid("GPU-other-0", [A]) is None


def test_kubelet_list_copies_gpu_health_to_every_replica() -> None:
    devices = kubelet_devices(GPUS, {A: True, B: False}, 2)
    assert devices == (
        (f"{A}-0", "Healthy"),
        (f"{A}-1", "Healthy"),
        (f"{B}-0", "Unhealthy"),
        (f"{B}-1", "Unhealthy"),
    )


def test_register_annotation_matches_spec_example() -> None:
    value = encode_node_devices(registered_devices(GPUS, {A: True, B: False}, NodeDeviceSettings()))
    assert value == (
        '[{"id":"GPU-0b3c1e2a-1111-2222-3333-444455556666","count":10,"devmem":40960,"devcore":100,'
        '"type":"NVIDIA A100-PCIE-40GB","mode":"hami-core","health":true,"devicepairscore":{}},'
        '{"id":"GPU-7f1a9d00-aaaa-bbbb-cccc-ddddeeeeffff","index":1,"count":10,"devmem":40960,"devcore":100,'
        '"type":"NVIDIA A100-PCIE-40GB","numa":1,"mode":"hami-core","devicepairscore":{}}]'
    )


def test_scaling_type_prefix_and_mig_mode() -> None:
    gpu = (PhysicalGpu(uuid=A, index=0, name="Tesla V100-PCIE-32GB", memory_mib=32768),)
    scaled = registered_devices(
        gpu, {}, NodeDeviceSettings(memory_scaling=1.5, core_scaling=2.0, split_count=4)
    )
    assert (scaled[0].devmem, scaled[0].devcore, scaled[0].count) == (49152, 200, 4)
    assert scaled[0].type == "NVIDIA-Tesla V100-PCIE-32GB"
    mig = registered_devices(gpu, {}, NodeDeviceSettings(memory_scaling=1.5, core_scaling=2.0, mode="mig"))
    assert (mig[0].devmem, mig[0].devcore, mig[0].mode) == (32768, 100, "mig")
    assert device_type("NVIDIA H100 80GB HBM3") == "NVIDIA H100 80GB HBM3"
    assert scaled[0].devicevendor == ""  # never emitted by the plugin


def test_settings_validation_and_socket_name() -> None:
    assert NodeDeviceSettings().socket_name == "nvidia-gpu.sock"
    with pytest.raises(ValueError, match="deviceSplitCount"):
        NodeDeviceSettings(split_count=0)
    with pytest.raises(ValueError, match="no domain"):
        NodeDeviceSettings(resource_name="gpu")


def test_node_config_overrides_and_filterdevices_applied() -> None:
    device_config = parse_device_config("nvidia:\n  deviceSplitCount: 5\n  deviceMemoryScaling: 1\n")
    node_config = parse_node_config(
        json.dumps(
            {
                "nodeconfig": [
                    {
                        "name": "n1",
                        "devicesplitcount": 3,
                        "devicememoryscaling": 2.0,
                        "libcudaloglevel": "4",
                        "filterdevices": {"uuid": [B], "index": []},
                    },
                    {"name": "n2", "operatingmode": "mig", "filterdevices": {"index": [0]}},
                ]
            }
        )
    )
    n1 = node_device_settings(device_config.nvidia, node_config, "n1")
    assert (n1.split_count, n1.memory_scaling, n1.lib_cuda_log_level, n1.mode) == (3, 2.0, "4", "hami-core")
    assert [g.uuid for g in offered_gpus(GPUS, n1)] == [A]
    n2 = node_device_settings(device_config.nvidia, node_config, "n2")
    assert (n2.split_count, n2.mode) == (5, "mig")
    assert [g.uuid for g in offered_gpus(GPUS, n2)] == [B]
    other = node_device_settings(device_config.nvidia, node_config, "n3")
    assert (other.split_count, other.mode, other.filter_uuids) == (5, "hami-core", frozenset())
    unreadable = node_device_settings(device_config.nvidia, None, "n1")
    assert unreadable.mode == ""  # HAMi 2.8 quirk: mode omitted from the registration
    assert '"mode"' not in encode_node_devices(registered_devices(GPUS, {}, unreadable))
