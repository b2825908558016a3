"""Which vendors a process handles, from the device config (spec §4.1 last paragraph, §9).

HAMi initialises every vendor from its ``device-config.yaml`` section (sections may be empty:
the chart's names apply), except Ascend (one vendor per ``vnpus[]`` entry, only with
``--enable-ascend``) and Iluvatar (one per ``iluvatars[]`` entry, only with ``--enable-iluvatar``).
The scheduler then drives them all through :class:`~hami.core.vendor.VendorRegistry`; nothing in
the scheduler names a vendor.

Mock node agents and the simulator use :func:`mock_vendor` / :data:`MOCK_VENDOR_NAMES` to
impersonate one vendor's device plugin (``hami device-plugin --backend mock --vendor cambricon``,
``hami cluster up --vendor-mix nvidia:2,cambricon:1``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from hami.core import keys
from hami.core.admission import AdmissionVendor, NvidiaAdmission
from hami.core.deviceconfig import DeviceConfig, IluvatarConfig, VNPUConfig
from hami.core.errors import ConfigError
from hami.core.model import NVIDIA
from hami.core.vendor import NvidiaVendor, Vendor, VendorRegistry
from hami.core.vendors.amd import AmdVendor
from hami.core.vendors.ascend import AscendVendor
from hami.core.vendors.awsneuron import AwsNeuronVendor
from hami.core.vendors.base import BaseVendor, Clock, Health, ResourceNames, VendorTraits
from hami.core.vendors.cambricon import CambriconVendor
from hami.core.vendors.enflame import GcuVendor, VgcuVendor
from hami.core.vendors.hygon import HygonVendor
from hami.core.vendors.iluvatar import IluvatarVendor
from hami.core.vendors.kunlun import KunlunVendor, VxpuVendor
from hami.core.vendors.metax import MetaxGpuVendor
from hami.core.vendors.metax_sgpu import MetaxSgpuVendor
from hami.core.vendors.mthreads import MthreadsVendor


def build_registry(
    device_config: DeviceConfig | None = None,
    *,
    enable_ascend: bool = False,
    enable_iluvatar: bool = False,
    clock: Clock | None = None,
    template_index_suffix: bool = False,
) -> VendorRegistry:
    """Every vendor HAMi 2.8 initialises for this device config (NVIDIA first).

    ``clock`` supplies the time written into vendor annotations when the caller does not pass
    one; ``template_index_suffix`` is NVIDIA's MIG quirk switch (spec §14 item 7).
    """
    cfg = device_config if device_config is not None else DeviceConfig()
    vendors: list[Vendor] = [
        NvidiaVendor(cfg.nvidia, template_index_suffix=template_index_suffix),
        CambriconVendor(cfg.cambricon, clock=clock),
        HygonVendor(cfg.hygon, clock=clock),
        MetaxGpuVendor(cfg.metax, clock=clock),
        MetaxSgpuVendor(cfg.metax, clock=clock),
        MthreadsVendor(cfg.mthreads, clock=clock),
        VgcuVendor(cfg.enflame, clock=clock),
        GcuVendor(cfg.enflame, clock=clock),
        KunlunVendor(cfg.kunlun, clock=clock),
        VxpuVendor(cfg.kunlun, clock=clock),
        AwsNeuronVendor(cfg.awsneuron, clock=clock),
        AmdVendor(cfg.amd, clock=clock),
    ]
    if enable_iluvatar:
        vendors.extend(IluvatarVendor(chip, clock=clock) for chip in cfg.iluvatars)
    if enable_ascend:
        vendors.extend(AscendVendor(vnpu, clock=clock) for vnpu in cfg.vnpus)
    registry = VendorRegistry()
    for vendor in vendors:
        if vendor.name in registry:
            raise ConfigError(
                f"vendors.{vendor.name}",
                "two device-config entries share this commonWord; each must be unique",
            )
        registry.register(vendor)
    return registry


def admission_vendors(registry: VendorRegistry) -> tuple[AdmissionVendor, ...]:
    """The webhook hooks of the registry's vendors, in registry order (NVIDIA's is
    :class:`~hami.core.admission.NvidiaAdmission`; the others are the vendors themselves)."""
    hooks: list[AdmissionVendor] = []
    for vendor in registry:
        if isinstance(vendor, NvidiaVendor):
            hooks.append(NvidiaAdmission(vendor.config))
        elif isinstance(vendor, BaseVendor):
            hooks.append(vendor)
    return tuple(hooks)


def resource_names(vendor: Vendor) -> ResourceNames:
    """HAMi ``GetResourceNames`` (+ the other names the vendor reads) of any registered vendor."""
    if isinstance(vendor, NvidiaVendor):
        c = vendor.config
        return ResourceNames(
            count=c.resource_count_name,
            memory=c.resource_memory_name,
            cores=c.resource_core_name,
            other=(c.resource_memory_percentage_name, c.resource_priority_name),
        )
    if isinstance(vendor, BaseVendor):
        return vendor.names
    return ResourceNames(count="")


def managed_resources(registry: VendorRegistry) -> tuple[str, ...]:
    """Every resource name of the registry, for the extender's ``managedResources`` (each with
    ``ignoredByScheduler: true``, as the chart renders them)."""
    seen: dict[str, None] = {}
    for vendor in registry:
        for name in resource_names(vendor).all:
            seen.setdefault(name)
    return tuple(seen)


def vendor_traits(registry: VendorRegistry) -> dict[str, VendorTraits]:
    """Locks, handshakes and health rules per vendor (NVIDIA: ``hami.io/mutex.lock``, allocatable)."""
    out: dict[str, VendorTraits] = {}
    for vendor in registry:
        if isinstance(vendor, BaseVendor):
            out[vendor.name] = vendor.traits
        elif vendor.name == NVIDIA:
            out[vendor.name] = VendorTraits(
                health=Health.CAPACITY, lock_key=keys.NODE_LOCK, register_key=keys.NODE_NVIDIA_REGISTER
            )
    return out


# --------------------------------------------------------------------------------------- mocks


def _first_ascend(cfg: DeviceConfig, prefix: str) -> VNPUConfig:
    for vnpu in cfg.vnpus:
        if vnpu.common_word.startswith(prefix):
            return vnpu
    raise ConfigError("vnpus", f"no entry whose commonWord starts with {prefix!r} to impersonate")


def _first_iluvatar(cfg: DeviceConfig) -> IluvatarConfig:
    if not cfg.iluvatars:
        raise ConfigError("iluvatars", "no entry to impersonate")
    return cfg.iluvatars[0]


_MOCKS: Final[Mapping[str, Callable[[DeviceConfig], BaseVendor]]] = {
    "cambricon": lambda c: CambriconVendor(c.cambricon),
    "hygon": lambda c: HygonVendor(c.hygon),
    "iluvatar": lambda c: IluvatarVendor(_first_iluvatar(c)),
    "ascend": lambda c: AscendVendor(_first_ascend(c, "Ascend910")),
    "ascend310p": lambda c: AscendVendor(_first_ascend(c, "Ascend310P")),
    "metax": lambda c: MetaxGpuVendor(c.metax),
    "metax-sgpu": lambda c: MetaxSgpuVendor(c.metax),
    "mthreads": lambda c: MthreadsVendor(c.mthreads),
    "enflame": lambda c: VgcuVendor(c.enflame),
    "enflame-gcu": lambda c: GcuVendor(c.enflame),
    "kunlun": lambda c: KunlunVendor(c.kunlun),
    "kunlun-vxpu": lambda c: VxpuVendor(c.kunlun),
    "awsneuron": lambda c: AwsNeuronVendor(c.awsneuron),
    "amd": lambda c: AmdVendor(c.amd),
}
MOCK_VENDOR_NAMES: Final = ("nvidia", *_MOCKS)
"""Names accepted by ``--vendor`` / ``--vendor-mix`` (``nvidia`` is the kubelet device plugin)."""


def mock_vendor(name: str, device_config: DeviceConfig | None = None) -> BaseVendor:
    """The vendor whose node agent ``name`` impersonates (not ``nvidia``: that is the real plugin)."""
    factory = _MOCKS.get(name.lower())
    if factory is None:
        raise ConfigError("--vendor", f"unknown vendor {name!r}; known: {', '.join(MOCK_VENDOR_NAMES)}")
    return factory(device_config if device_config is not None else DeviceConfig())
