"""The kubelet-facing ``v1beta1.DevicePlugin`` service (grpclib).

Protobuf types stop here: the service converts between ``hami._proto.v1beta1`` messages and
the plain values of :mod:`allocate`, :mod:`podlookup` and :mod:`state`. Expected failures
become ``GRPCError`` with a message naming the pod and the problem; the plugin keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence

from grpclib import GRPCError
from grpclib.const import Status

from hami._proto import v1beta1 as pb
from hami.core.errors import DecodeError
from hami.deviceplugin.allocate import (
    AllocateSettings,
    ContainerAllocation,
    ContainerTarget,
    HostLayout,
    UnsupportedAllocation,
    container_allocation,
    container_disables_control,
)
from hami.deviceplugin.podlookup import (
    AllocationRecorder,
    AmbiguousAllocation,
    MalformedAllocation,
    PendingAllocation,
    PendingPodSource,
    PodLookupError,
    RawObject,
    pod_ref,
)
from hami.deviceplugin.state import DeviceState
from hami.deviceplugin.virtual import physical_uuid

logger = logging.getLogger(__name__)


def new_random_id() -> str:
    return str(uuidlib.uuid4())


def to_pb_response(allocation: ContainerAllocation) -> pb.ContainerAllocateResponse:
    return pb.ContainerAllocateResponse(
        envs=dict(allocation.envs),
        mounts=[
            pb.Mount(container_path=m.container_path, host_path=m.host_path, read_only=m.read_only)
            for m in allocation.mounts
        ],
        annotations=dict(allocation.annotations),
        cdi_devices=[pb.CdiDevice(name=name) for name in allocation.cdi_devices],
    )


def preferred_ids(
    available: Sequence[str], must_include: Sequence[str], size: int, wanted_gpus: Sequence[str] | None
) -> list[str]:
    """Virtual IDs for one container: ``must_include`` first, then replicas of the wanted GPUs
    (one per wanted device, multiset), then any other available IDs up to ``size``."""
    chosen = list(dict.fromkeys(must_include))[:size]
    taken = set(chosen)
    if wanted_gpus:
        need = Counter(wanted_gpus)
        for vid in chosen:
            base = vid.rpartition("-")[0]
            if need[base] > 0:
                need[base] -= 1
        for vid in available:
            if len(chosen) >= size:
                break
            base = vid.rpartition("-")[0]
            if vid not in taken and need[base] > 0:
                need[base] -= 1
                chosen.append(vid)
                taken.add(vid)
    for vid in available:
        if len(chosen) >= size:
            break
        if vid not in taken:
            chosen.append(vid)
            taken.add(vid)
    return chosen


class DevicePluginService(pb.DevicePluginBase):
    def __init__(
        self,
        *,
        node_name: str,
        state: DeviceState,
        allocate_settings: AllocateSettings,
        pods: PendingPodSource,
        recorder: AllocationRecorder,
        host: HostLayout,
        preferred_allocation: bool = True,
        new_id: Callable[[], str] = new_random_id,
        on_allocate: Callable[[float], object] | None = None,
    ) -> None:
        self._node = node_name
        self._state = state
        self._settings = allocate_settings
        self._pods = pods
        self._recorder = recorder
        self._host = host
        self._preferred = preferred_allocation
        self.new_random_id = new_id
        self._on_allocate = on_allocate  # seconds per Allocate call, failed ones included
        # Kubelet serialises admissions, but a restarted kubelet may race an old call.
        self._allocate_lock = asyncio.Lock()
        self._streams_closed = asyncio.Event()

    def close_streams(self) -> None:
        """End every open ListAndWatch stream (plugin stop or restart); new streams start afresh."""
        closed, self._streams_closed = self._streams_closed, asyncio.Event()
        closed.set()

    # -- RPCs ------------------------------------------------------------------------------

    async def get_device_plugin_options(self, message: pb.Empty) -> pb.DevicePluginOptions:
        return pb.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=self._preferred
        )

    def _device_list(self) -> pb.ListAndWatchResponse:
        return pb.ListAndWatchResponse(
            devices=[pb.Device(id=vid, health=health) for vid, health in self._state.kubelet_devices()]
        )

    async def list_and_watch(self, message: pb.Empty) -> AsyncIterator[pb.ListAndWatchResponse]:
        closed = self._streams_closed
        seen = self._state.version
        yield self._device_list()
        while not closed.is_set():
            change = asyncio.ensure_future(self._state.wait_change(seen))
            end = asyncio.ensure_future(closed.wait())
            try:
                await asyncio.wait({change, end}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                change.cancel()
                end.cancel()
            if closed.is_set():
                return
            seen = self._state.version
            yield self._device_list()

    async def get_preferred_allocation(
        self, message: pb.PreferredAllocationRequest
    ) -> pb.PreferredAllocationResponse:
        responses: list[pb.ContainerPreferredAllocationResponse] = []
        for request in message.container_requests:
            wanted: list[str] | None = None
            try:
                expected = await self._pods.expected(self._node, request.allocation_size)
            except Exception as e:  # a preference only: fall back to kubelet's own choice
                logger.warning("GetPreferredAllocation: pod lookup failed: %s", e)
                expected = None
            if expected is not None:
                wanted = [d.uuid.split("[", 1)[0] for d in expected.devices]
            ids = preferred_ids(
                list(request.available_deviceIDs),
                list(request.must_include_deviceIDs),
                request.allocation_size,
                wanted,
            )
            responses.append(pb.ContainerPreferredAllocationResponse(device_i_ds=ids))
        return pb.PreferredAllocationResponse(container_responses=responses)

    async def pre_start_container(self, message: pb.PreStartContainerRequest) -> pb.PreStartContainerResponse:
        return pb.PreStartContainerResponse()

    async def allocate(self, message: pb.AllocateRequest) -> pb.AllocateResponse:
        started = time.perf_counter()
        try:
            async with self._allocate_lock:
                responses = [
                    await self._allocate_container(list(r.devices_ids)) for r in message.container_requests
                ]
            return pb.AllocateResponse(container_responses=responses)
        finally:
            if self._on_allocate is not None:
                self._on_allocate(time.perf_counter() - started)

    # -- Allocate, one container -----------------------------------------------------------

    async def _fail(self, pod: RawObject | None, status: Status, message: str) -> GRPCError:
        """Log, mark ``pod`` failed (releasing its lock) when the failure is certainly its own."""
        if pod is not None:
            await self._recorder.finish(pod, self._node, success=False)
        logger.error("Allocate on %s failed: %s", self._node, message)
        return GRPCError(status, message)

    async def _allocate_container(self, device_ids: list[str]) -> pb.ContainerAllocateResponse:
        known = [g.uuid for g in self._state.gpus]
        unknown = [vid for vid in device_ids if physical_uuid(vid, known) is None]
        if unknown:
            raise await self._fail(
                None, Status.INVALID_ARGUMENT, f"device IDs {unknown} are not offered by this plugin"
            )
        try:
            allocation = await self._pods.find(self._node, device_ids)
        except MalformedAllocation as e:
            raise await self._fail(e.pod, Status.INVALID_ARGUMENT, str(e)) from None
        except AmbiguousAllocation as e:
            raise await self._fail(None, Status.FAILED_PRECONDITION, str(e)) from None
        except PodLookupError as e:
            raise await self._fail(None, Status.NOT_FOUND, str(e)) from None
        except DecodeError as e:
            raise await self._fail(None, Status.INVALID_ARGUMENT, str(e)) from None
        except Exception as e:  # API server trouble: kubelet will report the admission error
            raise await self._fail(None, Status.UNAVAILABLE, f"cannot look up the pending pod: {e}") from None
        return await self._serve(allocation)

    async def _serve(self, allocation: PendingAllocation) -> pb.ContainerAllocateResponse:
        ref = pod_ref(allocation.pod)
        target = ContainerTarget(
            pod_uid=allocation.uid,
            container_name=allocation.container_name,
            disable_control=container_disables_control(allocation.container),
        )
        try:
            files = await asyncio.to_thread(self._host.files)
            result = container_allocation(
                allocation.devices,
                target,
                self._state.settings,
                self._settings,
                files,
                cache_id=self.new_random_id(),
                annotation_id=self.new_random_id(),
            )
            if self._state.settings.mode != "mig":
                await asyncio.to_thread(self._host.prepare, target)
        except UnsupportedAllocation as e:
            raise await self._fail(allocation.pod, Status.UNIMPLEMENTED, f"pod {ref}: {e}") from None
        except (OSError, ValueError) as e:
            raise await self._fail(allocation.pod, Status.INTERNAL, f"pod {ref}: {e}") from None
        try:
            await self._recorder.consume(allocation)
        except Exception as e:
            raise await self._fail(
                allocation.pod, Status.UNAVAILABLE, f"pod {ref}: cannot record the allocation: {e}"
            ) from None
        logger.info(
            "allocated %s to %s container %s",
            ",".join(d.uuid for d in allocation.devices),
            ref,
            target.container_name,
        )
        if allocation.complete:
            await self._recorder.finish(allocation.pod, self._node, success=True)
        return to_pb_response(result)
