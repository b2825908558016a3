"""The webhook's DRA claim-translation mode (``--dra-mode=translate``; issue 8 item 3).

:class:`DraAdmitter` implements the :class:`~hami.core.admission.PodAdmitter` seam: a pod whose
containers ask for NVIDIA GPUs gets the patch of :func:`hami.core.dra_translate.translate_pod`
(requests turned into ``resources.claims`` and ``spec.resourceClaims`` naming shared
ResourceClaimTemplates, k8s-apis.md §3.7-§3.8) and the decision carries those templates as
prerequisites; :class:`TemplateCreator` is what the webhook handler awaits to create them before it
answers. The kube-scheduler's DynamicResources plugin places such pods, so ``spec.schedulerName``
is left alone and HAMi's capacity checks do not apply.

Where it differs from HAMi-DRA (§4.2, §4.6): claims come from templates named after the request's
shape, never after the pod (admission sees no name for ``generateName`` pods), so every replica
of a Deployment shares one template and the resourceclaim controller owns each pod's claim (deleted
with the pod); nothing is created on a dry run (the registration declares ``NoneOnDryRun``).

Other pods go to HAMi's own admission unchanged: pods without NVIDIA requests (other vendors keep
HAMi's scheduling), pods carrying ``hami.io/webhook: ignore``, and pods naming a scheduler other
than ``default-scheduler`` or HAMi's. Refused (denied with the reason): a request DRA cannot express
(``gpumem-percentage`` other than 100), a pod mixing NVIDIA GPUs with another vendor's devices
(they would need two schedulers), and a pod with ``spec.nodeName`` set (nobody would allocate its
claims).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Final

from hami.core import keys
from hami.core.admission import (
    DEFAULT_SCHEDULER,
    MSG_NODE_ASSIGNED,
    AdmissionDecision,
    PodAdmitter,
    screen_request,
)
from hami.core.cluster_capacity import ClusterCapacity
from hami.core.deviceconfig import NvidiaConfig
from hami.core.dra_translate import (
    DRA_LABEL,
    MANAGED_BY_LABEL,
    RESOURCE_API_VERSION,
    DraTranslation,
    TranslateOptions,
    translate_pod,
)
from hami.core.errors import HamiError, InvalidRequest
from hami.core.model import NVIDIA
from hami.core.requests import RequestReader, pod_request
from hami.k8s.api import KubeApi
from hami.k8s.errors import ApiAlreadyExists, ApiError
from hami.k8s.objects import Resource
from hami.scheduler.settings import DRA_MODE_TRANSLATE, SchedulerSection
from hami.scheduler.webhook import PrerequisiteCreator

logger = logging.getLogger(__name__)

RESOURCE_CLAIM_TEMPLATES: Final = Resource(
    group="resource.k8s.io",
    version="v1",
    plural="resourceclaimtemplates",
    kind="ResourceClaimTemplate",
    namespaced=True,
)
DEFAULT_CREATE_TIMEOUT: Final = 5.0
"""Seconds for all of one pod's template creates: under the registration's 10 s timeout, so the
API server gets our clear error rather than its own deadline."""
MANAGED_BY_VALUE: Final = "hami"


class TemplateError(HamiError):
    """A ResourceClaimTemplate a pod needs could not be made to exist."""


# --------------------------------------------------------------------------------------- decision


class DraAdmitter:
    """Pod admission in DRA mode; ``hami`` decides every pod this mode does not translate."""

    __slots__ = ("_hami", "_options", "_readers", "_takes")

    def __init__(
        self,
        hami: PodAdmitter,
        options: TranslateOptions | None = None,
        *,
        scheduler_name: str = keys.DEFAULT_SCHEDULER_NAME,
        readers: Sequence[RequestReader] = (),
    ) -> None:
        self._hami = hami
        self._options = options if options is not None else TranslateOptions()
        self._readers = tuple(readers)
        self._takes = frozenset({"", DEFAULT_SCHEDULER, *([scheduler_name] if scheduler_name else [])})

    @property
    def options(self) -> TranslateOptions:
        return self._options

    def review_request(
        self, request: Mapping[str, object], *, capacity: ClusterCapacity | None = None
    ) -> AdmissionDecision:
        screened = screen_request(request)
        if isinstance(screened, AdmissionDecision):
            return screened
        try:
            translation = self._translation(request, screened)
            if translation is None:
                return self._hami.review_request(request, capacity=capacity)
            return self._decide(screened, translation)
        except InvalidRequest as e:
            return AdmissionDecision.deny(str(e))
        except HamiError as e:
            return AdmissionDecision.error(500, str(e))

    def _translation(self, request: Mapping[str, object], pod: Mapping[str, object]) -> DraTranslation | None:
        """The translation of ``pod``, or None when this mode leaves it to HAMi's admission."""
        metadata = _object(pod, "metadata", "request.object")
        labels = _object(metadata, "labels", "metadata")
        if labels.get(keys.WEBHOOK_IGNORE) == keys.WEBHOOK_IGNORE_VALUE:
            return None
        spec = _object(pod, "spec", "request.object")
        scheduler = spec.get("schedulerName")
        if scheduler is not None and scheduler not in self._takes:
            return None
        namespace = request.get("namespace")
        translation = translate_pod(
            pod, self._options, namespace=namespace if isinstance(namespace, str) and namespace else None
        )
        return translation if translation.changed else None

    def _decide(self, pod: Mapping[str, object], translation: DraTranslation) -> AdmissionDecision:
        spec = _object(pod, "spec", "request.object")
        _check_patch_targets(pod, translation)
        others = sorted(
            {
                vendor
                for container in pod_request(pod, self._options.config, readers=self._readers).containers
                for vendor in container.devices
                if vendor != NVIDIA
            }
        )
        if others:
            return AdmissionDecision.deny(
                f"pod asks for NVIDIA GPUs, which DRA mode turns into ResourceClaims, and for "
                f"{', '.join(others)} devices, which HAMi's scheduler places: split it into two pods",
                warnings=translation.warnings,
            )
        if spec.get("nodeName"):
            return AdmissionDecision.deny(
                f"{MSG_NODE_ASSIGNED}: its DRA claims would never be allocated", warnings=translation.warnings
            )
        moved = ", ".join(f"{c.container!r} → {c.template_name}" for c in translation.claims)
        return AdmissionDecision.allow(
            f"GPU requests moved to DRA claims: {moved}",
            patch=translation.patch,
            warnings=translation.warnings,
            prerequisites=translation.templates,
        )


