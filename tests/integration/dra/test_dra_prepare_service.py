"""NodePrepareResources / NodeUnprepareResources through grpclib (ChannelFor): idempotent and persisted."""

from __future__ import annotations

import stat
from pathlib import Path

from dra_fixtures import CLAIMS, allocated_claim
from grpclib.testing import ChannelFor

from hami._proto.k8s.io.kubelet.pkg.apis.dra import v1, v1beta1
from hami.core.dra_translate import DRIVER_NAME
from hami.dra.claims import cdi_spec_file_name
from hami.dra.devices import mock_gpus
from hami.dra.service import ClaimPreparer, DraServiceV1, DraServiceV1beta1, PreparerSettings
from hami.dra.state import ClaimCheckpoint
from hami.k8s.client import HttpKubeApi
from hami.simulator.restclient import RestClient

NODE = "node-a"
GPUS = mock_gpus(NODE, 2)
KIND = "k8s.hami-core-gpu.project-hami.io/claim"


def preparer(kube: HttpKubeApi, base: Path) -> ClaimPreparer:
    checkpoint = ClaimCheckpoint(base / "plugin" / "prepared-claims.json")
    checkpoint.load()
    return ClaimPreparer(
        kube,
        GPUS,
        checkpoint,
        PreparerSettings(driver=DRIVER_NAME, node_name=NODE, cdi_dir=base / "cdi", host_root=base / "host"),
    )


def v1_claim(claim: dict) -> v1.Claim:
    meta = claim["metadata"]
    return v1.Claim(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"])


async def test_prepare_is_idempotent_persisted_and_unprepare_cleans_up(
    kube: HttpKubeApi, rest: RestClient, tmp_path: Path
) -> None:
    claim = await allocated_claim(rest, "c1", NODE, "hami-gpu-1")
    uid = claim["metadata"]["uid"]
    first = preparer(kube, tmp_path)
    async with ChannelFor([DraServiceV1(first), DraServiceV1beta1(first)]) as channel:
        stub = v1.DraPluginStub(channel)
        answer = await stub.node_prepare_resources(v1.NodePrepareResourcesRequest(claims=[v1_claim(claim)]))
        (device,) = answer.claims[uid].devices
        assert answer.claims[uid].error == ""
        assert (device.pool_name, device.device_name, device.share_id) == (NODE, "hami-gpu-1", "share-c1")
        assert device.request_names == ["gpu"]
        assert device.cdi_device_ids == [f"{KIND}={uid}-hami-gpu-1"]
        spec_file = tmp_path / "cdi" / cdi_spec_file_name(uid)
        written = spec_file.read_bytes()
        cache = tmp_path / "host" / "usr/local/vgpu/claims" / uid
        assert stat.S_IMODE(cache.stat().st_mode) == 0o777
        assert stat.S_IMODE((tmp_path / "host" / "tmp/vgpulock").stat().st_mode) == 0o777
        again = await stub.node_prepare_resources(v1.NodePrepareResourcesRequest(claims=[v1_claim(claim)]))
        assert again == answer and spec_file.read_bytes() == written
        # v1beta1 carries the same devices, without share_id.
        beta = v1beta1.DraPluginStub(channel)
        old = await beta.node_prepare_resources(
            v1beta1.NodePrepareResourcesRequest(
                claims=[v1beta1.Claim(namespace="default", name="c1", uid=uid)]
            )
        )
        assert [d.cdi_device_ids for d in old.claims[uid].devices] == [device.cdi_device_ids]

    # "Restart": a new preparer from the checkpoint answers the same without reading the API.
    await rest.delete(f"{CLAIMS.format(ns='default')}/c1")
    spec_file.unlink()  # and /var/run/cdi lost the file (tmpfs after a reboot)
    second = preparer(kube, tmp_path)
    async with ChannelFor([DraServiceV1(second)]) as channel:
        stub = v1.DraPluginStub(channel)
        after = await stub.node_prepare_resources(v1.NodePrepareResourcesRequest(claims=[v1_claim(claim)]))
        assert after == answer
        assert spec_file.read_bytes() == written
        done = await stub.node_unprepare_resources(v1.NodeUnprepareResourcesRequest(claims=[v1_claim(claim)]))
        assert done.claims[uid].error == ""
        assert not spec_file.exists() and not cache.exists()
        twice = await stub.node_unprepare_resources(
            v1.NodeUnprepareResourcesRequest(claims=[v1_claim(claim)])
        )
        assert twice.claims[uid].error == ""
    assert preparer(kube, tmp_path)._checkpoint.claims == {}


async def test_per_claim_errors_do_not_fail_the_call(
    kube: HttpKubeApi, rest: RestClient, tmp_path: Path
) -> None:
    good = await allocated_claim(rest, "good", NODE, "hami-gpu-0")
    elsewhere = await allocated_claim(rest, "elsewhere", "node-b", "hami-gpu-0")
    missing = v1.Claim(namespace="default", name="nope", uid="u-missing")
    prep = preparer(kube, tmp_path)
    async with ChannelFor([DraServiceV1(prep)]) as channel:
        answer = await v1.DraPluginStub(channel).node_prepare_resources(
            v1.NodePrepareResourcesRequest(claims=[v1_claim(good), v1_claim(elsewhere), missing])
        )
    assert answer.claims[good["metadata"]["uid"]].error == ""
    assert "not this node's pool" in answer.claims[elsewhere["metadata"]["uid"]].error
    assert "not found" in answer.claims["u-missing"].error
    assert set(prep._checkpoint.claims) == {good["metadata"]["uid"]}


async def test_a_corrupt_checkpoint_is_moved_aside(kube: HttpKubeApi, tmp_path: Path) -> None:
    path = tmp_path / "plugin" / "prepared-claims.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    checkpoint = ClaimCheckpoint(path)
    checkpoint.load()
    assert checkpoint.claims == {}
    assert (tmp_path / "plugin" / "prepared-claims.json.corrupt").read_text() == "{not json"
