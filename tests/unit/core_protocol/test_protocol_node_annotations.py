from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hami.core import keys
from hami.core.annotations import (
    DevicePairScore,
    decode_handshake,
    decode_node_devices,
    decode_node_devices_json,
    decode_node_devices_legacy,
    decode_node_scores,
    encode_handshake,
    encode_node_devices,
    encode_node_devices_legacy,
    encode_node_scores,
    nvidia_node_devices,
)
from hami.core.deviceconfig import NvidiaConfig
from hami.core.errors import DecodeError
from hami.core.ids import DeviceID
from hami.core.model import DeviceInfo, MigTemplate

A10_JSON = (
    '[{"id":"GPU-8e1c...","count":10,"devmem":23028,"devcore":100,"type":"NVIDIA A10","mode":"hami-core",'
    '"health":true,"devicepairscore":{}},'
    '{"id":"GPU-33f0...","index":1,"count":10,"devmem":23028,"devcore":100,"type":"NVIDIA A10","numa":1,'
    '"mode":"hami-core","health":true,"devicepairscore":{}}]'
)
A10_DEVICES = (
    DeviceInfo(
        id=DeviceID("GPU-8e1c..."),
        count=10,
        devmem=23028,
        devcore=100,
        type="NVIDIA A10",
        mode="hami-core",
        health=True,
    ),
    DeviceInfo(
        id=DeviceID("GPU-33f0..."),
        index=1,
        count=10,
        devmem=23028,
        devcore=100,
        type="NVIDIA A10",
        numa=1,
        mode="hami-core",
        health=True,
    ),
)
A100_JSON = (
    '[{"id":"GPU-0b3c1e2a-1111-2222-3333-444455556666","count":10,"devmem":40960,"devcore":100,'
    '"type":"NVIDIA A100-PCIE-40GB","mode":"hami-core","health":true,"devicepairscore":{}},'
    '{"id":"GPU-7f1a9d00-aaaa-bbbb-cccc-ddddeeeeffff","index":1,"count":10,"devmem":40960,"devcore":100,'
    '"type":"NVIDIA A100-PCIE-40GB","numa":1,"mode":"hami-core","devicepairscore":{}}]'
)
P4 = "GPU-ebe7c3f7-303d-558d-435e-99a160631fe4"


# ---------------------------------------------------------------- JSON register (spec §4.4, node §3.2)


def test_golden_json_encode_is_byte_identical():
    assert encode_node_devices(A10_DEVICES) == A10_JSON


def test_golden_json_decode():
    assert decode_node_devices(A10_JSON) == A10_DEVICES
    devices = decode_node_devices(A100_JSON)
    assert [d.health for d in devices] == [True, False]  # missing health reads as false
    assert encode_node_devices(devices) == A100_JSON
    assert decode_node_devices("[]") == ()


def test_json_encode_omits_what_the_plugin_never_writes():
    device = DeviceInfo(
        id=DeviceID("g"),
        devicevendor="NVIDIA",
        custominfo={"a": 1},
        pair_scores={"h": 3},
        migtemplate=((MigTemplate(name="1g", core=1, memory=2, count=3),),),
    )
    assert encode_node_devices([device]) == '[{"id":"g","devicepairscore":{}}]'


def test_json_escaping_matches_go():
    device = DeviceInfo(id=DeviceID('a<b>&"\\\n\t\b\f\x01\u2028é'), type="T")
    assert encode_node_devices([device]) == (
        '[{"id":"a\\u003cb\\u003e\\u0026\\"\\\\\\n\\t\\b\\f\\u0001\\u2028é","type":"T","devicepairscore":{}}]'
    )


def test_json_decode_go_semantics():
    value = (
        '[{"ID":"upper","id":"exact","Count":3,"numa":null,"health":null,"unknown":[1],'
        '"migtemplate":[[{"name":"1g.5gb","Core":14,"memory":5120,"COUNT":7}]],'
        '"custominfo":{"k":{"n":[1,2]}},"devicevendor":"NVIDIA",'
        '"devicepairscore":{"uuid":"exact","score":{"GPU-b":200}}}]'
    )
    (device,) = decode_node_devices(value)
    assert device.id == "exact"  # the last key matching the field wins, as in Go
    assert decode_node_devices('[{"id":"exact","ID":"upper"}]')[0].id == "upper"
    assert device.count == 3 and device.numa == 0 and device.health is False
    assert device.migtemplate == ((MigTemplate(name="1g.5gb", core=14, memory=5120, count=7),),)
    assert device.custominfo == {"k": {"n": [1, 2]}}
    assert device.devicevendor == "NVIDIA"
    assert device.pair_scores == {"GPU-b": 200}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('[{"count":1.0}]', "count"),
        ('[{"count":2147483648}]', "int32"),
        ('[{"index":-1}]', "uint"),
        ('[{"health":"true"}]', "bool"),
        ('[{"id":5}]', "string"),
        ("[null]", "null device"),
        ('[{"devmem":NaN}]', "NaN"),
        ("[", "invalid JSON"),
        ('{"id":"x"}', "slice"),
        ('[{"migtemplate":{"a":1}}]', "slice"),
        ('[{"devicepairscore":{"score":{"a":"b"}}}]', "score"),
    ],
)
def test_json_decode_errors(value, reason):
    with pytest.raises(DecodeError) as info:
        decode_node_devices_json(value)
    assert info.value.key == keys.NODE_NVIDIA_REGISTER
    assert reason in info.value.reason


