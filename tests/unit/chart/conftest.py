"""Session fixtures: the chart rendered with each CI value set (helm runs once per set)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from chartkit import Chart, Rendered, values_file


@pytest.fixture(scope="session")
def chart(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chart]:
    # helm keeps its cache and config under $HOME: a private one per session.
    yield Chart(helm=helm, home=tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def default(chart: Chart) -> Rendered:
    return chart.template([values_file("default")])


@pytest.fixture(scope="session")
def ha(chart: Chart) -> Rendered:
    return chart.template([values_file("ha-certmanager")])


@pytest.fixture(scope="session")
def cdi_dra(chart: Chart) -> Rendered:
    return chart.template([values_file("cdi-dra-monitoring")])


@pytest.fixture(scope="session")
def custom(chart: Chart) -> Rendered:
    return chart.template([values_file("custom-resources")])
