"""Impersonating vendor node agents: what each vendor's plugin publishes decodes back into its
devices; the mock agent keeps a Node equal to it and answers handshakes; the simulator builds
vendor nodes from the same encoders (``--vendor-mix``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from hami.cli import build_parser
from hami.cli.device_plugin import build_vendor_agent
from hami.core.errors import ConfigError, DecodeError
from hami.core.vendors import MOCK_VENDOR_NAMES, build_registry, mock_vendor
from hami.deviceplugin.memkube import InMemoryKube
from hami.deviceplugin.vendor_mock import VendorMockAgent
from hami.simulator.scenario import (
    LABEL_VENDOR,
    NodeSpec,
    node_manifest,
    parse_vendor_mix,
    vendor_node_specs,
)

NOW = datetime(2026, 1, 20, 7, 12, 17, tzinfo=UTC)


@pytest.mark.parametrize("name", [n for n in MOCK_VENDOR_NAMES if n != "nvidia"])
def test_each_impersonation_decodes_into_its_devices(name: str) -> None:
    vendor = mock_vendor(name)
    publication = vendor.impersonate("n1", 4, memory_mib=None, now=NOW)
    devices = vendor.node_devices(publication.annotations, publication.capacity, node="n1")
    assert len(devices) == 4
    assert {d.devicevendor for d in devices} == {vendor.name}
    assert all(vendor.name in d.type and d.health for d in devices)
    assert len({d.id for d in devices}) == 4
    # What the scheduler's registry decodes on such a node is exactly this vendor's devices.
    registry = build_registry(enable_ascend=True, enable_iluvatar=True)
    found = []
    for other in registry:
        try:
            found.extend(other.node_devices(publication.annotations, publication.capacity, node="n1"))
        except DecodeError as e:  # every other vendor must say "not on this node"
            assert "not found" in str(e), f"{other.name}: {e}"
    assert {d.devicevendor for d in found} == {vendor.name}


def test_impersonating_no_devices_publishes_no_registration() -> None:
    publication = mock_vendor("hygon").impersonate("n1", 0, memory_mib=None, now=NOW)
    assert publication.annotations == {} and publication.capacity["hygon.com/dcunum"] == "0"


async def test_mock_agent_publishes_and_answers_the_handshake() -> None:
    kube = InMemoryKube()
    kube.put_node({"metadata": {"name": "n1"}, "status": {"capacity": {"cpu": "8"}}})
    clock = [NOW]
    agent = VendorMockAgent(
        kube, "n1", mock_vendor("hygon"), devices=2, memory_mib=16384, now=lambda: clock[0]
    )
    assert await agent.publish()
    node = kube.node("n1")
    annotations = node["metadata"]["annotations"]
    assert annotations["hami.io/node-dcu-register"] == (
        "DCU-n1-0,4,16384,100,DCU-Z100L,0,true,0,hami-core:DCU-n1-1,4,16384,100,DCU-Z100L,1,true,1,hami-core:"
    )
    assert annotations["hami.io/node-handshake-dcu"] == "Reported 2026-01-20 07:12:17.000000000 +0000 UTC"
    assert node["status"]["capacity"] == {"cpu": "8", "hygon.com/dcunum": "8", "hygon.com/dcumem": "32768"}
    assert node["status"]["allocatable"]["hygon.com/dcunum"] == "8"
    assert not await agent.publish()  # nothing changed: nothing written
    # The scheduler asks; the next cycle answers with a fresh stamp.
    await kube.patch_node(
        "n1", {"metadata": {"annotations": {"hami.io/node-handshake-dcu": "Requesting_2026-01-20 07:12:20"}}}
    )
    clock[0] = datetime(2026, 1, 20, 7, 12, 47, tzinfo=UTC)
    assert await agent.publish()
    assert kube.node("n1")["metadata"]["annotations"]["hami.io/node-handshake-dcu"].startswith(
        "Reported 2026-01-20 07:12:47"
    )
    devices = build_registry()["DCU"].node_devices(kube.node("n1")["metadata"]["annotations"], {})
    assert [d.id for d in devices] == ["DCU-n1-0", "DCU-n1-1"]


def _args(*argv: str) -> Any:
    return build_parser().parse_args(["device-plugin", "--node-name", "n1", *argv])


def test_device_plugin_cli_builds_a_vendor_agent() -> None:
    kube = InMemoryKube()
    agent = build_vendor_agent(_args("--backend", "mock", "--vendor", "cambricon", "--mock-gpus", "3"), kube)
    assert agent.vendor.name == "MLU"
    assert agent.publication().capacity["cambricon.com/mlu.smlu.vcore"] == "300"
    with pytest.raises(ConfigError, match="--backend mock"):
        build_vendor_agent(_args("--vendor", "cambricon"), kube)
    with pytest.raises(ConfigError, match="--mock-memory"):
        build_vendor_agent(_args("--backend", "mock", "--vendor", "amd", "--mock-memory", "0"), kube)
    with pytest.raises(SystemExit):
        _args("--backend", "mock", "--vendor", "nosuchvendor")


def test_vendor_mix_builds_simulated_vendor_nodes() -> None:
    mix = parse_vendor_mix("nvidia:2, cambricon:1,hygon,ascend:1")
    assert mix == (("nvidia", 2), ("cambricon", 1), ("hygon", 1), ("ascend", 1))
    specs = vendor_node_specs(mix, gpus_per_node=4)
    assert [(s.name, s.vendor) for s in specs] == [
        ("node-1", "nvidia"),
        ("node-2", "nvidia"),
        ("cambricon-1", "cambricon"),
        ("hygon-1", "hygon"),
        ("ascend-1", "ascend"),
    ]
    nvidia = node_manifest(specs[0])
    assert nvidia["metadata"]["labels"]["gpu"] == "on" and "annotations" not in nvidia["metadata"]
    mlu = node_manifest(specs[2])
    assert mlu["metadata"]["labels"][LABEL_VENDOR] == "cambricon" and "gpu" not in mlu["metadata"]["labels"]
    assert mlu["status"]["allocatable"]["cambricon.com/mlu.smlu.vcore"] == "400"
    dcu = node_manifest(specs[3])
    registry = build_registry(enable_ascend=True)
    assert len(registry["DCU"].node_devices(dcu["metadata"]["annotations"], {}, node="hygon-1")) == 4
    npu = node_manifest(specs[4])
    devices = registry["Ascend910A"].node_devices(npu["metadata"]["annotations"], {}, node="ascend-1")
    assert [d.custominfo["NetworkID"] for d in devices] == [0, 0, 0, 0]
    for bad, why in (("gpu:1", "unknown vendor"), ("amd:x", "integer"), ("amd:-1", ">= 0"), ("", "expected")):
        with pytest.raises(ConfigError, match=why):
            parse_vendor_mix(bad)
    assert NodeSpec(name="x").nvidia
