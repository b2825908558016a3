"""``scheduler.leaderElection.mode``: the extender's own election (default) or following the
kube-scheduler sidecar's Lease as HAMi 2.8 does (issue 5); the extender's arguments parse."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from chartkit import NAMESPACE, Chart, Rendered, container, values_file

from hami.cli import build_parser
from hami.config.loader import load_settings
from hami.scheduler.settings import SchedulerSettings


def extender_args(rendered: Rendered) -> list[str]:
    return list(container(rendered.get("Deployment", "hami-scheduler"), "vgpu-scheduler-extender")["args"])


def flag_map(args: list[str]) -> dict[str, str]:
    return {a.partition("=")[0]: a.partition("=")[2] for a in args if a.startswith("--")}


def settings_of(args: list[str]) -> SchedulerSettings:
    try:
        parsed = build_parser().parse_args(args)
    except SystemExit as e:
        raise AssertionError(f"hami rejected the chart's arguments {args}") from e
    return load_settings(SchedulerSettings, args=parsed, environ={})


def url_prefix(rendered: Rendered) -> str:
    config: dict[str, Any] = yaml.safe_load(
        rendered.get("ConfigMap", "hami-scheduler-config")["data"]["config.yaml"]
    )
    return str(config["extenders"][0]["urlPrefix"])


def test_default_mode_campaigns_on_the_extender_lease(ha: Rendered) -> None:
    args = extender_args(ha)
    f = flag_map(args)
    assert f["--leader-elect-mode"] == "own"
    assert f["--leader-elect-resource-name"] == "hami-scheduler-extender"
    settings = settings_of(args)
    assert settings.scheduler.leader_elect_mode == "own"
    assert settings.leader_election.lease_name == "hami-scheduler-extender"


def test_follow_mode_observes_the_kube_scheduler_lease_and_is_called_locally(chart: Chart) -> None:
    rendered = chart.template(
        [values_file("ha-certmanager")], sets=["scheduler.leaderElection.mode=follow-kube-scheduler"]
    )
    deployment = rendered.get("Deployment", "hami-scheduler")
    kube_scheduler = flag_map(list(container(deployment, "kube-scheduler")["command"]))
    args = extender_args(rendered)
    f = flag_map(args)
    assert f["--leader-elect-mode"] == "follow-kube-scheduler"
    # The very Lease kube-scheduler campaigns on (its holder is <pod hostname>_<uuid>).
    assert f["--leader-elect-resource-name"] == kube_scheduler["--leader-elect-resource-name"]
    assert f["--leader-elect-resource-namespace"] == NAMESPACE
    settings = settings_of(args)
    assert settings.scheduler.leader_elect_mode == "follow-kube-scheduler"
    assert (settings.leader_election.lease_name, settings.leader_election.lease_namespace) == (
        "hami-scheduler",
        NAMESPACE,
    )
    # The leading kube-scheduler's own extender leads: no detour through the Service.
    assert url_prefix(rendered).startswith("https://127.0.0.1:")


def test_without_leader_election_no_mode_is_passed(custom: Rendered) -> None:
    f = flag_map(extender_args(custom))
    assert f["--leader-elect"] == "false" and "--leader-elect-mode" not in f


def test_an_unknown_mode_is_refused_with_the_key_named(chart: Chart) -> None:
    message = chart.template_error(["scheduler.leaderElection.mode=kube-scheduler"])
    assert "mode" in message and "follow-kube-scheduler" in message


@pytest.fixture(autouse=True)
def _node_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "gpu-node-1")
