"""The status bodies the fake kubelet writes: its Node's conditions and ``nodeInfo``, and each pod's
``Pending`` (waiting), ``Running`` and terminated status.

Pure builders: the kubelet passes in the time as it reads its own clock (fault injection may skew
it) and the addresses it hands out, so what a status says stays decided in one place, by the
kubelet. Container and image IDs are derived from the pod UID, container name and image, so a
re-sent status names the same containers, as a real runtime's would.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any, Final

JsonObj = dict[str, Any]
KUBELET_VERSION: Final = "v1.35.0-hami-sim"


def container_id(uid: str, name: str) -> str:
    return "containerd://" + hashlib.sha256(f"{uid}/{name}".encode()).hexdigest()


def image_id(image: str) -> str:
    return f"{image.split(':')[0]}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


# ---- node ---------------------------------------------------------------------------------------


def node_conditions(*, now: str, ready_since: str) -> list[JsonObj]:
    """A healthy node's conditions, as kubelet posts them with every heartbeat."""
    rows = [
        (
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
    ]
    return [
        {
            "type": t,
            "status": s,
            "reason": r,
            "message": m,
            "lastHeartbeatTime": now,
            "lastTransitionTime": ready_since,
        }
        for t, s, r, m in rows
    ]


def node_info(node: str) -> JsonObj:
    """``status.nodeInfo``; the boot ID changes with the process, as a real node's does on reboot."""
    return {
        "machineID": hashlib.md5(node.encode(), usedforsecurity=False).hexdigest(),
        "systemUUID": hashlib.md5(f"uuid/{node}".encode(), usedforsecurity=False).hexdigest(),
        "bootID": hashlib.md5(f"boot/{node}/{os.getpid()}".encode(), usedforsecurity=False).hexdigest(),
        "kernelVersion": "6.1.0-hami-sim",
        "osImage": "HAMi simulated node",
        "containerRuntimeVersion": "containerd://2.0.0-hami-sim",
        "kubeletVersion": KUBELET_VERSION,
        "kubeProxyVersion": "",
        "operatingSystem": "linux",
        "architecture": "amd64",
    }


# ---- pods ---------------------------------------------------------------------------------------


def _uid(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("uid", ""))


def _containers(pod: Mapping[str, Any], field: str) -> list[Mapping[str, Any]]:
    return list((pod.get("spec") or {}).get(field) or [])


def _started_container(
    uid: str, container: Mapping[str, Any], *, ready: bool, started: bool, state: JsonObj
) -> JsonObj:
    """One container's status once the runtime has created it (it has a container ID)."""
    name, image = str(container.get("name")), str(container.get("image", ""))
    return {
        "name": name,
        "image": image,
        "imageID": image_id(image),
        "containerID": container_id(uid, name),
        "ready": ready,
        "started": started,
        "restartCount": 0,
        "state": state,
    }


def waiting_status(pod: Mapping[str, Any], reason: str, message: str) -> JsonObj:
    """``Pending`` with every container waiting for ``reason`` (the pod is retried later)."""
    statuses = [
        {
            "name": c.get("name"),
            "image": c.get("image", ""),
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}},
        }
        for c in _containers(pod, "containers")
    ]
    return {"phase": "Pending", "containerStatuses": statuses}


def running_status(pod: Mapping[str, Any], *, now: str, host_ip: str, pod_ip: str) -> JsonObj:
    """``Running``: init containers completed, every container started and ready since ``now``."""
    uid = _uid(pod)
    conditions = [
        {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": now}
        for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady")
    ]
    init_statuses = [
        _started_container(
            uid,
            c,
            ready=True,
            started=False,
            state={"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}},
        )
        for c in _containers(pod, "initContainers")
    ]
    statuses = [
        {
            **_started_container(uid, c, ready=True, started=True, state={"running": {"startedAt": now}}),
            "lastState": {},
        }
        for c in _containers(pod, "containers")
    ]
    status: JsonObj = {
        "phase": "Running",
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": now,
        "containerStatuses": statuses,
    }
    if init_statuses:
        status["initContainerStatuses"] = init_statuses
    return status


def terminated_status(pod: Mapping[str, Any], *, now: str, exit_code: int) -> JsonObj:
    """``Succeeded`` (exit code 0) or ``Failed``: every container stopped at ``now``."""
    uid = _uid(pod)
    started = (pod.get("status") or {}).get("startTime") or now
    statuses = [
        _started_container(
            uid,
            c,
            ready=False,
            started=False,
            state={
                "terminated": {
                    "exitCode": exit_code,
                    "reason": "Completed" if exit_code == 0 else "Error",
                    "startedAt": started,
                    "finishedAt": now,
                    "containerID": container_id(uid, str(c.get("name"))),
                }
            },
        )
        for c in _containers(pod, "containers")
    ]
    conditions = [
        {
            "type": t,
            "status": "False",
            "reason": "PodCompleted",
            "lastProbeTime": None,
            "lastTransitionTime": now,
        }
        for t in ("Ready", "ContainersReady")
    ]
    return {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "conditions": conditions,
        "containerStatuses": statuses,
    }
