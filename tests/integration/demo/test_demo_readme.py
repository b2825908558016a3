"""The README's promises: its two commands, and a metrics list that matches the catalog."""

from __future__ import annotations

import re
from pathlib import Path

from hami.metrics.catalog import all_specs

REPO = Path(__file__).resolve().parents[3]
README = (REPO / "README.md").read_text(encoding="utf-8")
TEST_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && scripts/fetch_tools.sh "
    "&& .venv/bin/python -m pytest -q"
)


def sh_blocks() -> list[str]:
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", README, re.S)]


def test_the_first_command_sets_up_and_runs_the_demo_once() -> None:
    first = sh_blocks()[0]
    assert first == "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/hami demo --once"


def test_the_second_command_is_the_one_ci_runs() -> None:
    assert sh_blocks()[1] == TEST_COMMAND
    assert TEST_COMMAND.split(" && ")[-1] in (REPO / ".ci" / "run").read_text(encoding="utf-8")


def test_every_metric_of_the_catalog_is_documented() -> None:
    documented = set(re.findall(r"^\| `([A-Za-z_]+)` \|", README, re.M))
    assert set(all_specs()) <= documented, sorted(set(all_specs()) - documented)
