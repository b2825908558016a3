from __future__ import annotations

from pathlib import Path

import pytest

from hami.replay.trace import (
    DEFAULT_CARD_MEMORY_MIB,
    TraceError,
    gpu_capacity,
    load_nodes,
    load_pods,
    order_workload,
)


@pytest.fixture(scope="module")
def openb(shared_dir: Path) -> Path:
    return shared_dir / "data" / "openb"


def test_openb_nodes_are_the_1213_gpu_nodes_sorted(openb: Path) -> None:
    nodes = load_nodes(openb / "openb_node_list_gpu_node.csv")
    assert len(nodes) == 1213
    assert gpu_capacity(nodes) == 6_212_000
    assert sum(n.cpu_milli for n in nodes) == 107_018_000
    assert [n.name for n in nodes] == sorted(n.name for n in nodes)
    first = nodes[0]
    assert (first.name, first.cpu_milli, first.memory_mib, first.gpus, first.model) == (
        "openb-node-0000",
        64000,
        262144,
        2,
        "P100",
    )
    assert first.gpu_memory_mib == 16280


def test_openb_pods_parse_gpu_fields(openb: Path) -> None:
    pods = load_pods(openb / "openb_pod_list_default.csv")
    assert len(pods) == 8152
    p0, p1 = pods[0], pods[1]
    assert (p0.cpu_milli, p0.memory_mib, p0.num_gpu, p0.gpu_milli, p0.gpu_spec) == (12000, 16384, 1, 1000, ())
    assert (p1.num_gpu, p1.gpu_milli, p1.gpu_request) == (1, 460, 460)
    assert all(p.gpu_milli == 0 for p in pods if p.num_gpu == 0)


def test_gpuspec_and_five_column_traces(openb: Path) -> None:
    spec = load_pods(openb / "openb_pod_list_gpuspec10.csv")
    assert any(p.gpu_spec == ("V100M16", "V100M32") for p in spec)
    assert load_pods(openb / "openb_pod_list_multigpu20.csv")[0].gpu_spec == ()


def test_method_verified_order_default_seed_42(openb: Path) -> None:
    # replay-method §3: 8152 pods tuned up to 10,866 pods, 8,075,080 GPU milli in total.
    nodes = load_nodes(openb / "openb_node_list_gpu_node.csv")
    pods = load_pods(openb / "openb_pod_list_default.csv")
    work = order_workload(nodes, pods, 42, 1.3)
    assert len(work.pods) == 10_866
    assert sum(p.gpu_request for p in work.pods) == 8_075_080
    originals = {p.name for p in pods}
    # originals (shuffled) first, then the clones appended in draw order
    assert {p.name for p in work.pods[:8152]} == originals
    assert all("-tuned-" in p.name for p in work.pods[8152:])
    assert work.pods[8152].name.endswith("-tuned-0")
    assert sorted(work.node_rank) == list(range(1213))


def test_tune_down_removes_pods(tmp_path: Path) -> None:
    nodes = tmp_path / "n.csv"
    nodes.write_text("sn,cpu_milli,memory_mib,gpu,model\nn1,64000,262144,2,T4\n")
    pods = tmp_path / "p.csv"
    rows = "".join(f"p{i},1000,1024,1,1000,\n" for i in range(10))
    pods.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n" + rows)
    work = order_workload(load_nodes(nodes), load_pods(pods), 1, 1.3)
    assert len(work.pods) == 2  # 2.6 GPUs of target: removed while the total exceeds it


def test_generic_csv_with_counts_and_defaults(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("name,cpu_milli,memory_mib,gpus,model,count\nbox,32000,65536,4,A100,3\n")
    pods = tmp_path / "pods.csv"
    pods.write_text("name,cpu_milli,memory_mib,num_gpu,count\ntrain,4000,8192,1,2\ncpu,1000,512,0,1\n")
    loaded = load_nodes(nodes)
    assert [n.name for n in loaded] == ["box-0", "box-1", "box-2"]
    assert loaded[0].gpu_memory_mib == DEFAULT_CARD_MEMORY_MIB
    ps = load_pods(pods)
    assert [p.name for p in ps] == ["train-0", "train-1", "cpu"]
    assert ps[0].gpu_milli == 1000  # a whole card when not given


def test_yaml_with_quantities(tmp_path: Path) -> None:
    spec = tmp_path / "cluster.yaml"
    spec.write_text(
        """
nodes:
  - name: a100
    count: 2
    cpu: "96"
    memory: 768Gi
    gpus: 8
    model: A100
    gpu_memory: 40Gi
pods:
  - name: half
    cpu: 500m
    memory: 2Gi
    gpus: 1
    gpucores: 50
    gpu_types: [A100, H100]
  - name: clamp
    cpu_milli: 1000
    memory_mib: 10
    gpus: 1
    gpu_milli: 2500
    gpu_types: "A100||"
"""
    )
    nodes = load_nodes(spec)
    assert nodes[0].cpu_milli == 96000 and nodes[0].memory_mib == 786432 and nodes[0].gpu_memory_mib == 40960
    half, clamp = load_pods(spec)
    assert (half.cpu_milli, half.memory_mib, half.gpu_milli, half.gpu_spec) == (
        500,
        2048,
        500,
        ("A100", "H100"),
    )
    assert (clamp.gpu_milli, clamp.gpu_spec) == (1000, ("A100",))


@pytest.mark.parametrize(
    ("header", "row", "message"),
    [
        ("name,cpu_milli,memory_mib,num_gpu,gpu_milli", "p,abc,1,0,0", "cpu_milli: not a number"),
        ("name,cpu_milli,memory_mib,num_gpu,gpu_milli", "p,1000,1,2,500", "must ask whole ones"),
        ("name,cpu_milli,num_gpu", "p,1000,0", "missing field memory_mib"),
        ("name,cpu_milli,memory_mib", "p,-5,1", "must not be negative"),
        ("name,cpu_milli,memory_mib", "p,1.5,1", "not an integer"),
    ],
)
def test_bad_pod_rows_name_file_row_and_field(tmp_path: Path, header: str, row: str, message: str) -> None:
    path = tmp_path / "pods.csv"
    path.write_text(f"{header}\n{row}\n")
    with pytest.raises(TraceError, match=message) as info:
        load_pods(path)
    assert "row 2" in str(info.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot read"):
        load_nodes(tmp_path / "missing.csv")
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: 3\n")
    with pytest.raises(TraceError, match="list under 'nodes'"):
        load_nodes(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("name,cpu_milli,memory_mib\na,1,1\na,1,1\n")
    with pytest.raises(TraceError, match="duplicate name"):
        load_pods(dup)
    quantity = tmp_path / "q.yaml"
    quantity.write_text("pods:\n  - name: x\n    cpu: lots\n    memory: 1Gi\n")
    with pytest.raises(TraceError, match="not a quantity"):
        load_pods(quantity)
