from __future__ import annotations

import json
from pathlib import Path

import pytest

from hami.cli import main
from hami.replay.batch import parse_policies, parse_seeds

CLUSTER = """
nodes:
  - name: g
    count: 6
    cpu: "32"
    memory: 128Gi
    gpus: 4
    model: T4
pods:
  - name: whole
    count: 12
    cpu: "4"
    memory: 8Gi
    gpus: 1
  - name: half
    count: 12
    cpu: "2"
    memory: 4Gi
    gpus: 1
    gpu_milli: 500
  - name: cpu
    count: 6
    cpu: "6"
    memory: 8Gi
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER)
    return path


def test_json_one_object_per_policy_and_seed(cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "replay",
            "--nodes",
            str(cluster),
            "--pods",
            str(cluster),
            "--policy",
            "fgd,best-fit",
            "--seeds",
            "1-2",
            "--jobs",
            "1",
            "--json",
        ]
    )
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted((r["policy"], r["seed"]) for r in lines) == [
        ("best-fit", 1),
        ("best-fit", 2),
        ("fgd", 1),
        ("fgd", 2),
    ]
    for record in lines:
        assert len(record["alloc_pct"]) == 131
        assert record["final_alloc_pct"] > 0 and record["wall_s"] >= 0
        assert isinstance(record["failed_pods"], int)


def test_table_and_svg_plot(cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "curves.svg"
    code = main(
        [
            "replay",
            "--nodes",
            str(cluster),
            "--pods",
            str(cluster),
            "--policy",
            "fragmentation-aware,spread",
            "--seed",
            "5",
            "--plot",
            str(plot),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "fragmentation-aware" in out and "alloc@130%" in out
    svg = plot.read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == 2


def test_parallel_jobs_give_the_same_results(cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "replay",
        "--nodes",
        str(cluster),
        "--pods",
        str(cluster),
        "--policy",
        "gpu-packing",
        "--seeds",
        "1,2",
        "--json",
    ]
    main([*args, "--jobs", "1"])
    serial = sorted(capsys.readouterr().out.splitlines())
    main([*args, "--jobs", "2"])
    parallel = sorted(capsys.readouterr().out.splitlines())
    strip = [{k: v for k, v in json.loads(line).items() if k != "wall_s"} for line in serial]
    assert strip == [{k: v for k, v in json.loads(line).items() if k != "wall_s"} for line in parallel]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--policy", "nope"], "unknown policy"),
        (["--seeds", "9-3"], "bad seed list"),
        (["--tune", "0"], "--tune"),
        (["--plot", "x.pdf"], ".svg or .png"),
    ],
)
def test_bad_arguments(
    cluster: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["replay", "--nodes", str(cluster), "--pods", str(cluster), *extra]) == 2
    assert message in capsys.readouterr().err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--nodes", str(tmp_path / "none.csv"), "--pods", str(tmp_path / "none.csv")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_seed_and_policy_lists() -> None:
    assert parse_seeds("42-45,50,42") == (42, 43, 44, 45, 50)
    assert parse_policies("fgd, best-fit,fgd") == ("fgd", "best-fit")
