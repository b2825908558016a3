"""The demo's table and pod mix, from plain API objects (pure: no servers)."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any

import pytest

from hami.cli._demo_pki import PkiUnavailable, make_pki
from hami.cli._demo_table import cluster_view, gpu_request_text, render_table
from hami.cli._demo_workload import demo_pods, oversized_memory_mib
from hami.core import keys
from hami.core.ids import DeviceID
from hami.core.model import NVIDIA, DeviceInfo
from hami.core.node_annotations import encode_node_devices
from hami.simulator.scenario import gpu_pod


def node(name: str, *uuids: str, memory: int = 24000) -> dict[str, Any]:
    devices = [
        DeviceInfo(
            id=DeviceID(u), index=i, count=10, devmem=memory, devcore=100, type="NVIDIA-A10", health=True,
            devicevendor=NVIDIA,
        )
        for i, u in enumerate(uuids)
    ]  # fmt: skip
    return {
        "metadata": {"name": name, "annotations": {keys.NODE_NVIDIA_REGISTER: encode_node_devices(devices)}}
    }


def placed(
    name: str, allocation: str, *, node_name: str | None = "n1", phase: str = "Running"
) -> dict[str, Any]:
    pod = gpu_pod(name, gpumem=1000)
    pod["metadata"]["annotations"] = {keys.VGPU_DEVICES_ALLOCATED: allocation}
    if node_name:
        pod["spec"]["nodeName"] = node_name
    pod["status"] = {"phase": phase}
    return pod


def test_view_joins_registered_gpus_with_pod_allocations() -> None:
    nodes = [node("n2", "GPU-c"), node("n1", "GPU-a", "GPU-b"), {"metadata": {"name": "n3"}}]
    pods = [
        placed("a", "GPU-a,NVIDIA,3000,30:;"),
        placed("b", "GPU-a,NVIDIA,2000,0:;"),
        placed("tp", "GPU-b,NVIDIA,8000,50:GPU-c,NVIDIA,8000,50:;", node_name="n1"),
        placed("starting", "GPU-c,NVIDIA,1000,10:;", node_name=None),
        placed("done", "GPU-b,NVIDIA,24000,100:;", phase="Succeeded"),
        gpu_pod("waiting", gpus=2, gpumem=30000, gpucores=50),
        {"metadata": {"name": "cpu-only", "namespace": "default"}, "spec": {"containers": [{"name": "c"}]}},
    ]
    view = cluster_view(nodes, pods)
    assert view.nodes == ("n1", "n2", "n3")
    rows = {str(r.device.id): r for r in view.gpus}
    assert [r.node for r in view.gpus] == ["n1", "n1", "n2"]
    assert (rows["GPU-a"].used_memory_mib, rows["GPU-a"].used_cores) == (5000, 30)
    assert [(h.pod, h.part) for h in rows["GPU-c"].holdings] == [
        ("default/starting", ""),
        ("default/tp", "2/2"),
    ]
    assert rows["GPU-c"].holdings[0].state == "binding"  # allocation written, not bound yet
    assert rows["GPU-b"].used_memory_mib == 8000  # the finished pod holds nothing
    assert [w.pod for w in view.waiting] == ["default/waiting"]
    assert view.waiting[0].wants == "2 GPUs, 30000 MiB, 50% cores each"
    assert view.placed == ("default/a", "default/b", "default/starting", "default/tp")
    assert view.problems == ()

    text = render_table(view, title="T", refused={"default/big": "denied: too big"})
    assert "n3: no GPUs registered yet" in text
    assert "      - default/tp [1/2]" in text and "      - default/tp [2/2]" in text
    assert "  GPU 0  GPU-a" in text and " 5000/24000 MiB  cores  30/100%  2/10 shares" in text
    assert "3 GPUs on 3 nodes, 3 in use; 4 pods placed, 1 waiting" in text
    assert "  - default/big" in text and "denied: too big" in text


def test_unreadable_annotations_are_shown_not_hidden() -> None:
    nodes = [
        node("n1", "GPU-a"),
        {"metadata": {"name": "bad", "annotations": {keys.NODE_NVIDIA_REGISTER: "[{"}}},
    ]
    pods = [placed("x", "GPU-a,NVIDIA,notanumber,0:;"), placed("y", "GPU-zz,NVIDIA,100,0:;")]
    view = cluster_view(nodes, pods)
    assert len(view.problems) == 3
    assert view.problems[0].startswith("node bad: ")
    assert "pod default/x" in view.problems[1]
    assert view.problems[2] == "pod default/y holds GPU-zz, which no node registers"
    assert "  ! pod default/y holds GPU-zz" in render_table(view, title="T")


def test_request_text() -> None:
    assert gpu_request_text(gpu_pod("p", gpumem_percentage=25, gpucores=10)) == "1 GPU, 25% memory, 10% cores"
    assert (
        gpu_request_text({"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "1"}}}]}})
        is None
    )


def test_demo_mix_scales_with_the_cluster_and_follows_the_webhook_choice() -> None:
    pods = demo_pods(nodes=5, gpus_per_node=8, gpu_memory_mib=81559, webhook=True)
    names = [p.name for p in pods]
    assert names[:5] == [f"infer-{i}" for i in range(1, 6)]  # one replica per node
    assert names[5:] == ["notebook", "train", "vllm-tp2", "too-big", "whole-node"]
    assert [p.name for p in pods if p.phase == 2] == ["whole-node"]
    whole = pods[-1].manifest["spec"]["containers"][0]["resources"]["limits"]
    assert whole == {keys.RESOURCE_GPU: "8", keys.RESOURCE_GPUCORES: "100"}
    assert all("schedulerName" not in p.manifest["spec"] for p in pods)  # the webhook sets it
    direct = demo_pods(nodes=1, gpus_per_node=2, gpu_memory_mib=24000, webhook=False)
    assert len([p for p in direct if p.name.startswith("infer-")]) == 3
    assert {p.manifest["spec"]["schedulerName"] for p in direct} == {keys.DEFAULT_SCHEDULER_NAME}
    assert oversized_memory_mib(81559) == 102000 and oversized_memory_mib(24000) == 31000


def test_pki_for_the_webhook_or_a_clear_reason(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(pki.server_cert, pki.server_key)  # the pair matches
    assert base64.b64decode(pki.ca_bundle) == pki.ca_cert.read_bytes()
    with pytest.raises(PkiUnavailable, match="openssl req could not run"):
        make_pki(tmp_path / "other", openssl=str(tmp_path / "no-such-openssl"))
