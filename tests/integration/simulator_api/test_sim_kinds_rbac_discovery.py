"""Discovery of the stored-only kinds, and RBAC objects, ServiceAccounts and PodDisruptionBudgets
round-tripping through kubectl (stored and validated, never enforced)."""

from __future__ import annotations

import json

import orjson
import yaml

RBAC = """
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: leases}
rules:
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: leases}
roleRef: {kind: Role, name: leases}
subjects:
- {kind: ServiceAccount, name: sched, namespace: default}
- {kind: User, name: alice}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: reader}
rules:
- apiGroups: [""]
  resources: [pods, nodes]
  verbs: [get, list, watch]
- nonResourceURLs: [/metrics]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: reader}
subjects:
- {kind: ServiceAccount, name: sched, namespace: default}
- {kind: Group, name: ops}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: sched}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: sched}
spec:
  minAvailable: 50%
  selector: {matchLabels: {app: sched}}
"""

EXPECTED_GROUPS = {
    "apps/v1": {"deployments": "deploy", "daemonsets": "ds", "statefulsets": "sts", "replicasets": "rs"},
    "batch/v1": {"jobs": ""},
    "policy/v1": {"poddisruptionbudgets": "pdb"},
    "rbac.authorization.k8s.io/v1": {
        "roles": "",
        "rolebindings": "",
        "clusterroles": "",
        "clusterrolebindings": "",
    },
    "v1": {"services": "svc", "serviceaccounts": "sa"},
}


async def call(http, method: str, url: str, body=None, content_type: str = "application/json"):
    data = None if body is None else json.dumps(body)
    async with http.request(method, url, data=data, headers={"Content-Type": content_type}) as r:
        text = await r.read()
        return r.status, (orjson.loads(text) if text.strip() else None)


async def test_kubectl_api_resources_lists_the_new_groups(kube, http):
    out = await kube.ok("api-resources", "--no-headers")
    rows = {(line.split()[0], line.split()[-3]): line.split() for line in out.splitlines()}
    for group_version, resources in EXPECTED_GROUPS.items():
        for plural, short in resources.items():
            row = rows.get((plural, group_version))
            assert row is not None, f"{plural} ({group_version}) missing from:\n{out}"
            assert (row[1] == short) if short else len(row) == 4, row
    namespaced = await kube.ok("api-resources", "--namespaced=false", "-o", "name")
    assert {"clusterroles.rbac.authorization.k8s.io", "clusterrolebindings.rbac.authorization.k8s.io"} <= set(
        namespaced.split()
    )
    in_all = await kube.ok("api-resources", "--categories=all", "-o", "name")
    assert set(in_all.split()) == {
        "pods", "services", "deployments.apps", "daemonsets.apps", "statefulsets.apps", "replicasets.apps",
        "jobs.batch",
    }  # fmt: skip
    status, groups = await call(http, "GET", "/apis")
    assert {"apps", "batch", "policy", "rbac.authorization.k8s.io"} <= {g["name"] for g in groups["groups"]}
    status, apps = await call(http, "GET", "/apis/apps/v1")
    names = {r["name"] for r in apps["resources"]}
    assert {"deployments/status", "daemonsets/status", "statefulsets/status", "replicasets/status"} <= names
    status, openapi = await call(http, "GET", "/openapi/v3")
    assert status == 200
    assert {"apis/apps/v1", "apis/batch/v1", "apis/policy/v1", "apis/rbac.authorization.k8s.io/v1"} <= set(
        openapi["paths"]
    )


