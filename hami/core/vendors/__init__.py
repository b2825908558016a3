"""HAMi's device vendors beyond NVIDIA, one module each (spec §4.1, §11).

Build the registry a process uses with :func:`build_registry`; the scheduler drives every vendor
through :class:`~hami.core.vendor.VendorRegistry` without naming any.
"""

from __future__ import annotations

from hami.core.vendors.base import (
    BaseVendor,
    HandshakeVerdict,
    Health,
    NodePublication,
    ResourceNames,
    VendorAdmissionError,
    VendorTraits,
    handshake_health,
)
from hami.core.vendors.registry import (
    MOCK_VENDOR_NAMES,
    admission_vendors,
    build_registry,
    managed_resources,
    mock_vendor,
    resource_names,
    vendor_traits,
)

__all__ = [
    "MOCK_VENDOR_NAMES",
    "BaseVendor",
    "HandshakeVerdict",
    "Health",
    "NodePublication",
    "ResourceNames",
    "VendorAdmissionError",
    "VendorTraits",
    "admission_vendors",
    "build_registry",
    "handshake_health",
    "managed_resources",
    "mock_vendor",
    "resource_names",
    "vendor_traits",
]
