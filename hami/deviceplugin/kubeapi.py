"""The device plugin's API ports over :class:`hami.k8s.client.KubeApi` (merge patches)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hami.k8s.client import KubeApi
from hami.k8s.objects import NODES, PODS
from hami.k8s.patches import merge_patch


class KubePodNodeApi:
    """:class:`~hami.deviceplugin.podlookup.PodApi` and ``NodeApi`` backed by the apiserver."""

    def __init__(self, api: KubeApi) -> None:
        self._api = api

    async def get_pod(self, namespace: str, name: str) -> Mapping[str, Any]:
        return await self._api.get(PODS, name, namespace=namespace)

    async def list_pods_on_node(self, node: str) -> Sequence[Mapping[str, Any]]:
        listed = await self._api.list_all(PODS, field_selector=f"spec.nodeName={node}")
        return list(listed.get("items", []))

    async def patch_pod(self, namespace: str, name: str, patch: Mapping[str, Any]) -> Mapping[str, Any]:
        return await self._api.patch(PODS, name, merge_patch(patch), namespace=namespace)

    async def get_node(self, name: str) -> Mapping[str, Any]:
        return await self._api.get(NODES, name)

    async def patch_node(self, name: str, patch: Mapping[str, Any]) -> Mapping[str, Any]:
        return await self._api.patch(NODES, name, merge_patch(patch))

    async def patch_node_status(self, name: str, patch: Mapping[str, Any]) -> Mapping[str, Any]:
        return await self._api.patch(NODES, name, merge_patch(patch), subresource="status")
