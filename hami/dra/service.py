"""The DRA kubelet services: ``NodePrepareResources`` / ``NodeUnprepareResources`` (v1 and
v1beta1) and the plugin-registration ``Registration`` service (k8s-apis.md §2, §3.1).

:class:`ClaimPreparer` does the work, free of protobuf types: read the claim from the API,
plan it (:func:`hami.dra.claims.plan_claim`), create the claim's host directories, write its CDI
spec, checkpoint. Both calls are idempotent; a claim already in the checkpoint is answered from
it (its CDI spec rewritten if the file vanished, e.g. a tmpfs ``/var/run/cdi`` after a reboot).
Failures are per claim: the kubelet gets an ``error`` string for that claim and retries; a
gRPC-level error is never raised for a claim's problem.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpclib
from grpclib.const import Status

from hami._proto import pluginregistration as reg
from hami._proto.k8s.io.kubelet.pkg.apis.dra import v1, v1beta1
from hami.core.hamicore_env import VGPU_LOCK_DIR, HamiCoreOptions, HostFacts
from hami.dra.claims import (
    CONTROL_DEVICES,
    ClaimRef,
    PreparedClaim,
    PrepareError,
    cdi_spec_file_name,
    claim_cache_dir,
    plan_claim,
)
from hami.dra.devices import DraGpu
from hami.dra.state import ClaimCheckpoint
from hami.k8s.client import KubeApi
from hami.k8s.errors import ApiError, ApiNotFound
from hami.k8s.objects import Resource

logger = logging.getLogger(__name__)

RESOURCE_CLAIMS: Final = Resource(
    group="resource.k8s.io", version="v1", plural="resourceclaims", kind="ResourceClaim", namespaced=True
)
DRA_PLUGIN_TYPE: Final = "DRAPlugin"
SUPPORTED_VERSIONS: Final = ("v1.DRAPlugin", "v1beta1.DRAPlugin")


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparerSettings:
    driver: str
    node_name: str
    cdi_dir: Path
    hamicore: HamiCoreOptions = field(default_factory=HamiCoreOptions)
    host_root: Path = Path("/")  # relocates host paths (tests, standalone runs)
    control_devices: tuple[str, ...] = CONTROL_DEVICES


class ClaimPreparer:
    """Prepare/unprepare claims for this node (see the module docstring)."""

    def __init__(
        self,
        api: KubeApi,
        gpus: Sequence[DraGpu],
        checkpoint: ClaimCheckpoint,
        settings: PreparerSettings,
        *,
        on_prepare: Callable[[float], object] | None = None,
    ) -> None:
        self._api = api
        self._on_prepare = on_prepare  # seconds per prepare call (the metrics histogram)
        self._gpus = {g.device_name: g for g in gpus}
        self._checkpoint = checkpoint
        self.settings = settings
        self._lock = asyncio.Lock()  # one claim change at a time: the checkpoint is one file

    def _local(self, path: str) -> Path:
        return self.settings.host_root / path.lstrip("/")

    def _host_facts(self) -> HostFacts:
        vgpu = self.settings.hamicore.vgpu_dir
        return HostFacts(
            versioned_library=self._local(
                str(vgpu / f"libvgpu.so.{self.settings.hamicore.libvgpu_version}")
            ).exists(),
            license=self._local(str(vgpu / "license")).exists(),
        )

    def _spec_path(self, uid: str) -> Path:
        return self.settings.cdi_dir / cdi_spec_file_name(uid)

    def _materialize(self, claim: PreparedClaim) -> None:
        """Host directories (mode 0777, as HAMi creates them) and the CDI spec, atomically."""
        for directory in (self._local(claim.cache_dir), self._local(VGPU_LOCK_DIR)):
            directory.mkdir(parents=True, exist_ok=True)
            os.chmod(directory, 0o777)  # after mkdir: the umask must not narrow it
        cdi_dir = self.settings.cdi_dir
        cdi_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hami-dra-", suffix=".tmp", dir=cdi_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(claim.cdi_spec, f, indent=2, sort_keys=True)
                f.write("\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, self._spec_path(claim.ref.uid))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _remove(self, uid: str) -> None:
        self._spec_path(uid).unlink(missing_ok=True)
        shutil.rmtree(self._local(claim_cache_dir(self.settings.hamicore, uid)), ignore_errors=True)

    async def _prepare_one(self, ref: ClaimRef) -> PreparedClaim:
        known = self._checkpoint.get(ref.uid)
        if known is not None:
            if not self._spec_path(ref.uid).exists() or not self._local(known.cache_dir).exists():
                await asyncio.to_thread(self._materialize, known)
            return known
        try:
            claim = await self._api.get(RESOURCE_CLAIMS, ref.name, namespace=ref.namespace)
        except ApiNotFound:
            raise PrepareError(f"claim {ref.key} not found") from None
        except ApiError as e:
            raise PrepareError(f"reading claim {ref.key}: {e}") from e
        planned = plan_claim(
            claim,
            ref,
            driver=self.settings.driver,
            pool=self.settings.node_name,
            gpus=self._gpus,
            options=self.settings.hamicore,
            host=await asyncio.to_thread(self._host_facts),
            control_devices=self.settings.control_devices,
        )
        await asyncio.to_thread(self._materialize, planned)
        self._checkpoint.put(planned)
        logger.info(
            "prepared claim %s (%s): %s",
            ref.key,
            ref.uid,
            ", ".join(f"{d.device}{'#' + d.share_id if d.share_id else ''}" for d in planned.devices),
        )
        return planned

    async def prepare(self, refs: Sequence[ClaimRef]) -> dict[str, PreparedClaim | str]:
        """Claim UID → prepared claim, or the error message for that claim."""
        started = time.perf_counter()
        out: dict[str, PreparedClaim | str] = {}
        try:
            async with self._lock:
                for ref in refs:
                    try:
                        out[ref.uid] = await self._prepare_one(ref)
                    except PrepareError as e:
                        logger.warning("cannot prepare claim %s: %s", ref.key, e)
                        out[ref.uid] = str(e)
                    except OSError as e:
                        logger.error("cannot prepare claim %s: %s", ref.key, e)
                        out[ref.uid] = f"preparing claim {ref.key} on the host failed: {e}"
            return out
        finally:
            if self._on_prepare is not None:
                self._on_prepare(time.perf_counter() - started)

    async def unprepare(self, refs: Sequence[ClaimRef]) -> dict[str, str]:
        """Claim UID → "" (done, also when it was never prepared) or the error message."""
        out: dict[str, str] = {}
        async with self._lock:
            for ref in refs:
                try:
                    await asyncio.to_thread(self._remove, ref.uid)
                    if self._checkpoint.remove(ref.uid) is not None:
                        logger.info("unprepared claim %s (%s)", ref.key, ref.uid)
                    out[ref.uid] = ""
                except OSError as e:
                    logger.error("cannot unprepare claim %s: %s", ref.key, e)
                    out[ref.uid] = f"unpreparing claim {ref.key} failed: {e}"
        return out


def _refs(claims: Sequence[Any]) -> list[ClaimRef]:
    return [ClaimRef(namespace=c.namespace, name=c.name, uid=c.uid) for c in claims]


class DraServiceV1(v1.DraPluginBase):
    """``k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin`` (kubelet 1.34+; carries ``share_id``)."""

    def __init__(self, preparer: ClaimPreparer) -> None:
        self._preparer = preparer

    async def node_prepare_resources(
        self, message: v1.NodePrepareResourcesRequest
    ) -> v1.NodePrepareResourcesResponse:
        outcomes = await self._preparer.prepare(_refs(message.claims))
        claims: dict[str, v1.NodePrepareResourceResponse] = {}
        for uid, outcome in outcomes.items():
            if isinstance(outcome, str):
                claims[uid] = v1.NodePrepareResourceResponse(error=outcome)
                continue
            claims[uid] = v1.NodePrepareResourceResponse(
                devices=[
                    v1.Device(
                        request_names=list(d.request_names),
                        pool_name=d.pool,
                        device_name=d.device,
                        cdi_device_ids=list(d.cdi_ids),
                        share_id=d.share_id,
                    )
                    for d in outcome.devices
                ]
            )
        return v1.NodePrepareResourcesResponse(claims=claims)

    async def node_unprepare_resources(
        self, message: v1.NodeUnprepareResourcesRequest
    ) -> v1.NodeUnprepareResourcesResponse:
        outcomes = await self._preparer.unprepare(_refs(message.claims))
        return v1.NodeUnprepareResourcesResponse(
            claims={uid: v1.NodeUnprepareResourceResponse(error=err) for uid, err in outcomes.items()}
        )


class DraServiceV1beta1(v1beta1.DraPluginBase):
    """``k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin`` (kubelet 1.32+; no ``share_id``)."""

    def __init__(self, preparer: ClaimPreparer) -> None:
        self._preparer = preparer

    async def node_prepare_resources(
        self, message: v1beta1.NodePrepareResourcesRequest
    ) -> v1beta1.NodePrepareResourcesResponse:
        outcomes = await self._preparer.prepare(_refs(message.claims))
        claims: dict[str, v1beta1.NodePrepareResourceResponse] = {}
        for uid, outcome in outcomes.items():
            if isinstance(outcome, str):
                claims[uid] = v1beta1.NodePrepareResourceResponse(error=outcome)
                continue
            claims[uid] = v1beta1.NodePrepareResourceResponse(
                devices=[
                    v1beta1.Device(
                        request_names=list(d.request_names),
                        pool_name=d.pool,
                        device_name=d.device,
                        cdi_device_ids=list(d.cdi_ids),
                    )
                    for d in outcome.devices
                ]
            )
        return v1beta1.NodePrepareResourcesResponse(claims=claims)

    async def node_unprepare_resources(
        self, message: v1beta1.NodeUnprepareResourcesRequest
    ) -> v1beta1.NodeUnprepareResourcesResponse:
        outcomes = await self._preparer.unprepare(_refs(message.claims))
        return v1beta1.NodeUnprepareResourcesResponse(
            claims={uid: v1beta1.NodeUnprepareResourceResponse(error=err) for uid, err in outcomes.items()}
        )


class RegistrationService(reg.RegistrationBase):
    """``pluginregistration.Registration``: what the kubelet's plugin watcher asks us."""

    def __init__(self, driver: str, endpoint: Path, versions: Sequence[str] = SUPPORTED_VERSIONS) -> None:
        self._info = reg.PluginInfo(
            type=DRA_PLUGIN_TYPE, name=driver, endpoint=str(endpoint), supported_versions=list(versions)
        )
        self.registered = asyncio.Event()
        self.last_error = ""

    async def get_info(self, message: reg.InfoRequest) -> reg.PluginInfo:
        return self._info

    async def notify_registration_status(
        self, message: reg.RegistrationStatus
    ) -> reg.RegistrationStatusResponse:
        if message.plugin_registered:
            self.last_error = ""
            self.registered.set()
            logger.info("registered with the kubelet as %s", self._info.name)
            return reg.RegistrationStatusResponse()
        self.last_error = message.error
        self.registered.clear()
        logger.error("the kubelet refused the registration of %s: %s", self._info.name, message.error)
        # As the reference helper does: a refused registration is an error of this call.
        raise grpclib.GRPCError(Status.INTERNAL, f"plugin registration failed: {message.error}")
