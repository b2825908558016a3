from __future__ import annotations

import string
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hami.core import keys
from hami.core.annotations import (
    PodDeviceKeys,
    decode_bind_phase,
    decode_mig_uuid,
    decode_pod_devices,
    decode_pod_devices_v28,
    decode_pod_single_device,
    decode_pod_single_device_v28,
    decode_unix_time,
    device_id_of,
    encode_bind_phase,
    encode_pod_devices,
    encode_pod_single_device,
    encode_unix_time,
    iter_devices,
)
from hami.core.errors import DecodeError
from hami.core.model import ContainerDevice


def dev(uuid: str, mem: int, cores: int, vendor: str = "NVIDIA") -> ContainerDevice:
    return ContainerDevice(uuid=uuid, type=vendor, usedmem=mem, usedcores=cores)


# ---------------------------------------------------------------- golden strings (spec §4.5)

GOLDEN = [
    ("GPU-33f0...,NVIDIA,3000,30:;", ((dev("GPU-33f0...", 3000, 30),),)),
    (
        "GPU-a,NVIDIA,23028,100:GPU-b,NVIDIA,23028,100:;",
        ((dev("GPU-a", 23028, 100), dev("GPU-b", 23028, 100)),),
    ),
    (
        "GPU-a,NVIDIA,3000,30:;;GPU-b,NVIDIA,2000,0:;",
        ((dev("GPU-a", 3000, 30),), (), (dev("GPU-b", 2000, 0),)),
    ),
    ("GPU-a[1-1],NVIDIA,10240,28:;", ((dev("GPU-a[1-1]", 10240, 28),),)),
    ("nvidia-device-0,NVIDIA,2000,1:;", ((dev("nvidia-device-0", 2000, 1),),)),
    (";uuid1,NVIDIA,1000,30:;;", ((), (dev("uuid1", 1000, 30),), ())),
    (
        "GPU-8dcd427f-483b-b48f-d7e5-75fb19a52b76,NVIDIA,500,3:;GPU-ebe7c3f7-303d-558d-435e-99a160631fe4,NVIDIA,500,3:;",
        (
            (dev("GPU-8dcd427f-483b-b48f-d7e5-75fb19a52b76", 500, 3),),
            (dev("GPU-ebe7c3f7-303d-558d-435e-99a160631fe4", 500, 3),),
        ),
    ),
    (
        ";GPU-aaa,NVIDIA,3000,30:GPU-bbb,NVIDIA,3000,30:;",
        ((), (dev("GPU-aaa", 3000, 30), dev("GPU-bbb", 3000, 30))),
    ),
    (";", ((),)),
    ("", ()),
]


@pytest.mark.parametrize(("value", "psd"), GOLDEN)
def test_golden_encode_and_position_preserving_decode(value, psd):
    assert encode_pod_single_device(psd) == value
    assert decode_pod_single_device(value) == psd


def test_golden_v28_decode_collapses_empty_containers():
    # spec §4.5: the scheduler result [[], [uuid1 1000/30], []] decodes back to a single entry
    assert decode_pod_single_device_v28(";uuid1,NVIDIA,1000,30:;;") == ((dev("uuid1", 1000, 30),),)
    assert decode_pod_single_device_v28("GPU-a,NVIDIA,3000,30:;;GPU-b,NVIDIA,2000,0:;") == (
        (dev("GPU-a", 3000, 30),),
        (dev("GPU-b", 2000, 0),),
    )
    assert decode_pod_single_device_v28(";") == ()


def test_v28_quirks():
    # non-numeric -> 0, out of range -> clamped int32, extra fields ignored, comma-less parts skipped
    assert decode_pod_single_device_v28("a,NVIDIA,x,99999999999:junk:b,NVIDIA,+5,-7,extra:;") == (
        (dev("a", 0, 2**31 - 1), dev("b", 5, -7)),
    )
    # fewer than 4 fields anywhere -> whole value empty (2.8 "information missing" error swallowed)
    assert decode_pod_single_device_v28("a,NVIDIA,1,2:;b,NVIDIA,3:;") == ()
    assert decode_pod_single_device_v28("a,NVIDIA,1," + "9" * 5000 + ":;") == ((dev("a", 1, 2**31 - 1),),)


def test_golden_encode_pod_devices_both_keys_identical():
    out = encode_pod_devices({"NVIDIA": ((dev("nvidia-device-0", 2000, 1),),)})
    assert out == {
        keys.VGPU_DEVICES_TO_ALLOCATE: "nvidia-device-0,NVIDIA,2000,1:;",
        keys.VGPU_DEVICES_ALLOCATED: "nvidia-device-0,NVIDIA,2000,1:;",
    }


def test_empty_pod_devices_produce_no_keys():
    assert encode_pod_devices({}) == {}
    assert encode_pod_devices({"NVIDIA": ()}) == {}


def test_encode_pod_devices_unknown_vendor_and_extra_keys():
    with pytest.raises(ValueError, match="MLU"):
        encode_pod_devices({"MLU": ((dev("m", 1, 1, "MLU"),),)})
    vendor_keys = {"AMDGPU": PodDeviceKeys(to_allocate=None, allocated="hami.io/amd-devices-allocated")}
    assert encode_pod_devices({"AMDGPU": ((dev("a", 1, 2, "AMDGPU"),),)}, device_keys=vendor_keys) == {
        "hami.io/amd-devices-allocated": "a,AMDGPU,1,2:;"
    }


