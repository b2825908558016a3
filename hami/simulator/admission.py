"""Dynamic admission: Mutating then Validating webhook configurations, called like kube-apiserver does.

For each write whose (operation, group, version, resource[/subresource], scope) matches a webhook's
``rules`` and whose namespace/object selectors match, an ``AdmissionReview`` (v1, or v1beta1 when
the webhook lists only that) is POSTed over HTTPS, verifying the server against ``caBundle`` (for
``service`` references as ``<svc>.<ns>.svc``, the address coming from a resolver the embedding code
supplies). Mutating webhooks run one at a time in name order and may answer a base64 ``JSONPatch``;
validating ones run concurrently. ``failurePolicy`` (Fail by default) decides what a call failure
does; a denial is always final: ``admission webhook "<name>" denied the request: <message>``
(k8s-apis.md §9). ``reinvocationPolicy: IfNeeded`` re-runs a webhook once when a later one changed
the object. Not supported: ``matchConditions`` (CEL; treated as matching), ``matchPolicy``
equivalence across API versions.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import ssl
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import orjson

from hami.simulator.patching import json_patch
from hami.simulator.resources import MUTATING_WEBHOOKS, NAMESPACES, VALIDATING_WEBHOOKS, ResourceType
from hami.simulator.selectors import LabelSelector
from hami.simulator.statuses import StatusError, internal
from hami.simulator.store import Store

logger = logging.getLogger(__name__)

JsonObj = dict[str, Any]
Operation = Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]
ServiceResolver = Callable[[str, str, int], str]
"""``(namespace, service name, port)`` → ``"host:port"`` where that service's webhook listens."""

DEFAULT_USER: Mapping[str, Any] = {
    "username": "system:admin",
    "groups": ["system:masters", "system:authenticated"],
}
_OPTIONS_KIND: Mapping[str, str] = {
    "CREATE": "CreateOptions",
    "UPDATE": "UpdateOptions",
    "DELETE": "DeleteOptions",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionAttributes:
    operation: Operation
    rt: ResourceType
    namespace: str
    name: str
    subresource: str = ""
    old_object: JsonObj | None = None
    dry_run: bool = False
    user: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_USER))


class WebhookCallError(Exception):
    """A webhook could not be called or answered nonsense (subject to ``failurePolicy``)."""


def rule_matches(rule: Mapping[str, Any], attrs: AdmissionAttributes) -> bool:
    rt = attrs.rt
    operations = rule.get("operations") or []
    if "*" not in operations and attrs.operation not in operations:
        return False
    groups = rule.get("apiGroups") or []
    if "*" not in groups and rt.group not in groups:
        return False
    versions = rule.get("apiVersions") or []
    if "*" not in versions and rt.version not in versions:
        return False
    scope = rule.get("scope") or "*"
    if (scope == "Cluster" and rt.namespaced) or (scope == "Namespaced" and not rt.namespaced):
        return False
    sub = attrs.subresource
    for pattern in rule.get("resources") or []:
        res, _, res_sub = str(pattern).partition("/")
        if res not in ("*", rt.plural):
            continue
        if (not res_sub and not sub) or res_sub == "*" or (res_sub and res_sub == sub):
            return True
    return False


