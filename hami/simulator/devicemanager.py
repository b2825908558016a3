"""The kubelet's device manager: the kubelet side of the device-plugin API over real Unix sockets.

Follows k8s-apis.md §1.4. ``start`` removes stale sockets from the plugin directory and serves
``v1beta1.Registration`` on ``<dir>/kubelet.sock``. ``Register`` validates the version and the
extended resource name, dials ``<dir>/<endpoint>``, calls ``GetDevicePluginOptions`` (a failure
fails the registration, as in kubelet), replaces any earlier endpoint of that resource and opens
``ListAndWatch``: each message is the complete device list. A broken stream marks the resource's
devices unhealthy; after ``endpoint_grace_period`` the resource is dropped. Allocation picks the
device IDs for one container (``GetPreferredAllocation`` when the plugin offers it, else the
first free healthy IDs in the plugin's order), calls ``Allocate`` with one container request,
and ``PreStartContainer`` when the plugin requires it. ``restart`` behaves like a kubelet restart:
endpoints are dropped, stale sockets removed and ``kubelet.sock`` re-created, while the
allocations (kubelet's checkpoint) survive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpclib
import grpclib.client
import grpclib.exceptions
import grpclib.server
from grpclib.const import Status

from hami._proto import v1beta1 as dp

logger = logging.getLogger(__name__)

KUBELET_SOCKET: Final = "kubelet.sock"
CHECKPOINT_FILE: Final = "kubelet_internal_checkpoint"
SUPPORTED_VERSIONS: Final = ("v1beta1",)
HEALTHY: Final = "Healthy"
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def is_extended_resource_name(name: str) -> bool:
    """Kubernetes ``IsExtendedResourceName``: has a domain outside ``kubernetes.io`` and
    ``requests.<name>`` is a valid qualified name."""
    if "/" not in name or name.startswith("requests."):
        return False
    prefix, _, short = name.partition("/")
    if prefix == "kubernetes.io" or prefix.endswith(".kubernetes.io"):
        return False
    if not _DNS_SUBDOMAIN.match(prefix) or len(prefix) > 253:
        return False
    return bool(short) and len(short) <= 63 and bool(_QUALIFIED_NAME.match(short))


def go_rpc_error(exc: grpclib.GRPCError) -> str:
    """The text Go's gRPC client prints for a status: ``rpc error: code = Unknown desc = …``."""
    code = "".join(part.capitalize() for part in exc.status.name.split("_"))
    return f"rpc error: code = {code} desc = {exc.message or ''}"


class AdmissionError(Exception):
    """Device allocation for a container failed; the pod is rejected (``UnexpectedAdmissionError``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceManagerSettings:
    dial_timeout: float = 5.0
    """Seconds for dialling a plugin and its ``GetDevicePluginOptions``."""
    rpc_timeout: float = 30.0
    """Seconds for ``Allocate``/``GetPreferredAllocation``."""
    prestart_timeout: float = 30.0
    """``KubeletPreStartContainerRPCTimeoutInSecs``."""
    endpoint_grace_period: float = 300.0
    """Seconds a disconnected resource stays on the node (``endpointStopGracePeriod``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Registration:
    """One accepted ``Register`` call, kept for tests and ``hami cluster`` status output."""

    resource_name: str
    endpoint: str
    version: str
    pre_start_required: bool
    get_preferred_allocation_available: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerAllocation:
    """What ``Allocate`` answered for one container and resource."""

    container: str
    resource: str
    device_ids: tuple[str, ...]
    envs: Mapping[str, str]
    mounts: tuple[Mapping[str, Any], ...]
    devices: tuple[Mapping[str, Any], ...]
    annotations: Mapping[str, str]
    cdi_devices: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "container": self.container,
            "resource": self.resource,
            "deviceIDs": list(self.device_ids),
            "envs": dict(self.envs),
            "mounts": [dict(m) for m in self.mounts],
            "devices": [dict(d) for d in self.devices],
            "annotations": dict(self.annotations),
            "cdiDevices": list(self.cdi_devices),
        }


@dataclass(slots=True, kw_only=True)
class _Endpoint:
    registration: Registration
    channel: grpclib.client.Channel
    stub: dp.DevicePluginStub
    task: asyncio.Task[None] | None = None


