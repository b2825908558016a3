"""The chart's DeviceClass (templates/dra-deviceclass.yaml) renders and selects the plugin's devices."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from hami.core.dra_translate import DRIVER_NAME
from hami.dra.devices import mock_gpus
from hami.dra.slices import resource_slice
from hami.simulator.dra_cel import CelSelectors, cel_device
from hami.simulator.dra_driver import device_class_manifest

CHART = Path(__file__).resolve().parents[3] / "helm" / "hami"


def render(helm: Path, tmp_path: Path, *args: str) -> list[dict]:
    result = subprocess.run(
        [str(helm), "template", "t", str(CHART), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_device_class_only_when_dra_is_enabled(helm: Path, tmp_path: Path) -> None:
    assert not [d for d in render(helm, tmp_path) if d.get("kind") == "DeviceClass"]
    (device_class,) = [
        d for d in render(helm, tmp_path, "--set", "dra.enabled=true") if d.get("kind") == "DeviceClass"
    ]
    assert device_class["apiVersion"] == "resource.k8s.io/v1"
    assert device_class["metadata"]["name"] == DRIVER_NAME
    assert "extendedResourceName" not in device_class["spec"]
    # The embedded cluster's --dra installs the same class.
    assert device_class["spec"] == device_class_manifest()["spec"]
    (selector,) = device_class["spec"]["selectors"]
    cel = CelSelectors()
    slice_ = resource_slice("n", DRIVER_NAME, mock_gpus("n", 2))
    assert all(
        cel.matches(selector["cel"]["expression"], cel_device(DRIVER_NAME, d))
        for d in slice_["spec"]["devices"]
    )
    assert not cel.matches(
        selector["cel"]["expression"], cel_device("gpu.nvidia.com", slice_["spec"]["devices"][0])
    )
    extended = [
        d
        for d in render(
            helm, tmp_path, "--set", "dra.enabled=true", "--set", "dra.extendedResourceName=nvidia.com/gpu"
        )
        if d.get("kind") == "DeviceClass"
    ]
    assert extended[0]["spec"]["extendedResourceName"] == "nvidia.com/gpu"
