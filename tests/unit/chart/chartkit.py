"""Chart test kit: render the Helm chart with the real helm v4 binary (offline), look objects up."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "helm" / "hami"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
RELEASE = "hami"
NAMESPACE = "hami-system"
KUBE_VERSION = "1.33.0"


class HelmFailed(AssertionError):
    def __init__(self, args: Sequence[str], proc: subprocess.CompletedProcess[str]) -> None:
        super().__init__(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        self.output = proc.stdout + proc.stderr


@dataclass(frozen=True, slots=True, kw_only=True)
class Rendered:
    """The objects of one ``helm template`` run."""

    objects: tuple[dict[str, Any], ...]
    text: str = field(repr=False)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        for obj in self.objects:
            if obj["kind"] == kind and obj["metadata"]["name"] == name:
                return obj
        return None

    def get(self, kind: str, name: str) -> dict[str, Any]:
        obj = self.find(kind, name)
        if obj is None:
            have = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in self.objects)
            raise AssertionError(f"{kind}/{name} not rendered; have {have}")
        return obj


def container(pod_owner: dict[str, Any], name: str, *, init: bool = False) -> dict[str, Any]:
    spec = pod_owner["spec"]["template"]["spec"]
    for c in spec.get("initContainers" if init else "containers", []):
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no container {name} in {pod_owner['kind']}/{pod_owner['metadata']['name']}")


def volumes(pod_owner: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod_owner["spec"]["template"]["spec"].get("volumes", [])}


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


@dataclass(slots=True)
class Chart:
    helm: Path
    home: Path
    _cache: dict[tuple[tuple[str, ...], tuple[str, ...]], Rendered] = field(default_factory=dict)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.helm), *args],
            capture_output=True,
            text=True,
            env={"HOME": str(self.home), "PATH": "/usr/bin:/bin"},
            timeout=120,
            check=False,
        )
        if check and proc.returncode != 0:
            raise HelmFailed(args, proc)
        return proc

    def template_args(self, values: Sequence[Path | str] = (), sets: Sequence[str] = ()) -> list[str]:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
        for v in values:
            args += ["-f", str(v)]
        for s in sets:
            args += ["--set", s]
        return args

    def template(self, values: Sequence[Path | str] = (), sets: Sequence[str] = ()) -> Rendered:
        key = (tuple(str(v) for v in values), tuple(sets))
        if key not in self._cache:
            text = self.run(*self.template_args(values, sets)).stdout
            objects = tuple(d for d in yaml.safe_load_all(text) if d)
            self._cache[key] = Rendered(objects=objects, text=text)
        return self._cache[key]

    def template_error(self, sets: Sequence[str]) -> str:
        """Render with bad values; return helm's error text (the render must fail)."""
        proc = self.run(*self.template_args((), sets), check=False)
        assert proc.returncode != 0, f"helm template accepted {sets}"
        return proc.stderr + proc.stdout


def values_file(name: str) -> Path:
    path = CHART / "ci" / f"{name}-values.yaml"
    assert path.is_file(), path
    return path


def localize_mounts(rendered: Rendered, c: dict[str, Any], owner: dict[str, Any], root: Path) -> list[str]:
    """Write the ConfigMaps ``c`` mounts under ``root`` and return its args with every mounted
    path rewritten to the local copy, so a role's own argument parser can load them."""
    vols = volumes(owner)
    mapping: list[tuple[str, Path]] = []
    for mount in c.get("volumeMounts", []):
        source = vols[mount["name"]].get("configMap")
        if source is None:
            continue
        data = rendered.get("ConfigMap", source["name"]).get("data", {})
        local = root / mount["mountPath"].lstrip("/")
        if "subPath" in mount:
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(data[mount["subPath"]], encoding="utf-8")
        else:
            local.mkdir(parents=True, exist_ok=True)
            for key, text in data.items():
                (local / key).write_text(text, encoding="utf-8")
        mapping.append((mount["mountPath"], local))
    out = []
    for arg in c.get("args", []):
        flag, sep, value = arg.partition("=")
        for mount_path, local in mapping:
            if sep and (value == mount_path or value.startswith(mount_path.rstrip("/") + "/")):
                arg = f"{flag}={local}{value[len(mount_path) :]}"
        out.append(arg)
    return out
