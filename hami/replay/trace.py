"""Cluster and workload input of `hami replay`: the openb CSVs, generic CSV/YAML, and pod order.

Formats
=======

**openb CSV** (Alibaba cluster-trace-gpu-v2023, the FGD paper's traces):

* nodes: ``sn, cpu_milli, memory_mib, gpu, model``;
* pods: ``name, cpu_milli, memory_mib, num_gpu, gpu_milli[, gpu_spec, ...]`` (other columns such
  as ``qos`` or timestamps are ignored: the replay is arrivals only).

**Generic CSV** is the same thing with friendlier optional columns. A node file needs
``name`` (or ``sn``), ``cpu_milli``, ``memory_mib``, ``gpu`` (or ``gpus``) and may add ``model``
and ``gpu_memory_mib`` (MiB of one card; default from the model, see :data:`CARD_MEMORY_MIB`).
A pod file needs ``name``, ``cpu_milli``, ``memory_mib`` and may add ``num_gpu``, ``gpu_milli``
(share of each GPU in 1/1000, default 1000 when ``num_gpu`` > 0), ``gpu_spec`` (allowed models
separated by ``|``). Both may add ``count`` to repeat a row (names get ``-0``, ``-1``, ...).

**YAML** (one file may hold both lists)::

    nodes:
      - name: a100-node
        count: 16            # optional, default 1
        cpu: "96"            # Kubernetes quantity; or cpu_milli: 96000
        memory: 768Gi        # quantity; or memory_mib: 786432
        gpus: 8
        model: A100
        gpu_memory: 40Gi     # per card, optional; or gpu_memory_mib
    pods:
      - name: train
        count: 200
        cpu: "8"
        memory: 32Gi
        gpus: 1              # nvidia.com/gpu
        gpu_milli: 500       # or gpucores: 50 (HAMi percent of one card); default a whole card
        gpu_types: [A100]    # nvidia.com/use-gputype; list or "A100|H100"

Semantics (replay-method §2): for a pod with ``num_gpu`` > 0, ``gpu_milli`` is clamped to
0..1000 and ``gpu_spec`` keeps its non-empty parts; a pod with ``num_gpu`` = 0 asks no GPU.
A pod asking several GPUs must ask whole ones (gpu_milli 1000).

Order (replay-method §3), from Go's ``math/rand`` seeded with the experiment seed: one discarded
``Int()``; pods sorted by name then Fisher-Yates shuffled; then the workload is inflated to
``tune`` x the cluster's GPU capacity by appending clones sampled (with replacement) from the
name-sorted originals, or deflated by removing random pods; then 10 draws (the informers'
jitter) and ``Perm(nodes)`` gives each node, in name order, its tie-break rank.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Final

import yaml

from hami.core.errors import ConfigError
from hami.core.quantity import QuantityError, parse_quantity
from hami.replay.gorand import GoRand

MILLI: Final = 1000
# MiB of one card, by openb model name (G2 and G3 are anonymised in the trace: 16 GiB assumed).
CARD_MEMORY_MIB: Final[Mapping[str, int]] = {
    "P100": 16280,
    "T4": 15109,
    "V100M16": 16160,
    "V100M32": 32510,
    "A10": 22731,
    "G2": 16384,
    "G3": 16384,
}
DEFAULT_CARD_MEMORY_MIB: Final = 16384
# Reflector watch-timeout draws between the tuning and the node permutation (§3 step 5).
INFORMER_DRAWS: Final = 10


class TraceError(ConfigError):
    """An input file of the replay is unreadable or has a bad row (names file, row and field)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSpec:
    name: str
    cpu_milli: int
    memory_mib: int
    gpus: int
    model: str = ""
    gpu_memory_mib: int = DEFAULT_CARD_MEMORY_MIB


@dataclass(frozen=True, slots=True, kw_only=True)
class PodSpec:
    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int = 0
    gpu_milli: int = 0  # per GPU, 0..1000; 0 when num_gpu == 0
    gpu_spec: tuple[str, ...] = ()  # allowed models; empty = any

    @property
    def gpu_request(self) -> int:
        return self.num_gpu * self.gpu_milli

    @property
    def gpu_type(self) -> str:
        return "|".join(self.gpu_spec)


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """Pods in the order they are offered, and the tie-break rank of every node (name order)."""

    pods: tuple[PodSpec, ...]
    node_rank: tuple[int, ...]
    seed: int
    tune: float


# ---------------------------------------------------------------- parsing helpers


def _where(path: Path, row: int | None) -> str:
    return f"{path}" if row is None else f"{path} row {row}"


