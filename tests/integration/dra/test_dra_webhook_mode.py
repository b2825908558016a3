"""``hami scheduler --dra-mode=translate`` as the API server's mutating webhook, end to end.

The embedded cluster runs DRA for real (``hami dra-plugin`` processes, the resourceclaim
controller, the fake kube-scheduler's DynamicResources plugin, kubelets preparing claims over gRPC);
an in-process :class:`SchedulerRole` serves ``/webhook`` over HTTPS, registered as the chart
registers it (a Service reference, ``sideEffects: NoneOnDryRun``). Pods are created like a
ReplicaSet creates them (``generateName``, so admission sees no name): the API server calls the
webhook, which creates the shared ResourceClaimTemplate and answers the patch; nobody applies the
translation by hand.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from dra_fixtures import eventually

from hami.config.settings import LeaderElectionSettings, NetworkingSettings, WatchingSettings
from hami.core.dra_translate import DRA_LABEL, DRIVER_NAME
from hami.k8s.auth import Credentials
from hami.k8s.client import HttpKubeApi
from hami.scheduler.role import SchedulerRole
from hami.scheduler.settings import SchedulerSection, SchedulerSettings
from hami.simulator.cluster import EmbeddedCluster
from hami.simulator.kubelet import KubeletSettings
from hami.simulator.restclient import ApiError, RestClient, pod_path
from hami.simulator.scenario import NodeSpec
from hami.simulator.server import ApiServerSettings

NS = "ml"
SERVICE = ("hami-system", "hami-scheduler")
RESOURCE = "/apis/resource.k8s.io/v1/namespaces/" + NS
TEMPLATES, CLAIMS = f"{RESOURCE}/resourceclaimtemplates", f"{RESOURCE}/resourceclaims"
PODS = f"/api/v1/namespaces/{NS}/pods"
GPU, MEM, PCT = "nvidia.com/gpu", "nvidia.com/gpumem", "nvidia.com/gpumem-percentage"
GPU_MIB = 10000  # one GPU per node: two 4000 MiB shares fit on it, a third does not
TEMPLATE = "hami-gpu-1x4000mi-0c"
FAST = KubeletSettings(
    heartbeat_interval=0.3, dra_registry_poll=0.05, dra_retry_initial=0.1, dra_retry_max=0.5
)


# --------------------------------------------------------------------------------------- PKI


def _openssl(directory: Path, *args: str) -> None:
    done = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"openssl {' '.join(args)}: {done.stderr}"


def serving_pki(directory: Path) -> tuple[Path, Path, bytes]:
    """A throw-away CA and the webhook's certificate for ``<svc>.<ns>.svc``: (cert, key, CA PEM)."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    dns = f"{SERVICE[1]}.{SERVICE[0]}.svc"
    _openssl(directory, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
             "-subj", "/CN=dra-webhook-test-ca")  # fmt: skip
    _openssl(directory, "req", *ec, "-keyout", "tls.key", "-out", "tls.csr", "-subj", f"/CN={dns}")
    (directory / "ext.cnf").write_text(f"subjectAltName=DNS:{dns}\n")
    _openssl(directory, "x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "tls.crt", "-days", "1", "-extfile", "ext.cnf")  # fmt: skip
    return directory / "tls.crt", directory / "tls.key", (directory / "ca.crt").read_bytes()


def webhook_configuration(ca_pem: bytes) -> dict[str, Any]:
    """The chart's registration with ``dra.webhookTranslate`` on (failurePolicy Fail, so a broken
    webhook fails the test instead of letting pods through untranslated)."""
    ignore = {"matchExpressions": [{"key": "hami.io/webhook", "operator": "NotIn", "values": ["ignore"]}]}
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "hami-webhook"},
        "webhooks": [
            {
                "name": "vgpu.hami.io",
                "admissionReviewVersions": ["v1"],
                "clientConfig": {
                    "service": {"namespace": SERVICE[0], "name": SERVICE[1], "path": "/webhook", "port": 443},
                    "caBundle": base64.b64encode(ca_pem).decode(),
                },
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "failurePolicy": "Fail",
                "matchPolicy": "Equivalent",
                "reinvocationPolicy": "Never",
                "sideEffects": "NoneOnDryRun",
                "timeoutSeconds": 10,
                "namespaceSelector": ignore,
                "objectSelector": ignore,
            }
        ],
    }


# --------------------------------------------------------------------------------------- harness