# ---------------------------------------------------------------- legacy register (spec §4.4 goldens)


def test_golden_legacy_seven_fields():
    (device,) = decode_node_devices(f"{P4},10,7680,100,NVIDIA-Tesla P4,0,true:")
    assert device == DeviceInfo(
        id=DeviceID(P4),
        count=10,
        devmem=7680,
        devcore=100,
        type="NVIDIA-Tesla P4",
        numa=0,
        health=True,
        index=0,
        mode="hami-core",
    )
    assert encode_node_devices_legacy([device]) == f"{P4},10,7680,100,NVIDIA-Tesla P4,0,true,0,hami-core:"


def test_golden_legacy_nine_fields():
    (device,) = decode_node_devices(f"{P4},10,7680,100,NVIDIA-Tesla P4,0,true,1,hami-core:")
    assert device.index == 1 and device.mode == "hami-core" and device.health is True


def test_golden_legacy_two_devices():
    value = (
        "GPU-8e1c...,10,23028,100,NVIDIA-Tesla T4,0,true,0,hami-core:"
        "GPU-33f0...,10,23028,100,NVIDIA-Tesla T4,1,true,1,hami-core:"
    )
    devices = decode_node_devices(value)
    assert [(d.id, d.numa, d.index) for d in devices] == [("GPU-8e1c...", 0, 0), ("GPU-33f0...", 1, 1)]
    assert encode_node_devices_legacy(devices) == value


def test_golden_legacy_no_separator():
    with pytest.raises(DecodeError) as info:
        decode_node_devices("a")
    assert "node annotations not decode successfully" in info.value.reason


def test_legacy_quirks():
    value = "g,abc,99999999999,-99999999999,T,x,yes,-1,mig:no-comma-segment:"
    (device,) = decode_node_devices_legacy(value)
    assert device.count == 0  # non-numeric -> 0
    assert device.devmem == 2**31 - 1 and device.devcore == -(2**31)  # clamped, not rejected
    assert device.numa == 0 and device.health is False  # unparsable bool -> false
    assert device.index == 2**64 - 1  # Go uint(-1)
    assert encode_node_devices_legacy([device]).split(",")[7] == "-1"
    with pytest.raises(DecodeError, match="8 fields"):
        decode_node_devices_legacy("a,1,2,3,T,0,true,1:")


# ---------------------------------------------------------------- GetNodeDevices view


def test_nvidia_node_devices_errors_and_vendor():
    with pytest.raises(DecodeError) as info:
        nvidia_node_devices({})
    assert info.value.reason == "annos not found hami.io/node-nvidia-register"
    with pytest.raises(DecodeError) as info:
        nvidia_node_devices({keys.NODE_NVIDIA_REGISTER: "[]"})
    assert info.value.reason == "no gpu found on node"
    devices = nvidia_node_devices({keys.NODE_NVIDIA_REGISTER: A10_JSON})
    assert {d.devicevendor for d in devices} == {"NVIDIA"}


def test_nvidia_node_devices_mig_geometries_and_scores():
    register = (
        '[{"id":"GPU-a","count":7,"devmem":40960,"devcore":100,"type":"NVIDIA A100-PCIE-40GB","mode":"mig",'
        '"health":true,"devicepairscore":{}},{"id":"GPU-b","type":"NVIDIA A100-PCIE-40GB","mode":"hami-core",'
        '"devicepairscore":{}}]'
    )
    score = '[{"uuid":"GPU-a","score":{"GPU-b":60}},{"uuid":"GPU-b","score":{"GPU-a":60}}]'
    config = NvidiaConfig()
    devices = nvidia_node_devices(
        {keys.NODE_NVIDIA_REGISTER: register, keys.NODE_NVIDIA_SCORE: score},
        known_mig_geometries=config.known_mig_geometries,
    )
    assert devices[0].migtemplate == config.mig_geometries_for("NVIDIA A100-PCIE-40GB")
    assert devices[0].migtemplate[1][1] == MigTemplate(name="2g.10gb", core=28, memory=10240, count=3)
    assert devices[1].migtemplate == ()  # only mig-mode devices get geometries
    assert devices[0].pair_scores == {"GPU-b": 60}
    with pytest.raises(DecodeError):
        nvidia_node_devices({keys.NODE_NVIDIA_REGISTER: register, keys.NODE_NVIDIA_SCORE: "{"})


