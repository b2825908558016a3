"""apps/v1 workloads and batch/v1 Jobs on the simulated API server: defaults, generation, status
subresource, selector rules, and kubectl apply/get/describe. No controller runs: nothing else appears."""

from __future__ import annotations

import json

import orjson

from hami.simulator.resources import PODS, REGISTRY

DEPLOY = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: "nginx:1.27", resources: {limits: {nvidia.com/gpu: "1"}}}
"""
APPS = "/apis/apps/v1/namespaces/default"


async def call(http, method: str, url: str, body=None, content_type: str = "application/json"):
    data = None if body is None else json.dumps(body)
    async with http.request(method, url, data=data, headers={"Content-Type": content_type}) as r:
        text = await r.read()
        return r.status, (orjson.loads(text) if text.strip() else None)


def workload(kind: str, name: str, labels: dict | None = None, selector: dict | None = None, **spec) -> dict:
    labels = {"app": name} if labels is None else labels
    pod_spec = spec.pop("pod", {"containers": [{"name": "c", "image": "busybox:1.36"}]})
    body = {
        "apiVersion": "batch/v1" if kind == "Job" else "apps/v1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {"template": {"metadata": {"labels": labels}, "spec": pod_spec}, **spec},
    }
    if selector is not None:
        body["spec"]["selector"] = selector
    return body


async def test_kubectl_apply_get_describe_deployment(kube, apiserver):
    assert "deployment.apps/web created" in await kube.ok("apply", "-f", "-", stdin=DEPLOY)
    deploy = json.loads(await kube.ok("get", "deploy", "web", "-o", "json"))
    spec = deploy["spec"]
    assert (
        spec["replicas"] == 3
        and spec["revisionHistoryLimit"] == 10
        and spec["progressDeadlineSeconds"] == 600
    )
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
    }
    pod_spec = spec["template"]["spec"]
    assert pod_spec["restartPolicy"] == "Always" and pod_spec["schedulerName"] == "default-scheduler"
    assert pod_spec["containers"][0]["resources"]["requests"] == {"nvidia.com/gpu": "1"}
    assert deploy["status"] == {} and deploy["metadata"]["generation"] == 1

    header, row = (await kube.ok("get", "deploy", "-o", "wide")).splitlines()
    assert header.split() == [
        "NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR",
    ]  # fmt: skip
    cells = row.split()
    assert cells[:4] == ["web", "0/3", "0", "0"] and cells[5:] == ["web", "nginx:1.27", "app=web"]
    described = await kube.ok("describe", "deploy", "web")
    assert "Replicas:               3 desired | 0 updated | 0 total | 0 available" in described
    assert "RollingUpdateStrategy:  25% max unavailable, 25% max surge" in described

    # A spec change bumps the generation; a status write does not and keeps the spec.
    assert "configured" in await kube.ok(
        "apply", "-f", "-", stdin=DEPLOY.replace("replicas: 3", "replicas: 1")
    )
    await kube.ok(
        "patch", "deploy", "web", "--subresource=status", "--type=merge",
        "-p", '{"status":{"replicas":1,"readyReplicas":1},"spec":{"replicas":9}}',
    )  # fmt: skip
    deploy = json.loads(await kube.ok("get", "deploy", "web", "-o", "json"))
    assert deploy["metadata"]["generation"] == 2 and deploy["spec"]["replicas"] == 1
    assert deploy["status"] == {"replicas": 1, "readyReplicas": 1}
    assert (await kube.ok("get", "deploy", "web", "--no-headers")).split()[1] == "1/1"
    # No controller: no ReplicaSet, no pod.
    assert apiserver.store.objects(REGISTRY.get("replicasets.apps")) == []
    assert apiserver.store.objects(PODS) == []


async def test_selector_is_required_matching_and_immutable(kube, http):
    no_selector = DEPLOY.replace("  selector: {matchLabels: {app: web}}\n", "")
    refused = await kube("apply", "-f", "-", stdin=no_selector)
    assert refused.rc == 1 and 'The Deployment "web" is invalid: spec.selector: Required value' in refused.err
    mismatch = DEPLOY.replace("matchLabels: {app: web}", "matchLabels: {app: other}")
    refused = await kube("apply", "-f", "-", stdin=mismatch)
    assert refused.rc == 1
    assert "spec.template.metadata.labels: Invalid value" in refused.err
    assert "`selector` does not match template `labels`" in refused.err
    status, body = await call(http, "POST", f"{APPS}/daemonsets", workload("DaemonSet", "ds", selector={}))
    assert status == 422 and "empty selector is invalid for daemonset" in body["message"]

    await kube.ok("apply", "-f", "-", stdin=DEPLOY)
    status, body = await call(
        http,
        "PATCH",
        f"{APPS}/deployments/web",
        {
            "spec": {
                "selector": {"matchLabels": {"app": "web", "tier": "x"}},
                "template": {"metadata": {"labels": {"app": "web", "tier": "x"}}},
            }
        },
        "application/merge-patch+json",
    )
    assert (
        status == 422
        and "spec.selector: Invalid value" in body["message"]
        and "field is immutable" in body["message"]
    )
    status, body = await call(
        http,
        "POST",
        f"{APPS}/replicasets",
        workload(
            "ReplicaSet",
            "rs",
            selector={"matchLabels": {"app": "rs"}},
            pod={"restartPolicy": "Never", "containers": [{"name": "c"}]},
        ),
    )
    assert status == 422
    fields = {c["field"] for c in body["details"]["causes"]}
    assert fields == {"spec.template.spec.containers[0].image", "spec.template.spec.restartPolicy"}


async def test_daemonset_and_statefulset_defaults_and_rules(http):
    status, ds = await call(
        http,
        "POST",
        f"{APPS}/daemonsets",
        workload("DaemonSet", "ds", selector={"matchLabels": {"app": "ds"}}),
    )
    assert status == 201, ds
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
    }
    assert ds["metadata"]["annotations"] == {"deprecated.daemonset.template.generation": "1"}
    assert ds["status"] == {
        "currentNumberScheduled": 0,
        "numberMisscheduled": 0,
        "desiredNumberScheduled": 0,
        "numberReady": 0,
    }
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:1.37"}]}}}}
    status, ds = await call(
        http, "PATCH", f"{APPS}/daemonsets/ds", patch, "application/strategic-merge-patch+json"
    )
    assert status == 200 and ds["metadata"]["generation"] == 2
    assert ds["metadata"]["annotations"]["deprecated.daemonset.template.generation"] == "2"

    sts_body = workload("StatefulSet", "db", selector={"matchLabels": {"app": "db"}}, serviceName="db")
    status, sts = await call(http, "POST", f"{APPS}/statefulsets", sts_body)
    assert status == 201, sts
    assert sts["spec"]["podManagementPolicy"] == "OrderedReady" and sts["spec"]["replicas"] == 1
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    status, body = await call(
        http,
        "PATCH",
        f"{APPS}/statefulsets/db",
        {"spec": {"serviceName": "other"}},
        "application/merge-patch+json",
    )
    assert status == 422 and "updates to statefulset spec for fields other than" in body["message"]
    status, sts = await call(
        http, "PATCH", f"{APPS}/statefulsets/db", {"spec": {"replicas": 4}}, "application/merge-patch+json"
    )
    assert status == 200 and sts["spec"]["replicas"] == 4 and sts["metadata"]["generation"] == 2


async def test_job_generated_selector_and_rules(kube, http):
    jobs = "/apis/batch/v1/namespaces/default/jobs"
    job_body = workload(
        "Job",
        "once",
        labels={},
        pod={"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]},
    )
    status, job = await call(http, "POST", jobs, job_body)
    assert status == 201, job
    uid = job["metadata"]["uid"]
    assert job["spec"]["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    assert job["spec"]["template"]["metadata"]["labels"] == {
        "batch.kubernetes.io/controller-uid": uid,
        "controller-uid": uid,
        "batch.kubernetes.io/job-name": "once",
        "job-name": "once",
    }
    assert (job["spec"]["completions"], job["spec"]["parallelism"], job["spec"]["backoffLimit"]) == (1, 1, 6)
    assert job["spec"]["completionMode"] == "NonIndexed" and job["spec"]["suspend"] is False
    status, body = await call(http, "POST", jobs, workload("Job", "always", labels={}))
    assert status == 422
    restart = 'spec.template.spec.restartPolicy: Unsupported value: "Always"'
    assert f'{restart}: supported values: "OnFailure", "Never"' in body["message"]
    patch = {"spec": {"template": {"spec": {"activeDeadlineSeconds": 5}}}}
    status, body = await call(http, "PATCH", f"{jobs}/once", patch, "application/merge-patch+json")
    assert (
        status == 422
        and "spec.template: Invalid value" in body["message"]
        and "field is immutable" in body["message"]
    )
    header, row = (await kube.ok("get", "jobs")).splitlines()
    assert header.split() == ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]
    assert row.split()[:3] == ["once", "Running", "0/1"]


async def test_get_all_lists_the_workload_category(kube, http):
    await kube.ok("apply", "-f", "-", stdin=DEPLOY)
    await call(
        http,
        "POST",
        f"{APPS}/daemonsets",
        workload("DaemonSet", "ds", selector={"matchLabels": {"app": "ds"}}),
    )
    listed = await kube.ok("get", "all")
    assert "deployment.apps/web" in listed and "daemonset.apps/ds" in listed