def _object(parent: Mapping[str, object], key: str, where: str) -> Mapping[str, object]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{where}.{key}: expected an object, got {type(value).__name__}")
    return value


def _check_patch_targets(pod: Mapping[str, object], translation: DraTranslation) -> None:
    """The fields the patch appends to must have their API types, or the API server would fail to
    apply it with a message about the patch rather than the pod."""
    spec = _object(pod, "spec", "request.object")
    claims = spec.get("resourceClaims")
    if claims is not None and not isinstance(claims, list):
        raise InvalidRequest(f"spec.resourceClaims: expected a list, got {type(claims).__name__}")
    containers = spec.get("containers")
    assert isinstance(containers, list)  # translate_pod read them
    for claim in translation.claims:
        where = f"spec.containers[{claim.index}].resources"
        resources = _object(containers[claim.index], "resources", f"spec.containers[{claim.index}]")
        existing = resources.get("claims")
        if existing is not None and not isinstance(existing, list):
            raise InvalidRequest(f"{where}.claims: expected a list, got {type(existing).__name__}")


# --------------------------------------------------------------------------------------- creation


class TemplateCreator:
    """A :data:`~hami.scheduler.webhook.PrerequisiteCreator` for ResourceClaimTemplates.

    Creates each template; AlreadyExists is fine when the existing one was made by HAMi (its name
    encodes the request's shape, so it holds the same request), refused otherwise, since a pod
    would then get whatever a foreign template of that name asks for.
    """

    __slots__ = ("_api", "timeout")

    def __init__(self, api: KubeApi, *, timeout: float = DEFAULT_CREATE_TIMEOUT) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self._api = api
        self.timeout = timeout

    async def __call__(self, objects: Sequence[Mapping[str, object]]) -> None:
        """Raise :class:`TemplateError` with a message naming the template and the problem."""
        refs = [_template_ref(obj) for obj in objects]
        try:
            async with asyncio.timeout(self.timeout):
                for obj, (namespace, name) in zip(objects, refs, strict=True):
                    await self._ensure(obj, namespace, name)
        except TimeoutError:
            names = ", ".join(f"{namespace}/{name}" for namespace, name in refs)
            raise TemplateError(
                f"cannot create ResourceClaimTemplate {names}: the API server did not answer within "
                f"{self.timeout:g} s"
            ) from None

    async def _ensure(self, template: Mapping[str, object], namespace: str, name: str) -> None:
        ref = f"ResourceClaimTemplate {namespace}/{name}"
        try:
            await self._api.create(RESOURCE_CLAIM_TEMPLATES, template, namespace=namespace)
            logger.info("webhook: created %s", ref)
            return
        except ApiAlreadyExists:
            pass
        except ApiError as e:
            raise TemplateError(f"cannot create {ref}: {e}") from e
        try:
            existing = await self._api.get(RESOURCE_CLAIM_TEMPLATES, name, namespace=namespace)
        except ApiError as e:
            raise TemplateError(f"{ref} exists but cannot be read: {e}") from e
        labels = (existing.get("metadata") or {}).get("labels") or {}
        if labels.get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE or labels.get(DRA_LABEL) != "true":
            raise TemplateError(
                f"{ref} exists but was not made by HAMi (labels {MANAGED_BY_LABEL}={MANAGED_BY_VALUE}, "
                f"{DRA_LABEL}=true missing): delete it, HAMi creates it again"
            )


