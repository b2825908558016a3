"""kubectl v1.35 drives the simulated API server as it would a real cluster."""

from __future__ import annotations

import asyncio
import json
import re

from hami.simulator.resources import NAMESPACES, PODS

POD = """
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: demo}
spec:
  containers:
  - name: main
    image: nginx:1.27
    resources:
      limits: {nvidia.com/gpu: "1", cpu: "1", memory: 1Gi}
"""

NODE = """
apiVersion: v1
kind: Node
metadata:
  name: gpu-node-1
  labels: {node-role.kubernetes.io/worker: ""}
"""


async def test_apply_get_and_table_columns(kube, apiserver):
    assert "pod/web created" in await kube.ok("apply", "-f", "-", stdin=POD)
    table = await kube.ok("get", "pods")
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert row.split()[:4] == ["web", "0/1", "Pending", "0"]
    pod = json.loads(await kube.ok("get", "pod", "web", "-o", "json"))
    assert pod["spec"]["schedulerName"] == "default-scheduler"
    assert pod["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert pod["status"] == {"phase": "Pending", "qosClass": "Guaranteed"}
    # A second apply computes a patch client-side and sends it (strategic merge for pods).
    changed = POD.replace("app: demo", "app: demo2")
    assert "pod/web configured" in await kube.ok("apply", "-f", "-", stdin=changed)
    stored = apiserver.store.get(PODS, "default", "web")
    assert stored["metadata"]["labels"] == {"app": "demo2"}
    assert "kubectl.kubernetes.io/last-applied-configuration" in stored["metadata"]["annotations"]
    # Short names and wide output come from discovery and the Table columns.
    await kube.ok("apply", "-f", "-", stdin=NODE)
    wide = await kube.ok("get", "no", "-o", "wide")
    assert wide.splitlines()[0].split()[:5] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert "worker" in wide.splitlines()[1]


async def test_label_annotate_and_three_patch_types(kube, apiserver):
    await kube.ok("apply", "-f", "-", stdin=POD)
    await kube.ok("label", "pod", "web", "tier=gpu")
    await kube.ok("annotate", "pod", "web", "hami.io/note=yes")
    await kube.ok("patch", "pod", "web", "--type", "merge", "-p", '{"metadata":{"labels":{"merged":"1"}}}')
    await kube.ok(
        "patch", "pod", "web", "-p", '{"spec":{"containers":[{"name":"main","image":"nginx:1.28"}]}}'
    )
    await kube.ok(
        "patch",
        "pod",
        "web",
        "--type",
        "json",
        "-p",
        '[{"op":"add","path":"/metadata/labels/json","value":"2"}]',
    )
    pod = apiserver.store.get(PODS, "default", "web")
    assert pod["metadata"]["labels"] == {"app": "demo", "tier": "gpu", "merged": "1", "json": "2"}
    assert pod["metadata"]["annotations"]["hami.io/note"] == "yes"
    assert pod["spec"]["containers"][0]["image"] == "nginx:1.28"
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["metadata"]["generation"] == 2
    # Label removal with the trailing dash, and a failing JSON-patch test op.
    await kube.ok("label", "pod", "web", "tier-")
    assert "tier" not in apiserver.store.get(PODS, "default", "web")["metadata"]["labels"]
    failed = await kube(
        "patch",
        "pod",
        "web",
        "--type",
        "json",
        "-p",
        '[{"op":"test","path":"/metadata/labels/json","value":"3"}]',
    )
    assert failed.rc != 0 and "test failed" in failed.err
    forbidden = await kube(
        "patch", "pod", "web", "--type", "merge", "-p", '{"spec":{"nodeName":"elsewhere"}}'
    )
    assert forbidden.rc != 0 and "pod updates may not change fields" in forbidden.err


async def test_describe_pod_lists_its_events_and_node(kube, apiserver):
    await kube.ok("apply", "-f", "-", stdin=POD)
    await kube.ok("apply", "-f", "-", stdin=NODE)
    uid = apiserver.store.get(PODS, "default", "web")["metadata"]["uid"]
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "web.1", "namespace": "default"},
        "involvedObject": {
            "kind": "Pod",
            "name": "web",
            "namespace": "default",
            "uid": uid,
            "apiVersion": "v1",
        },
        "reason": "FailedScheduling",
        "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
        "type": "Warning",
        "source": {"component": "hami-scheduler"},
        "count": 1,
        "firstTimestamp": "2026-01-01T00:00:00Z",
        "lastTimestamp": "2026-01-01T00:00:00Z",
    }
    await kube.ok("create", "-f", "-", stdin=json.dumps(event))
    described = await kube.ok("describe", "pod", "web")
    assert re.search(r"^Status:\s+Pending$", described, re.M)
    assert "FailedScheduling" in described and "Insufficient nvidia.com/gpu" in described
    node = await kube.ok("describe", "node", "gpu-node-1")
    assert re.search(r"^Name:\s+gpu-node-1$", node, re.M)


