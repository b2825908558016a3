from __future__ import annotations

import json

import pytest

from hami.cli import main

P4 = "GPU-ebe7c3f7-303d-558d-435e-99a160631fe4"


def decode(capsys, key, value, *extra):
    code = main(["codec", "decode", "--key", key, "--value", value, *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_pod_devices_position_preserving_and_v28(capsys):
    code, out, err = decode(capsys, "hami.io/vgpu-devices-allocated", ";uuid1,NVIDIA,1000,30:;;")
    assert code == 0 and err == ""
    assert json.loads(out) == [
        [],
        [{"uuid": "uuid1", "type": "NVIDIA", "usedmem": 1000, "usedcores": 30, "idx": 0}],
        [],
    ]
    code, out, _ = decode(
        capsys, "hami.io/vgpu-devices-to-allocate", ";uuid1,NVIDIA,1000,30:;;", "--v28", "--compact"
    )
    assert code == 0 and len(json.loads(out)) == 1 and "\n" not in out.strip()


def test_node_register_json_and_legacy(capsys):
    code, out, _ = decode(capsys, "hami.io/node-nvidia-register", f"{P4},10,7680,100,NVIDIA-Tesla P4,0,true:")
    assert code == 0
    (device,) = json.loads(out)
    assert (device["id"], device["devmem"], device["health"], device["mode"]) == (P4, 7680, True, "hami-core")
    code, out, _ = decode(
        capsys, "hami.io/node-nvidia-register", '[{"id":"g","count":10,"health":true,"devicepairscore":{}}]'
    )
    assert code == 0 and json.loads(out)[0]["count"] == 10
    code, out, _ = decode(capsys, "hami.io/node-dcu-register", "a,1,2,3,T,0,true:")
    assert code == 0 and json.loads(out)[0]["type"] == "T"


def test_other_keys(capsys):
    code, out, _ = decode(capsys, "hami.io/mutex.lock", "2026-01-20T07:12:17Z,hami-ns,hami")
    assert code == 0
    assert json.loads(out) == {
        "time": "2026-01-20T07:12:17+00:00",
        "namespace": "hami-ns",
        "name": "hami",
        "uid": None,
    }
    assert json.loads(decode(capsys, "hami.io/bind-phase", "allocating")[1]) == "allocating"
    assert json.loads(decode(capsys, "hami.io/bind-time", "0")[1]) == "1970-01-01T00:00:00+00:00"
    assert json.loads(decode(capsys, "hami.io/node-nvidia-score", '[{"uuid":"a","score":{"b":1}}]')[1]) == [
        {"uuid": "a", "scores": {"b": 1}}
    ]
    assert json.loads(decode(capsys, "hami.io/node-handshake-dcu", "Deleted_2026-01-20 07:12:17")[1])[
        "state"
    ] == ("deleted")
    assert json.loads(decode(capsys, "mig-uuid", "GPU-a[1-2]")[1]) == {
        "device_id": "GPU-a",
        "geometry": 1,
        "instance": 2,
    }


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("hami.io/mutex.lock", "lock", 'parsing time "lock"'),
        ("hami.io/mutex.lock", "a,b", "malformed lock annotation: expected 3 parts, got 2 from a,b"),
        ("hami.io/node-nvidia-register", "a", "node annotations not decode successfully"),
        ("hami.io/vgpu-devices-allocated", "a,NVIDIA,1:;", "3 fields"),
        ("hami.io/bind-phase", "done", "unknown bind phase"),
    ],
)
def test_decode_errors_go_to_stderr_with_exit_2(capsys, key, value, message):
    code, out, err = decode(capsys, key, value)
    assert code == 2 and out == ""
    assert key in err and message in err


def test_unsupported_key(capsys):
    code, out, err = decode(capsys, "example.com/x", "1")
    assert code == 2 and out == "" and "unsupported key" in err