def _int_field(
    path: Path, row: int | None, record: Mapping[str, object], *names: str, default: int | None = None
) -> int:
    for name in names:
        value = record.get(name)
        if value is None or value == "":
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        text = str(value).strip()
        if text.isdigit():
            return int(text)
        try:
            if isinstance(value, bool):
                raise ValueError("boolean")
            number = Fraction(text)
        except (ValueError, ZeroDivisionError):
            raise TraceError(f"{_where(path, row)}: {name}", f"not a number: {value!r}") from None
        if number.denominator != 1:
            raise TraceError(f"{_where(path, row)}: {name}", f"not an integer: {value!r}")
        return int(number)
    if default is None:
        raise TraceError(_where(path, row), f"missing field {' or '.join(names)}")
    return default


def _quantity_field(
    path: Path, row: int | None, record: Mapping[str, object], name: str, scale: Fraction
) -> int | None:
    value = record.get(name)
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise QuantityError("not a scalar")
        quantity = parse_quantity(value if isinstance(value, str | int) else str(value))
    except QuantityError as err:
        raise TraceError(f"{_where(path, row)}: {name}", f"not a quantity: {value!r} ({err})") from None
    return int(quantity * scale)


def _gpu_spec(text: object) -> tuple[str, ...]:
    if text is None:
        return ()
    parts: Iterable[object] = text if isinstance(text, list | tuple) else str(text).split("|")
    return tuple(str(p).strip() for p in parts if str(p).strip())


def _expand(name: str, count: int) -> Iterator[str]:
    if count == 1:
        yield name
        return
    width = len(str(count - 1))
    for i in range(count):
        yield f"{name}-{i:0{width}d}"


def _check_non_negative(path: Path, row: int | None, **values: int) -> None:
    for key, value in values.items():
        if value < 0:
            raise TraceError(f"{_where(path, row)}: {key}", f"must not be negative, got {value}")


def _make_node(path: Path, row: int | None, rec: Mapping[str, object], name: str) -> NodeSpec:
    cpu = _quantity_field(path, row, rec, "cpu", Fraction(MILLI))
    memory = _quantity_field(path, row, rec, "memory", Fraction(1, 2**20))
    card = _quantity_field(path, row, rec, "gpu_memory", Fraction(1, 2**20))
    model = str(rec.get("model") or "").strip()
    node = NodeSpec(
        name=name,
        cpu_milli=cpu if cpu is not None else _int_field(path, row, rec, "cpu_milli"),
        memory_mib=memory if memory is not None else _int_field(path, row, rec, "memory_mib"),
        gpus=_int_field(path, row, rec, "gpu", "gpus", default=0),
        model=model,
        gpu_memory_mib=card
        if card is not None
        else _int_field(
            path, row, rec, "gpu_memory_mib", default=CARD_MEMORY_MIB.get(model, DEFAULT_CARD_MEMORY_MIB)
        ),
    )
    _check_non_negative(path, row, cpu_milli=node.cpu_milli, memory_mib=node.memory_mib, gpus=node.gpus)
    if node.gpus > 0 and node.gpu_memory_mib <= 0:
        raise TraceError(f"{_where(path, row)}: gpu_memory_mib", "must be positive on a GPU node")
    return node


def _make_pod(path: Path, row: int | None, rec: Mapping[str, object], name: str) -> PodSpec:
    cpu = _quantity_field(path, row, rec, "cpu", Fraction(MILLI))
    memory = _quantity_field(path, row, rec, "memory", Fraction(1, 2**20))
    num_gpu = _int_field(path, row, rec, "num_gpu", "gpus", default=0)
    cores = rec.get("gpucores")
    if cores is not None and cores != "":
        milli = _int_field(path, row, rec, "gpucores") * 10
    else:
        milli = _int_field(path, row, rec, "gpu_milli", default=MILLI if num_gpu > 0 else 0)
    spec_field = rec.get("gpu_types", rec.get("gpu_spec"))
    if num_gpu != 0:
        milli = min(max(milli, 0), MILLI)
        spec = _gpu_spec(spec_field)
    else:
        milli, spec = 0, ()
    pod = PodSpec(
        name=name,
        cpu_milli=cpu if cpu is not None else _int_field(path, row, rec, "cpu_milli"),
        memory_mib=memory if memory is not None else _int_field(path, row, rec, "memory_mib"),
        num_gpu=num_gpu,
        gpu_milli=milli,
        gpu_spec=spec,
    )
    _check_non_negative(path, row, cpu_milli=pod.cpu_milli, memory_mib=pod.memory_mib, num_gpu=num_gpu)
    if num_gpu > 1 and 0 < milli < MILLI:
        raise TraceError(
            f"{_where(path, row)}: gpu_milli", f"a pod asking {num_gpu} GPUs must ask whole ones, got {milli}"
        )
    return pod