async def test_rbac_service_account_and_pdb_round_trip(kube, apiserver):
    out = await kube.ok("apply", "--validate=strict", "-f", "-", stdin=RBAC)
    assert out.splitlines() == [
        "role.rbac.authorization.k8s.io/leases created",
        "rolebinding.rbac.authorization.k8s.io/leases created",
        "clusterrole.rbac.authorization.k8s.io/reader created",
        "clusterrolebinding.rbac.authorization.k8s.io/reader created",
        "serviceaccount/sched created",
        "poddisruptionbudget.policy/sched created",
    ]
    for doc in yaml.safe_load_all(RBAC):
        kind, name = doc["kind"].lower(), doc["metadata"]["name"]
        got = json.loads(await kube.ok("get", kind, name, "-o", "json"))
        assert got.get("rules") == doc.get("rules")
        for key, value in (doc.get("spec") or {}).items():
            assert got["spec"][key] == value
    binding = json.loads(await kube.ok("get", "rolebinding", "leases", "-o", "json"))
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "leases"}
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "sched", "namespace": "default"},
        {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"},
    ]
    assert "generation" not in binding["metadata"]
    pdb = json.loads(await kube.ok("get", "pdb", "sched", "-o", "json"))
    assert pdb["metadata"]["generation"] == 1
    assert pdb["status"] == {
        "currentHealthy": 0,
        "desiredHealthy": 0,
        "disruptionsAllowed": 0,
        "expectedPods": 0,
    }

    wide = (await kube.ok("get", "clusterrolebinding", "reader", "-o", "wide")).splitlines()
    assert wide[0].split() == ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"]
    assert wide[1].split()[:2] == ["reader", "ClusterRole/reader"] and wide[1].split()[-2:] == [
        "ops",
        "default/sched",
    ]
    pdbs = (await kube.ok("get", "pdb")).splitlines()
    assert pdbs[0].split() == [
        "NAME",
        "MIN",
        "AVAILABLE",
        "MAX",
        "UNAVAILABLE",
        "ALLOWED",
        "DISRUPTIONS",
        "AGE",
    ]
    assert pdbs[1].split()[:4] == ["sched", "50%", "N/A", "0"]
    assert (await kube.ok("get", "sa", "--no-headers")).split()[:2] == ["sched", "0"]
    assert (await kube.ok("get", "clusterroles", "--no-headers")).split()[0] == "reader"


async def test_rbac_and_pdb_validation(kube, http):
    await kube.ok("apply", "-f", "-", stdin=RBAC)
    changed = RBAC.replace(
        "roleRef: {kind: Role, name: leases}", "roleRef: {kind: ClusterRole, name: reader}"
    )
    refused = await kube("apply", "-f", "-", stdin=changed)
    assert (
        refused.rc == 1 and "roleRef: Invalid value" in refused.err and "cannot change roleRef" in refused.err
    )
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    bad_role = {
        "metadata": {"name": "bad"},
        "rules": [{"resources": ["pods"], "verbs": []}, {"nonResourceURLs": ["/x"], "verbs": ["get"]}],
    }
    status, body = await call(http, "POST", f"{rbac}/namespaces/default/roles", bad_role)
    assert status == 422 and body["details"]["group"] == "rbac.authorization.k8s.io"
    assert {(c["field"], c["message"]) for c in body["details"]["causes"]} == {
        ("rules[0].verbs", "Required value: verbs must contain at least one value"),
        ("rules[0].apiGroups", "Required value: resource rules must supply at least one api group"),
        (
            "rules[1].nonResourceURLs",
            'Invalid value: ["/x"]: namespaced rules cannot apply to non-resource URLs',
        ),
    }
    bad_binding = {
        "metadata": {"name": "bad"},
        "roleRef": {"kind": "Role", "name": "x"},
        "subjects": [{"kind": "ServiceAccount", "name": "sa"}],
    }
    status, body = await call(http, "POST", f"{rbac}/clusterrolebindings", bad_binding)
    assert status == 422
    assert {c["field"] for c in body["details"]["causes"]} == {"roleRef.kind", "subjects[0].namespace"}
    pdb = {"metadata": {"name": "both"}, "spec": {"minAvailable": 1, "maxUnavailable": "150%"}}
    status, body = await call(http, "POST", "/apis/policy/v1/namespaces/default/poddisruptionbudgets", pdb)
    assert status == 422
    assert "minAvailable and maxUnavailable cannot be both set" in body["message"]
    assert "spec.maxUnavailable" in body["message"] and "must not be greater than 100%" in body["message"]
