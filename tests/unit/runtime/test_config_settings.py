from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass

import pytest

from hami.config.loader import add_settings_arguments, load_settings, parse_duration, setting_specs
from hami.config.settings import (
    BackoffSettings,
    InvalidSetting,
    LeaderElectionSettings,
    Settings,
    WatchingSettings,
    setting,
)
from hami.core.errors import ConfigError


def parse(argv: list[str], settings_type: type[Settings] = Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, settings_type)
    return parser.parse_args(argv)


def test_documented_defaults():
    s = Settings()
    le = s.leader_election
    assert (le.lease_duration, le.renew_deadline, le.retry_period) == (15.0, 10.0, 2.0)
    assert le.release_on_cancel and not le.enabled
    assert s.watching.inactivity_timeout == 70.0
    assert (s.watching.min_timeout, s.watching.max_timeout) == (300.0, 600.0)
    assert s.watching.backoff == BackoffSettings()
    assert s.watching.initial_list_resource_version == "0"


def test_every_setting_has_help_text():
    for spec in setting_specs(Settings):
        assert spec.help, spec.path
    flags = {s.flag for s in setting_specs(Settings)}
    assert {"--leader-elect", "--leader-elect-lease-duration", "--kubeconfig", "--log-level"} <= flags
    assert "--watching-inactivity-timeout" in flags
    assert "--networking-retry-backoff-initial" in flags


def test_settings_are_frozen():
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.watching = WatchingSettings()  # type: ignore[misc]


def test_renew_deadline_must_exceed_retry_period_times_1_2():
    with pytest.raises(InvalidSetting) as err:
        LeaderElectionSettings(lease_duration=15, renew_deadline=2.4, retry_period=2)
    assert err.value.field == "renew_deadline"
    LeaderElectionSettings(lease_duration=15, renew_deadline=2.41, retry_period=2)


def test_lease_duration_must_exceed_renew_deadline():
    with pytest.raises(InvalidSetting) as err:
        LeaderElectionSettings(lease_duration=10, renew_deadline=10, retry_period=2)
    assert err.value.field == "lease_duration"


def test_precedence_cli_over_env_over_file_over_defaults(tmp_path):
    config = tmp_path / "hami.yaml"
    config.write_text(
        "leader_election:\n  lease_duration: 40\n  renew_deadline: 20\n  retry_period: 5\n"
        "watching:\n  inactivity_timeout: 30\n  backoff:\n    maximum: 9\n"
    )
    args = parse(["--config", str(config), "--leader-elect-retry-period=4s", "--leader-elect"])
    env = {"HAMI_LEADER_ELECT_RENEW_DEADLINE": "15s", "HAMI_LEADER_ELECT_RETRY_PERIOD": "1"}
    s = load_settings(Settings, args=args, environ=env)
    assert s.leader_election.lease_duration == 40  # file
    assert s.leader_election.renew_deadline == 15  # env over file
    assert s.leader_election.retry_period == 4  # cli over env and file
    assert s.leader_election.enabled is True  # bare boolean flag
    assert s.watching.inactivity_timeout == 30
    assert s.watching.backoff.maximum == 9
    assert s.watching.backoff.initial == 0.8  # untouched sibling keeps its default


def test_nested_section_override_keeps_the_parents_non_class_defaults():
    s = load_settings(Settings, environ={"HAMI_NETWORKING_RETRY_BACKOFF_MAXIMUM": "3"})
    # NetworkingSettings' default retry_backoff is not BackoffSettings(): keep its initial.
    assert s.networking.retry_backoff.initial == 0.25
    assert s.networking.retry_backoff.maximum == 3.0


def test_config_file_from_env_and_json(tmp_path):
    config = tmp_path / "hami.json"
    config.write_text(json.dumps({"logging": {"level": "debug", "json": True}}))
    s = load_settings(Settings, environ={"HAMI_CONFIG": str(config)})
    assert s.logging.level == "debug" and s.logging.json is True


def test_validation_error_names_the_flag_and_the_source():
    args = parse(["--leader-elect-renew-deadline", "2"])
    with pytest.raises(ConfigError) as err:
        load_settings(Settings, args=args)
    message = str(err.value)
    assert "--leader-elect-renew-deadline" in message
    assert "--leader-elect-retry-period" in message  # the related flag
    with pytest.raises(ConfigError) as err:
        load_settings(Settings, environ={"HAMI_LEADER_ELECT_LEASE_DURATION": "5"})
    assert "--leader-elect-lease-duration (from HAMI_LEADER_ELECT_LEASE_DURATION)" in str(err.value)


@pytest.mark.parametrize(
    ("env", "flag"),
    [
        ({"HAMI_WATCHING_INACTIVITY_TIMEOUT": "soon"}, "--watching-inactivity-timeout"),
        ({"HAMI_LEADER_ELECT": "maybe"}, "--leader-elect"),
        ({"HAMI_NETWORKING_MAX_RETRIES": "2.5"}, "--networking-max-retries"),
        ({"HAMI_LOG_LEVEL": "verbose"}, "--log-level"),
        ({"HAMI_WATCHING_PAGE_SIZE": "-1"}, "--watching-page-size"),
    ],
)
def test_bad_values_fail_fast_naming_the_flag(env, flag):
    with pytest.raises(ConfigError) as err:
        load_settings(Settings, environ=env)
    assert flag in str(err.value)


def test_unknown_file_keys_are_rejected(tmp_path):
    config = tmp_path / "hami.yaml"
    config.write_text("watching:\n  inactivty_timeout: 3\n")
    with pytest.raises(ConfigError) as err:
        load_settings(Settings, config_file=config)
    assert "watching.inactivty_timeout" in str(err.value)
    assert "inactivity_timeout" in str(err.value)  # suggests the known names


def test_unreadable_or_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(Settings, config_file=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("watching: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(Settings, config_file=bad)


def test_optional_values_accept_empty_for_unset():
    s = load_settings(Settings, environ={"HAMI_KUBECONFIG": "/x", "HAMI_KUBE_CONTEXT": ""})
    assert s.networking.kubeconfig == "/x" and s.networking.context is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15", 15.0),
        ("2.5", 2.5),
        ("800ms", 0.8),
        ("1m30s", 90.0),
        ("2h", 7200.0),
        ("1.5s", 1.5),
        ("10us", 1e-5),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10x", "1m 2s", "-", "ms10"])
def test_parse_duration_rejects_garbage(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoSection:
    port: int = setting(9443, "HTTPS port", flag="--http-port")
    policies: tuple[str, ...] = setting(("binpack",), "policies")

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise InvalidSetting("port", f"must be a TCP port, got {self.port}")


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoSettings(Settings):
    demo: DemoSection = DemoSection()


def test_roles_extend_the_tree_with_their_own_section():
    args = parse(["--http-port", "8443", "--demo-policies", "spread,binpack"], DemoSettings)
    s = load_settings(DemoSettings, args=args)
    assert isinstance(s, DemoSettings)
    assert s.demo.port == 8443
    assert s.demo.policies == ("spread", "binpack")
    assert s.leader_election == LeaderElectionSettings()
    with pytest.raises(ConfigError, match="--http-port"):
        load_settings(DemoSettings, environ={"HAMI_HTTP_PORT": "70000"})
