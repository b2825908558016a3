"""The chart is rendered with tests/unit/chart's kit (helm v4, offline), shared here."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_CHART_KIT_DIR = str(Path(__file__).resolve().parents[2] / "unit" / "chart")
if _CHART_KIT_DIR not in sys.path:
    sys.path.insert(0, _CHART_KIT_DIR)

from chartkit import Chart  # noqa: E402


@pytest.fixture(scope="session")
def e2e_chart(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chart]:
    yield Chart(helm=helm, home=tmp_path_factory.mktemp("helm-home-e2e"))
