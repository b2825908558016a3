"""Builders shared by the webhook tests (imported by basename)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from hami.core.admission import AdmissionDecision
from hami.core.cluster_capacity import ClusterCapacity, capacity_of
from hami.core.ids import DeviceID
from hami.core.ledger import Ledger
from hami.core.model import NVIDIA, DeviceInfo, MigTemplate
from hami.simulator.patching import json_patch as apply_json_patch


def container(name: str = "c0", *, limits: Mapping[str, Any] | None = None, **extra: Any) -> dict:
    c: dict[str, Any] = {"name": name, "image": "ubuntu"}
    if limits is not None:
        c["resources"] = {"limits": dict(limits)}
    c.update(extra)
    return c


def pod(
    *containers: dict,
    scheduler: str | None = "default-scheduler",
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    **spec: Any,
) -> dict:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gpu-pod", "namespace": "default"},
        "spec": {"containers": list(containers), **spec},
    }
    if scheduler is not None:
        body["spec"]["schedulerName"] = scheduler
    if labels is not None:
        body["metadata"]["labels"] = dict(labels)
    if annotations is not None:
        body["metadata"]["annotations"] = dict(annotations)
    return body


def request(obj: Any, *, uid: str = "7f3c", operation: str = "CREATE", kind: str = "Pod") -> dict:
    return {
        "uid": uid,
        "kind": {"group": "", "version": "v1", "kind": kind},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "default",
        "operation": operation,
        "object": obj,
    }


def applied(original: dict, decision: AdmissionDecision) -> dict:
    """The pod after applying the decision's patch (checks that it applies, as the apiserver does)."""
    result = apply_json_patch(copy.deepcopy(original), [dict(op) for op in decision.patch])
    assert isinstance(result, dict)
    if decision.patch:
        assert result == decision.mutated
    return result


def gpu(
    uuid: str,
    *,
    mem: int = 24576,
    cores: int = 100,
    type: str = "NVIDIA-A10",
    mode: str = "hami-core",
    mig: tuple[tuple[MigTemplate, ...], ...] = (),
    vendor: str = NVIDIA,
) -> DeviceInfo:
    return DeviceInfo(
        id=DeviceID(uuid),
        count=10,
        devmem=mem,
        devcore=cores,
        type=type,
        mode=mode,
        health=True,
        devicevendor=vendor,
        migtemplate=mig,
    )


def capacity(nodes: Mapping[str, Iterable[DeviceInfo]]) -> ClusterCapacity:
    ledger = Ledger()
    for name, devices in nodes.items():
        ledger.set_node_devices(name, list(devices))
    return capacity_of(ledger.snapshot())