@dataclass(slots=True, kw_only=True)
class _Resource:
    devices: dict[str, str] = field(default_factory=dict)  # ID → health, in the plugin's order
    endpoint: _Endpoint | None = None
    stopped_at: float | None = None


class _RegistrationService(dp.RegistrationBase):
    def __init__(self, manager: DeviceManager) -> None:
        self._manager = manager

    async def register(self, message: dp.RegisterRequest) -> dp.Empty:
        await self._manager.register(message)
        return dp.Empty()


class DeviceManager:
    """Registration server, plugin endpoints, device health and per-container assignments."""

    def __init__(
        self,
        plugin_dir: Path,
        *,
        on_change: Callable[[], None],
        settings: DeviceManagerSettings | None = None,
    ) -> None:
        self.plugin_dir = plugin_dir
        self.settings = settings or DeviceManagerSettings()
        self._on_change = on_change
        self._server: grpclib.server.Server | None = None
        self._resources: dict[str, _Resource] = {}
        # kubelet's podDevices checkpoint: pod UID → container → resource → device IDs
        self._assigned: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {}
        self.registrations: list[Registration] = []
        self.registered = asyncio.Condition()

    @property
    def socket_path(self) -> Path:
        return self.plugin_dir / KUBELET_SOCKET

    # ---- serving ------------------------------------------------------------------------------

    def _remove_stale_sockets(self) -> None:
        for entry in self.plugin_dir.iterdir():
            if entry.name == CHECKPOINT_FILE:
                continue
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(entry.lstat().st_mode):
                    entry.unlink()

    async def start(self) -> None:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_sockets()
        server = grpclib.server.Server([_RegistrationService(self)])
        await server.start(path=str(self.socket_path))
        self._server = server
        logger.info("kubelet device manager serving %s", self.socket_path)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for resource in self._resources.values():
            await self._drop_endpoint(resource)
        with contextlib.suppress(OSError):
            self.socket_path.unlink()

    async def restart(self) -> None:
        """Like a kubelet restart: endpoints gone, plugin sockets wiped, ``kubelet.sock`` re-created."""
        await self.stop()
        now = asyncio.get_running_loop().time()
        for resource in self._resources.values():
            for device_id in resource.devices:
                resource.devices[device_id] = "Unhealthy"
            resource.stopped_at = now
        self._on_change()
        await self.start()

    # ---- registration -------------------------------------------------------------------------

    async def register(self, request: dp.RegisterRequest) -> None:
        name = request.resource_name
        if request.version not in SUPPORTED_VERSIONS:
            raise grpclib.GRPCError(
                Status.UNKNOWN,
                f"requested API version {request.version!r} is not supported by kubelet. "
                f"Supported versions are {list(SUPPORTED_VERSIONS)!r}",
            )
        if not is_extended_resource_name(name):
            raise grpclib.GRPCError(Status.UNKNOWN, f'the ResourceName "{name}" is invalid')
        endpoint_name = Path(request.endpoint).name
        channel = grpclib.client.Channel(path=str(self.plugin_dir / endpoint_name))
        stub = dp.DevicePluginStub(channel)
        try:
            options = await stub.get_device_plugin_options(dp.Empty(), timeout=self.settings.dial_timeout)
        except (grpclib.GRPCError, OSError, TimeoutError) as exc:
            channel.close()
            detail = go_rpc_error(exc) if isinstance(exc, grpclib.GRPCError) else repr(exc)
            raise grpclib.GRPCError(Status.UNKNOWN, f"failed to get device plugin options: {detail}") from exc
        registration = Registration(
            resource_name=name,
            endpoint=endpoint_name,
            version=request.version,
            pre_start_required=options.pre_start_required,
            get_preferred_allocation_available=options.get_preferred_allocation_available,
        )
        resource = self._resources.setdefault(name, _Resource())
        await self._drop_endpoint(resource)
        endpoint = _Endpoint(registration=registration, channel=channel, stub=stub)
        resource.endpoint = endpoint
        resource.stopped_at = None
        endpoint.task = asyncio.create_task(self._list_and_watch(name, endpoint), name=f"ListAndWatch {name}")
        self.registrations.append(registration)
        logger.info("device plugin registered: %s at %s", name, endpoint_name)
        async with self.registered:
            self.registered.notify_all()

    async def _drop_endpoint(self, resource: _Resource) -> None:
        endpoint, resource.endpoint = resource.endpoint, None
        if endpoint is None:
            return
        if endpoint.task is not None:
            endpoint.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await endpoint.task
        endpoint.channel.close()

    async def _list_and_watch(self, name: str, endpoint: _Endpoint) -> None:
        resource = self._resources[name]
        try:
            async for response in endpoint.stub.list_and_watch(dp.Empty()):
                if resource.endpoint is not endpoint:
                    return
                resource.devices = {d.id: d.health for d in response.devices}
                self._on_change()
            logger.info("ListAndWatch of %s ended", name)
        except (grpclib.GRPCError, OSError, grpclib.exceptions.StreamTerminatedError) as exc:
            logger.info("ListAndWatch of %s failed: %s", name, exc)
        if resource.endpoint is endpoint:  # the plugin went away: its devices are unhealthy now
            resource.endpoint = None
            resource.stopped_at = asyncio.get_running_loop().time()
            for device_id in resource.devices:
                resource.devices[device_id] = "Unhealthy"
            endpoint.channel.close()
            self._on_change()

    async def wait_registered(self, resource_name: str, *, count: int = 1) -> Registration:
        """Wait until ``resource_name`` has registered ``count`` times in total; the latest registration."""

        def done() -> bool:
            return sum(1 for r in self.registrations if r.resource_name == resource_name) >= count

        async with self.registered:
            await self.registered.wait_for(done)
        return [r for r in self.registrations if r.resource_name == resource_name][-1]

    # ---- node status --------------------------------------------------------------------------

    def expire_stopped(self) -> bool:
        """Drop resources disconnected longer than the grace period; True if any was dropped."""
        now = asyncio.get_running_loop().time()
        expired = [
            name
            for name, r in self._resources.items()
            if r.endpoint is None
            and r.stopped_at is not None
            and now - r.stopped_at >= self.settings.endpoint_grace_period
        ]
        for name in expired:
            del self._resources[name]
        return bool(expired)

    def capacity(self) -> dict[str, tuple[int, int]]:
        """Resource → (capacity, allocatable): all devices, healthy devices."""
        return {
            name: (len(r.devices), sum(1 for h in r.devices.values() if h == HEALTHY))
            for name, r in self._resources.items()
        }

    def is_device_resource(self, name: str) -> bool:
        return name in self._resources

    def healthy_devices(self, name: str) -> list[str]:
        resource = self._resources.get(name)
        return [] if resource is None else [d for d, h in resource.devices.items() if h == HEALTHY]

    # ---- allocation ---------------------------------------------------------------------------

    def _in_use(self, name: str) -> set[str]:
        return {
            device
            for containers in self._assigned.values()
            for resources in containers.values()
            for device in resources.get(name, ())
        }

    def _reusable(self, pod_uid: str, name: str, init_containers: frozenset[str]) -> list[str]:
        """Devices of this pod's init containers that no app container holds (kubelet reuses them)."""
        held = self._assigned.get(pod_uid, {})
        from_init = [d for c, r in held.items() if c in init_containers for d in r.get(name, ())]
        by_apps = {d for c, r in held.items() if c not in init_containers for d in r.get(name, ())}
        return [d for d in dict.fromkeys(from_init) if d not in by_apps]

    async def _choose(self, resource: _Resource, name: str, needed: int, reusable: list[str]) -> list[str]:
        healthy = [d for d, h in resource.devices.items() if h == HEALTHY]
        reuse = [d for d in reusable if d in healthy][:needed]
        if len(reuse) == needed:
            return reuse
        in_use = self._in_use(name) - set(reusable)
        available = reuse + [d for d in healthy if d not in in_use and d not in reuse]
        if needed > len(available):
            raise AdmissionError(
                f"requested number of devices unavailable for {name}. "
                f"Requested: {needed}, Available: {len(available)}"
            )
        endpoint = resource.endpoint
        chosen: list[str] = []
        if endpoint is not None and endpoint.registration.get_preferred_allocation_available:
            request = dp.PreferredAllocationRequest(
                container_requests=[
                    dp.ContainerPreferredAllocationRequest(
                        available_deviceIDs=available, must_include_deviceIDs=reuse, allocation_size=needed
                    )
                ]
            )
            try:
                reply = await endpoint.stub.get_preferred_allocation(
                    request, timeout=self.settings.rpc_timeout
                )
            except grpclib.GRPCError as exc:
                raise AdmissionError(go_rpc_error(exc)) from exc
            except (OSError, TimeoutError, grpclib.exceptions.StreamTerminatedError) as exc:
                # The plugin died mid-call: kubelet fails the admission, it does not crash.
                raise AdmissionError(f"rpc error: code = Unavailable desc = {exc!r}") from exc
            for response in reply.container_responses[:1]:
                chosen = [d for d in dict.fromkeys(response.device_i_ds) if d in available]
        chosen = [*reuse, *(d for d in chosen if d not in reuse)][:needed]
        chosen.extend(d for d in available if d not in chosen)
        return chosen[:needed]

    async def allocate(
        self,
        pod_uid: str,
        container: str,
        name: str,
        needed: int,
        *,
        init_containers: frozenset[str] = frozenset(),
    ) -> ContainerAllocation:
        """Pick, allocate and remember devices of ``name`` for one container (raises AdmissionError).

        ``init_containers`` names the pod's init containers: their devices may be reused by the
        containers that follow, as kubelet does.
        """
        resource = self._resources.get(name)
        if resource is None:
            raise AdmissionError(f"cannot allocate unregistered device {name}")
        previous = self._assigned.get(pod_uid, {}).get(container, {}).get(name)
        if previous:
            device_ids = list(previous)
        else:
            reusable = self._reusable(pod_uid, name, init_containers)
            device_ids = await self._choose(resource, name, needed, reusable)
        endpoint = resource.endpoint
        if endpoint is None:
            raise AdmissionError(f"endpoint not found in cache for a registered resource: {name}")
        request = dp.AllocateRequest(container_requests=[dp.ContainerAllocateRequest(devices_ids=device_ids)])
        try:
            reply = await endpoint.stub.allocate(request, timeout=self.settings.rpc_timeout)
        except grpclib.GRPCError as exc:
            raise AdmissionError(go_rpc_error(exc)) from exc
        except (OSError, TimeoutError, grpclib.exceptions.StreamTerminatedError) as exc:
            raise AdmissionError(f"rpc error: code = Unavailable desc = {exc!r}") from exc
        if not reply.container_responses:
            raise AdmissionError("no containers return in allocation response")
        self._assigned.setdefault(pod_uid, {}).setdefault(container, {})[name] = tuple(device_ids)
        answer = reply.container_responses[0]
        return ContainerAllocation(
            container=container,
            resource=name,
            device_ids=tuple(device_ids),
            envs=dict(answer.envs),
            mounts=tuple(
                {"containerPath": m.container_path, "hostPath": m.host_path, "readOnly": m.read_only}
                for m in answer.mounts
            ),
            devices=tuple(
                {"containerPath": d.container_path, "hostPath": d.host_path, "permissions": d.permissions}
                for d in answer.devices
            ),
            annotations=dict(answer.annotations),
            cdi_devices=tuple(c.name for c in answer.cdi_devices),
        )

    async def pre_start(self, name: str, device_ids: tuple[str, ...]) -> None:
        """``PreStartContainer`` when the plugin asked for it (raises AdmissionError)."""
        resource = self._resources.get(name)
        endpoint = resource.endpoint if resource is not None else None
        if endpoint is None or not endpoint.registration.pre_start_required:
            return
        try:
            await endpoint.stub.pre_start_container(
                dp.PreStartContainerRequest(devices_ids=list(device_ids)),
                timeout=self.settings.prestart_timeout,
            )
        except grpclib.GRPCError as exc:
            raise AdmissionError(go_rpc_error(exc)) from exc

    def release(self, pod_uid: str) -> None:
        """Free a terminated or deleted pod's devices."""
        self._assigned.pop(pod_uid, None)

    def assigned(self, pod_uid: str) -> dict[str, dict[str, tuple[str, ...]]]:
        """Container → resource → device IDs held by a pod."""
        return {c: dict(r) for c, r in self._assigned.get(pod_uid, {}).items()}
