"""Legacy discovery, ``/version`` and a minimal ``/openapi/v3`` (k8s-apis.md §6.12).

kubectl 1.35 asks ``/api`` and ``/apis`` for aggregated discovery and falls back to the legacy
documents when the reply is plain ``application/json``. ``/openapi/v3`` lists one PATCH operation per
kind that declares the ``fieldValidation`` parameter, which is all ``kubectl apply``/``create`` need to
validate server-side (no ``--validate=false``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from hami.simulator.resources import ALL_VERBS, ResourceRegistry, ResourceType

JsonObj = dict[str, Any]

VERSION_INFO: Mapping[str, str] = {
    "major": "1",
    "minor": "35",
    "emulationMajor": "1",
    "emulationMinor": "35",
    "minCompatibilityMajor": "1",
    "minCompatibilityMinor": "34",
    "gitVersion": "v1.35.0-hami-sim",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.25.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def api_versions(server_address: str) -> JsonObj:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _group_version(group: str, version: str) -> JsonObj:
    return {"groupVersion": f"{group}/{version}", "version": version}


def api_group(registry: ResourceRegistry, group: str) -> JsonObj | None:
    versions = registry.group_versions().get(group)
    if not group or not versions:
        return None
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": [_group_version(group, v) for v in versions],
        "preferredVersion": _group_version(group, versions[0]),
    }


def api_group_list(registry: ResourceRegistry) -> JsonObj:
    groups = []
    for group in registry.group_versions():
        doc = api_group(registry, group)
        if doc is not None:
            doc.pop("kind")
            doc.pop("apiVersion")
            groups.append(doc)
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def _resource_entry(rt: ResourceType) -> JsonObj:
    entry: JsonObj = {
        "name": rt.plural,
        "singularName": rt.singular,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": list(ALL_VERBS),
        "storageVersionHash": hashlib.sha256(rt.qualified.encode()).hexdigest()[:11],
    }
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    if rt.categories:
        entry["categories"] = list(rt.categories)
    return entry


def api_resource_list(registry: ResourceRegistry, group: str, version: str) -> JsonObj | None:
    types = registry.in_group_version(group, version)
    if not types:
        return None
    resources: list[JsonObj] = []
    for rt in types:
        resources.append(_resource_entry(rt))
        for sub in rt.subresources:
            if sub == "binding":
                resources.append(
                    {
                        "name": f"{rt.plural}/binding",
                        "singularName": "",
                        "namespaced": True,
                        "kind": "Binding",
                        "verbs": ["create"],
                    }
                )
            else:
                resources.append(
                    {
                        "name": f"{rt.plural}/{sub}",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "kind": rt.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
    if not group:
        resources.append(
            {
                "name": "bindings",
                "singularName": "binding",
                "namespaced": True,
                "kind": "Binding",
                "verbs": ["create"],
            }
        )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


def _openapi_path(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def openapi_index(registry: ResourceRegistry) -> JsonObj:
    paths: JsonObj = {}
    for group, versions in registry.group_versions().items():
        for version in versions:
            path = _openapi_path(group, version)
            digest = hashlib.sha256(path.encode()).hexdigest()[:16].upper()
            paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest}"}
    return {"paths": paths}


_PATCH_PARAMS = [
    {"name": name, "in": "query", "schema": {"type": "string"}, "uniqueItems": True}
    for name in ("dryRun", "fieldManager", "fieldValidation", "force")
]


def openapi_document(registry: ResourceRegistry, path: str) -> JsonObj | None:
    """The OpenAPI v3 document of one group-version (``api/v1`` or ``apis/<g>/<v>``)."""
    parts = path.strip("/").split("/")
    if parts[:1] == ["api"] and len(parts) == 2:
        group, version = "", parts[1]
    elif parts[:1] == ["apis"] and len(parts) == 3:
        group, version = parts[1], parts[2]
    else:
        return None
    types = registry.in_group_version(group, version)
    if not types:
        return None
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    paths: JsonObj = {}
    for rt in types:
        item = (
            f"{base}/namespaces/{{namespace}}/{rt.plural}/{{name}}"
            if rt.namespaced
            else f"{base}/{rt.plural}/{{name}}"
        )
        gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
        paths[item] = {
            "patch": {
                "operationId": f"patch{rt.kind}",
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": gvk,
                "parameters": _PATCH_PARAMS,
                "responses": {"200": {"description": "OK"}},
            },
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": VERSION_INFO["gitVersion"]},
        "paths": paths,
        "components": {"schemas": {}},
    }
