"""The paper's published curves, reproduced column by column (default trace, seed 42)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from hami.replay.engine import Replay
from hami.replay.trace import load_nodes, load_pods


@pytest.mark.slow
@pytest.mark.parametrize(("policy", "paper"), [("best-fit", "05-BestFit"), ("fgd", "06-FGD")])
def test_default_trace_seed_42_matches_the_paper(shared_dir: Path, policy: str, paper: str) -> None:
    data = shared_dir / "data" / "openb"
    expected: list[float] = []
    with (data / "fgd_expected_alloc.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            if (
                row["workload"] == "openb_pod_list_default"
                and row["sc_policy"] == paper
                and row["seed"] == "42"
            ):
                expected = [float(row[str(x)]) for x in range(131)]
    assert len(expected) == 131
    nodes = load_nodes(data / "openb_node_list_gpu_node.csv")
    pods = load_pods(data / "openb_pod_list_default.csv")
    result = Replay(nodes, pods, policy, seed=42).run()
    assert result.pods == 10_866
    # every pod lands where the Go simulator put it, so the curve is the published one; a
    # column whose mean falls exactly on a rounding tie may differ by 0.01
    assert result.alloc_pct[130] == expected[130]
    assert max(abs(a - b) for a, b in zip(result.alloc_pct, expected, strict=True)) <= 0.0101
    assert sum(a != b for a, b in zip(result.alloc_pct, expected, strict=True)) <= 2
