"""The dynamic-resources side of one fake kubelet (its DRA manager, as far as pods are concerned).

:class:`KubeletClaims` owns the plugin watcher (:class:`~hami.simulator.dra_controller.KubeletDra`
on ``<node>/plugins_registry``) and what the kubelet must remember about pods' claims:

* :meth:`KubeletClaims.prepare` prepares a pod's claims and resolves each container's CDI devices
  from ``<node>/cdi`` as a CDI-enabled runtime would (:class:`DraContainerDevices`);
* a pod whose prepare failed is retried after :meth:`KubeletClaims.retry_delay` (doubling, as
  kubelet's pod-sync backoff);
* :meth:`KubeletClaims.unprepare` runs once a pod is finished or gone; a pod that vanished
  (:meth:`KubeletClaims.forget`) or whose unprepare failed stays *due* until
  :meth:`KubeletClaims.unprepare_due` succeeds for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from hami.simulator.dra_controller import CdiEdits, DraPrepareError, KubeletDra, PodDevices, resolve_cdi
from hami.simulator.restclient import RestClient

PLUGINS_REGISTRY_DIR: Final = "plugins_registry"
CDI_DIR: Final = "cdi"


class CdiResolveError(DraPrepareError):
    """A prepared CDI device that no spec defines: the runtime cannot create the container."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DraContainerDevices:
    """What DRA gave one container: CDI device IDs per claim and their resolved edits."""

    container: str
    claims: Mapping[str, tuple[str, ...]]
    """ResourceClaim name → the CDI device IDs of that claim injected into this container."""
    edits: CdiEdits

    @property
    def cdi_devices(self) -> tuple[str, ...]:
        return tuple(i for ids in self.claims.values() for i in ids)

    def to_json(self) -> dict[str, Any]:
        return {
            "container": self.container,
            "claims": {name: list(ids) for name, ids in self.claims.items()},
            "envs": dict(self.edits.env),
            "deviceNodes": list(self.edits.device_nodes),
            "mounts": [
                {"hostPath": h, "containerPath": c, "options": list(o)} for h, c, o in self.edits.mounts
            ],
        }

    def pod_resources(self, namespace: str) -> list[dict[str, Any]]:
        """PodResources ``List``'s ``dynamicResources`` of this container."""
        return [
            {
                "claimName": claim,
                "claimNamespace": namespace,
                "claimResources": [{"cdiDevices": [{"name": i} for i in ids]}],
            }
            for claim, ids in self.claims.items()
        ]


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedPod:
    containers: tuple[DraContainerDevices, ...]
    claims: tuple[str, ...]
    """The ResourceClaims prepared for the pod."""


def uses_claims(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("spec") or {}).get("resourceClaims"))


class KubeletClaims:
    """See the module docstring."""

    def __init__(
        self,
        client: RestClient,
        node_dir: Path,
        *,
        registry_poll_s: float,
        retry_initial_s: float,
        retry_max_s: float,
    ) -> None:
        self.cdi_dir = node_dir / CDI_DIR
        self.plugins = KubeletDra(client, node_dir / PLUGINS_REGISTRY_DIR, poll_s=registry_poll_s)
        self.retry_max_s = retry_max_s
        self._retry_initial_s = retry_initial_s
        self._pods: set[str] = set()  # pod UIDs whose claims may be prepared on this node
        self._due: set[str] = set()  # pod UIDs gone or finished whose claims are still prepared
        self._attempts: dict[str, int] = {}

    async def run(self) -> None:
        """The plugin watcher, until cancelled."""
        await self.plugins.run()

    @property
    def has_due(self) -> bool:
        return bool(self._due)

    async def prepare(self, pod: Mapping[str, Any]) -> PreparedPod:
        """Prepare the pod's claims and resolve its containers' CDI devices.

        Raises :class:`DraPrepareError` (:class:`CdiResolveError` for an unresolvable device).
        """
        uid = str((pod.get("metadata") or {}).get("uid", ""))
        self._pods.add(uid)  # before the call: a failure half-way may leave some claims prepared
        prepared = await self.plugins.prepare_pod(pod)
        try:
            containers = self._container_devices(pod, prepared)
        except KeyError as exc:
            raise CdiResolveError(str(exc.args[0])) from None
        self._attempts.pop(uid, None)
        return PreparedPod(containers=containers, claims=tuple(c.name for c in prepared.claims))

    def retry_delay(self, uid: str) -> float:
        """Delay before the next prepare of a pod whose prepare just failed (doubling per failure)."""
        attempts = self._attempts.get(uid, 0) + 1
        self._attempts[uid] = attempts
        return float(min(self._retry_initial_s * 2 ** (attempts - 1), self.retry_max_s))

    def forget(self, uid: str) -> None:
        """The pod is gone: its claims are unprepared by the next :meth:`unprepare_due`."""
        if uid in self._pods:
            self._due.add(uid)
        self._attempts.pop(uid, None)

    async def unprepare(self, uid: str) -> None:
        """Unprepare a finished or deleted pod's claims; a failure leaves the pod due."""
        self._due.discard(uid)
        if uid not in self._pods:
            return
        if await self.plugins.unprepare_pod(uid):
            self._due.add(uid)
            return
        self._pods.discard(uid)

    async def unprepare_due(self) -> None:
        for uid in sorted(self._due):
            await self.unprepare(uid)

    def _container_devices(
        self, pod: Mapping[str, Any], prepared: PodDevices
    ) -> tuple[DraContainerDevices, ...]:
        out: list[DraContainerDevices] = []
        spec = pod.get("spec") or {}
        for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
            name = str(container.get("name"))
            ids = prepared.containers.get(name)
            if not ids:
                continue
            claims = {c.name: tuple(i for i in c.cdi_ids if i in ids) for c in prepared.claims}
            out.append(
                DraContainerDevices(
                    container=name,
                    claims={claim: used for claim, used in claims.items() if used},
                    edits=resolve_cdi([self.cdi_dir], ids),
                )
            )
        return tuple(out)
