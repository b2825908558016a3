"""The request parser's shortcuts: plain digit strings skip the Fraction parser with the same result,
and selectors are read for the vendors a pod requests (NVIDIA always)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hami.core import keys
from hami.core.deviceconfig import NvidiaConfig
from hami.core.errors import InvalidRequest
from hami.core.model import ContainerDeviceRequest
from hami.core.quantity import INT32_MAX, QuantityError, exact_integer, parse_quantity
from hami.core.requests import ContainerResources, DeviceSelectors, pod_request


def slow_integer(raw: str) -> int | str | None:
    """What the full parser concludes: the value, None (ignored), or "invalid"."""
    try:
        value = exact_integer(parse_quantity(raw))
    except QuantityError:
        return "invalid"
    if value is None:
        return None
    return "invalid" if value < 0 or value > INT32_MAX else value


def fast_integer(raw: str) -> int | str | None:
    resources = ContainerResources(where="c", name="c", limits={"r": raw}, requests={})
    try:
        return resources.integer("r", [])
    except InvalidRequest:
        return "invalid"


digits = st.text(alphabet="0123456789", min_size=1, max_size=12)
odd = st.text(alphabet="0123456789+-.emkMGi٣²０ ", min_size=0, max_size=12)


@settings(max_examples=400, deadline=None)
@given(digits | odd)
def test_digit_strings_read_as_the_full_parser_reads_them(raw: str) -> None:
    assert fast_integer(raw) == slow_integer(raw)


@pytest.mark.parametrize("raw", ["0", "007", "999999999", "2147483647", "2147483648", "٣", "²", "1e3"])
def test_boundaries(raw: str) -> None:
    assert fast_integer(raw) == slow_integer(raw)


@dataclass(frozen=True)
class MluReader:
    vendor: str = "MLU"
    reads: list[str] | None = None

    def container_request(
        self, container: ContainerResources, warnings: list[str]
    ) -> ContainerDeviceRequest | None:
        nums = container.integer("cambricon.com/vmlu", warnings)
        return None if not nums else ContainerDeviceRequest(nums=nums, type="MLU", memreq=0)

    def selectors(self, annotations: dict[str, str], warnings: list[str]) -> DeviceSelectors:
        assert self.reads is not None
        self.reads.append("MLU")
        return DeviceSelectors(use_uuids=("MLU-1",))


def pod(limits: dict[str, str], annotations: dict[str, str]) -> dict[str, object]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u", "annotations": annotations},
        "spec": {"containers": [{"name": "c", "resources": {"limits": limits}}]},
    }


def test_selectors_are_read_for_requested_vendors_and_nvidia() -> None:
    reads: list[str] = []
    reader = MluReader(reads=reads)
    bad_numa = {keys.NUMA_BIND: "maybe"}
    only_nvidia = pod({"nvidia.com/gpu": "1"}, bad_numa)
    result = pod_request(only_nvidia, NvidiaConfig(), readers=[reader])
    assert reads == [] and set(result.selectors) == {"NVIDIA"}
    assert result.selectors_for("MLU") == DeviceSelectors()
    assert any(keys.NUMA_BIND in w for w in result.warnings)  # NVIDIA's warning stays
    only_mlu = pod({"cambricon.com/vmlu": "1"}, bad_numa)
    result = pod_request(only_mlu, NvidiaConfig(), readers=[reader])
    assert reads == ["MLU"] and set(result.selectors) == {"NVIDIA", "MLU"}
    assert result.selectors_for("MLU").use_uuids == ("MLU-1",)
    assert any(keys.NUMA_BIND in w for w in result.warnings)
