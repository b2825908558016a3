from __future__ import annotations

import base64

import pytest

from hami.core.errors import ConfigError
from hami.simulator.schedconfig import (
    DEFAULT_EXTENDER_TIMEOUT,
    load_scheduler_config,
    parse_go_duration,
    parse_scheduler_config,
)

HEADER = {"apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration"}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1h", 3600.0),
        ("0", 0.0),
        ("1.5s", 1.5),
        ("250us", 0.00025),
    ],
)
def test_go_durations(text, seconds):
    assert parse_go_duration(text, key="k") == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["30", "s", "", "1x", "30 s", 30])
def test_bad_durations_name_the_key(bad):
    with pytest.raises(ConfigError, match=r"extenders\[0\]\.httpTimeout"):
        parse_go_duration(bad, key="extenders[0].httpTimeout")


def test_hami_chart_extender_block():
    doc = {
        **HEADER,
        "profiles": [{"schedulerName": "hami-scheduler"}],
        "podInitialBackoffSeconds": 2,
        "extenders": [
            {
                "urlPrefix": "https://127.0.0.1:443",
                "enableHTTPS": True,
                "tlsConfig": {"insecure": True, "caData": base64.b64encode(b"PEM").decode()},
                "filterVerb": "filter",
                "bindVerb": "bind",
                "nodeCacheCapable": True,
                "weight": 1,
                "httpTimeout": "30s",
                "managedResources": [
                    {"name": "nvidia.com/gpu", "ignoredByScheduler": True},
                    {"name": "nvidia.com/priority"},
                ],
            }
        ],
    }
    config = parse_scheduler_config(doc)
    assert config.scheduler_names == ("hami-scheduler",)
    assert (config.pod_initial_backoff, config.pod_max_backoff) == (2.0, 10.0)
    [ext] = config.extenders
    assert (ext.filter_verb, ext.bind_verb, ext.prioritize_verb) == ("filter", "bind", "")
    assert ext.enable_https and ext.node_cache_capable and not ext.ignorable
    assert ext.http_timeout == 30.0
    assert ext.tls is not None and ext.tls.insecure and ext.tls.ca_data == b"PEM"
    assert config.ignored_resources() == frozenset({"nvidia.com/gpu"})
    gpu_pod = {"spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}
    init_pod = {
        "spec": {
            "containers": [{}],
            "initContainers": [{"resources": {"requests": {"nvidia.com/priority": "1"}}}],
        }
    }
    assert ext.is_interested(gpu_pod) and ext.is_interested(init_pod)
    assert not ext.is_interested({"spec": {"containers": [{"resources": {"limits": {"cpu": "1"}}}]}})


def test_defaults_without_profiles_or_timeout():
    config = parse_scheduler_config({**HEADER, "extenders": [{"urlPrefix": "http://x", "filterVerb": "f"}]})
    assert config.scheduler_names == ("default-scheduler",)
    assert config.extenders[0].http_timeout == DEFAULT_EXTENDER_TIMEOUT
    assert config.extenders[0].is_interested({"spec": {"containers": [{}]}})  # no managedResources: every pod


@pytest.mark.parametrize(
    ("extenders", "message"),
    [
        ([{"filterVerb": "f"}], r"extenders\[0\].urlPrefix.*required"),
        ([{"urlPrefix": "u", "prioritizeVerb": "p"}], "must have a positive weight"),
        (
            [{"urlPrefix": "u", "bindVerb": "b"}, {"urlPrefix": "v", "bindVerb": "b"}],
            "only one extender can implement bind",
        ),
        ([{"urlPrefix": "u", "managedResources": [{"name": "bad name"}]}], "invalid resource name"),
        (
            [{"urlPrefix": "u", "managedResources": [{"name": "a/b"}, {"name": "a/b"}]}],
            "duplicate resource name",
        ),
        ([{"urlPrefix": "u", "nodeCacheCapable": "yes"}], "nodeCacheCapable: expected true or false"),
    ],
)
def test_invalid_extenders(extenders, message):
    with pytest.raises(ConfigError, match=message):
        parse_scheduler_config({**HEADER, "extenders": extenders})


def test_wrong_kind_or_version():
    with pytest.raises(ConfigError, match="kind"):
        parse_scheduler_config({**HEADER, "kind": "Policy"})
    with pytest.raises(ConfigError, match="apiVersion"):
        parse_scheduler_config({**HEADER, "apiVersion": "kubescheduler.config.k8s.io/v1beta3"})


def test_load_from_a_configmap_in_a_multi_document_file(tmp_path):
    path = tmp_path / "rendered.yaml"
    path.write_text(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: hami}\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: hami-scheduler-newversion}\ndata:\n"
        "  config.yaml: |\n"
        "    apiVersion: kubescheduler.config.k8s.io/v1\n"
        "    kind: KubeSchedulerConfiguration\n"
        "    profiles: [{schedulerName: hami-scheduler}]\n"
        "    extenders:\n"
        "    - {urlPrefix: 'http://127.0.0.1:80', filterVerb: filter, bindVerb: bind,\n"
        "       nodeCacheCapable: true}\n"
    )
    config = load_scheduler_config(path)
    assert config.scheduler_names == ("hami-scheduler",)
    assert config.extenders[0].url_prefix == "http://127.0.0.1:80"


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_scheduler_config(tmp_path / "missing.yaml")
    empty = tmp_path / "other.yaml"
    empty.write_text("apiVersion: v1\nkind: ConfigMap\ndata: {a: b}\n")
    with pytest.raises(ConfigError, match="no KubeSchedulerConfiguration"):
        load_scheduler_config(empty)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_scheduler_config(broken)
