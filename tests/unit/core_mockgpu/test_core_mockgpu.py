"""One mock node, one set of GPU UUIDs: the core's mock GPUs and every role's reading of them."""

from __future__ import annotations

import json

import pytest

from hami.core.errors import ConfigError
from hami.core.mockgpu import (
    DEFAULT_MOCK_MEMORY_MIB,
    DEFAULT_MOCK_MODEL,
    MockGpu,
    mock_gpu_document,
    mock_gpu_specs,
    mock_gpu_uuid,
    parse_mock_gpu_document,
    parse_mock_gpu_text,
)
from hami.deviceplugin.backends.mock import gpus_from_document as plugin_gpus
from hami.deviceplugin.backends.mock import mock_uuid as plugin_uuid
from hami.dra.devices import gpus_from_document as dra_gpus
from hami.monitor.gpuinfo import host_gpus_from_mock
from hami.monitor.gpuinfo import mock_gpus as monitor_mock_gpus
from hami.simulator.scenario import NodeSpec


def test_uuids_are_deterministic_per_node_and_index() -> None:
    first = mock_gpu_uuid("node-1", 0)
    assert first == mock_gpu_uuid("node-1", 0) and first.startswith("GPU-") and len(first) == 40
    assert len({mock_gpu_uuid(n, i) for n in ("node-1", "node-2") for i in range(4)}) == 8
    # Pinned: mock nodes keep the UUIDs they registered before the function moved to the core.
    assert first == "GPU-d157177f-4a4b-5b13-acac-0890377916d0" == plugin_uuid("node-1", 0)


def test_every_role_reads_the_simulators_file_with_the_same_uuids() -> None:
    spec = NodeSpec(name="node-7", gpus=3, gpu_model="NVIDIA H100 80GB HBM3", gpu_memory_mib=81559)
    text = json.dumps(spec.mock_gpu_document())  # <state>/node-7/mock-gpus.json of the embedded cluster
    doc = json.loads(text)
    wanted = [mock_gpu_uuid("node-7", i) for i in range(3)]
    assert [g.uuid for g in plugin_gpus("node-7", doc, source="f")] == wanted
    assert [g.uuid for g in dra_gpus("node-7", doc, source="f")] == wanted
    host = host_gpus_from_mock(parse_mock_gpu_text("node-7", text, source="mock-gpus.json"))
    assert [g.uuid for g in host] == wanted
    assert [(g.index, g.name, g.memory_total, g.memory_used) for g in host] == [
        (i, "NVIDIA H100 80GB HBM3", 81559 * 1048576, 0) for i in range(3)
    ]
    assert [g.uuid for g in monitor_mock_gpus(3, node_name="node-7")] == wanted  # --mock-gpus 3
    # The explicit form carries its UUIDs: a reader given another node name still agrees.
    explicit = mock_gpu_document(parse_mock_gpu_document("node-7", doc, source="f"))
    assert [g.uuid for g in plugin_gpus("elsewhere", explicit, source="f")] == wanted
    assert [g.uuid for g in dra_gpus("elsewhere", explicit, source="f")] == wanted


def test_document_round_trip_keeps_every_field() -> None:
    gpus = (
        MockGpu(
            uuid="GPU-x", index=0, model="NVIDIA L4", memory_mib=23034, numa_node=1, pci_bus_id="0000:3b:00.0"
        ),
        *mock_gpu_specs("n", 2)[1:],
    )
    parsed = parse_mock_gpu_document("other", json.loads(json.dumps(mock_gpu_document(gpus))), source="f")
    assert parsed == gpus
    assert parsed[1].model == DEFAULT_MOCK_MODEL and parsed[1].memory_mib == DEFAULT_MOCK_MEMORY_MIB


def test_yaml_list_form_defaults_and_numa() -> None:
    text = (
        "gpus:\n- {uuid: GPU-a, model: NVIDIA T4, memory: 15360, numa: 0}\n- {numa: -1, name: NVIDIA A10}\n"
    )
    a, b = parse_mock_gpu_text("n", text, source="gpus.yaml")
    assert (a.uuid, a.model, a.memory_mib, a.numa_node) == ("GPU-a", "NVIDIA T4", 15360, 0)
    assert (b.uuid, b.model, b.numa_node, b.pci_bus_id) == (
        mock_gpu_uuid("n", 1),
        "NVIDIA A10",
        None,
        "0000:11:00.0",
    )


@pytest.mark.parametrize(
    ("text", "source", "match"),
    [
        ("{", "f.json", "not valid JSON"),
        ("gpus: [", "f.yaml", "not valid YAML"),
        ("[1, 2]", "f.json", "expected a mapping at the top level"),
        ('{"model": "x"}', "f.json", r"f.json.count: expected an integer, got None"),
        ('{"count": -1}', "f.json", r"f.json.count: must be >= 0"),
        ('{"count": 1, "memory": 0}', "f.json", r"f.json.memory: must be > 0 MiB"),
        ('{"count": 1, "model": " "}', "f.json", r"f.json.model: must not be empty"),
        ('{"gpus": {}}', "f.json", r"f.json.gpus: expected a list"),
        ('{"gpus": [1]}', "f.json", r"gpus\[0\]: expected a mapping"),
        ('{"gpus": [{"memory": "lots"}]}', "f.json", r"gpus\[0\].memory: expected an integer"),
        ('{"gpus": [{"numa": "0"}]}', "f.json", r"gpus\[0\].numa: expected an integer or null"),
        (
            '{"gpus": [{"uuid": "GPU-a"}, {"uuid": "GPU-a"}]}',
            "f.json",
            r"gpus\[1\].uuid: duplicate UUID GPU-a",
        ),
    ],
)
def test_bad_files_name_what_is_wrong(text: str, source: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_mock_gpu_text("n", text, source=source)


def test_flag_values_are_checked() -> None:
    with pytest.raises(ConfigError, match="--mock-gpus"):
        mock_gpu_specs("n", -1)
    with pytest.raises(ConfigError, match="--mock-memory"):
        mock_gpu_specs("n", 1, memory_mib=0)
    with pytest.raises(ConfigError, match="--mock-model"):
        mock_gpu_specs("n", 1, model="")
    assert mock_gpu_specs("n", 0) == ()
