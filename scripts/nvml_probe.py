#!/usr/bin/env python3
"""Run the device plugin's NVML backend on this machine and print what it would register.

Prints one JSON document: the discovered GPUs, the ``hami.io/node-nvidia-register`` value the
plugin would write (and the ``hami.io/node-nvidia-score`` one), the result of a short run of the
XID health watcher, and, with ``--compare``, a field-by-field check against a capture such as
``../shared/fixtures/h100/nvml.json``. Exit status 1 when a compared model fact differs.

    python scripts/nvml_probe.py --compare ../shared/fixtures/h100/nvml.json     # on a GPU machine
    python scripts/nvml_probe.py --replay ../shared/fixtures/h100/nvml.json      # dry run, no GPU

Needs the repository on sys.path (done below), nvidia-ml-py (module ``pynvml``) and PyYAML.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hami.core.node_annotations import encode_node_devices, encode_node_scores
from hami.deviceplugin.annotator import score_entries
from hami.deviceplugin.backend import HealthEvent, PhysicalGpu, health_policy
from hami.deviceplugin.backends.nvml import MIB, NvmlBackend, normalize_bus_id
from hami.deviceplugin.backends.nvml_replay import RecordedNvml
from hami.deviceplugin.virtual import NodeDeviceSettings, registered_devices


def compare(gpus: tuple[PhysicalGpu, ...], capture: dict[str, Any]) -> dict[str, Any]:
    """Model facts must agree; identity facts (UUID, bus, minor) tell whether it is the same GPU."""
    report: dict[str, Any] = {"ok": True, "devices": []}
    recorded = capture.get("devices", [])
    if len(recorded) != len(gpus):
        report["ok"] = False
        report["count"] = {"probe": len(gpus), "capture": len(recorded)}
    for gpu, rec in zip(gpus, recorded, strict=False):
        major, minor = rec.get("cuda_compute_capability", [0, 0])
        model = {
            "name": (gpu.name, rec.get("name")),
            "memory_mib": (gpu.memory_mib, int(rec.get("memory_v1", {}).get("total", 0)) // MIB),
            "compute_capability": (gpu.compute_capability, f"{major}.{minor}"),
            "mig_enabled": (gpu.mig_enabled, bool(rec.get("mig_mode", [0])[0])),
        }
        identity = {
            "uuid": (gpu.uuid, rec.get("uuid")),
            "pci_bus_id": (gpu.pci_bus_id, normalize_bus_id(rec.get("pci", {}).get("busId", ""))),
            "minor_number": (gpu.minor_number, rec.get("minor_number")),
        }
        mismatched = sorted(k for k, (a, b) in model.items() if a != b)
        report["ok"] = report["ok"] and not mismatched
        report["devices"].append(
            {
                "index": gpu.index,
                "model_mismatches": {k: {"probe": model[k][0], "capture": model[k][1]} for k in mismatched},
                "same_gpu": all(a == b for a, b in identity.values()),
                "identity": {k: {"probe": a, "capture": b} for k, (a, b) in identity.items()},
            }
        )
    return report


async def watch_health(backend: NvmlBackend, seconds: float) -> dict[str, Any]:
    events: list[HealthEvent] = []
    stream = backend.health_events()

    async def collect() -> None:
        async for event in stream:
            events.append(event)

    started = time.monotonic()
    task = asyncio.create_task(collect())
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await stream.aclose()
    return {
        "watched_s": round(time.monotonic() - started, 2),
        "events": [{"uuid": e.uuid, "healthy": e.healthy, "reason": e.reason, "xid": e.xid} for e in events],
    }


async def probe(args: argparse.Namespace) -> int:
    if args.replay is not None:
        module: Any = RecordedNvml.from_file(args.replay)
    else:
        import pynvml

        module = pynvml
    backend = NvmlBackend(module, sysfs_root=args.sysfs_root, event_timeout_ms=500, policy=health_policy())
    started = time.monotonic()
    gpus = await backend.devices()
    discovery_s = time.monotonic() - started
    settings = NodeDeviceSettings(split_count=args.split)
    register = encode_node_devices(registered_devices(gpus, {g.uuid: True for g in gpus}, settings))
    topology = await backend.topology()
    out: dict[str, Any] = {
        "source": str(args.replay) if args.replay else "pynvml",
        "discovery_s": round(discovery_s, 4),
        "devices": [
            {
                "uuid": g.uuid,
                "index": g.index,
                "name": g.name,
                "memory_mib": g.memory_mib,
                "pci_bus_id": g.pci_bus_id,
                "numa_node": g.numa_node,
                "minor_number": g.minor_number,
                "compute_capability": g.compute_capability,
                "mig_enabled": g.mig_enabled,
            }
            for g in gpus
        ],
        "hami.io/node-nvidia-register": register,
        "hami.io/node-nvidia-score": encode_node_scores(score_entries(topology, [g.uuid for g in gpus])),
        "kubelet_device_ids": [f"{g.uuid}-{i}" for g in gpus for i in range(min(args.split, 2))],
    }
    if args.watch_seconds > 0:
        out["health_watch"] = await watch_health(backend, args.watch_seconds)
    await backend.close()
    status = 0
    if args.compare is not None:
        out["comparison"] = compare(gpus, json.loads(args.compare.read_text()))
        status = 0 if out["comparison"]["ok"] else 1
    print(json.dumps(out, indent=2))
    return status


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replay", type=Path, help="use a recorded NVML capture instead of the driver")
    parser.add_argument("--compare", type=Path, help="capture to compare the discovered GPUs with")
    parser.add_argument("--sysfs-root", type=Path, default=Path("/sys"))
    parser.add_argument("--split", type=int, default=10, help="deviceSplitCount (default 10)")
    parser.add_argument("--watch-seconds", type=float, default=2.0, help="run the XID watcher this long")
    return asyncio.run(probe(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