class Webhook:
    """Where the API server finds the scheduler's listener (known only once it started)."""

    def __init__(self) -> None:
        self.port = 0

    def resolve(self, namespace: str, name: str, port: int) -> str:
        assert (namespace, name, port) == (*SERVICE, 443)
        assert self.port, "the webhook is not listening yet"
        return f"127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def run_scheduler(cluster: EmbeddedCluster, cert: Path, key: Path) -> AsyncIterator[SchedulerRole]:
    settings = SchedulerSettings(
        scheduler=SchedulerSection(
            http_bind="127.0.0.1:0",
            metrics_bind_address="127.0.0.1:0",
            cert_file=str(cert),
            key_file=str(key),
            scheduler_name="hami-scheduler",
            dra_mode="translate",
        ),
        watching=WatchingSettings(min_timeout=30, max_timeout=60, inactivity_timeout=30),
        leader_election=LeaderElectionSettings(enabled=False),
    )
    async with HttpKubeApi(Credentials.anonymous(cluster.api_url), NetworkingSettings()) as api:
        role = SchedulerRole(settings, api)
        stop = asyncio.Event()
        task = asyncio.create_task(role.run(stop), name="hami scheduler (DRA mode)")
        try:
            async with asyncio.timeout(15):
                while not role.started.is_set():
                    if task.done():
                        task.result()
                    await asyncio.sleep(0.01)
            yield role
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)


