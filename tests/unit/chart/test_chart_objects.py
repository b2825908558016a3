"""What the chart installs, checked against HAMi 2.8's chart (hami-node-spec.md §10,
hami-scheduler-spec.md §1.2, k8s-apis.md §8.1, §9.2-§9.3) and against hami-py's own parsers:
every role's container arguments are parsed by that role's CLI, with the mounted ConfigMaps."""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartkit import CHART, NAMESPACE, Rendered, container, env_of, localize_mounts, volumes

from hami.cli import build_parser
from hami.cli.device_plugin import build_agent_config
from hami.cli.dra_plugin import build_config as build_dra_config
from hami.cli.monitor import MonitorRoleSettings
from hami.cli.monitor import build_config as build_monitor_config
from hami.cli.scheduler import load_device_config
from hami.config.loader import load_settings
from hami.core.deviceconfig import DEFAULT_MIG_GEOMETRIES, NvidiaConfig, parse_device_config
from hami.core.nodeconfig import parse_node_config
from hami.scheduler.settings import SchedulerSettings

NVIDIA_NAMES = [
    "nvidia.com/gpu",
    "nvidia.com/gpumem",
    "nvidia.com/gpumem-percentage",
    "nvidia.com/gpucores",
    "nvidia.com/priority",
]


def parse_role_args(args: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    monkeypatch.setenv("NODE_NAME", "gpu-node-1")  # the DaemonSets pass it by the downward API
    try:
        return build_parser().parse_args(args)
    except SystemExit as e:
        raise AssertionError(f"hami rejected the chart's arguments {args}") from e


def scheduler_config(rendered: Rendered) -> dict[str, Any]:
    data = rendered.get("ConfigMap", "hami-scheduler-config")["data"]["config.yaml"]
    return dict(yaml.safe_load(data))


def flags(c: dict[str, Any]) -> dict[str, str]:
    """``--name=value`` arguments as a dict (bare ``--name`` → "")."""
    out = {}
    for arg in [*c.get("command", []), *c.get("args", [])]:
        if arg.startswith("-"):
            name, _, value = arg.partition("=")
            out[name] = value
    return out


# --------------------------------------------------------------------------- scheduler


def test_kube_scheduler_extender_block(default: Rendered) -> None:
    config = scheduler_config(default)
    assert config["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert config["profiles"] == [{"schedulerName": "hami-scheduler"}]
    (extender,) = config["extenders"]
    assert extender["filterVerb"] == "filter" and extender["bindVerb"] == "bind"
    assert extender["nodeCacheCapable"] is True and extender["weight"] == 1
    assert extender["httpTimeout"] == "30s"
    assert extender["enableHTTPS"] is True and extender["tlsConfig"] == {"insecure": True}
    assert "prioritizeVerb" not in extender and "ignorable" not in extender
    assert extender["managedResources"] == [{"name": n, "ignoredByScheduler": True} for n in NVIDIA_NAMES]
    # One replica: kube-scheduler calls the extender beside it, on the port it listens on.
    deployment = default.get("Deployment", "hami-scheduler")
    ext = container(deployment, "vgpu-scheduler-extender")
    assert extender["urlPrefix"] == "https://127.0.0.1:8443"
    assert flags(ext)["--http_bind"] == "0.0.0.0:8443"
    assert {"name": "https", "containerPort": 8443, "protocol": "TCP"} in ext["ports"]


def test_extender_arguments_parse_with_the_scheduler_cli(
    default: Rendered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = default.get("Deployment", "hami-scheduler")
    ext = container(deployment, "vgpu-scheduler-extender")
    args = localize_mounts(default, ext, deployment, tmp_path)
    assert args[0] == "scheduler"
    settings = load_settings(SchedulerSettings, args=parse_role_args(args, monkeypatch), environ={})
    s = settings.scheduler
    assert (s.cert_file, s.key_file) == ("/tls/tls.crt", "/tls/tls.key")
    assert s.scheduler_name == "hami-scheduler"
    assert (s.node_scheduler_policy, s.gpu_scheduler_policy) == ("binpack", "spread")
    assert s.metrics_bind_address == ":9395" and s.node_lock_timeout == 300.0
    assert s.force_overwrite_default_scheduler is True
    le = settings.leader_election
    assert (le.enabled, le.lease_name, le.lease_namespace) == (True, "hami-scheduler-extender", NAMESPACE)
    device_config = load_device_config(s.device_config_file)
    assert device_config.warnings == ()
    # The certificate the extender reads is the Secret the certgen job writes.
    (tls,) = [m for m in ext["volumeMounts"] if m["name"] == "tls"]
    assert tls["mountPath"] == "/tls"
    assert volumes(deployment)["tls"]["secret"]["secretName"] == "hami-scheduler-tls"


def test_leader_election_with_three_replicas(ha: Rendered, monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = ha.get("Deployment", "hami-scheduler")
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    pod_labels = spec["template"]["metadata"]["labels"]
    (term,) = spec["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    ks = flags(container(deployment, "kube-scheduler"))
    assert ks["--leader-elect"] == "true"
    assert (ks["--leader-elect-resource-name"], ks["--leader-elect-resource-namespace"]) == (
        "hami-scheduler",
        NAMESPACE,
    )
    config = scheduler_config(ha)
    assert config["leaderElection"]["resourceName"] == "hami-scheduler"
    ext = container(deployment, "vgpu-scheduler-extender")
    extender_lease = flags(ext)["--leader-elect-resource-name"]
    assert extender_lease != "hami-scheduler"  # two campaigners must never share a Lease
    # The leading kube-scheduler reaches the leading extender through the Service: followers are unready.
    assert config["extenders"][0]["urlPrefix"] == f"https://hami-scheduler.{NAMESPACE}.svc:443"
    assert ext["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "https", "scheme": "HTTPS"}
    service = ha.get("Service", "hami-scheduler")
    assert {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP", "nodePort": 31998} in (
        service["spec"]["ports"]
    )
    assert "publishNotReadyAddresses" not in service["spec"]
    # Both Leases may be read and renewed by the pod's ServiceAccount, and no other by name.
    role = ha.get("Role", "hami-scheduler-leases")
    named = [r for r in role["rules"] if "resourceNames" in r]
    assert named == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["hami-scheduler", extender_lease],
            "verbs": ["get", "update"],
        }
    ]
    pdb = ha.get("PodDisruptionBudget", "hami-scheduler")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    args = parse_role_args(ext["args"], monkeypatch)
    settings = load_settings(SchedulerSettings, args=args, environ={})
    assert settings.scheduler.node_label_selector == "gpu=on,hami.io/pool=training"
    assert settings.scheduler.gpu_scheduler_policy == "topology-aware"


def test_webhook_configuration(default: Rendered, ha: Rendered) -> None:
    mwc = default.get("MutatingWebhookConfiguration", "hami-webhook")
    (hook,) = mwc["webhooks"]
    assert hook["name"] == "vgpu.hami.io"
    assert hook["clientConfig"]["service"] == {
        "name": "hami-scheduler",
        "namespace": NAMESPACE,
        "path": "/webhook",
        "port": 443,
    }
    assert hook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert (hook["failurePolicy"], hook["sideEffects"], hook["timeoutSeconds"]) == ("Ignore", "None", 10)
    ignore = {"key": "hami.io/webhook", "operator": "NotIn", "values": ["ignore"]}
    assert hook["namespaceSelector"]["matchExpressions"] == [ignore]
    assert hook["objectSelector"]["matchExpressions"] == [ignore]
    # Its own pods are never sent to it.
    for kind, name in [("Deployment", "hami-scheduler"), ("DaemonSet", "hami-device-plugin")]:
        labels = default.get(kind, name)["spec"]["template"]["metadata"]["labels"]
        assert labels["hami.io/webhook"] == "ignore"
    (strict,) = ha.get("MutatingWebhookConfiguration", "hami-webhook")["webhooks"]
    assert strict["failurePolicy"] == "Fail"
    assert {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]} in (
        strict["namespaceSelector"]["matchExpressions"]
    )


def test_certgen_jobs_write_the_secret_the_extender_mounts(default: Rendered) -> None:
    create = default.get("Job", "hami-scheduler-certgen-create")
    patch = default.get("Job", "hami-scheduler-certgen-patch")
    assert create["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert patch["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    c = flags(container(create, "create"))
    assert c["--secret-name"] == "hami-scheduler-tls" and c["--namespace"] == NAMESPACE
    assert (c["--cert-name"], c["--key-name"]) == ("tls.crt", "tls.key")
    hosts = c["--host"].split(",")
    assert f"hami-scheduler.{NAMESPACE}.svc" in hosts and "127.0.0.1" in hosts
    p = flags(container(patch, "patch"))
    assert p["--webhook-name"] == "hami-webhook" and p["--secret-name"] == "hami-scheduler-tls"
    assert p["--patch-validating"] == "false"
    # The jobs' RBAC: create secrets, read only that Secret, update only that webhook configuration.
    cr = default.get("ClusterRole", "hami-scheduler-certgen")
    assert cr["rules"] == [
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": ["hami-webhook"],
            "verbs": ["get", "update"],
        }
    ]
    assert default.find("Certificate", "hami-scheduler-tls") is None


def test_cert_manager_instead_of_jobs(ha: Rendered) -> None:
    assert ha.all("Job") == []
    cert = ha.get("Certificate", "hami-scheduler-tls")
    assert cert["spec"]["secretName"] == "hami-scheduler-tls"
    assert f"hami-scheduler.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
    issuer = ha.get("Issuer", cert["spec"]["issuerRef"]["name"])
    assert issuer["spec"] == {"selfSigned": {}}
    mwc = ha.get("MutatingWebhookConfiguration", "hami-webhook")
    assert (
        mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/hami-scheduler-tls"
    )


def test_without_webhook_the_extender_speaks_plain_http(custom: Rendered) -> None:
    assert custom.all("MutatingWebhookConfiguration") == [] and custom.all("Job") == []
    deployment = custom.get("Deployment", "hami-scheduler")
    ext = container(deployment, "vgpu-scheduler-extender")
    f = flags(ext)
    assert "--cert_file" not in f and f["--http_bind"] == "0.0.0.0:8080"
    assert f["--scheduler-name"] == "gpu-share-scheduler" and f["--leader-elect"] == "false"
    assert deployment["spec"]["replicas"] == 1 and "affinity" not in deployment["spec"]["template"]["spec"]
    config = scheduler_config(custom)
    (extender,) = config["extenders"]
    assert extender["urlPrefix"] == "http://127.0.0.1:8080" and "enableHTTPS" not in extender
    assert config["profiles"] == [{"schedulerName": "gpu-share-scheduler"}]
    names = [r["name"] for r in extender["managedResources"]]
    assert names == [
        "example.com/vgpu",
        "example.com/vgpu-memory",
        "example.com/vgpu-memory-percentage",
        "example.com/vgpu-cores",
        "example.com/vgpu-priority",
        "example.com/vgpu-extra",
    ]
    assert custom.find("Role", "hami-scheduler-leases") is None


# --------------------------------------------------------------------------- configuration


def device_config_text(rendered: Rendered) -> str:
    return str(rendered.get("ConfigMap", "hami-scheduler-device")["data"]["device-config.yaml"])


def test_default_device_config_is_hamis(default: Rendered) -> None:
    config = parse_device_config(device_config_text(default))
    assert config.warnings == ()
    assert config.nvidia == NvidiaConfig()  # HAMi 2.8 chart defaults, MIG geometries included
    assert config.nvidia.known_mig_geometries == DEFAULT_MIG_GEOMETRIES
    node = json.loads(default.get("ConfigMap", "hami-device-plugin")["data"]["config.json"])
    assert node == {"nodeconfig": []}


def test_custom_names_and_scaling_reach_device_config(custom: Rendered) -> None:
    config = parse_device_config(device_config_text(custom))
    assert config.warnings == ()
    n = config.nvidia
    assert (n.resource_count_name, n.resource_memory_name, n.resource_core_name) == (
        "example.com/vgpu",
        "example.com/vgpu-memory",
        "example.com/vgpu-cores",
    )
    assert n.resource_memory_percentage_name == "example.com/vgpu-memory-percentage"
    assert n.resource_priority_name == "example.com/vgpu-priority"
    assert (n.device_split_count, n.device_memory_scaling, n.device_core_scaling) == (20, 1.5, 2.0)
    assert (n.memory_factor, n.gpu_core_policy, n.disable_core_limit) == (4, "force", True)
    node = parse_node_config(custom.get("ConfigMap", "hami-device-plugin")["data"]["config.json"])
    (entry,) = node.entries
    assert entry.name == "gpu-node-1" and entry.device_split_count == 4


def test_grafana_dashboard_configmap(default: Rendered) -> None:
    cm = default.get("ConfigMap", "hami-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART / "dashboards" / "hami.json").read_text(encoding="utf-8"))
    assert json.loads(cm["data"]["hami.json"]) == shipped


# --------------------------------------------------------------------------- node agents


def test_device_plugin_daemonset(default: Rendered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = default.get("DaemonSet", "hami-device-plugin")
    pod = ds["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "on"} and "affinity" not in pod
    assert pod["hostPID"] is True and pod["priorityClassName"] == "system-node-critical"
    host_paths = {v["hostPath"]["path"] for v in volumes(ds).values() if "hostPath" in v}
    assert {"/var/lib/kubelet/device-plugins", "/usr/local/vgpu", "/tmp", "/var/run/cdi"} <= host_paths
    dp = container(ds, "device-plugin")
    assert dp["securityContext"]["privileged"] is True and dp["securityContext"]["runAsUser"] == 0
    assert env_of(dp)["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    mounts = {m["mountPath"]: m["name"] for m in dp["volumeMounts"]}
    # Host and container paths coincide for the vgpu directory and /tmp (node spec §1).
    for path in ("/usr/local/vgpu", "/tmp", "/var/lib/kubelet/device-plugins", "/var/run/cdi"):
        assert volumes(ds)[mounts[path]]["hostPath"]["path"] == path
    args = parse_role_args(localize_mounts(default, dp, ds, tmp_path), monkeypatch)
    agent, names = build_agent_config(args)
    assert agent.node_name == "gpu-node-1" and names.count == "nvidia.com/gpu"
    assert agent.node.split_count == 10 and agent.node.resource_name == "nvidia.com/gpu"
    assert agent.allocate.hook_path == "/usr/local" and agent.allocate.libvgpu_version == "v2.8.0"
    assert str(agent.plugin_dir) == "/var/lib/kubelet/device-plugins"
    monitor = container(ds, "vgpu-monitor")
    sc = monitor["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532 and "privileged" not in sc
    assert {"name": "metrics", "containerPort": 9394, "protocol": "TCP"} in monitor["ports"]
    margs = parse_role_args(monitor["args"], monkeypatch)
    config = build_monitor_config(margs)
    assert str(config.containers_dir) == "/usr/local/vgpu/containers" and margs.metrics_port == 9394
    settings = load_settings(MonitorRoleSettings, args=margs, environ={})
    assert settings.console.disabled is True  # host network: no console on the node's loopback
    service = default.get("Service", "hami-device-plugin-monitor")
    assert service["spec"]["ports"][0]["nodePort"] == 31992


def test_install_step_replaces_changed_files_by_rename(default: Rendered, tmp_path: Path) -> None:
    """Run the init container's script against a fake image and host directory."""
    init = container(default.get("DaemonSet", "hami-device-plugin"), "install-hami-core", init=True)
    mounts = {m["mountPath"] for m in init["volumeMounts"]}
    assert {"/usr/local/vgpu", "/usr/local/vgpu/containers"} <= mounts
    script = init["args"][0]
    image, host, shims = tmp_path / "k8s-vgpu", tmp_path / "host", tmp_path / "bin"
    (image / "lib" / "nvidia").mkdir(parents=True)
    (image / "lib" / "nvidia" / "libvgpu.so.v2.8.0").write_bytes(b"new library")
    (image / "lib" / "nvidia" / "ld.so.preload").write_text("/usr/local/vgpu/libvgpu.so\n")
    host.mkdir()
    (host / "libvgpu.so.v2.8.0").write_bytes(b"old library")
    (host / "ld.so.preload").write_text("/usr/local/vgpu/libvgpu.so\n")
    old_lib, same = os.stat(host / "libvgpu.so.v2.8.0"), os.stat(host / "ld.so.preload")
    # chown needs root; a shim records the call instead.
    shims.mkdir()
    (shims / "chown").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/chown.args\n')
    (shims / "chown").chmod(0o755)
    script = script.replace("/k8s-vgpu", str(image)).replace("/usr/local/vgpu", str(host))
    proc = subprocess.run(
        ["/bin/sh", "-c", script],
        capture_output=True,
        text=True,
        env={"PATH": f"{shims}:/usr/bin:/bin"},
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    new_lib = os.stat(host / "libvgpu.so.v2.8.0")
    assert (host / "libvgpu.so.v2.8.0").read_bytes() == b"new library"
    assert new_lib.st_ino != old_lib.st_ino  # renamed over: a mapped old copy stays intact
    assert os.stat(host / "ld.so.preload").st_ino == same.st_ino  # identical: left alone
    assert stat.S_IMODE(new_lib.st_mode) == 0o644
    assert (tmp_path / "chown.args").read_text().split() == ["65532", str(host / "containers")]
    assert sorted(p.name for p in host.iterdir()) == ["containers", "ld.so.preload", "libvgpu.so.v2.8.0"]


def test_cdi_mode_and_dra_plugin(cdi_dra: Rendered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = cdi_dra.get("DaemonSet", "hami-device-plugin")
    dp = container(ds, "device-plugin")
    assert flags(dp)["--device-list-strategy"] == "cdi-annotations"
    args = parse_role_args(localize_mounts(cdi_dra, dp, ds, tmp_path), monkeypatch)
    agent, _ = build_agent_config(args)
    assert agent.allocate.device_list_strategies == ("cdi-annotations",)
    assert str(agent.cdi_dir) == "/var/run/cdi"
    # GPUs of DRA nodes are published once: the device plugin stays off them.
    (term,) = ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert term == {"matchExpressions": [{"key": "hami.io/dra", "operator": "NotIn", "values": ["on"]}]}
    dra = cdi_dra.get("DaemonSet", "hami-dra-plugin")
    assert dra["spec"]["template"]["spec"]["nodeSelector"] == {"gpu": "on", "hami.io/dra": "on"}
    plugin = container(dra, "dra-plugin")
    config = build_dra_config(parse_role_args(plugin["args"], monkeypatch))
    assert config.driver == "hami-core-gpu.project-hami.io"
    assert config.split_count == 10  # devicePlugin.deviceSplitCount: the tasks capacity of each GPU
    assert str(config.plugin_dir) == "/var/lib/kubelet/plugins/hami-core-gpu.project-hami.io"
    assert str(config.registry_dir) == "/var/lib/kubelet/plugins_registry"
    mounted = {m["mountPath"] for m in plugin["volumeMounts"]}
    assert {
        str(config.plugin_dir),
        str(config.registry_dir),
        str(config.cdi_dir),
        "/usr/local/vgpu",
        "/tmp",
    } <= mounted
    assert container(dra, "install-hami-core", init=True)


def test_service_monitors_select_the_metrics_services(cdi_dra: Rendered, default: Rendered) -> None:
    assert default.all("ServiceMonitor") == []
    monitors = {m["metadata"]["name"]: m for m in cdi_dra.all("ServiceMonitor")}
    assert set(monitors) == {
        "hami-scheduler",
        "hami-device-plugin-monitor",
        "hami-device-plugin-metrics",
        "hami-dra-plugin-metrics",
    }
    workloads = cdi_dra.all("Deployment") + cdi_dra.all("DaemonSet")
    for name, sm in monitors.items():
        service = cdi_dra.get("Service", name)
        assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        # Exactly one ServiceMonitor selects each Service (no target scraped twice).
        assert [
            other
            for other, m in monitors.items()
            if m["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        ] == [name]
        assert sm["metadata"]["labels"]["release"] == "prometheus"
        (endpoint,) = sm["spec"]["endpoints"]
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        # The Service's target port is a named port of the pods it selects.
        (owner,) = [
            w
            for w in workloads
            if service["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        served = {
            p["name"]: p["containerPort"]
            for c in owner["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        assert port["targetPort"] in served, (name, served, port)
    # The Services select the pods that serve metrics.
    deployment = cdi_dra.get("Deployment", "hami-scheduler")
    selector = cdi_dra.get("Service", "hami-scheduler")["spec"]["selector"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