async def test_get_watch_prints_changes(kube, apiserver):
    await kube.ok("apply", "-f", "-", stdin=POD)
    watching = asyncio.create_task(kube("get", "pods", "-w", "--request-timeout=3s"))
    await asyncio.sleep(1.0)
    await kube.ok("label", "pod", "web", "round=1")
    await kube.ok("delete", "pod", "web")
    result = await watching
    lines = [line.split() for line in result.out.splitlines()]
    assert lines[0][:3] == ["NAME", "READY", "STATUS"]
    names = [line[0] for line in lines[1:]]
    assert names.count("web") >= 3, result.out  # initial row, the label change, the deletion


async def test_delete_unbound_pod_and_finalized_configmap(kube, apiserver):
    await kube.ok("apply", "-f", "-", stdin=POD)
    assert 'pod "web" deleted' in await kube.ok("delete", "pod", "web")
    assert apiserver.store.try_get(PODS, "default", "web") is None
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "held", "namespace": "default", "finalizers": ["hami.io/hold"]},
        "data": {"a": "b"},
    }
    await kube.ok("create", "-f", "-", stdin=json.dumps(cm))
    await kube.ok("delete", "configmap", "held", "--wait=false")
    held = json.loads(await kube.ok("get", "cm", "held", "-o", "json"))
    assert held["metadata"]["deletionTimestamp"]
    await kube.ok("patch", "cm", "held", "--type", "merge", "-p", '{"metadata":{"finalizers":null}}')
    missing = await kube("get", "cm", "held")
    assert missing.rc != 0 and 'configmaps "held" not found' in missing.err


async def test_typed_create_commands_send_protobuf(kube, apiserver):
    """``kubectl create namespace|configmap|secret`` post protobuf bodies; the server decodes them."""
    await kube.ok("create", "namespace", "demo")
    await kube.ok("-n", "demo", "create", "configmap", "cfg", "--from-literal=a=b")
    await kube.ok("-n", "demo", "create", "secret", "generic", "s", "--from-literal=k=v")
    await kube.ok("-n", "demo", "label", "configmap", "cfg", "team=gpu")
    cfg = json.loads(await kube.ok("-n", "demo", "get", "cm", "cfg", "-o", "json"))
    assert cfg["data"] == {"a": "b"} and cfg["metadata"]["labels"] == {"team": "gpu"}
    secret = json.loads(await kube.ok("-n", "demo", "get", "secret", "s", "-o", "json"))
    assert secret["data"] == {"k": "dg=="} and secret["type"] == "Opaque"
    namespace = json.loads(await kube.ok("get", "ns", "demo", "-o", "json"))
    assert namespace["status"] == {"phase": "Active"}
    await kube.ok("delete", "namespace", "demo")
    assert [n["metadata"]["name"] for n in apiserver.store.objects(NAMESPACES)] == [
        "default",
        "kube-node-lease",
        "kube-public",
        "kube-system",
    ]
