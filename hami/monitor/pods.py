"""Where the monitor learns which pods live on its node: the ``PodSource`` port and two adapters.

The monitor needs uid → pod for the pods bound to its node (HAMi 2.8 uses a pod informer filtered
by ``spec.nodeName``): :class:`InformerPodSource` reads a ``hami.cache`` informer;
:class:`InMemoryPodSource` serves tests and demos.

Until a source has synced, ``pods()`` is not trusted for deletions: the monitor never removes a
container directory on the word of an unsynced source.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Protocol, cast

from hami.cache.informer import Informer
from hami.config.settings import WatchingSettings
from hami.k8s.client import KubeApi
from hami.k8s.objects import PODS, RawPod


class PodSource(Protocol):
    def synced(self) -> bool:
        """True once ``pods()`` reflects the apiserver (a full list has been seen)."""
        ...

    def pods(self) -> Mapping[str, RawPod]:
        """Pods bound to this node by UID; an immutable view the caller may keep."""
        ...


def _index(pods: Iterable[RawPod]) -> Mapping[str, RawPod]:
    out: dict[str, RawPod] = {}
    for pod in pods:
        uid = pod.get("metadata", {}).get("uid")
        if uid:
            out[uid] = pod
    return MappingProxyType(out)


class InMemoryPodSource:
    """A PodSource fed by hand (tests, demos)."""

    def __init__(self, pods: Iterable[RawPod] = (), *, synced: bool = True) -> None:
        self._pods = _index(pods)
        self._synced = synced

    def synced(self) -> bool:
        return self._synced

    def pods(self) -> Mapping[str, RawPod]:
        return self._pods

    def set_pods(self, pods: Iterable[RawPod]) -> None:
        self._pods = _index(pods)
        self._synced = True

    def add(self, pod: RawPod) -> None:
        self.set_pods([*self._pods.values(), pod])

    def remove(self, uid: str) -> None:
        self.set_pods([p for u, p in self._pods.items() if u != uid])


class InformerPodSource:
    """Pods of this node from a ``hami.cache`` pod informer (HAMi: ``spec.nodeName=<node>``)."""

    def __init__(self, informer: Informer[Any]) -> None:
        self._informer = informer

    def synced(self) -> bool:
        return self._informer.has_synced.is_set()

    def pods(self) -> Mapping[str, RawPod]:
        # The store holds frozen raw objects; only the uid index is rebuilt per call (once a scan).
        return _index(cast(RawPod, obj) for obj in self._informer.store.objects())


def node_pod_informer(
    api: KubeApi, node_name: str, *, settings: WatchingSettings | None = None
) -> Informer[Any]:
    """A pod informer restricted to ``node_name``, as HAMi 2.8's monitor uses."""
    return Informer(
        api,
        PODS,
        settings=settings,
        field_selector=f"spec.nodeName={node_name}",
        name=f"pods on {node_name}",
    )