# ---------------------------------------------------------------- topology score


def test_golden_node_scores():
    value = '[{"uuid":"GPU-a","score":{"GPU-b":200,"GPU-c":10}},{"uuid":"GPU-b"}]'
    entries = decode_node_scores(value)
    assert entries == (
        DevicePairScore(uuid="GPU-a", scores={"GPU-b": 200, "GPU-c": 10}),
        DevicePairScore(uuid="GPU-b", scores={}),
    )
    assert encode_node_scores(entries) == value
    assert encode_node_scores([DevicePairScore(uuid="x", scores={"b": 1, "a": 2})]) == (
        '[{"uuid":"x","score":{"a":2,"b":1}}]'
    )
    with pytest.raises(DecodeError) as info:
        decode_node_scores('[{"uuid":"a","score":{"b":1.5}}]')
    assert info.value.key == keys.NODE_NVIDIA_SCORE


# ---------------------------------------------------------------- handshake


def test_handshake_values():
    when = datetime(2026, 1, 20, 7, 12, 17, tzinfo=UTC)
    requesting = encode_handshake("requesting", when)
    assert requesting == "Requesting_2026-01-20 07:12:17"
    assert decode_handshake(requesting).state == "requesting"
    assert decode_handshake(requesting).time == when
    deleted = decode_handshake("Deleted_2026-01-20 07:12:17")
    assert (deleted.state, deleted.time) == ("deleted", when)
    reported = decode_handshake("Reported 2026-01-20 07:12:17.1 +0000 UTC m=+1.0")
    assert (reported.state, reported.time) == ("other", None)
    with pytest.raises(DecodeError):
        decode_handshake("Requesting")
    with pytest.raises(DecodeError):
        decode_handshake("Requesting_2026-1-20 7:12:17")


# ---------------------------------------------------------------- properties

go_text = st.text(max_size=16)
no_sep = st.text(alphabet=st.characters(exclude_characters=",:"), max_size=12)
int32 = st.integers(-(2**31), 2**31 - 1)


def device_infos(text):
    return st.builds(
        DeviceInfo,
        id=text.map(DeviceID),
        index=st.integers(0, 2**64 - 1),
        count=int32,
        devmem=int32,
        devcore=int32,
        type=text,
        numa=st.integers(-(2**63), 2**63 - 1),
        mode=text,
        health=st.booleans(),
    )


@given(st.lists(device_infos(go_text), max_size=4))
def test_json_roundtrip(devices):
    value = encode_node_devices(devices)
    assert decode_node_devices_json(value) == tuple(devices)
    # the bytes are valid JSON carrying exactly the fields Go keeps (omitempty)
    for raw, device in zip(json.loads(value), devices, strict=True):
        assert raw["id" if device.id else "devicepairscore"] == (device.id or {})
        assert ("health" in raw) == device.health


@given(st.lists(device_infos(no_sep), max_size=4))
def test_legacy_roundtrip(devices):
    value = encode_node_devices_legacy(devices)
    # legacy rows whose every field is empty still contain commas, so nothing is skipped
    assert decode_node_devices_legacy(value if value else ":") == tuple(devices)


@given(
    st.lists(
        st.builds(
            DevicePairScore,
            uuid=go_text,
            scores=st.dictionaries(go_text, st.integers(-(2**63), 2**63 - 1), max_size=3),
        ),
        max_size=4,
    )
)
def test_scores_roundtrip(entries):
    assert decode_node_scores(encode_node_scores(entries)) == tuple(entries)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "id",
                    "ID",
                    "index",
                    "count",
                    "devmem",
                    "devcore",
                    "type",
                    "numa",
                    "mode",
                    "health",
                    "migtemplate",
                    "custominfo",
                    "devicepairscore",
                    "uuid",
                    "score",
                    "Name",
                    "core",
                    "memory",
                    "x",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@given(st.one_of(st.text(max_size=80), json_values.map(json.dumps), st.lists(json_values).map(json.dumps)))
def test_node_decoders_only_raise_decode_error(value):
    for decode in (
        decode_node_devices,
        decode_node_devices_json,
        decode_node_devices_legacy,
        decode_node_scores,
        decode_handshake,
    ):
        try:
            decode(value)
        except DecodeError:
            pass
    try:
        nvidia_node_devices({keys.NODE_NVIDIA_REGISTER: value, keys.NODE_NVIDIA_SCORE: value})
    except DecodeError:
        pass
