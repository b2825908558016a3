"""Server-side ``meta.k8s.io/v1`` Table output, so ``kubectl get`` prints real columns (k8s-apis.md §6.12).

Columns follow kube-apiserver's printers for pods, nodes, namespaces, events, leases, the DRA kinds,
services, service accounts, the apps/v1 workloads, jobs, pod disruption budgets and role bindings;
any other kind (roles, cluster roles, ...) gets ``Name`` and ``Created At``, as it does there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hami.simulator.resources import ResourceType
from hami.simulator.strategies import parse_time

JsonObj = dict[str, Any]
Column = tuple[str, str, str, int]  # name, type, format, priority
Row = list[Any]


def human_duration(seconds: float) -> str:
    """apimachinery ``duration.HumanDuration``."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        rest = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if rest == 0 else f"{hours // 24 // 365}y{rest}d"
    return f"{hours // 24 // 365}y"


def _age(timestamp: Any, now: float) -> str:
    if not timestamp:
        return "<unknown>"
    try:
        return human_duration(now - parse_time(str(timestamp)))
    except ValueError:
        return "<unknown>"


def _name(obj: Mapping[str, Any]) -> str:
    return str(obj["metadata"].get("name", ""))


def _pod_row(pod: Mapping[str, Any], now: float) -> Row:
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    total = len(spec.get("containers") or [])
    ready = sum(1 for c in statuses if c.get("ready"))
    restarts = sum(int(c.get("restartCount") or 0) for c in statuses)
    reason = status.get("reason") or status.get("phase") or "Unknown"
    for c in statuses:
        state = c.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif state.get("terminated", {}).get("reason"):
            reason = state["terminated"]["reason"]
    if pod["metadata"].get("deletionTimestamp"):
        reason = "Terminating"
    gates = spec.get("readinessGates") or []
    return [
        _name(pod),
        f"{ready}/{total}",
        reason,
        restarts,
        _age(pod["metadata"].get("creationTimestamp"), now),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        f"{0}/{len(gates)}" if gates else "<none>",
    ]


def _node_row(node: Mapping[str, Any], now: float) -> Row:
    status = node.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    ready = conditions.get("Ready")
    state = "Ready" if ready == "True" else "NotReady" if ready == "False" else "Unknown"
    if (node.get("spec") or {}).get("unschedulable"):
        state += ",SchedulingDisabled"
    labels = node["metadata"].get("labels") or {}
    roles = sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/"))
    info = status.get("nodeInfo") or {}
    addresses = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    return [
        _name(node),
        state,
        ",".join(roles) or "<none>",
        _age(node["metadata"].get("creationTimestamp"), now),
        info.get("kubeletVersion", ""),
        addresses.get("InternalIP", "<none>"),
        addresses.get("ExternalIP", "<none>"),
        info.get("osImage", "<unknown>"),
        info.get("kernelVersion", "<unknown>"),
        info.get("containerRuntimeVersion", "<unknown>"),
    ]


def _event_row(ev: Mapping[str, Any], now: float) -> Row:
    involved = ev.get("involvedObject") or ev.get("regarding") or {}
    last = (
        ev.get("lastTimestamp")
        or ev.get("deprecatedLastTimestamp")
        or ev.get("eventTime")
        or (ev["metadata"].get("creationTimestamp"))
    )
    return [
        _age(last, now),
        ev.get("type", ""),
        ev.get("reason", ""),
        f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}",
        ev.get("message") or ev.get("note") or "",
    ]


def _claim_state(claim: Mapping[str, Any]) -> str:
    status = claim.get("status") or {}
    if claim["metadata"].get("deletionTimestamp"):
        return "deleted"
    parts = ["allocated" if status.get("allocation") else "pending"]
    if status.get("reservedFor"):
        parts.append("reserved")
    return ",".join(parts)


def _labels_text(labels: Any) -> str:
    """``labels.FormatLabels``: sorted ``k=v`` pairs, ``<none>`` when empty."""
    if not isinstance(labels, dict) or not labels:
        return "<none>"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _selector_text(selector: Any) -> str:
    """``metav1.FormatLabelSelector``."""
    if not isinstance(selector, dict):
        return "<none>"
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    ops = {"In": "in", "NotIn": "notin"}
    for expr in selector.get("matchExpressions") or []:
        key, op = expr.get("key", ""), expr.get("operator", "")
        if op in ops:
            parts.append(f"{key} {ops[op]} ({','.join(sorted(expr.get('values') or []))})")
        else:
            parts.append(key if op == "Exists" else f"!{key}")
    return ",".join(parts) or "<none>"


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("status") or {}