def _template_ref(obj: Mapping[str, object]) -> tuple[str, str]:
    kind, version = obj.get("kind"), obj.get("apiVersion")
    if (kind, version) != (RESOURCE_CLAIM_TEMPLATES.kind, RESOURCE_API_VERSION):
        raise TemplateError(
            f"cannot create {kind} ({version}): only {RESOURCE_API_VERSION} ResourceClaimTemplates"
        )
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    namespace = meta.get("namespace") if isinstance(meta, Mapping) else None
    if not isinstance(name, str) or not name or not isinstance(namespace, str) or not namespace:
        raise TemplateError("a ResourceClaimTemplate without metadata.name and metadata.namespace")
    return namespace, name


# --------------------------------------------------------------------------------------- wiring


def webhook_admitter(
    hami: PodAdmitter,
    cfg: SchedulerSection,
    api: KubeApi,
    *,
    nvidia: NvidiaConfig,
    readers: Sequence[RequestReader] = (),
) -> tuple[PodAdmitter, PrerequisiteCreator | None]:
    """The webhook's admitter and prerequisite creator for ``--dra-mode``: HAMi's own admission
    (nothing to create) when off; a :class:`DraAdmitter` over it and a :class:`TemplateCreator`
    writing through ``api`` (not the leader fence: templates are shared and idempotent) in
    ``translate``."""
    if cfg.dra_mode != DRA_MODE_TRANSLATE:
        return hami, None
    options = TranslateOptions(config=nvidia, driver=cfg.dra_driver_name, device_class=cfg.dra_driver_name)
    admitter = DraAdmitter(hami, options, scheduler_name=cfg.scheduler_name, readers=readers)
    return admitter, TemplateCreator(api)
