"""``hami cluster up --dra`` as a subprocess: a ``hami dra-plugin`` per GPU node, seen with kubectl."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hami.core.dra_translate import DRIVER_NAME


def kubectl_json(kubectl: Path, kubeconfig: str, *args: str) -> dict:
    out = subprocess.run(
        [str(kubectl), "--kubeconfig", kubeconfig, *args, "-o", "json"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_cluster_up_dra_publishes_slices_and_stops_its_plugins(dra_dir: Path, kubectl: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hami", "cluster", "up", "--dra", "--nodes", "1", "--gpus-per-node", "2",
         "--gpu-memory", "24576", "--state-dir", str(dra_dir), "--json", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        kubeconfig = info["kubeconfig"]
        assert info["dra"]["deviceClass"] == DRIVER_NAME
        plugins = info["dra"]["plugins"]
        assert [p["node"] for p in plugins] == ["node-1"]
        assert all(alive(p["pid"]) and Path(p["registrySocket"]).is_socket() for p in plugins)

        listed = kubectl_json(kubectl, kubeconfig, "get", "resourceslices,deviceclasses")["items"]
        (published,) = [o for o in listed if o["kind"] == "ResourceSlice"]
        assert (published["spec"]["nodeName"], published["spec"]["driver"]) == ("node-1", DRIVER_NAME)
        assert [d["capacity"]["memory"]["value"] for d in published["spec"]["devices"]] == ["24Gi", "24Gi"]
        assert [o["metadata"]["name"] for o in listed if o["kind"] == "DeviceClass"] == [DRIVER_NAME]

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not any(alive(p["pid"]) for p in plugins)
        assert not any(Path(p["registrySocket"]).exists() for p in plugins)
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
                pytest.fail(f"hami cluster up --dra failed ({proc.returncode}): {stderr[-2000:]}")
