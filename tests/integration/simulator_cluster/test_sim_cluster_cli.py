"""``hami cluster up`` as a subprocess, driven with the real kubectl."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def kubectl_json(kubectl: Path, kubeconfig: str, *args: str) -> dict:
    out = subprocess.run(
        [str(kubectl), "--kubeconfig", kubeconfig, *args, "-o", "json"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def test_cluster_up_serves_kubectl_and_stops_on_sigterm(short_dir, kubectl):
    kubeconfig = short_dir / "kc" / "config"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hami", "cluster", "up", "--nodes", "2", "--gpus-per-node", "2",
         "--gpu-model", "NVIDIA A100-PCIE-40GB", "--gpu-memory", "40960",
         "--state-dir", str(short_dir), "--kubeconfig", str(kubeconfig), "--json", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["kubeconfig"] == str(kubeconfig) and kubeconfig.exists()
        assert [n["kubeletSocket"] for n in info["nodes"]] == [
            str(short_dir / name / "device-plugins" / "kubelet.sock") for name in ("node-1", "node-2")
        ]
        assert all(Path(n["kubeletSocket"]).is_socket() for n in info["nodes"])
        assert json.loads(Path(info["nodes"][0]["mockGpuFile"]).read_text()) == {
            "count": 2, "model": "NVIDIA A100-PCIE-40GB", "memory": 40960,
        }  # fmt: skip

        nodes = kubectl_json(kubectl, str(kubeconfig), "get", "nodes")
        assert [n["metadata"]["name"] for n in nodes["items"]] == ["node-1", "node-2"]
        labels = nodes["items"][0]["metadata"]["labels"]
        assert labels["gpu"] == "on" and labels["nvidia.com/gpu.product"] == "NVIDIA-A100-PCIE-40GB"
        ready = {c["type"]: c["status"] for c in nodes["items"][0]["status"]["conditions"]}
        assert ready["Ready"] == "True"

        # A plain pod goes through the default scheduler and a kubelet to Running.
        manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hello"},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}}  # fmt: skip
        subprocess.run(
            [str(kubectl), "--kubeconfig", str(kubeconfig), "apply", "-f", "-"],
            input=json.dumps(manifest), capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            pod = kubectl_json(kubectl, str(kubeconfig), "get", "pod", "hello")
            if pod["status"].get("phase") == "Running":
                break
            assert time.monotonic() < deadline, f"pod not running: {pod['status']}"
            time.sleep(0.1)
        assert pod["spec"]["nodeName"] in ("node-1", "node-2")

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert not any(Path(n["kubeletSocket"]).exists() for n in info["nodes"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            stderr = proc.stderr.read()
            proc.stderr.close()
            if proc.returncode not in (0, None):
                pytest.fail(f"hami cluster up failed ({proc.returncode}): {stderr[-2000:]}")


def test_cluster_up_rejects_a_bad_scheduler_config(short_dir):
    bad = short_dir / "sched.yaml"
    bad.write_text("apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n"
                   "extenders:\n- urlPrefix: http://127.0.0.1:1\n  prioritizeVerb: prioritize\n")  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "hami", "cluster", "up", "--state-dir", str(short_dir),
         "--scheduler-config", str(bad)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "extenders[0].weight" in proc.stderr and "must have a positive weight" in proc.stderr