class AdmissionChain:
    """Finds and calls the webhooks that apply to a request."""

    def __init__(self, store: Store, *, resolver: ServiceResolver | None = None) -> None:
        self._store = store
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._ssl: dict[str, ssl.SSLContext] = {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _applies(self, webhook: Mapping[str, Any], attrs: AdmissionAttributes, obj: JsonObj) -> bool:
        if not any(isinstance(r, dict) and rule_matches(r, attrs) for r in webhook.get("rules") or []):
            return False
        labels = (obj.get("metadata") or {}).get("labels")
        old_labels = ((attrs.old_object or {}).get("metadata") or {}).get("labels")
        return self._namespace_matches(webhook, attrs, labels, old_labels) and self._object_matches(
            webhook, attrs, labels, old_labels
        )

    def _namespace_matches(
        self,
        webhook: Mapping[str, Any],
        attrs: AdmissionAttributes,
        labels: Mapping[str, str] | None,
        old_labels: Mapping[str, str] | None,
    ) -> bool:
        selector = LabelSelector.from_object(webhook.get("namespaceSelector"))
        if selector.empty:
            return True
        if attrs.rt.store_key == NAMESPACES.store_key:
            return selector.matches(labels) or (attrs.old_object is not None and selector.matches(old_labels))
        if not attrs.rt.namespaced:
            return True
        ns = self._store.try_get(NAMESPACES, None, attrs.namespace)
        return selector.matches((ns or {}).get("metadata", {}).get("labels"))

    @staticmethod
    def _object_matches(
        webhook: Mapping[str, Any],
        attrs: AdmissionAttributes,
        labels: Mapping[str, str] | None,
        old_labels: Mapping[str, str] | None,
    ) -> bool:
        selector = LabelSelector.from_object(webhook.get("objectSelector"))
        if selector.empty:
            return True
        return selector.matches(labels) or (attrs.old_object is not None and selector.matches(old_labels))

    def configured(self) -> bool:
        """Cheap pre-check: is any webhook configuration stored at all?"""
        return bool(self._store.objects(MUTATING_WEBHOOKS) or self._store.objects(VALIDATING_WEBHOOKS))

    # ------------------------------------------------------------------ phases
    async def mutate(self, attrs: AdmissionAttributes, obj: JsonObj) -> JsonObj:
        webhooks = sorted(
            (
                (c["metadata"]["name"], w)
                for c in self._store.objects(MUTATING_WEBHOOKS)
                for w in c.get("webhooks") or []
                if isinstance(w, dict)
            ),
            key=lambda pair: pair[0],
        )
        called: list[tuple[int, JsonObj]] = []
        last_change = -1
        for index, (_, webhook) in enumerate(webhooks):
            if not self._applies(webhook, attrs, obj):
                continue
            new = await self._call(webhook, attrs, obj, mutating=True)
            called.append((index, webhook))
            if new is not obj:
                obj, last_change = new, index
        if last_change >= 0:
            for index, webhook in called:
                if webhook.get("reinvocationPolicy") == "IfNeeded" and index != last_change:
                    obj = await self._call(webhook, attrs, obj, mutating=True)
        return obj

    async def validate(self, attrs: AdmissionAttributes, obj: JsonObj) -> None:
        webhooks = [
            w
            for c in self._store.objects(VALIDATING_WEBHOOKS)
            for w in c.get("webhooks") or []
            if isinstance(w, dict) and self._applies(w, attrs, obj)
        ]
        if webhooks:
            await asyncio.gather(*(self._call(w, attrs, obj, mutating=False) for w in webhooks))

    # ------------------------------------------------------------------ one call
    async def _call(
        self, webhook: Mapping[str, Any], attrs: AdmissionAttributes, obj: JsonObj, *, mutating: bool
    ) -> JsonObj:
        name = str(webhook.get("name", ""))
        try:
            response = await self._post(webhook, attrs, obj)
        except WebhookCallError as e:
            if webhook.get("failurePolicy", "Fail") == "Ignore":
                logger.warning("admission webhook %s failed, ignored by failurePolicy: %s", name, e)
                return obj
            raise internal(f'failed calling webhook "{name}": {e}') from None
        if not response.get("allowed"):
            raise _denial(name, response.get("status"))
        patch = response.get("patch")
        if not mutating or not patch:
            return obj
        try:
            ops = orjson.loads(base64.b64decode(patch, validate=True))
        except (binascii.Error, ValueError, TypeError) as e:
            raise internal(f'failed calling webhook "{name}": undecodable patch: {e}') from None
        try:
            patched = json_patch(obj, ops)
        except StatusError as e:
            raise internal(
                f'admission webhook "{name}" returned a patch that cannot be applied: {e.details}'
            ) from None
        if not isinstance(patched, dict):
            raise internal(
                f'admission webhook "{name}" returned a patch that replaced the object with a non-object'
            )
        return patched

    def _ssl_context(self, ca_bundle: str | None) -> ssl.SSLContext:
        key = ca_bundle or ""
        context = self._ssl.get(key)
        if context is None:
            if ca_bundle:
                try:
                    pem = base64.b64decode(ca_bundle).decode()
                    context = ssl.create_default_context(cadata=pem)
                except (binascii.Error, UnicodeDecodeError, ssl.SSLError, ValueError) as e:
                    raise WebhookCallError(f"invalid caBundle: {e}") from None
            else:
                context = ssl.create_default_context()
            self._ssl[key] = context
        return context

    def _target(self, webhook: Mapping[str, Any]) -> tuple[str, str | None]:
        config = webhook.get("clientConfig") or {}
        if config.get("url"):
            url = str(config["url"])
            if not url.startswith("https://"):
                raise WebhookCallError(f'webhook url {url!r}: "https" is the only allowed URL scheme')
            return url, None
        service = config.get("service") or {}
        if not service.get("name") or not service.get("namespace"):
            raise WebhookCallError("clientConfig has neither url nor service")
        port = int(service.get("port") or 443)
        if self._resolver is None:
            raise WebhookCallError(
                f"no address for service {service['namespace']}/{service['name']}: no resolver"
            )
        address = self._resolver(str(service["namespace"]), str(service["name"]), port)
        path = str(service.get("path") or "/")
        return f"https://{address}{path}", f"{service['name']}.{service['namespace']}.svc"

    async def _post(self, webhook: Mapping[str, Any], attrs: AdmissionAttributes, obj: JsonObj) -> JsonObj:
        versions: Sequence[str] = webhook.get("admissionReviewVersions") or ["v1"]
        version = "v1" if "v1" in versions else "v1beta1" if "v1beta1" in versions else ""
        if not version:
            raise WebhookCallError(
                f"webhook does not accept v1 or v1beta1 AdmissionReview (it lists {versions})"
            )
        timeout = int(webhook.get("timeoutSeconds") or 10)
        url, server_hostname = self._target(webhook)
        context = self._ssl_context((webhook.get("clientConfig") or {}).get("caBundle"))
        request_uid = str(uuid.uuid4())
        review = {
            "apiVersion": f"admission.k8s.io/{version}",
            "kind": "AdmissionReview",
            "request": _request(attrs, obj, request_uid),
        }
        if self._session is None:
            self._session = aiohttp.ClientSession()
        call_url = f"{url}{'&' if '?' in url else '?'}timeout={timeout}s"
        try:
            async with self._session.post(
                call_url,
                data=orjson.dumps(review),
                ssl=context,
                server_hostname=server_hostname,
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise WebhookCallError(
                        f"expected 200 from the webhook, got {resp.status}: {body[:200]!r}"
                    )
        except TimeoutError:
            raise WebhookCallError(f'Post "{call_url}": context deadline exceeded') from None
        except aiohttp.ClientError as e:
            raise WebhookCallError(f'failed to call webhook: Post "{call_url}": {e}') from None
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise WebhookCallError(f"webhook response is not JSON: {e}") from None
        return _check_response(answer, version, request_uid)


def _request(attrs: AdmissionAttributes, obj: JsonObj, uid: str) -> JsonObj:
    rt = attrs.rt
    kind = {"group": rt.group, "version": rt.version, "kind": rt.kind}
    resource = {"group": rt.group, "version": rt.version, "resource": rt.plural}
    request: JsonObj = {
        "uid": uid,
        "kind": kind,
        "resource": resource,
        "requestKind": kind,
        "requestResource": resource,
        "operation": attrs.operation,
        "userInfo": dict(attrs.user),
        "object": obj if attrs.operation != "DELETE" else None,
        "oldObject": attrs.old_object,
        "dryRun": attrs.dry_run,
        "options": {
            "kind": _OPTIONS_KIND.get(attrs.operation, "CreateOptions"),
            "apiVersion": "meta.k8s.io/v1",
        },
    }
    if attrs.subresource:
        request["subResource"] = attrs.subresource
        request["requestSubResource"] = attrs.subresource
    if attrs.name:
        request["name"] = attrs.name
    if attrs.namespace:
        request["namespace"] = attrs.namespace
    return request


def _check_response(answer: Any, version: str, uid: str) -> JsonObj:
    if not isinstance(answer, dict):
        raise WebhookCallError("webhook response is not a JSON object")
    if version == "v1" and (
        answer.get("apiVersion") != "admission.k8s.io/v1" or answer.get("kind") != "AdmissionReview"
    ):
        raise WebhookCallError(
            f"expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got "
            f"{answer.get('apiVersion')}, Kind={answer.get('kind')}"
        )
    response = answer.get("response")
    if not isinstance(response, dict):
        raise WebhookCallError("webhook response was absent")
    if version == "v1":
        if response.get("uid") != uid:
            raise WebhookCallError(f'expected response.uid="{uid}", got "{response.get("uid")}"')
        if response.get("patch") and not response.get("patchType"):
            raise WebhookCallError("webhook returned response.patch but not response.patchType")
        if response.get("patchType") and not response.get("patch"):
            raise WebhookCallError("webhook returned response.patchType but not response.patch")
    patch_type = response.get("patchType") or "JSONPatch"
    if response.get("patch") and patch_type != "JSONPatch":
        raise WebhookCallError(f'webhook returned invalid response.patchType of "{patch_type}"')
    return response


def _denial(name: str, status: Any) -> StatusError:
    result = status if isinstance(status, dict) else {}
    code = int(result.get("code") or 0)
    if code < 400:
        code = 400
    denied = f'admission webhook "{name}" denied the request'
    message = str(result.get("message") or "")
    reason = str(result.get("reason") or "")
    if message:
        text = f"{denied}: {message}"
    elif reason:
        text = f"{denied}: {reason}"
    else:
        text = f"{denied} without explanation"
    return StatusError(
        code, reason, text, result.get("details") if isinstance(result.get("details"), dict) else None
    )