def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("spec") or {}


def _containers(owner: Mapping[str, Any]) -> list[str]:
    """``Containers`` and ``Images`` of a workload's pod template."""
    containers = ((_spec(owner).get("template") or {}).get("spec") or {}).get("containers") or []
    return [
        ",".join(str(c.get("name", "")) for c in containers),
        ",".join(str(c.get("image", "")) for c in containers),
    ]


def _service_row(svc: Mapping[str, Any], now: float) -> Row:
    spec = _spec(svc)
    kind = spec.get("type", "ClusterIP")
    external = list(spec.get("externalIPs") or [])
    if kind == "ExternalName":
        external_text = spec.get("externalName") or "<none>"
    elif kind == "LoadBalancer":
        ingress = (_status(svc).get("loadBalancer") or {}).get("ingress") or []
        external += [i.get("ip") or i.get("hostname") for i in ingress if i.get("ip") or i.get("hostname")]
        external_text = ",".join(external) or "<pending>"
    else:
        external_text = ",".join(external) or "<none>"
    ports = [
        f"{p.get('port')}{':' + str(p['nodePort']) if p.get('nodePort') else ''}/{p.get('protocol', 'TCP')}"
        for p in spec.get("ports") or []
    ]
    return [
        _name(svc),
        kind,
        spec.get("clusterIP") or "<none>",
        external_text,
        ",".join(ports) or "<none>",
        _age(svc["metadata"].get("creationTimestamp"), now),
        _labels_text(spec.get("selector")),
    ]


def _deployment_row(d: Mapping[str, Any], now: float) -> Row:
    status = _status(d)
    return [
        _name(d),
        f"{status.get('readyReplicas', 0)}/{_spec(d).get('replicas', 0)}",
        status.get("updatedReplicas", 0),
        status.get("availableReplicas", 0),
        _age(d["metadata"].get("creationTimestamp"), now),
        *_containers(d),
        _selector_text(_spec(d).get("selector")),
    ]


def _daemonset_row(ds: Mapping[str, Any], now: float) -> Row:
    status = _status(ds)
    node_selector = ((_spec(ds).get("template") or {}).get("spec") or {}).get("nodeSelector")
    return [
        _name(ds),
        status.get("desiredNumberScheduled", 0),
        status.get("currentNumberScheduled", 0),
        status.get("numberReady", 0),
        status.get("updatedNumberScheduled", 0),
        status.get("numberAvailable", 0),
        _labels_text(node_selector),
        _age(ds["metadata"].get("creationTimestamp"), now),
        *_containers(ds),
        _selector_text(_spec(ds).get("selector")),
    ]


def _job_row(job: Mapping[str, Any], now: float) -> Row:
    spec, status = _spec(job), _status(job)
    true = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
    state = next(
        (s for s in ("Failed", "Complete", "Suspended", "FailureTarget", "SuccessCriteriaMet") if s in true),
        "Terminating" if job["metadata"].get("deletionTimestamp") else "Running",
    )
    succeeded = status.get("succeeded", 0)
    if spec.get("completions") is not None:
        completions = f"{succeeded}/{spec['completions']}"
    elif int(spec.get("parallelism") or 0) > 1:
        completions = f"{succeeded}/1 of {spec['parallelism']}"
    else:
        completions = f"{succeeded}/1"
    duration = ""
    if status.get("startTime"):
        end = parse_time(status["completionTime"]) if status.get("completionTime") else now
        duration = human_duration(end - parse_time(status["startTime"]))
    return [
        _name(job),
        state,
        completions,
        duration,
        _age(job["metadata"].get("creationTimestamp"), now),
        *_containers(job),
        _selector_text(spec.get("selector")),
    ]


def _binding_row(binding: Mapping[str, Any], now: float) -> Row:
    ref = binding.get("roleRef") or {}
    subjects = binding.get("subjects") or []

    def names(kind: str) -> str:
        found = [s for s in subjects if s.get("kind") == kind]
        with_ns = kind == "ServiceAccount"
        return ", ".join(f"{s.get('namespace', '')}/{s['name']}" if with_ns else s["name"] for s in found)

    return [
        _name(binding),
        f"{ref.get('kind', '')}/{ref.get('name', '')}",
        _age(binding["metadata"].get("creationTimestamp"), now),
        names("User"),
        names("Group"),
        names("ServiceAccount"),
    ]


