from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def nvml_capture(h100_fixtures: Path) -> dict[str, Any]:
    """The recorded H100 NVML facts (a fresh copy per test)."""
    return copy.deepcopy(json.loads((h100_fixtures / "nvml.json").read_text()))


@pytest.fixture
def two_gpu_capture(nvml_capture: dict[str, Any]) -> dict[str, Any]:
    """The H100 capture plus a second GPU derived from it (another UUID, index, bus, minor)."""
    second = copy.deepcopy(nvml_capture["devices"][0])
    second.update(
        index=1,
        index_requested=1,
        uuid="GPU-11111111-2222-3333-4444-555555555555",
        minor_number=1,
        pci=dict(second["pci"], busId="00000000:3B:00.0"),
    )
    nvml_capture["devices"].append(second)
    return nvml_capture
