"""Fuzzing every vendor's node-device decoding: arbitrary registration annotations and capacities give
devices or a DecodeError, never another exception; pod allocations likewise."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hami.core.errors import DecodeError
from hami.core.vendors import BaseVendor, build_registry
from hami.core.vendors.metax import topology_value

REGISTRY = build_registry(enable_ascend=True, enable_iluvatar=True)
VENDORS: list[BaseVendor] = [v for v in REGISTRY if isinstance(v, BaseVendor)]
# One vendor per decoder: Iluvatar chips share one, Ascend template sets another.
ANNOTATION_VENDORS = [
    v for v in VENDORS if v.name in {"DCU", "BI-V100", "Ascend910B3", "XPU", "Metax-SGPU", "Metax-GPU"}
]
CAPACITY_VENDORS = [v for v in VENDORS if v.traits.register_key is None]
NOW = datetime(2026, 1, 20, tzinfo=UTC)
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20,
)
device_objects = st.fixed_dictionaries(
    {},
    optional={
        k: json_values | st.integers(-(2**33), 2**33)
        for k in ("id", "uuid", "index", "count", "devmem", "devcore", "type", "numa", "health", "healthy",
                  "custominfo", "totalDevCount", "totalCompute", "totalVRam", "linkZone", "qosPolicy")
    },
)  # fmt: skip
json_registers = st.lists(device_objects, max_size=4).map(json.dumps) | json_values.map(json.dumps)
legacy_fields = st.text(alphabet=st.characters(blacklist_characters=",:"), max_size=8)
legacy_registers = st.lists(st.lists(legacy_fields, min_size=1, max_size=10).map(",".join), max_size=4).map(
    lambda devices: ":".join(devices) + ":"
)
registers = st.text(max_size=80) | json_registers | legacy_registers


def _keys(vendor: BaseVendor) -> tuple[str, ...]:
    keys = [k for k in (vendor.traits.register_key, vendor.traits.handshake_key) if k]
    return (*keys, "metax-tech.com/gpu.topology.losses", "metax-tech.com/gpu.topology.scores")


def _decodes(vendor: BaseVendor, annotations: Mapping[str, str], capacity: Mapping[str, str]) -> None:
    try:
        devices = vendor.node_devices(annotations, capacity, node="fuzz", labels={})
    except DecodeError:
        return
    for d in devices:
        assert d.devicevendor == vendor.name
        assert (
            vendor.name in d.type or vendor.traits.register_key is not None
        )  # registered types are the plugin's


@pytest.mark.parametrize("vendor", ANNOTATION_VENDORS, ids=lambda v: v.name)
@FUZZ
@given(data=st.data())
def test_registration_annotations_decode_or_raise_decode_error(vendor: BaseVendor, data: Any) -> None:
    annotations = {key: data.draw(registers, label=key) for key in _keys(vendor)}
    _decodes(vendor, annotations, {})
    vendor.check_health(annotations, {}, NOW)


@pytest.mark.parametrize("vendor", CAPACITY_VENDORS, ids=lambda v: v.name)
@FUZZ
@given(data=st.data())
def test_node_capacities_decode_or_raise_decode_error(vendor: BaseVendor, data: Any) -> None:
    quantities = (
        st.integers(-5, 400).map(str) | st.text(max_size=10) | st.sampled_from(["1k", "2Gi", "1.5", "1e3"])
    )
    names = [n for n in (*vendor.names.all, "enflame.com/gcu-count", "aws.amazon.com/neuron") if n]
    capacity = {name: data.draw(quantities, label=name) for name in names}
    _decodes(vendor, {}, capacity)


@pytest.mark.parametrize("vendor", VENDORS[:3], ids=lambda v: v.name)  # one shared codec
@FUZZ
@given(value=st.text(max_size=60) | st.lists(st.text(max_size=12), max_size=5).map(";".join))
def test_pod_allocations_decode_or_raise_decode_error(vendor: BaseVendor, value: str) -> None:
    try:
        vendor.decode_allocation({vendor.pod_keys.allocated: value})
    except DecodeError:
        pass


@FUZZ
@given(raw=st.text(max_size=40) | json_values.map(json.dumps), picked=st.integers(0, 16))
def test_metax_topology_maps_never_fail(raw: str, picked: int) -> None:
    assert isinstance(topology_value(raw, picked), int)


def test_the_fuzzed_vendors_cover_every_registration_source() -> None:
    sources = {v.name: v.traits.register_key for v in VENDORS}
    assert sources["DCU"] == "hami.io/node-dcu-register"
    assert sources["XPU"] == "hami.io/node-register-xpu"
    assert sources["Metax-SGPU"] == "metax-tech.com/node-gpu-devices"
    assert sources["Ascend910B3"] == "hami.io/node-register-Ascend910B3"
    assert sources["BI-V100"] == "hami.io/node-BI-V100-register"
    assert sources["MLU"] is None  # capacity
    assert len(VENDORS) == len(REGISTRY) - 1
    assert len(ANNOTATION_VENDORS) == 6 and {v.name for v in CAPACITY_VENDORS} == {
        "MLU", "Metax-GPU", "Mthreads", "Enflame", "GCU", "kunlun", "AWSNeuron", "AMDGPU"
    }  # fmt: skip
