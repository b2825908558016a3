"""Smaller parts of the role: handshake health, settings, explanations, sweeps, events, prioritize."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from datetime import UTC, datetime

import pytest
from sched_fakes import container, drain_events, gpu, make_env, node_obj, pod_obj

from hami.config.loader import add_settings_arguments, load_settings
from hami.core import keys
from hami.core.errors import ConfigError
from hami.core.ledger import PodState
from hami.core.node_annotations import encode_node_devices_legacy
from hami.core.vendors import build_registry
from hami.k8s.objects import EVENTS
from hami.scheduler.events import EventSink, PodRef
from hami.scheduler.explain import WhyBook, error_record
from hami.scheduler.registrar import decode_node
from hami.scheduler.settings import SchedulerSettings, split_host_port

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def dcu_node(handshake: str | None) -> dict:
    register = encode_node_devices_legacy([gpu("DCU-0", model="DCU-Z100L", count=4)])
    ann = {"hami.io/node-dcu-register": register}
    if handshake is not None:
        ann["hami.io/node-handshake-dcu"] = handshake
    return node_obj("dcu-node", register=None, annotations=ann, allocatable=0)


def dcu(info):
    return next(v for v in info.vendors if v.vendor == "DCU")


def test_spec_7_4_handshake_vendor_health_and_writes():
    registry = build_registry()
    reported = decode_node(dcu_node("Reported 2026-01-01 11:59:00"), registry)
    assert [d.id for d in reported.devices(NOW)] == ["DCU-0"]
    assert dcu(reported).handshake_write(NOW) == "Requesting_2026-01-01 12:00:00"
    fresh = decode_node(dcu_node("Requesting_2026-01-01 11:59:30"), registry)
    assert [d.id for d in fresh.devices(NOW)] == ["DCU-0"] and dcu(fresh).handshake_write(NOW) is None
    expired = decode_node(dcu_node("Requesting_2026-01-01 11:58:00"), registry)
    assert expired.devices(NOW) == ()
    assert dcu(expired).handshake_write(NOW) == "Deleted_2026-01-01 12:00:00"
    deleted = decode_node(dcu_node("Deleted_2026-01-01 11:58:00"), registry)
    assert dcu(deleted).handshake_write(NOW) is None
    assert expired.time_dependent and not decode_node(node_obj("n", [gpu("GPU-a")]), registry).time_dependent


def parse(argv: list[str]) -> SchedulerSettings:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, SchedulerSettings)
    return load_settings(SchedulerSettings, args=parser.parse_args(argv), environ={})


def test_spec_1_1_flags():
    s = parse(
        [
            "--http_bind", "0.0.0.0:443",
            "--cert_file", "/tls/c", "--key_file", "/tls/k",
            "--scheduler-name", "hami-scheduler",
            "--node-scheduler-policy", "spread",
            "--gpu-scheduler-policy", "topology-aware",
            "--node-label-selector", "gpu=on, zone=a",
            "--node-lock-timeout", "5m",
            "--leader-elect",
            "--leader-elect-resource-name", "hami-scheduler",
            "--leader-elect-resource-namespace", "kube-system",
        ]
    )  # fmt: skip
    cfg = s.scheduler
    assert split_host_port(cfg.http_bind) == ("0.0.0.0", 443) and cfg.tls
    assert cfg.node_lock_timeout == 300 and cfg.label_selector_query == "gpu=on,zone=a"
    assert s.leader_election.enabled and s.leader_election.lease_namespace == "kube-system"
    assert split_host_port(cfg.metrics_bind_address) == ("0.0.0.0", 9395)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--http_bind", "nowhere"], "--http_bind"),
        (["--cert_file", "/c"], "--cert_file"),
        (["--node-scheduler-policy", "random"], "--node-scheduler-policy"),
        (["--node-label-selector", "novalue"], "--node-label-selector"),
        (["--bind-wait-timeout", "0"], "--bind-wait-timeout"),
    ],
)
def test_bad_flags_name_the_flag(argv, flag):
    with pytest.raises(ConfigError, match=flag):
        parse(argv)


def test_why_book_is_bounded():
    book = WhyBook(capacity=2)
    for name in ("a", "b", "c"):
        book.put(error_record("ns", name, f"uid-{name}", "boom", when=NOW))
    assert book.get("ns", "a") is None and book.get("ns", "c") is not None and len(book) == 2
    book.drop("ns", "c", "other-uid")
    assert book.get("ns", "c") is not None
    book.drop("ns", "c", "uid-c")
    assert book.get("ns", "c") is None


async def test_why_record_keeps_at_most_max_nodes():
    env = make_env()
    env.cycle.settings = type(env.cycle.settings)(why_max_nodes=2)
    for i in range(4):
        env.api.add_node(node_obj(f"n{i}", [gpu(f"GPU-{i}", mem=1000)]))
    pod = env.api.add_pod(pod_obj("big", container(mem=5000)))
    await env.filter(pod)
    record = env.why.get("default", "big")
    assert len(record.nodes) == 2 and record.omitted_nodes == 2
    assert record.nodes[0].devices[0].message == "GPU-0: free 1000 MiB < 5000 MiB"


async def test_stale_assumptions_are_forgotten_on_proof_only():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a")]))
    pod = env.api.add_pod(pod_obj("p", container(mem=1000)))
    env.api.echo = False  # the annotation never shows up in the watch
    await env.filter(pod)
    uid = pod["metadata"]["uid"]
    assert env.reconciler.sweep_assumptions() == 0  # within the grace period
    env.state.assumptions[uid].since -= 60
    env.state.assumptions[uid].writing = True
    assert env.reconciler.sweep_assumptions() == 0  # a write in flight may still land
    env.state.assumptions[uid].writing = False
    assert env.reconciler.sweep_assumptions() == 1
    assert env.state.ledger.pod(uid) is None


async def test_confirmed_assumption_is_not_swept():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a")]))
    pod = env.api.add_pod(pod_obj("p", container(mem=1000)))
    await env.filter(pod)
    await env.settle()
    uid = pod["metadata"]["uid"]
    assert env.state.ledger.pod(uid).state is PodState.COMMITTED and uid not in env.state.assumptions
    assert env.reconciler.sweep_assumptions() == 0


async def test_leadership_loss_forgets_unconfirmed_decisions():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a")]))
    env.api.echo = False
    pod = env.api.add_pod(pod_obj("p", container(mem=1000)))
    await env.filter(pod)
    assert env.state.forget_assumptions("leadership lost") == 1
    assert env.state.ledger.pod(pod["metadata"]["uid"]) is None


async def test_prioritize_scores():
    env = make_env()
    env.api.add_node(node_obj("busy", [gpu("GPU-b")]))
    env.api.add_node(node_obj("idle", [gpu("GPU-i")]))
    env.api.add_node(node_obj("small", [gpu("GPU-s", mem=100)]))
    env.api.add_pod(
        pod_obj(
            "x", annotations={keys.VGPU_NODE: "busy", keys.VGPU_DEVICES_ALLOCATED: "GPU-b,NVIDIA,4000,50:;"}
        )
    )
    pod = pod_obj("p", container(mem=1000))
    scores = dict(env.cycle.prioritize(pod, ["busy", "idle", "small", "cpu"]))
    assert scores == {"busy": 10, "idle": 1, "small": 0, "cpu": 0}  # binpack: fuller is better
    spread = pod_obj("q", container(mem=1000), annotations={keys.NODE_SCHEDULER_POLICY: "spread"})
    assert dict(env.cycle.prioritize(spread, ["busy", "idle"])) == {"busy": 1, "idle": 10}
    placed = env.api.add_pod(pod_obj("r", container(mem=1000)))
    out = await env.filter(placed)
    assert dict(env.cycle.prioritize(placed, ["busy", "idle"]))[out.node_names[0]] == 10


async def test_event_sink_folds_and_bounds():
    env = make_env()
    sink = EventSink(env.api, component="hami-scheduler", capacity=2)
    ref = PodRef(namespace="default", name="p", uid="u")
    sink.emit(ref, "Warning", "FilteringFailed", "same")
    sink.emit(ref, "Warning", "FilteringFailed", "same")
    assert sink.pending == 1
    sink.emit(ref, "Warning", "FilteringFailed", "two")
    sink.emit(ref, "Warning", "FilteringFailed", "three")
    assert sink.pending == 2 and sink.dropped == 1
    await sink.flush(1.0)
    assert [m for (_, _, m) in env.api.events] == ["two", "three"]
    await drain_events(env)


class PathCheckingEvents:
    """Posts events as the real client builds their URL: an unusable namespace is a ValueError."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def create_event(self, involved, *, reason, message, type, component):
        namespace = involved["metadata"]["namespace"]
        EVENTS.collection_path(namespace)
        self.events.append(f"{namespace}/{reason}")


async def test_event_sink_survives_an_event_it_cannot_address():
    # Found by the soak's extender fuzzing: a pod namespace of control characters in /filter
    # made the event task raise ValueError, which stopped the whole scheduler role.
    api = PathCheckingEvents()
    sink = EventSink(api, component="hami-scheduler")  # type: ignore[arg-type]
    task = asyncio.create_task(sink.run())
    sink.emit(PodRef(namespace="\x15\x0b", name="p", uid="u1"), "Warning", "FilteringFailed", "bad")
    sink.emit(PodRef(namespace="default", name="p", uid="u2"), "Warning", "FilteringFailed", "good")
    for _ in range(100):
        if sink.sent:
            break
        await asyncio.sleep(0.01)
    assert not task.done()
    assert api.events == ["default/FilteringFailed"] and sink.failed == 1 and sink.sent == 1
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_node_policy_flag_accepts_fragmentation_aware():
    assert parse(["--node-scheduler-policy", "fragmentation-aware"]).scheduler.node_scheduler_policy == (
        "fragmentation-aware"
    )