def replica(limits: dict[str, str] | None = None) -> dict[str, Any]:
    """What the ReplicaSet controller submits: a generated name, so admission sees no name."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "trainer-7c9d-", "labels": {"app": "trainer"}},
        "spec": {
            "containers": [
                {
                    "name": "cuda",
                    "image": "cuda",
                    "resources": {"limits": limits or {GPU: "1", MEM: "4000", "cpu": "1"}},
                }
            ]
        },
    }


def phase(value: str) -> Callable[[dict[str, Any]], bool]:
    return lambda pod: (pod.get("status") or {}).get("phase") == value


async def gone(rest: RestClient, path: str) -> bool:
    try:
        await rest.get(path)
    except ApiError as e:
        return e.code == 404
    return False


def cdi_specs(cluster: EmbeddedCluster, node: str) -> list[Path]:
    return sorted(cluster.kubelet(node).dra.cdi_dir.glob("*.json"))


def checkpoint_claims(cluster: EmbeddedCluster, node: str) -> dict[str, Any]:
    path = cluster.node(node).dra_layout.plugin_dir / "prepared-claims.json"
    return dict(json.loads(path.read_text())["claims"]) if path.exists() else {}


# --------------------------------------------------------------------------------------- test


@pytest.mark.slow
async def test_generated_name_replicas_are_translated_by_the_webhook_and_run_on_dra(
    dra_dir: Path,
) -> None:
    cert, key, ca_pem = serving_pki(dra_dir)
    webhook = Webhook()
    async with EmbeddedCluster.running(
        nodes=tuple(
            NodeSpec(name=n, gpus=1, gpu_model="NVIDIA A10", gpu_memory_mib=GPU_MIB)
            for n in ("node-1", "node-2")
        ),
        state_dir=dra_dir,
        kubelet_settings=FAST,
        api_settings=ApiServerSettings(webhook_service_resolver=webhook.resolve),
        dra=True,
        start_dra_plugins=True,
    ) as cluster:
        rest = cluster.client
        await rest.create("/api/v1/namespaces", {"metadata": {"name": NS}})
        slices = (await rest.get("/apis/resource.k8s.io/v1/resourceslices"))["items"]
        uuids = {
            s["spec"]["nodeName"]: s["spec"]["devices"][0]["attributes"]["uuid"]["string"] for s in slices
        }
        async with run_scheduler(cluster, cert, key) as role:
            assert role.listener is not None and role.listener.tls
            webhook.port = role.listener.port
            await rest.create(
                "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
                webhook_configuration(ca_pem),
            )

            # A dry run is translated but creates nothing (the registration says NoneOnDryRun).
            dry = await rest.request("POST", PODS, params={"dryRun": "All"}, body=replica())
            assert dry["spec"]["resourceClaims"] == [
                {"name": "hami-gpu-cuda", "resourceClaimTemplateName": TEMPLATE}
            ]
            assert (await rest.get(TEMPLATES))["items"] == []

            # What DRA cannot express is refused with the reason, and nothing is created.
            with pytest.raises(ApiError) as refused:
                await rest.create(PODS, replica({GPU: "1", PCT: "50"}))
            assert refused.value.code == 403
            assert 'admission webhook "vgpu.hami.io" denied the request' in refused.value.message
            assert f"{PCT}=50 cannot be expressed as a DRA capacity request" in refused.value.message
            assert (await rest.get(TEMPLATES))["items"] == []

            # Three replicas: the webhook creates the one shared template and patches each pod.
            created = [await rest.create(PODS, replica()) for _ in range(3)]
            names = [p["metadata"]["name"] for p in created]
            assert len(set(names)) == 3 and all(n.startswith("trainer-7c9d-") for n in names)
            for pod in created:
                assert pod["spec"]["schedulerName"] == "default-scheduler"  # DRA: not HAMi's scheduler
                assert pod["metadata"]["labels"] == {"app": "trainer", DRA_LABEL: "true"}
                assert pod["spec"]["resourceClaims"] == [
                    {"name": "hami-gpu-cuda", "resourceClaimTemplateName": TEMPLATE}
                ]
                (container,) = pod["spec"]["containers"]
                assert container["resources"]["limits"] == {"cpu": "1"}
                assert container["resources"]["claims"] == [{"name": "hami-gpu-cuda"}]
            (template,) = (await rest.get(TEMPLATES))["items"]
            assert template["metadata"]["name"] == TEMPLATE
            assert template["metadata"]["labels"] == {
                "app.kubernetes.io/managed-by": "hami",
                DRA_LABEL: "true",
            }
            (request,) = template["spec"]["spec"]["devices"]["requests"]
            assert request["exactly"]["deviceClassName"] == DRIVER_NAME
            assert request["exactly"]["count"] == 1
            assert request["exactly"]["capacity"]["requests"] == {"cores": "0", "memory": str(4000 * 2**20)}

            # The resourceclaim controller makes one claim per pod; they share GPUs by capacity.
            running = {n: await cluster.wait_for_pod(NS, n, phase("Running"), within=30) for n in names}
            bound = {n: p["spec"]["nodeName"] for n, p in running.items()}
            assert sorted(bound.values()) == ["node-1", "node-1", "node-2"]
            claims = {c["metadata"]["name"]: c for c in (await rest.get(CLAIMS))["items"]}
            assert len(claims) == 3
            for name, pod in running.items():
                (status,) = pod["status"]["resourceClaimStatuses"]
                assert status["name"] == "hami-gpu-cuda"
                claim = claims[status["resourceClaimName"]]
                assert claim["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
                (result,) = claim["status"]["allocation"]["devices"]["results"]
                assert (result["driver"], result["pool"]) == (DRIVER_NAME, bound[name])
                assert result["consumedCapacity"] == {"cores": "0", "memory": "4000Mi", "tasks": "1"}
                record = cluster.kubelet(bound[name]).record(NS, name)
                assert record is not None and record.phase == "Running"
                claim_uid = claim["metadata"]["uid"]
                assert record.envs("cuda") == {
                    "NVIDIA_VISIBLE_DEVICES": uuids[bound[name]],
                    "CUDA_DEVICE_MEMORY_LIMIT_0": "4000m",
                    "CUDA_DEVICE_SM_LIMIT": "0",
                    "CUDA_DEVICE_MEMORY_SHARED_CACHE": f"/usr/local/vgpu/{claim_uid}.cache",
                    "LIBCUDA_LOG_LEVEL": "1",
                }
            assert [len(cdi_specs(cluster, n)) for n in ("node-1", "node-2")] == [2, 1]

            # Delete the replicas: kubelets unprepare, the controller deletes the claims, the GPUs
            # are free again; the shared template stays for the next replicas.
            for name in names:
                await rest.delete(pod_path(NS, name), grace_seconds=0)
            for name in names:
                await eventually(lambda name=name: gone(rest, pod_path(NS, name)), within=30)
            await eventually(lambda: _no_claims(rest), within=30)
            for node in ("node-1", "node-2"):
                await eventually(
                    lambda node=node: not cdi_specs(cluster, node) and not checkpoint_claims(cluster, node),
                    within=30,
                )
                assert cluster.kubelet(node).dra.plugins.prepared_claims() == {}
            assert [t["metadata"]["name"] for t in (await rest.get(TEMPLATES))["items"]] == [TEMPLATE]

            # Whole GPUs now fit on both nodes: the capacity was all given back.
            whole = [await rest.create(PODS, replica({GPU: "1", MEM: str(GPU_MIB)})) for _ in range(2)]
            placed = [
                (await cluster.wait_for_pod(NS, p["metadata"]["name"], phase("Running"), within=30))["spec"][
                    "nodeName"
                ]
                for p in whole
            ]
            assert sorted(placed) == ["node-1", "node-2"]


async def _no_claims(rest: RestClient) -> bool:
    return not (await rest.get(CLAIMS))["items"]
