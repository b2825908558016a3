"""From an allocated ResourceClaim to CDI devices carrying HAMi-core's edits (pure).

For the claim's results that name this driver and this node's pool, :func:`plan_claim` builds:

* one transient CDI spec per claim (k8s-apis.md §4.5, §5): kind
  ``k8s.hami-core-gpu.project-hami.io/claim``, file ``<vendor>-claim_<claimUID>.json``;
* one CDI device per allocated GPU, ``<claimUID>-<device>``, whose edits are the GPU's device node
  and its ``CUDA_DEVICE_MEMORY_LIMIT_<i>`` (``i`` = position among the claim's GPUs in index
  order, i.e. NVML order, which is how HAMi-core numbers its limits);
* the claim-wide edits in the spec's ``containerEdits`` (applied when any of its devices is
  requested): ``NVIDIA_VISIBLE_DEVICES``, ``CUDA_DEVICE_SM_LIMIT``,
  ``CUDA_DEVICE_MEMORY_SHARED_CACHE=<vgpu>/<claimUID>.cache`` and the node options, the control
  device nodes, and the mounts of the device plugin's Allocate (library, per-claim cache
  directory ``<vgpu>/claims/<claimUID>`` at ``<vgpu>``, ``/tmp/vgpulock``, ``ld.so.preload``).

The share of each GPU is the allocation's ``consumedCapacity`` (``memory`` bytes → MiB,
``cores`` percent). A result without it was allocated exclusively (no consumable capacity): the
whole memory and ``cores`` 100 (HAMi-core does not throttle at 100). Containers sharing one claim
share its limits, which is the claim's meaning. Everything derives from the claim UID, so a
repeated prepare yields the same spec byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from hami.core.errors import HamiError
from hami.core.hamicore_env import (
    ENV_MEMORY_LIMIT_PREFIX,
    ENV_VISIBLE_DEVICES,
    DeviceLimit,
    HamiCoreOptions,
    HostFacts,
    hamicore_edits,
    visible_devices,
)
from hami.core.quantity import QuantityError, parse_quantity
from hami.dra.devices import MIB, DraGpu

CDI_VENDOR: Final = "k8s.hami-core-gpu.project-hami.io"
CDI_CLASS: Final = "claim"
CDI_KIND: Final = f"{CDI_VENDOR}/{CDI_CLASS}"
CDI_VERSION: Final = "0.6.0"
CONTROL_DEVICES: Final = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
EXCLUSIVE_CORES: Final = 100


class PrepareError(HamiError):
    """A claim this plugin cannot prepare; the message goes back to the kubelet per claim."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimRef:
    """What the kubelet names (gRPC ``Claim``)."""

    namespace: str
    name: str
    uid: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedDevice:
    """One entry of ``NodePrepareResourceResponse.devices``."""

    request_names: tuple[str, ...]
    pool: str
    device: str
    cdi_ids: tuple[str, ...]
    share_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "requestNames": list(self.request_names),
            "pool": self.pool,
            "device": self.device,
            "cdiDeviceIDs": list(self.cdi_ids),
            "shareID": self.share_id,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PreparedDevice:
        share = raw.get("shareID")
        return cls(
            request_names=tuple(str(r) for r in raw.get("requestNames") or ()),
            pool=str(raw["pool"]),
            device=str(raw["device"]),
            cdi_ids=tuple(str(c) for c in raw.get("cdiDeviceIDs") or ()),
            share_id=None if share is None else str(share),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedClaim:
    """A prepared claim as checkpointed: enough to answer again and to undo it."""

    ref: ClaimRef
    devices: tuple[PreparedDevice, ...]
    cdi_spec: Mapping[str, Any]
    cache_dir: str  # host path of <vgpu>/claims/<claimUID>

    @property
    def spec_file_name(self) -> str:
        return cdi_spec_file_name(self.ref.uid)

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.ref.namespace,
            "name": self.ref.name,
            "uid": self.ref.uid,
            "devices": [d.to_json() for d in self.devices],
            "cdiSpec": dict(self.cdi_spec),
            "cacheDir": self.cache_dir,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PreparedClaim:
        return cls(
            ref=ClaimRef(namespace=str(raw["namespace"]), name=str(raw["name"]), uid=str(raw["uid"])),
            devices=tuple(PreparedDevice.from_json(d) for d in raw.get("devices") or ()),
            cdi_spec=dict(raw["cdiSpec"]),
            cache_dir=str(raw["cacheDir"]),
        )


def cdi_spec_file_name(claim_uid: str) -> str:
    """``GenerateTransientSpecName(vendor, class, uid)`` + ``.json`` (k8s-apis.md §5.2)."""
    return f"{CDI_VENDOR}-{CDI_CLASS}_{claim_uid.replace('/', '_')}.json"


def claim_cache_dir(options: HamiCoreOptions, claim_uid: str) -> str:
    return str(options.vgpu_dir / "claims" / claim_uid)


def _mount(host_path: str, container_path: str, read_only: bool) -> dict[str, Any]:
    return {
        "hostPath": host_path,
        "containerPath": container_path,
        "options": ["ro" if read_only else "rw", "nosuid", "nodev", "bind"],
    }


def _consumed(result: Mapping[str, Any], gpu: DraGpu, where: str) -> tuple[int, int]:
    """(memory MiB, cores %) from ``consumedCapacity``; the whole GPU when absent."""
    consumed = result.get("consumedCapacity")
    if not consumed:
        return gpu.memory_bytes // MIB, EXCLUSIVE_CORES
    if not isinstance(consumed, Mapping):
        raise PrepareError(f"{where}.consumedCapacity: expected an object")
    try:
        memory = parse_quantity(consumed["memory"]) if "memory" in consumed else None
        cores = parse_quantity(consumed["cores"]) if "cores" in consumed else None
    except (QuantityError, TypeError) as e:
        raise PrepareError(f"{where}.consumedCapacity: {e}") from None
    memory_mib = gpu.memory_bytes // MIB if memory is None else int(memory // MIB)
    if memory is not None and memory > 0 and memory_mib == 0:
        memory_mib = 1  # below 1 MiB still means "a limit", not HAMi-core's 0 = unlimited
    core_value = EXCLUSIVE_CORES if cores is None else int(cores)
    if memory_mib < 0 or not 0 <= core_value <= EXCLUSIVE_CORES:
        raise PrepareError(f"{where}.consumedCapacity: out of range ({dict(consumed)})")
    return memory_mib, core_value


def plan_claim(
    claim: Mapping[str, Any],
    ref: ClaimRef,
    *,
    driver: str,
    pool: str,
    gpus: Mapping[str, DraGpu],
    options: HamiCoreOptions,
    host: HostFacts | None = None,
    control_devices: Sequence[str] = CONTROL_DEVICES,
) -> PreparedClaim:
    """The prepared form of ``claim`` (as read from the API). ``gpus`` is keyed by device name."""
    meta = claim.get("metadata") or {}
    if meta.get("uid") != ref.uid:
        raise PrepareError(
            f"claim {ref.key} has UID {meta.get('uid')!r}, the kubelet asked for {ref.uid!r} "
            "(the claim was deleted and re-created)"
        )
    allocation = (claim.get("status") or {}).get("allocation")
    if not isinstance(allocation, Mapping):
        raise PrepareError(f"claim {ref.key} is not allocated")
    results = ((allocation.get("devices") or {}).get("results")) or []
    mine: list[tuple[DraGpu, Mapping[str, Any], str]] = []
    seen: set[str] = set()
    for i, result in enumerate(results):
        where = f"claim {ref.key} status.allocation.devices.results[{i}]"
        if not isinstance(result, Mapping) or result.get("driver") != driver:
            continue
        if result.get("pool") != pool:
            raise PrepareError(f"{where}: pool {result.get('pool')!r} is not this node's pool {pool!r}")
        name = str(result.get("device", ""))
        gpu = gpus.get(name)
        if gpu is None:
            raise PrepareError(f"{where}: device {name!r} does not exist on node {pool}")
        if name in seen:
            raise PrepareError(f"{where}: device {name!r} is allocated twice in one claim (not supported)")
        seen.add(name)
        mine.append((gpu, result, where))
    if not mine:
        raise PrepareError(f"claim {ref.key}: its allocation names no device of driver {driver}")
    mine.sort(key=lambda item: item[0].index)
    limits: list[DeviceLimit] = []
    cdi_devices: list[dict[str, Any]] = []
    prepared: list[PreparedDevice] = []
    for i, (gpu, result, where) in enumerate(mine):
        memory_mib, cores = _consumed(result, gpu, where)
        limits.append(DeviceLimit(uuid=gpu.uuid, memory_mib=memory_mib, cores=cores))
        cdi_name = f"{ref.uid}-{gpu.device_name}"
        edits: dict[str, Any] = {"env": [f"{ENV_MEMORY_LIMIT_PREFIX}{i}={memory_mib}m"]}
        if gpu.device_paths:
            edits["deviceNodes"] = [{"path": p} for p in gpu.device_paths]
        cdi_devices.append({"name": cdi_name, "containerEdits": edits})
        share = result.get("shareID")
        prepared.append(
            PreparedDevice(
                request_names=(str(result.get("request", "")),) if result.get("request") else (),
                pool=pool,
                device=gpu.device_name,
                cdi_ids=(f"{CDI_KIND}={cdi_name}",),
                share_id=str(share) if share else None,
            )
        )
    cache_dir = claim_cache_dir(options, ref.uid)
    core = hamicore_edits(limits, options, cache_dir=cache_dir, cache_id=ref.uid, host=host)
    env = [f"{ENV_VISIBLE_DEVICES}={visible_devices(limits)}"]
    env.extend(f"{k}={v}" for k, v in core.envs.items() if not k.startswith(ENV_MEMORY_LIMIT_PREFIX))
    spec = {
        "cdiVersion": CDI_VERSION,
        "kind": CDI_KIND,
        "devices": cdi_devices,
        "containerEdits": {
            "env": env,
            "deviceNodes": [{"path": p} for p in control_devices],
            "mounts": [_mount(m.host_path, m.container_path, m.read_only) for m in core.mounts],
        },
    }
    return PreparedClaim(ref=ref, devices=tuple(prepared), cdi_spec=spec, cache_dir=cache_dir)
