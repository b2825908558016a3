"""DRA mode of the admission webhook: ``nvidia.com/gpu`` limits become ResourceClaimTemplate references.

Given a pod as admission sees it, :func:`translate_pod` returns a JSON patch (RFC 6902) and the
ResourceClaimTemplates that must exist in the pod's namespace (k8s-apis.md §3.5, §3.7, §4.2).
For each regular container asking for NVIDIA GPUs (read exactly as the scheduler reads them,
:func:`hami.core.requests.pod_request`, so defaults, ``memoryFactor`` and exclusive cores agree):

* ``nvidia.com/gpu``, ``gpumem``, ``gpucores`` (and a ``gpumem-percentage`` of 100) are removed
  from ``limits`` and ``requests``;
* the container gets ``resources.claims: [{name: hami-gpu-<container>}]`` and the pod
  ``spec.resourceClaims: [{name: hami-gpu-<container>, resourceClaimTemplateName: <template>}]``;
* the template is named after the request's shape, ``hami-gpu-<count>x<MiB>mi-<cores>c`` (``full``
  when the whole memory is wanted, plus a hash of any placement selectors), so every replica of a
  Deployment or Job shares it and no object is named after the pod. HAMi-DRA names a claim after
  the pod at admission, when a generated name is still empty (§4.6); here the resourceclaim
  controller creates each pod's claim from the template after the pod exists.

Each request is ``exactly: {deviceClassName, allocationMode: ExactCount, count, selectors,
capacity.requests: {memory: <bytes>, cores: <percent>}}``. ``cores`` is always requested (HAMi's
default is ``defaultCores``, 0: share freely), ``memory`` only when a size is given (omitted, the
driver's policy default consumes the whole device, HAMi's "100 %"). Annotations become CEL:
``use-gpuuuid``/``nouse-gpuuuid`` exact UUID membership, ``use-gputype``/``nouse-gputype`` a
case-insensitive substring match on the ``model`` attribute, ``numa-bind`` a ``matchAttribute``
constraint on ``numa`` when more than one GPU is asked.

Not expressible as consumable capacity, hence refused (:class:`InvalidRequest`): a
``gpumem-percentage`` other than 100 without ``gpumem``. Init containers are left alone, as HAMi
2.8 ignores their device requests (a warning says so).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from hami.core import keys
from hami.core.deviceconfig import NvidiaConfig
from hami.core.errors import InvalidRequest
from hami.core.model import NVIDIA, PERCENTAGE_UNSET
from hami.core.requests import (
    EXCLUSIVE_CORES,
    DeviceSelectors,
    container_resources,
    pod_request,
    webhook_sets_exclusive_cores,
)

DRIVER_NAME: Final = "hami-core-gpu.project-hami.io"
DEVICE_CLASS_NAME: Final = DRIVER_NAME
DEVICE_TYPE: Final = "hami-gpu"
DRA_LABEL: Final = "hami.io/dra"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
REQUEST_NAME: Final = "gpu"
RESOURCE_API_VERSION: Final = "resource.k8s.io/v1"
CAPACITY_MEMORY: Final = "memory"
CAPACITY_CORES: Final = "cores"
MIB: Final = 2**20
_DNS_LABEL_MAX: Final = 63
_CLAIM_PREFIX: Final = "hami-gpu-"
_REGEX_SPECIALS: Final = frozenset("\\.+*?()|[]{}^$")

JsonPatchOp = dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class TranslateOptions:
    """Resource names and defaults (``device-config.yaml``'s ``nvidia:``) and the DRA names."""

    config: NvidiaConfig = field(default_factory=NvidiaConfig)
    driver: str = DRIVER_NAME
    device_class: str = DEVICE_CLASS_NAME


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimShape:
    """What one container asks of each of its GPUs; equal shapes share one template."""

    count: int
    memory_bytes: int | None  # None: the whole device (no capacity request)
    cores: int
    selectors: tuple[str, ...] = ()  # CEL, beyond the device-type selector
    numa_bind: bool = False

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"a claim asks for at least one GPU, got {self.count}")
        if self.memory_bytes is not None and self.memory_bytes <= 0:
            raise ValueError(f"memory must be > 0 bytes, got {self.memory_bytes}")
        if not 0 <= self.cores <= EXCLUSIVE_CORES:
            raise ValueError(f"cores must be within 0..100, got {self.cores}")

    def template_name(self) -> str:
        memory = "full" if self.memory_bytes is None else _memory_word(self.memory_bytes)
        name = f"{_CLAIM_PREFIX}{self.count}x{memory}-{self.cores}c"
        if self.selectors or (self.numa_bind and self.count > 1):
            canonical = json.dumps({"s": self.selectors, "n": self.numa_bind}, sort_keys=True)
            name += "-" + hashlib.sha256(canonical.encode()).hexdigest()[:8]
        return name

    def claim_spec(self, options: TranslateOptions) -> dict[str, Any]:
        """``ResourceClaimSpec``: one request named ``gpu``."""
        capacity: dict[str, str] = {CAPACITY_CORES: str(self.cores)}
        if self.memory_bytes is not None:
            capacity[CAPACITY_MEMORY] = str(self.memory_bytes)
        selectors = [type_selector(options.driver), *self.selectors]
        devices: dict[str, Any] = {
            "requests": [
                {
                    "name": REQUEST_NAME,
                    "exactly": {
                        "deviceClassName": options.device_class,
                        "allocationMode": "ExactCount",
                        "count": self.count,
                        "selectors": [{"cel": {"expression": s}} for s in selectors],
                        "capacity": {"requests": capacity},
                    },
                }
            ]
        }
        if self.numa_bind and self.count > 1:
            devices["constraints"] = [
                {"requests": [REQUEST_NAME], "matchAttribute": f"{options.driver}/numa"}
            ]
        return {"devices": devices}

    def template(self, namespace: str, options: TranslateOptions) -> dict[str, Any]:
        labels = {MANAGED_BY_LABEL: "hami", DRA_LABEL: "true"}
        return {
            "apiVersion": RESOURCE_API_VERSION,
            "kind": "ResourceClaimTemplate",
            "metadata": {"name": self.template_name(), "namespace": namespace, "labels": dict(labels)},
            "spec": {"metadata": {"labels": dict(labels)}, "spec": self.claim_spec(options)},
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerClaim:
    """One converted container: its pod-level claim entry and the template behind it."""

    index: int
    container: str
    pod_claim_name: str
    template_name: str
    shape: ClaimShape


@dataclass(frozen=True, slots=True, kw_only=True)
class DraTranslation:
    """The webhook's answer: apply ``patch`` to the pod, ensure ``templates`` exist first."""

    patch: tuple[JsonPatchOp, ...] = ()
    templates: tuple[dict[str, Any], ...] = ()
    claims: tuple[ContainerClaim, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.patch)


# --------------------------------------------------------------------------------------- CEL


def cel_string(text: str) -> str:
    """A CEL string literal (CEL accepts JSON's escapes, ``\\uXXXX`` included)."""
    return json.dumps(text, ensure_ascii=True)


def cel_attribute(driver: str, name: str) -> str:
    return f"device.attributes[{cel_string(driver)}].{name}"


def type_selector(driver: str) -> str:
    """HAMi-DRA's request selector: ``device.attributes["<driver>"].type == "hami-gpu"``."""
    return f"{cel_attribute(driver, 'type')} == {cel_string(DEVICE_TYPE)}"


def _regex_literal(text: str) -> str:
    # RE2 (CEL's matches()) rejects escapes of ordinary characters, so only specials are escaped.
    return "".join("\\" + ch if ch in _REGEX_SPECIALS else ch for ch in text)


def _substring_pattern(words: Sequence[str]) -> str:
    return "(?i)(?:" + "|".join(_regex_literal(w) for w in words) + ")"


def selector_expressions(selectors: DeviceSelectors, driver: str) -> tuple[str, ...]:
    """CEL for HAMi's placement annotations (semantics of ``DeviceSelectors``)."""
    out: list[str] = []
    uuid = cel_attribute(driver, "uuid")
    if selectors.use_uuids is not None:
        out.append(f"{uuid} in [{', '.join(cel_string(u) for u in selectors.use_uuids)}]")
    elif selectors.nouse_uuids is not None:
        out.append(f"!({uuid} in [{', '.join(cel_string(u) for u in selectors.nouse_uuids)}])")
    model = cel_attribute(driver, "model")
    if selectors.use_types is not None and "" not in selectors.use_types:
        out.append(f"{model}.matches({cel_string(_substring_pattern(selectors.use_types))})")
    if selectors.nouse_types is not None:
        if "" in selectors.nouse_types:
            out.append("false")  # HAMi: an empty entry excludes every type
        else:
            out.append(f"!{model}.matches({cel_string(_substring_pattern(selectors.nouse_types))})")
    return tuple(out)


# --------------------------------------------------------------------------------------- names


def _memory_word(memory_bytes: int) -> str:
    if memory_bytes % MIB == 0:
        return f"{memory_bytes // MIB}mi"
    return f"{memory_bytes}b"


def json_pointer_token(text: str) -> str:
    """RFC 6901 escaping of one path segment (``nvidia.com/gpu`` → ``nvidia.com~1gpu``)."""
    return text.replace("~", "~0").replace("/", "~1")


def pod_claim_name(container: str, index: int, taken: set[str]) -> str:
    """``hami-gpu-<container>``: a DNS label unique among the pod's claim names."""
    name = f"{_CLAIM_PREFIX}{container}"
    if len(name) > _DNS_LABEL_MAX or not container:
        digest = hashlib.sha256(container.encode()).hexdigest()[:8]
        name = f"{_CLAIM_PREFIX}{index}-{digest}"
    base, n = name, 1
    while name in taken:
        suffix = f"-{n}"
        name = base[: _DNS_LABEL_MAX - len(suffix)] + suffix
        n += 1
    taken.add(name)
    return name


# --------------------------------------------------------------------------------------- translation


def _shape(
    index: int,
    container: Mapping[str, Any],
    options: TranslateOptions,
    selectors: tuple[str, ...],
    numa_bind: bool,
    nums: int,
    memreq: int,
    mem_percentage: int,
    coresreq: int,
) -> ClaimShape:
    cfg = options.config
    where = f"spec.containers[{index}]"
    if memreq > 0:
        memory: int | None = memreq * MIB
    elif mem_percentage in (100, PERCENTAGE_UNSET):
        memory = None
    else:
        raise InvalidRequest(
            f"{where}: {cfg.resource_memory_percentage_name}={mem_percentage} cannot be expressed as a "
            f"DRA capacity request; ask {cfg.resource_memory_name} in MiB instead"
        )
    cores = coresreq
    if webhook_sets_exclusive_cores(container_resources(container, where), cfg):
        cores = EXCLUSIVE_CORES
    return ClaimShape(
        count=nums,
        memory_bytes=memory,
        cores=min(max(cores, 0), EXCLUSIVE_CORES),
        selectors=selectors,
        numa_bind=numa_bind,
    )


def _removals(index: int, container: Mapping[str, Any], names: Sequence[str]) -> list[JsonPatchOp]:
    ops: list[JsonPatchOp] = []
    resources = container.get("resources") or {}
    for section in ("limits", "requests"):
        values = resources.get(section) or {}
        for name in names:
            if name and name in values:
                path = f"/spec/containers/{index}/resources/{section}/{json_pointer_token(name)}"
                ops.append({"op": "remove", "path": path})
    return ops


def translate_pod(
    pod: Mapping[str, Any], options: TranslateOptions | None = None, *, namespace: str | None = None
) -> DraTranslation:
    """The patch and templates that put ``pod``'s NVIDIA GPU requests on DRA.

    ``namespace`` overrides ``metadata.namespace`` (admission passes it separately, and a pod
    being created may not carry it). Raises :class:`InvalidRequest` for a request DRA cannot
    express, naming the field.
    """
    options = options or TranslateOptions()
    cfg = options.config
    request = pod_request(pod, cfg)
    if request.is_empty:
        return DraTranslation(warnings=request.warnings)
    metadata = pod.get("metadata") or {}
    ns = namespace or str(metadata.get("namespace") or "") or "default"
    spec = pod.get("spec") or {}
    raw_containers = spec.get("containers") or []
    warnings = list(request.warnings)
    warnings.extend(
        f"init container {name!r}: GPU requests of init containers are not translated (HAMi ignores them)"
        for name in request.ignored_init_containers
    )
    selectors = request.selectors_for(NVIDIA)
    if selectors.vgpu_mode is not None:
        warnings.append(f"{keys.VGPU_MODE} has no DRA equivalent and is ignored")
    expressions = selector_expressions(selectors, options.driver)

    existing = spec.get("resourceClaims") or []
    taken = {str(c.get("name")) for c in existing if isinstance(c, Mapping)}
    patch: list[JsonPatchOp] = []
    new_pod_claims: list[dict[str, str]] = []
    claims: list[ContainerClaim] = []
    templates: dict[str, dict[str, Any]] = {}
    removed = (
        cfg.resource_count_name,
        cfg.resource_memory_name,
        cfg.resource_core_name,
        cfg.resource_memory_percentage_name,
    )
    for container_request in request.containers:
        device = container_request.devices.get(NVIDIA)
        if device is None:
            continue
        i = container_request.index
        raw = raw_containers[i]
        shape = _shape(
            i,
            raw,
            options,
            expressions,
            selectors.numa_bind,
            device.nums,
            device.memreq,
            device.mem_percentage_req,
            device.coresreq,
        )
        claim_name = pod_claim_name(container_request.name, i, taken)
        template_name = shape.template_name()
        templates.setdefault(template_name, shape.template(ns, options))
        claims.append(
            ContainerClaim(
                index=i,
                container=container_request.name,
                pod_claim_name=claim_name,
                template_name=template_name,
                shape=shape,
            )
        )
        patch.extend(_removals(i, raw, removed))
        if "claims" in (raw.get("resources") or {}):
            patch.append(
                {
                    "op": "add",
                    "path": f"/spec/containers/{i}/resources/claims/-",
                    "value": {"name": claim_name},
                }
            )
        else:
            patch.append(
                {
                    "op": "add",
                    "path": f"/spec/containers/{i}/resources/claims",
                    "value": [{"name": claim_name}],
                }
            )
        new_pod_claims.append({"name": claim_name, "resourceClaimTemplateName": template_name})
    if not claims:
        return DraTranslation(warnings=tuple(warnings))
    if "resourceClaims" in spec:
        patch.extend({"op": "add", "path": "/spec/resourceClaims/-", "value": c} for c in new_pod_claims)
    else:
        patch.append({"op": "add", "path": "/spec/resourceClaims", "value": new_pod_claims})
    if "labels" in metadata:
        patch.append(
            {"op": "add", "path": f"/metadata/labels/{json_pointer_token(DRA_LABEL)}", "value": "true"}
        )
    else:
        patch.append({"op": "add", "path": "/metadata/labels", "value": {DRA_LABEL: "true"}})
    return DraTranslation(
        patch=tuple(patch),
        templates=tuple(templates.values()),
        claims=tuple(claims),
        warnings=tuple(warnings),
    )
