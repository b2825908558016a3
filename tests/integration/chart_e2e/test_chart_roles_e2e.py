"""Issue 9: the chart's own configuration and arguments run the roles and schedule pods.

The rendered ConfigMaps (device config, per-node config, KubeSchedulerConfiguration) and the TLS
Secret the certgen Job would create are installed into the embedded cluster and "mounted" from
there; ``python -m hami scheduler`` runs with the Deployment's extender arguments and
``python -m hami device-plugin`` per node with the DaemonSet's, changed only where a value names
an in-pod path or port (and the mock backend for NVML). The MutatingWebhookConfiguration is
installed as rendered but for its clientConfig (a URL to the scheduler and the test CA). Pods
that name no scheduler are then mutated by the webhook, scheduled by kube-scheduler through the
extender and started by the kubelet with HAMi's environment.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest
import yaml
from chart_e2e_kit import (
    Role,
    container_env,
    flag_value,
    localize_args,
    mount_volumes,
    replace_flag,
)
from chartkit import NAMESPACE, Chart, Rendered, container, values_file

from hami.cli._demo_pki import make_pki
from hami.cli._demo_processes import free_ports
from hami.core import keys
from hami.simulator.cluster import EmbeddedCluster

HOST = "127.0.0.1"
NODES, GPUS = 2, 2


def _pod(name: str, limits: dict[str, str], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels or {}},
        "spec": {
            "containers": [{"name": "cuda", "image": "nvidia/cuda:12.4", "resources": {"limits": limits}}]
        },
    }


def _scheduler_config(rendered: Rendered, port: int) -> tuple[dict[str, Any], str]:
    """The KubeSchedulerConfiguration ConfigMap with only the extender's host:port changed (the
    rendered one is the in-pod 127.0.0.1:<container port>); also returns that rendered port."""
    cm = copy.deepcopy(rendered.get("ConfigMap", "hami-scheduler-config"))
    config = yaml.safe_load(cm["data"]["config.yaml"])
    [extender] = config["extenders"]
    url = urlsplit(extender["urlPrefix"])
    assert url.hostname == HOST, extender["urlPrefix"]
    extender["urlPrefix"] = urlunsplit(url._replace(netloc=f"{HOST}:{port}"))
    cm["data"]["config.yaml"] = yaml.safe_dump(config)
    return cm, str(url.port)


def _webhook(rendered: Rendered, port: int, ca_bundle: str) -> dict[str, Any]:
    config: dict[str, Any] = copy.deepcopy(rendered.get("MutatingWebhookConfiguration", "hami-webhook"))
    for hook in config["webhooks"]:
        service = hook["clientConfig"]["service"]
        assert (service["name"], service["namespace"]) == ("hami-scheduler", NAMESPACE)
        hook["clientConfig"] = {"url": f"https://{HOST}:{port}{service['path']}", "caBundle": ca_bundle}
    return config


async def _until(what: str, probe: Callable[[], Awaitable[bool]], roles: list[Role], within: float) -> None:
    deadline = time.monotonic() + within
    while not await probe():
        for role in roles:
            role.check_alive()
        assert time.monotonic() < deadline, f"not within {within:.0f}s: {what}"
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_chart_roles_schedule_through_webhook_and_extender(e2e_chart: Chart, tmp_path: Path) -> None:
    rendered = e2e_chart.template([values_file("default")])
    deployment = rendered.get("Deployment", "hami-scheduler")
    daemonset = rendered.get("DaemonSet", "hami-device-plugin")
    extender = container(deployment, "vgpu-scheduler-extender")
    plugin = container(daemonset, "device-plugin")
    pki = make_pki(tmp_path / "pki")
    http_port, metrics_port = free_ports(2, HOST)
    scheduler_cm, in_pod_port = _scheduler_config(rendered, http_port)
    # The extender listens where the rendered kube-scheduler configuration calls it.
    assert flag_value(extender["args"], "--http_bind").rpartition(":")[2] == in_pod_port
    config_file = tmp_path / "kube-scheduler-config.yaml"
    config_file.write_text(yaml.safe_dump(scheduler_cm))

    roles: list[Role] = []
    async with (
        EmbeddedCluster.running(
            nodes=NODES, gpus_per_node=GPUS, scheduler_config=config_file, state_dir=tmp_path / "c"
        ) as cluster,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
    ):
        try:
            client = cluster.client
            # helm install --create-namespace: the namespace, the chart's ConfigMaps, and the TLS
            # Secret its certgen Job would create.
            await client.create("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
            for cm in rendered.all("ConfigMap"):
                await client.create(f"/api/v1/namespaces/{NAMESPACE}/configmaps", cm)
            tls = {"tls.crt": pki.server_cert.read_bytes(), "tls.key": pki.server_key.read_bytes()}
            await client.create(
                f"/api/v1/namespaces/{NAMESPACE}/secrets",
                {
                    "metadata": {"name": "hami-scheduler-tls"},
                    "type": "kubernetes.io/tls",
                    "data": {k: base64.b64encode(v).decode() for k, v in tls.items()},
                },
            )

            # The scheduler: the rendered args with mounted paths localized, listeners on free
            # ports of 127.0.0.1, and the kubeconfig (in a pod: the service account).
            mounts = await mount_volumes(
                client, deployment, extender, tmp_path / "scheduler", host_root=tmp_path / "scheduler-host"
            )
            args = localize_args(extender["args"], mounts)
            args = replace_flag(args, "--http_bind", f"{HOST}:{http_port}")
            args = replace_flag(args, "--metrics-bind-address", f"{HOST}:{metrics_port}")
            args.append(f"--kubeconfig={cluster.kubeconfig_path}")
            assert flag_value(args, "--cert_file") == str(tmp_path / "scheduler/tls/tls.crt")
            device_config = Path(flag_value(args, "--device-config-file"))
            rendered_device_config = rendered.get("ConfigMap", "hami-scheduler-device")["data"]
            assert (
                await asyncio.to_thread(device_config.read_text)
                == rendered_device_config["device-config.yaml"]
            )
            rendered_flags = [a.partition("=")[0] for a in extender["args"]]
            assert [a.partition("=")[0] for a in args] == [*rendered_flags, "--kubeconfig"]
            env = container_env(
                extender, {"metadata.name": "hami-scheduler-0", "metadata.namespace": NAMESPACE}
            )
            # aiomonitor consoles are local debugging aids; several roles on one host would share ports.
            env["HAMI_NO_MONITOR"] = "true"
            roles.append(Role("scheduler", args, env, tmp_path / "scheduler.log"))

            # One device plugin per node, as the DaemonSet would place them (nodeSelector gpu=on).
            selector = daemonset["spec"]["template"]["spec"]["nodeSelector"]
            for node in cluster.nodes:
                labels = (await client.get(f"/api/v1/nodes/{node.name}"))["metadata"]["labels"]
                assert selector.items() <= labels.items(), (node.name, labels)
                host_root = node.state_dir / "host"
                mounts = await mount_volumes(
                    client,
                    daemonset,
                    plugin,
                    node.state_dir / "pod",
                    host_root=host_root,
                    host_paths={"/var/lib/kubelet/device-plugins": node.plugin_dir},
                )
                args = replace_flag(localize_args(plugin["args"], mounts), "--backend", "mock")
                assert flag_value(args, "--plugin-dir") == str(node.plugin_dir)
                rendered_flags = [a.partition("=")[0] for a in plugin["args"]]
                assert [a.partition("=")[0] for a in args] == rendered_flags
                args += [
                    f"--kubeconfig={cluster.kubeconfig_path}",
                    f"--mock-gpu-file={node.mock_gpu_file}",
                    # the hostPaths (/usr/local/vgpu, /tmp) the plugin writes relative to the host
                    f"--host-root={host_root}",
                    f"--metrics-bind={HOST}",
                    "--metrics-port=0",
                ]
                env = container_env(plugin, {"spec.nodeName": node.name})
                env["HAMI_NO_MONITOR"] = "true"
                roles.append(
                    Role(f"device-plugin {node.name}", args, env, tmp_path / f"plugin-{node.name}.log")
                )

            await asyncio.gather(*(role.start() for role in roles))

            tls_context = ssl.create_default_context(cafile=str(pki.ca_cert))

            async def scheduler_ready() -> bool:
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with http.get(f"https://{HOST}:{http_port}/readyz", ssl=tls_context) as r:
                        if r.status != 200:
                            return False
                    async with http.get(f"http://{HOST}:{metrics_port}/metrics") as r:
                        text = await r.text()
                    known = sum(line.startswith("GPUDeviceMemoryLimit{") for line in text.splitlines())
                    return known == NODES * GPUS
                return False

            await _until("scheduler ready and knowing every GPU", scheduler_ready, roles, within=30)

            await client.create(
                "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
                _webhook(rendered, http_port, base64.b64encode(pki.ca_cert.read_bytes()).decode()),
            )

            scheduler_name = flag_value(extender["args"], "--scheduler-name")
            wanted = {
                "one": ({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "3000", "nvidia.com/gpucores": "30"}, 1),
                "two": ({"nvidia.com/gpu": "2", "nvidia.com/gpumem": "2000", "nvidia.com/gpucores": "20"}, 2),
            }
            for name, (limits, _) in wanted.items():
                created = await cluster.create_pod(_pod(name, limits))
                assert created["spec"]["schedulerName"] == scheduler_name
            # The rendered objectSelector is kept: an opted-out pod is not mutated. It fits no node,
            # so it never reaches a kubelet (where the device plugin would refuse it: HAMi placed it
            # nowhere; tests/unit/deviceplugin/test_dp_podlookup.py).
            opted_out = _pod("ignored", {"nvidia.com/gpu": "1"}, labels={"hami.io/webhook": "ignore"})
            opted_out["spec"]["nodeSelector"] = {"example.com/no-such-node": "true"}
            ignored = await cluster.create_pod(opted_out)
            assert ignored["spec"]["schedulerName"] == "default-scheduler"

            for name, (limits, count) in wanted.items():
                pod: dict[str, Any] = {}

                async def running(name: str = name) -> bool:
                    nonlocal pod
                    pod = await cluster.get_pod("default", name)
                    return bool(pod.get("status", {}).get("phase") == "Running")

                await _until(f"pod {name} Running", running, roles, within=20)
                annotations = pod["metadata"]["annotations"]
                assert annotations[keys.BIND_PHASE] == "success"
                assert annotations[keys.VGPU_NODE] == pod["spec"]["nodeName"]
                devices = annotations[keys.VGPU_DEVICES_ALLOCATED].rstrip(":;").split(":")
                assert len(devices) == count
                uuids = [d.split(",")[0] for d in devices]
                assert all(d.split(",")[2:] == [limits["nvidia.com/gpumem"], limits["nvidia.com/gpucores"]]
                           for d in devices)  # fmt: skip
                record = cluster.kubelet(pod["spec"]["nodeName"]).record("default", name)
                assert record is not None
                envs = record.envs("cuda")
                assert envs["NVIDIA_VISIBLE_DEVICES"] == ",".join(uuids)
                for i in range(count):
                    assert envs[f"CUDA_DEVICE_MEMORY_LIMIT_{i}"] == f"{limits['nvidia.com/gpumem']}m"
                assert envs["CUDA_DEVICE_SM_LIMIT"] == limits["nvidia.com/gpucores"]
            for role in roles:
                role.check_alive()
        finally:
            await asyncio.gather(*(role.stop() for role in roles), return_exceptions=True)