def test_decode_pod_devices_reads_allocated_or_to_allocate():
    annotations = {keys.VGPU_DEVICES_ALLOCATED: ";u,NVIDIA,1,2:;", keys.VGPU_DEVICES_TO_ALLOCATE: ";;"}
    assert decode_pod_devices(annotations) == {"NVIDIA": ((), (dev("u", 1, 2),))}
    assert decode_pod_devices(annotations, allocated=False) == {"NVIDIA": ((), ())}
    assert decode_pod_devices({}) == {}


def test_decode_pod_devices_v28_malformed_empties_everything():
    assert decode_pod_devices_v28({keys.VGPU_DEVICES_ALLOCATED: "u,NVIDIA,1:;"}) == {}
    assert decode_pod_devices_v28({keys.VGPU_DEVICES_ALLOCATED: ";u,NVIDIA,1,2:;"}) == {
        "NVIDIA": ((dev("u", 1, 2),),)
    }


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("a,NVIDIA,1:;", "3 fields"),
        ("a,NVIDIA,1,2,3:;", "5 fields"),
        ("a,NVIDIA,x,2:;", "usedmem 'x'"),
        ("a,NVIDIA,1,-2:;", "usedcores '-2'"),
        ("a,NVIDIA,1,99999999999:;", "usedcores"),
        ("junk:;", "1 fields"),
        (",NVIDIA,1,2:;", "empty uuid"),
    ],
)
def test_strict_decode_errors_name_key_and_reason(value, reason):
    with pytest.raises(DecodeError) as info:
        decode_pod_single_device(value, key="hami.io/x-devices-allocated")
    assert info.value.key == "hami.io/x-devices-allocated"
    assert info.value.value == value
    assert reason in info.value.reason
    assert "hami.io/x-devices-allocated" in str(info.value)


def test_encoder_rejects_separators_in_fields():
    for bad in ("a,b", "a:b", "a;b"):
        with pytest.raises(ValueError, match="cannot be encoded"):
            encode_pod_single_device(((dev(bad, 1, 1),),))


def test_iter_devices_positions():
    psd = ((), (dev("a", 1, 1), dev("b", 2, 2)), (dev("c", 3, 3),))
    assert [(p, d.uuid) for p, d in iter_devices(psd)] == [(1, "a"), (1, "b"), (2, "c")]


# ---------------------------------------------------------------- MIG suffix


def test_golden_mig_suffix():
    ref = decode_mig_uuid("GPU-936619fc-f6a1-74a8-0bc6-ecf6b3269313[7-9]")
    assert (ref.device_id, ref.geometry, ref.instance) == ("GPU-936619fc-f6a1-74a8-0bc6-ecf6b3269313", 7, 9)
    assert ref.encode() == "GPU-936619fc-f6a1-74a8-0bc6-ecf6b3269313[7-9]"
    assert device_id_of("GPU-a[1-2]") == "GPU-a"
    assert device_id_of("GPU-a") == "GPU-a"


@pytest.mark.parametrize(
    ("uuid", "reason"),
    [
        ("GPU-a", "missing '['"),
        ("GPU-a[1-2", "missing ']'"),
        ("GPU-a[12]", "missing '-'"),
        ("GPU-a[x-2]", "decimal"),
        ("GPU-a[1-y]", "decimal"),
    ],
)
def test_mig_suffix_errors(uuid, reason):
    with pytest.raises(DecodeError) as info:
        decode_mig_uuid(uuid)
    assert reason in info.value.reason


# ---------------------------------------------------------------- bind phase / times


def test_bind_phase():
    for phase in ("allocating", "success", "failed"):
        assert decode_bind_phase(encode_bind_phase(phase)) == phase  # type: ignore[arg-type]
    with pytest.raises(DecodeError, match="unknown bind phase"):
        decode_bind_phase("Allocating")


def test_unix_time():
    when = datetime(2026, 1, 20, 7, 12, 17, 900000, tzinfo=UTC)
    assert encode_unix_time(when) == "1768893137"
    assert decode_unix_time("1768893137") == when.replace(microsecond=0)
    with pytest.raises(DecodeError):
        decode_unix_time("12a")
    with pytest.raises(ValueError):
        encode_unix_time(datetime(2026, 1, 1))  # naive


# ---------------------------------------------------------------- properties

field_text = st.text(alphabet=st.characters(exclude_characters=",:;"), min_size=1, max_size=12)
devices = st.builds(
    ContainerDevice,
    uuid=field_text,
    type=field_text,
    usedmem=st.integers(0, 2**31 - 1),
    usedcores=st.integers(0, 2**31 - 1),
)
psds = st.lists(st.lists(devices, max_size=3).map(tuple), max_size=5).map(tuple)


@given(psds)
def test_roundtrip_position_preserving(psd):
    assert decode_pod_single_device(encode_pod_single_device(psd)) == psd


@given(psds)
def test_v28_decode_is_the_collapsed_view(psd):
    assert decode_pod_single_device_v28(encode_pod_single_device(psd)) == tuple(c for c in psd if c)


@given(st.lists(psds.filter(bool), max_size=1))
def test_encode_pod_devices_roundtrip(psd_list):
    pod_devices = {"NVIDIA": psd_list[0]} if psd_list else {}
    annotations = encode_pod_devices(pod_devices)
    assert decode_pod_devices(annotations) == pod_devices


wire_text = st.text(
    alphabet=st.sampled_from(string.ascii_letters + string.digits + ",:;[]-+ \x00é"), max_size=60
)


@given(st.one_of(st.text(max_size=60), wire_text))
def test_decoders_only_raise_decode_error(value):
    for decode in (decode_pod_single_device, decode_mig_uuid, decode_bind_phase, decode_unix_time):
        try:
            decode(value)
        except DecodeError:
            pass
    decode_pod_single_device_v28(value)  # never raises
    decode_pod_devices_v28({keys.VGPU_DEVICES_ALLOCATED: value})