def _csv_records(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None:
                raise TraceError(str(path), "empty file")
            for number, record in enumerate(reader, start=2):
                yield number, {k.strip(): (v or "").strip() for k, v in record.items() if k is not None}
    except OSError as err:
        raise TraceError(str(path), f"cannot read: {err}") from None
    except UnicodeDecodeError as err:
        raise TraceError(str(path), f"not UTF-8 text: {err}") from None


def _yaml_section(path: Path, section: str) -> list[Mapping[str, object]]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise TraceError(str(path), f"cannot read: {err}") from None
    except yaml.YAMLError as err:
        raise TraceError(str(path), f"not valid YAML: {err}") from None
    if not isinstance(document, dict) or not isinstance(document.get(section), list):
        raise TraceError(str(path), f"expected a mapping with a list under {section!r}")
    items: list[Mapping[str, object]] = document[section]
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise TraceError(f"{path}: {section}[{index}]", "expected a mapping")
    return items


def _is_yaml(path: Path) -> bool:
    return path.suffix.lower() in (".yaml", ".yml")


def _records(path: Path, section: str) -> Iterator[tuple[str, Mapping[str, object], str, int]]:
    """(where, record, base name, count) for every entry of a node or pod file."""
    if _is_yaml(path):
        for index, rec in enumerate(_yaml_section(path, section)):
            where = f"{path}: {section}[{index}]"
            name = str(rec.get("name") or rec.get("sn") or f"{section[:-1]}-{index}")
            yield where, rec, name, _int_field(path, None, rec, "count", default=1)
        return
    for number, rec in _csv_records(path):
        name = rec.get("name") or rec.get("sn") or ""
        if not name:
            raise TraceError(f"{path} row {number}", "missing field name (or sn)")
        yield f"{path} row {number}", rec, name, _int_field(path, number, rec, "count", default=1)


def load_nodes(path: str | Path) -> tuple[NodeSpec, ...]:
    """Nodes of a cluster, sorted by name (the order every rank and tie-break refers to)."""
    path = Path(path)
    nodes: list[NodeSpec] = []
    for where, rec, base, count in _records(path, "nodes"):
        row = _row_of(where)
        for name in _expand(base, count):
            nodes.append(_make_node(path, row, rec, name))
    if not nodes:
        raise TraceError(str(path), "no nodes")
    nodes.sort(key=lambda n: n.name.encode())
    _check_unique(path, [n.name for n in nodes])
    return tuple(nodes)


def load_pods(path: str | Path) -> tuple[PodSpec, ...]:
    """Pods of a trace in file order (the replay order comes from :func:`order_workload`)."""
    path = Path(path)
    pods: list[PodSpec] = []
    for where, rec, base, count in _records(path, "pods"):
        row = _row_of(where)
        for name in _expand(base, count):
            pods.append(_make_pod(path, row, rec, name))
    if not pods:
        raise TraceError(str(path), "no pods")
    _check_unique(path, [p.name for p in pods])
    return tuple(pods)


def _row_of(where: str) -> int | None:
    marker = " row "
    return int(where.rsplit(marker, 1)[1]) if marker in where else None


def _check_unique(path: Path, names: Sequence[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise TraceError(str(path), f"duplicate name {name!r}")
        seen.add(name)


# ---------------------------------------------------------------- ordering and tuning


def gpu_capacity(nodes: Sequence[NodeSpec]) -> int:
    return MILLI * sum(n.gpus for n in nodes)


def order_workload(
    nodes: Sequence[NodeSpec], pods: Sequence[PodSpec], seed: int, tune: float = 1.3
) -> Workload:
    """The FGD experiment's pod order, inflation to ``tune`` x GPU capacity, and node ranks."""
    return prepare_workload(nodes, pods, seed, tune)[0]


def prepare_workload(
    nodes: Sequence[NodeSpec], pods: Sequence[PodSpec], seed: int, tune: float = 1.3
) -> tuple[Workload, GoRand]:
    """:func:`order_workload` and the generator, positioned where scheduling starts drawing."""
    if tune <= 0:
        raise ValueError(f"tune must be positive, got {tune}")
    rng = GoRand(seed)
    rng.go_int()  # evaluated as a log argument, drawn even when not logged
    by_name = sorted(pods, key=lambda p: p.name.encode())
    order = list(by_name)
    rng.shuffle_list(order)
    target = tune * gpu_capacity(nodes)
    total = sum(p.gpu_request for p in pods)
    if total < target and any(p.gpu_milli > 0 for p in pods):
        i = 0
        while True:
            pick = by_name[rng.intn(len(by_name))]
            # Go compares the per-GPU milli but adds num_gpu x milli (a multi-GPU clone may overshoot).
            if total + pick.gpu_milli > target:
                break
            order.append(replace(pick, name=f"{pick.name}-tuned-{i}"))
            total += pick.gpu_request
            i += 1
    elif total > target:
        while total > target and order:
            removed = order.pop(rng.intn(len(order)))
            total -= removed.gpu_request
    for _ in range(INFORMER_DRAWS):
        rng.float64()
    rank = rng.perm(len(nodes))
    return Workload(pods=tuple(order), node_rank=tuple(rank), seed=seed, tune=tune), rng