_S, _I, _D = "string", "integer", "date"
_WORKLOAD_EXTRA: Sequence[Column] = [
    ("Containers", _S, "", 1),
    ("Images", _S, "", 1),
    ("Selector", _S, "", 1),
]
_PRINTERS: Mapping[str, tuple[Sequence[Column], Callable[[Mapping[str, Any], float], Row]]] = {
    "pods": (
        [
            ("Name", _S, "name", 0),
            ("Ready", _S, "", 0),
            ("Status", _S, "", 0),
            ("Restarts", _S, "", 0),
            ("Age", _S, "", 0),
            ("IP", _S, "", 1),
            ("Node", _S, "", 1),
            ("Nominated Node", _S, "", 1),
            ("Readiness Gates", _S, "", 1),
        ],
        _pod_row,
    ),
    "nodes": (
        [
            ("Name", _S, "name", 0),
            ("Status", _S, "", 0),
            ("Roles", _S, "", 0),
            ("Age", _S, "", 0),
            ("Version", _S, "", 0),
            ("Internal-IP", _S, "", 1),
            ("External-IP", _S, "", 1),
            ("OS-Image", _S, "", 1),
            ("Kernel-Version", _S, "", 1),
            ("Container-Runtime", _S, "", 1),
        ],
        _node_row,
    ),
    "namespaces": (
        [("Name", _S, "name", 0), ("Status", _S, "", 0), ("Age", _S, "", 0)],
        lambda o, now: [
            _name(o),
            (o.get("status") or {}).get("phase", ""),
            _age(o["metadata"].get("creationTimestamp"), now),
        ],
    ),
    "events": (
        [
            ("Last Seen", _S, "", 0),
            ("Type", _S, "", 0),
            ("Reason", _S, "", 0),
            ("Object", _S, "", 0),
            ("Message", _S, "", 0),
        ],
        _event_row,
    ),
    "leases.coordination.k8s.io": (
        [("Name", _S, "name", 0), ("Holder", _S, "", 0), ("Age", _S, "", 0)],
        lambda o, now: [
            _name(o),
            (o.get("spec") or {}).get("holderIdentity", ""),
            _age(o["metadata"].get("creationTimestamp"), now),
        ],
    ),
    "configmaps": (
        [("Name", _S, "name", 0), ("Data", _I, "", 0), ("Age", _S, "", 0)],
        lambda o, now: [
            _name(o),
            len(o.get("data") or {}) + len(o.get("binaryData") or {}),
            _age(o["metadata"].get("creationTimestamp"), now),
        ],
    ),
    "secrets": (
        [("Name", _S, "name", 0), ("Type", _S, "", 0), ("Data", _I, "", 0), ("Age", _S, "", 0)],
        lambda o, now: [
            _name(o),
            o.get("type", ""),
            len(o.get("data") or {}),
            _age(o["metadata"].get("creationTimestamp"), now),
        ],
    ),
    "resourceslices.resource.k8s.io": (
        [
            ("Name", _S, "name", 0),
            ("Node", _S, "", 0),
            ("Driver", _S, "", 0),
            ("Pool", _S, "", 0),
            ("Age", _S, "", 0),
        ],
        lambda o, now: [
            _name(o),
            (o.get("spec") or {}).get("nodeName", ""),
            (o.get("spec") or {}).get("driver", ""),
            ((o.get("spec") or {}).get("pool") or {}).get("name", ""),
            _age(o["metadata"].get("creationTimestamp"), now),
        ],
    ),
    "resourceclaims.resource.k8s.io": (
        [("Name", _S, "name", 0), ("State", _S, "", 0), ("Age", _S, "", 0)],
        lambda o, now: [_name(o), _claim_state(o), _age(o["metadata"].get("creationTimestamp"), now)],
    ),
    "services": (
        [
            ("Name", _S, "name", 0),
            ("Type", _S, "", 0),
            ("Cluster-IP", _S, "", 0),
            ("External-IP", _S, "", 0),
            ("Port(s)", _S, "", 0),
            ("Age", _S, "", 0),
            ("Selector", _S, "", 1),
        ],
        _service_row,
    ),
    "serviceaccounts": (
        [("Name", _S, "name", 0), ("Secrets", _I, "", 0), ("Age", _S, "", 0)],
        lambda o, now: [
            _name(o),
            len(o.get("secrets") or []),
            _age(o["metadata"].get("creationTimestamp"), now),
        ],
    ),
    "deployments.apps": (
        [
            ("Name", _S, "name", 0),
            ("Ready", _S, "", 0),
            ("Up-to-date", _I, "", 0),
            ("Available", _I, "", 0),
            ("Age", _S, "", 0),
            *_WORKLOAD_EXTRA,
        ],
        _deployment_row,
    ),
    "daemonsets.apps": (
        [
            ("Name", _S, "name", 0),
            ("Desired", _I, "", 0),
            ("Current", _I, "", 0),
            ("Ready", _I, "", 0),
            ("Up-to-date", _I, "", 0),
            ("Available", _I, "", 0),
            ("Node Selector", _S, "", 0),
            ("Age", _S, "", 0),
            *_WORKLOAD_EXTRA,
        ],
        _daemonset_row,
    ),
    "statefulsets.apps": (
        [("Name", _S, "name", 0), ("Ready", _S, "", 0), ("Age", _S, "", 0), *_WORKLOAD_EXTRA[:2]],
        lambda o, now: [
            _name(o),
            f"{_status(o).get('readyReplicas', 0)}/{_spec(o).get('replicas', 0)}",
            _age(o["metadata"].get("creationTimestamp"), now),
            *_containers(o),
        ],
    ),
    "replicasets.apps": (
        [
            ("Name", _S, "name", 0),
            ("Desired", _I, "", 0),
            ("Current", _I, "", 0),
            ("Ready", _I, "", 0),
            ("Age", _S, "", 0),
            *_WORKLOAD_EXTRA,
        ],
        lambda o, now: [
            _name(o),
            _spec(o).get("replicas", 0),
            _status(o).get("replicas", 0),
            _status(o).get("readyReplicas", 0),
            _age(o["metadata"].get("creationTimestamp"), now),
            *_containers(o),
            _selector_text(_spec(o).get("selector")),
        ],
    ),
    "jobs.batch": (
        [
            ("Name", _S, "name", 0),
            ("Status", _S, "", 0),
            ("Completions", _S, "", 0),
            ("Duration", _S, "", 0),
            ("Age", _S, "", 0),
            *_WORKLOAD_EXTRA,
        ],
        _job_row,
    ),
    "poddisruptionbudgets.policy": (
        [
            ("Name", _S, "name", 0),
            ("Min Available", _S, "", 0),
            ("Max Unavailable", _S, "", 0),
            ("Allowed Disruptions", _I, "", 0),
            ("Age", _S, "", 0),
        ],
        lambda o, now: [
            _name(o),
            str(_spec(o).get("minAvailable", "N/A")),
            str(_spec(o).get("maxUnavailable", "N/A")),
            _status(o).get("disruptionsAllowed", 0),
            _age(o["metadata"].get("creationTimestamp"), now),
        ],
    ),
    **{
        f"{plural}.rbac.authorization.k8s.io": (
            [
                ("Name", _S, "name", 0),
                ("Role", _S, "", 0),
                ("Age", _S, "", 0),
                ("Users", _S, "", 1),
                ("Groups", _S, "", 1),
                ("ServiceAccounts", _S, "", 1),
            ],
            _binding_row,
        )
        for plural in ("rolebindings", "clusterrolebindings")
    },
}
_GENERIC: tuple[Sequence[Column], Callable[[Mapping[str, Any], float], Row]] = (
    [("Name", _S, "name", 0), ("Created At", _D, "", 0)],
    lambda o, now: [_name(o), o["metadata"].get("creationTimestamp", "")],
)


def _row_object(obj: JsonObj, include: str) -> JsonObj | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}


def to_table(
    rt: ResourceType,
    objects: Sequence[JsonObj],
    *,
    now: float,
    include_object: str = "Metadata",
    list_meta: JsonObj | None = None,
    api_version: str = "meta.k8s.io/v1",
) -> JsonObj:
    columns, printer = _PRINTERS.get(rt.store_key, _GENERIC)
    rows = []
    for obj in objects:
        row: JsonObj = {"cells": printer(obj, now)}
        attached = _row_object(obj, include_object)
        if attached is not None:
            row["object"] = attached
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": api_version,
        "metadata": list_meta or {},
        "columnDefinitions": [
            {"name": n, "type": t, "format": f, "description": n, "priority": p} for n, t, f, p in columns
        ],
        "rows": rows,
    }
