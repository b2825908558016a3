"""``hami device-plugin`` as a process: registers with a kubelet, stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "nvml_probe.py"


async def test_mock_plugin_process_registers_and_stops_on_sigterm(kubelet: Any, sock_dir: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hami",
        "device-plugin",
        "--backend",
        "mock",
        "--standalone",
        "--node-name",
        "n1",
        "--plugin-dir",
        str(sock_dir),
        "--host-root",
        str(sock_dir / "host"),
        "--mock-gpus",
        "3",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.wait_for(kubelet.registered.wait(), 20)
        await kubelet.wait_for(lambda: len(kubelet.devices) == 30, wait_s=10)
        assert kubelet.requests[0].resource_name == "nvidia.com/gpu"
        proc.send_signal(signal.SIGTERM)
        _out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()
        assert b"registered nvidia.com/gpu" in err
        assert not (sock_dir / "nvidia-gpu.sock").exists()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_bad_flags_fail_fast_with_a_clear_message(sock_dir: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hami",
        "device-plugin",
        "--backend",
        "mock",
        "--standalone",
        "--node-name",
        "n1",
        "--plugin-dir",
        str(sock_dir),
        "--device-list-strategy",
        "cdi",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert b"unknown device list strategy 'cdi'" in err


async def test_nvml_probe_dry_run_agrees_with_the_h100_capture(h100_fixtures: Path) -> None:
    capture = h100_fixtures / "nvml.json"
    script = SCRIPT
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        "--replay",
        str(capture),
        "--compare",
        str(capture),
        "--watch-seconds",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["comparison"]["ok"] and report["comparison"]["devices"][0]["same_gpu"]
    assert report["hami.io/node-nvidia-register"] == (
        '[{"id":"GPU-c7a18d9c-18fd-13e6-447c-983f490b6495","count":10,"devmem":81559,"devcore":100,'
        '"type":"NVIDIA H100 80GB HBM3","mode":"hami-core","health":true,"devicepairscore":{}}]'
    )
