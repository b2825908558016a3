"""What the chart end-to-end tests need beyond chartkit: kubectl against the embedded cluster, and
a tiny "kubelet" that mounts a rendered pod template's volumes under a temp dir (ConfigMaps and
Secrets read back from the API server, hostPaths under a per-node host root) and rewrites the
container's arguments that name in-pod paths to those local copies."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hami.simulator.resources import REGISTRY, ResourceType
from hami.simulator.restclient import RestClient

JsonObj = dict[str, Any]

# kubectl's message for an object whose kind the server's discovery does not list.
NO_MATCH = re.compile(
    r'^resource mapping not found for name: "(?P<name>[^"]*)" namespace: "(?P<namespace>[^"]*)" '
    r'from "[^"]*": no matches for kind "(?P<kind>[^"]+)" in version "(?P<version>[^"]+)"$'
)
NO_MATCH_HINT = "ensure CRDs are installed first"


def served_type(obj: Mapping[str, Any]) -> ResourceType | None:
    """The simulator's resource type for a rendered object, None when it does not serve that kind."""
    group, _, version = str(obj["apiVersion"]).rpartition("/")
    for rt in REGISTRY:
        if (rt.group, rt.version, rt.kind) == (group, version, obj["kind"]):
            return rt
    return None


def kubectl_ref(rt: ResourceType, name: str) -> str:
    """How ``kubectl apply`` names an object in its output: ``configmap/x``,
    ``deviceclass.resource.k8s.io/x``."""
    return f"{rt.singular}{'.' + rt.group if rt.group else ''}/{name}"


def object_path(rt: ResourceType, obj: Mapping[str, Any], namespace: str) -> str:
    prefix = f"/apis/{rt.group}/{rt.version}" if rt.group else f"/api/{rt.version}"
    ns = f"/namespaces/{obj['metadata'].get('namespace') or namespace}" if rt.namespaced else ""
    return f"{prefix}{ns}/{rt.plural}/{obj['metadata']['name']}"


@dataclass(frozen=True, slots=True, kw_only=True)
class KubectlResult:
    rc: int
    out: str
    err: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Kubectl:
    """Runs kubectl without blocking the event loop the embedded cluster serves on."""

    binary: Path
    kubeconfig: Path
    home: Path

    async def __call__(self, *args: str, within_s: float = 30.0) -> KubectlResult:
        env = {
            "PATH": "/usr/bin:/bin",
            "KUBECONFIG": str(self.kubeconfig),
            "HOME": str(self.home),
            "KUBECACHEDIR": str(self.home / "cache"),
        }
        proc = await asyncio.create_subprocess_exec(
            str(self.binary),
            *args,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), within_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        return KubectlResult(rc=proc.returncode or 0, out=out.decode(), err=err.decode())

    async def ok(self, *args: str) -> str:
        result = await self(*args)
        assert result.rc == 0, f"kubectl {' '.join(args)} exited {result.rc}: {result.err}"
        return result.out


# ---- volumes and arguments ------------------------------------------------------------------


async def mount_volumes(
    client: RestClient,
    owner: Mapping[str, Any],
    container: Mapping[str, Any],
    root: Path,
    *,
    host_root: Path,
    host_paths: Mapping[str, Path] | None = None,
) -> dict[str, Path]:
    """Lay out ``container``'s volumeMounts under ``root`` as kubelet would: ConfigMap and Secret
    contents are read from the API server (so what is mounted is what was installed), hostPaths
    live under ``host_root`` unless ``host_paths`` maps them elsewhere. Returns mountPath → local
    path; a volume kind this helper does not know fails the test rather than being skipped."""
    namespace = owner["metadata"]["namespace"]
    volumes = {v["name"]: v for v in owner["spec"]["template"]["spec"].get("volumes", [])}
    mapping: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        mount_path = str(mount["mountPath"])
        local = root / mount_path.lstrip("/")
        files: dict[str, bytes] | None = None
        if "configMap" in volume:
            cm = await client.get(f"/api/v1/namespaces/{namespace}/configmaps/{volume['configMap']['name']}")
            files = {k: v.encode() for k, v in cm.get("data", {}).items()}
        elif "secret" in volume:
            name = volume["secret"]["secretName"]
            secret = await client.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
            files = {k: base64.b64decode(v) for k, v in secret.get("data", {}).items()}
        elif "emptyDir" in volume:
            local.mkdir(parents=True, exist_ok=True)
        elif "hostPath" in volume:
            host = volume["hostPath"]["path"]
            local = (host_paths or {}).get(host) or host_root / host.lstrip("/")
            local.mkdir(parents=True, exist_ok=True)
        else:
            raise AssertionError(f"volume {volume} of {owner['metadata']['name']}: unknown kind")
        if files is not None:
            if "subPath" in mount:
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes(files[mount["subPath"]])
            else:
                local.mkdir(parents=True, exist_ok=True)
                for key, content in files.items():
                    (local / key).write_bytes(content)
        mapping[mount_path] = local
    return mapping


def localize_args(args: Sequence[str], mounts: Mapping[str, Path]) -> list[str]:
    """``--flag=/in/pod/path`` → ``--flag=<local copy>`` for every value at or under a mount path
    (the deepest mount wins, as in a container)."""
    by_depth = sorted(mounts.items(), key=lambda item: len(item[0]), reverse=True)
    out: list[str] = []
    for arg in args:
        flag, sep, value = arg.partition("=")
        if sep:
            for mount_path, local in by_depth:
                if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                    arg = f"{flag}={local}{value[len(mount_path) :]}"
                    break
        out.append(arg)
    return out


def flag_value(args: Sequence[str], flag: str) -> str:
    values = [a.partition("=")[2] for a in args if a.partition("=")[0] == flag]
    assert len(values) == 1, f"{flag} given {len(values)} times in {list(args)}"
    return values[0]


def replace_flag(args: Sequence[str], flag: str, value: str) -> list[str]:
    flag_value(args, flag)  # exactly once
    return [f"{flag}={value}" if a.partition("=")[0] == flag else a for a in args]


def container_env(container: Mapping[str, Any], field_refs: Mapping[str, str]) -> dict[str, str]:
    """The container's env as kubelet resolves it; ``field_refs`` gives the downward-API values."""
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        else:
            path = entry["valueFrom"]["fieldRef"]["fieldPath"]
            assert path in field_refs, f"env {entry['name']}: no value for fieldRef {path}"
            env[entry["name"]] = field_refs[path]
    return env


# ---- role processes ----------------------------------------------------------------------------


class Role:
    """``python -m hami ARGS`` as a subprocess with its output in a log file; :meth:`stop` is
    idempotent and never leaves the process behind."""

    def __init__(self, title: str, args: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        self.title = title
        self.args = list(args)
        self.env = dict(env)
        self.log = log
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "hami",
                *self.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
            )

    def check_alive(self) -> None:
        if self._proc is not None and self._proc.returncode is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"{self.title} exited {self._proc.returncode}; log:\n{tail}")

    async def stop(self, grace_s: float = 10.0) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
