"""The embedded cluster's DRA controllers: the resourceclaim controller and the kubelet's DRA manager.

:class:`ResourceClaimController` plays kube-controller-manager's resourceclaim controller
(k8s-apis.md §3.8, §3.9): for every live pod whose ``spec.resourceClaims`` entry names a
template, it creates the claim (``generateName: <pod>-<podClaimName>-``, annotation
``resource.kubernetes.io/pod-claim-name``, controller ownerReference to the pod) and records it in
``pod.status.resourceClaimStatuses``. It keeps ``status.reservedFor`` true: a bound pod whose
allocated claim does not list it is added; pods that are gone or finished are removed. A claim
nobody reserves any more is deallocated (allocation cleared, delete-protection finalizer
removed), and a generated claim whose pod is gone or finished is deleted (the API server has no
garbage collector).

:class:`KubeletDra` is what a fake kubelet needs for DRA: a plugin watcher on the node's
``plugins_registry`` directory (``GetInfo`` / ``NotifyRegistrationStatus`` over the real socket),
:meth:`KubeletDra.prepare_pod` (reads each claim, checks ``reservedFor``, calls
``NodePrepareResources`` on the driver's ``dra.sock``, v1 or v1beta1, and returns the CDI device
IDs per container) and :meth:`KubeletDra.unprepare_pod` (``NodeUnprepareResources`` once no pod
on the node uses the claim). :func:`resolve_cdi` applies CDI specs from a directory to those IDs,
as a CDI-enabled runtime would, so tests and the fake kubelet can see each container's env.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from grpclib.client import Channel

from hami._proto import pluginregistration as reg
from hami._proto.k8s.io.kubelet.pkg.apis.dra import v1, v1beta1
from hami.simulator.dra_allocator import DELETE_PROTECTION, RESOURCE_API, pod_claim_names
from hami.simulator.restclient import ApiError, Informer, InformerEvent, RestClient, pod_path

logger = logging.getLogger(__name__)

JsonObj = dict[str, Any]
POD_CLAIM_NAME_ANNOTATION: Final = "resource.kubernetes.io/pod-claim-name"
_TERMINAL: Final = frozenset({"Succeeded", "Failed"})
_GENERATE_NAME_MAX: Final = 57  # 63-character names minus the 5-character random suffix and a dash


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _claims_path(namespace: str, name: str = "", subresource: str = "") -> str:
    path = f"{RESOURCE_API}/namespaces/{namespace}/resourceclaims"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


def _pod_done(pod: Mapping[str, Any] | None) -> bool:
    return pod is None or (pod.get("status") or {}).get("phase") in _TERMINAL


def generate_name(pod_name: str, pod_claim: str) -> str:
    """``<pod>-<podClaimName>-``, each part cut so the generated name stays a valid 63-char name."""
    pod_part, claim_part = pod_name, pod_claim
    while len(pod_part) + len(claim_part) + 2 > _GENERATE_NAME_MAX:
        if len(pod_part) >= len(claim_part):
            pod_part = pod_part[:-1]
        else:
            claim_part = claim_part[:-1]
    return f"{pod_part.rstrip('-.')}-{claim_part.rstrip('-.')}-"


# --------------------------------------------------------------------------------------- controller


class ResourceClaimController:
    """See the module docstring. :meth:`run` until cancelled; :attr:`ready` once synced."""

    def __init__(self, client: RestClient, *, resync_s: float = 5.0) -> None:
        self._client = client
        self._pods = Informer(client, "/api/v1/pods", name="resourceclaim controller pods")
        self._claims = Informer(
            client, f"{RESOURCE_API}/resourceclaims", name="resourceclaim controller claims"
        )
        self._templates = Informer(
            client, f"{RESOURCE_API}/resourceclaimtemplates", name="resourceclaim controller templates"
        )
        for informer in (self._pods, self._claims, self._templates):
            informer.add_handler(self._changed)
        self._wake = asyncio.Event()
        self._resync_s = resync_s
        self.ready = asyncio.Event()
        self.passes = 0

    def _changed(self, event: InformerEvent) -> None:
        self._wake.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for informer in (self._pods, self._claims, self._templates):
                tg.create_task(informer.run(), name=f"watch {informer.name}")
            for informer in (self._pods, self._claims, self._templates):
                await informer.synced.wait()
            self.ready.set()
            while True:
                self._wake.clear()
                try:
                    await self.sync()
                except ApiError as e:
                    logger.info("resourceclaim controller: %s; retrying", e)
                    await asyncio.sleep(0.2)
                    self._wake.set()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._resync_s):
                        await self._wake.wait()

    async def sync(self) -> None:
        """One pass over pods and claims."""
        self.passes += 1
        for pod in list(self._pods.objects.values()):
            if not _meta(pod).get("deletionTimestamp") and not _pod_done(pod):
                await self._ensure_claims(pod)
        pods_by_uid = {str(_meta(p).get("uid")): p for p in self._pods.objects.values()}
        for claim in list(self._claims.objects.values()):
            await self._maintain(claim, pods_by_uid)

    async def _ensure_claims(self, pod: Mapping[str, Any]) -> None:
        meta = _meta(pod)
        namespace, name, uid = (
            str(meta.get("namespace", "default")),
            str(meta.get("name")),
            str(meta.get("uid")),
        )
        statuses = {
            str(s.get("name")): s for s in (pod.get("status") or {}).get("resourceClaimStatuses") or []
        }
        missing: list[JsonObj] = []
        for entry in (pod.get("spec") or {}).get("resourceClaims") or []:
            pod_claim = str(entry.get("name", ""))
            template_name = entry.get("resourceClaimTemplateName")
            if not template_name or pod_claim in statuses:
                continue
            claim_name = self._owned_claim(namespace, uid, pod_claim)
            if claim_name is None:
                template = self._templates.get(f"{namespace}/{template_name}")
                if template is None:
                    logger.info("pod %s/%s waits for template %s", namespace, name, template_name)
                    continue
                created = await self._client.create(
                    _claims_path(namespace), self._claim_from(template, pod, pod_claim)
                )
                claim_name = str(_meta(created).get("name"))
                logger.info("created claim %s/%s for pod %s", namespace, claim_name, name)
            missing.append({"name": pod_claim, "resourceClaimName": claim_name})
        if missing:
            await self._client.patch(
                pod_path(namespace, name, "status"),
                {"metadata": {"uid": uid}, "status": {"resourceClaimStatuses": missing}},
                content_type="application/strategic-merge-patch+json",
            )

    def _owned_claim(self, namespace: str, pod_uid: str, pod_claim: str) -> str | None:
        """A claim created earlier for this pod claim (its status write may have been lost)."""
        for claim in self._claims.objects.values():
            meta = _meta(claim)
            if meta.get("namespace") != namespace:
                continue
            if (meta.get("annotations") or {}).get(POD_CLAIM_NAME_ANNOTATION) != pod_claim:
                continue
            if any(
                o.get("uid") == pod_uid and o.get("controller") for o in meta.get("ownerReferences") or []
            ):
                return str(meta.get("name"))
        return None

    @staticmethod
    def _claim_from(template: Mapping[str, Any], pod: Mapping[str, Any], pod_claim: str) -> JsonObj:
        spec = template.get("spec") or {}
        template_meta = spec.get("metadata") or {}
        meta = _meta(pod)
        return {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {
                "generateName": generate_name(str(meta.get("name")), pod_claim),
                "namespace": meta.get("namespace", "default"),
                "labels": dict(template_meta.get("labels") or {}),
                "annotations": {
                    **(template_meta.get("annotations") or {}),
                    POD_CLAIM_NAME_ANNOTATION: pod_claim,
                },
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": meta.get("name"),
                        "uid": meta.get("uid"),
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": json.loads(json.dumps(spec.get("spec") or {})),
        }

    def _users(self, claim: Mapping[str, Any]) -> list[JsonObj]:
        """Live pods referencing the claim by name (resourceClaimName or their status)."""
        meta = _meta(claim)
        namespace, name = meta.get("namespace"), meta.get("name")
        users = []
        for pod in self._pods.objects.values():
            if _meta(pod).get("namespace") != namespace or _pod_done(pod):
                continue
            if any(claim_name == name for _, claim_name in pod_claim_names(pod)):
                users.append(pod)
        return users

    async def _maintain(self, claim: Mapping[str, Any], pods_by_uid: Mapping[str, Mapping[str, Any]]) -> None:
        meta = _meta(claim)
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        status = claim.get("status") or {}
        reserved = list(status.get("reservedFor") or [])
        keep = [r for r in reserved if not _pod_done(pods_by_uid.get(str(r.get("uid"))))]
        allocation = status.get("allocation")
        if allocation:
            for pod in self._users(claim):
                pod_meta = _meta(pod)
                if (pod.get("spec") or {}).get("nodeName") and all(
                    r.get("uid") != pod_meta.get("uid") for r in keep
                ):
                    keep.append(
                        {"resource": "pods", "name": pod_meta.get("name"), "uid": pod_meta.get("uid")}
                    )
        owner = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")), None)
        orphaned = (
            owner is not None
            and owner.get("kind") == "Pod"
            and _pod_done(pods_by_uid.get(str(owner.get("uid"))))
        )
        if keep != reserved or (allocation and not keep and (orphaned or meta.get("deletionTimestamp"))):
            body = json.loads(json.dumps(claim))
            body.setdefault("status", {})["reservedFor"] = keep
            if not keep:
                body["status"]["reservedFor"] = None
                if orphaned or meta.get("deletionTimestamp"):
                    body["status"]["allocation"] = None  # deallocate: nobody can use it any more
            body["status"] = {k: v for k, v in body["status"].items() if v is not None}
            try:
                claim = await self._client.request("PUT", _claims_path(namespace, name, "status"), body=body)
            except ApiError as e:
                if e.code in (404, 409):
                    self._wake.set()
                    return
                raise
            meta = _meta(claim)
            logger.info("claim %s/%s reserved for %d pods", namespace, name, len(keep))
        allocated = bool((claim.get("status") or {}).get("allocation"))
        if not allocated and DELETE_PROTECTION in (meta.get("finalizers") or []):
            body = json.loads(json.dumps(claim))
            body["metadata"]["finalizers"] = [
                f for f in meta.get("finalizers") or [] if f != DELETE_PROTECTION
            ]
            try:
                await self._client.request("PUT", _claims_path(namespace, name), body=body)
            except ApiError as e:
                if e.code not in (404, 409):
                    raise
                self._wake.set()
                return
        if orphaned and not meta.get("deletionTimestamp"):
            try:
                await self._client.delete(_claims_path(namespace, name), uid=str(meta.get("uid")))
                logger.info("deleted claim %s/%s of a finished pod", namespace, name)
            except ApiError as e:
                if e.code not in (404, 409):
                    raise


# --------------------------------------------------------------------------------------- kubelet side


class DraPrepareError(Exception):
    """A pod's claims could not be prepared (the kubelet keeps the pod waiting or rejects it)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisteredDriver:
    name: str
    endpoint: str
    versions: tuple[str, ...]
    registration_socket: str

    @property
    def uses_v1(self) -> bool:
        return "v1.DRAPlugin" in self.versions


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedPodClaim:
    namespace: str
    name: str
    uid: str
    driver: str
    cdi_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PodDevices:
    """What a pod got from DRA: CDI device IDs per container name, and the claims behind them."""

    containers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    claims: tuple[PreparedPodClaim, ...] = ()


class KubeletDra:
    """The DRA part of one fake kubelet (see the module docstring)."""

    def __init__(
        self, client: RestClient, registry_dir: Path, *, poll_s: float = 0.1, rpc_timeout_s: float = 10.0
    ) -> None:
        self._client = client
        self.registry_dir = registry_dir
        self._poll_s = poll_s
        self._timeout = rpc_timeout_s
        self.drivers: dict[str, RegisteredDriver] = {}
        self._known: dict[str, str] = {}  # registration socket → driver name
        self._prepared: dict[str, PreparedPodClaim] = {}  # claim UID → prepared claim
        self._users: dict[str, set[str]] = {}  # claim UID → pod UIDs on this node
        self._pods: dict[str, list[str]] = {}  # pod UID → claim UIDs
        self.changed = asyncio.Event()

    # ---- plugin watcher ---------------------------------------------------------------------

    async def run(self) -> None:
        """Watch the registry directory until cancelled."""
        self.registry_dir.mkdir(parents=True, exist_ok=True)
        while True:
            await self.scan()
            await asyncio.sleep(self._poll_s)

    async def scan(self) -> None:
        present = {str(p) for p in self.registry_dir.glob("*.sock")}
        for path in sorted(set(self._known) - present):
            driver = self._known.pop(path)
            if self.drivers.get(driver, None) and self.drivers[driver].registration_socket == path:
                del self.drivers[driver]
                logger.info("DRA driver %s de-registered (socket removed)", driver)
                self._notify()
        for path in sorted(present - set(self._known)):
            await self._register(path)

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def _register(self, path: str) -> None:
        channel = Channel(path=path)
        try:
            stub = reg.RegistrationStub(channel)
            try:
                info = await stub.get_info(reg.InfoRequest(), timeout=self._timeout)
            except Exception as e:  # not serving yet: the next scan retries
                logger.debug("plugin socket %s not answering: %s", path, e)
                return
            error = ""
            if info.type != "DRAPlugin":
                error = f"plugin type {info.type!r} is not handled by this kubelet"
            elif not {"v1.DRAPlugin", "v1beta1.DRAPlugin"} & set(info.supported_versions):
                error = f"none of the versions {list(info.supported_versions)} is supported"
            elif not info.endpoint:
                error = "the plugin gave no endpoint"
            with contextlib.suppress(Exception):
                await stub.notify_registration_status(
                    reg.RegistrationStatus(plugin_registered=not error, error=error), timeout=self._timeout
                )
            self._known[path] = info.name
            if error:
                logger.warning("refused plugin %s at %s: %s", info.name, path, error)
                return
            self.drivers[info.name] = RegisteredDriver(
                name=info.name,
                endpoint=info.endpoint,
                versions=tuple(info.supported_versions),
                registration_socket=path,
            )
            logger.info("DRA driver %s registered (endpoint %s)", info.name, info.endpoint)
            self._notify()
        finally:
            channel.close()

    async def wait_for_driver(self, name: str, within: float = 10.0) -> RegisteredDriver:
        async with asyncio.timeout(within):
            while name not in self.drivers:
                await self.changed.wait()
        return self.drivers[name]

    # ---- prepare / unprepare ----------------------------------------------------------------

    async def _call(self, driver: RegisteredDriver, claims: Sequence[PreparedPodClaim], prepare: bool) -> Any:
        channel = Channel(path=driver.endpoint)
        try:
            api: Any = v1 if driver.uses_v1 else v1beta1
            stub = api.DraPluginStub(channel)
            wire = [api.Claim(namespace=c.namespace, uid=c.uid, name=c.name) for c in claims]
            if prepare:
                return await stub.node_prepare_resources(
                    api.NodePrepareResourcesRequest(claims=wire), timeout=self._timeout
                )
            return await stub.node_unprepare_resources(
                api.NodeUnprepareResourcesRequest(claims=wire), timeout=self._timeout
            )
        finally:
            channel.close()

    async def prepare_pod(self, pod: Mapping[str, Any]) -> PodDevices:
        """Prepare every claim of ``pod`` (idempotent); raises :class:`DraPrepareError`."""
        meta = pod.get("metadata") or {}
        namespace, pod_uid = str(meta.get("namespace", "default")), str(meta.get("uid"))
        by_pod_claim: dict[str, PreparedPodClaim] = {}
        for pod_claim, claim_name in pod_claim_names(pod):
            if claim_name is None:
                raise DraPrepareError(f"pod claim {pod_claim!r} has no ResourceClaim yet")
            try:
                claim = await self._client.get(_claims_path(namespace, claim_name))
            except ApiError as e:
                raise DraPrepareError(f"resourceclaim {namespace}/{claim_name}: {e}") from e
            status = claim.get("status") or {}
            if all(r.get("uid") != pod_uid for r in status.get("reservedFor") or []):
                raise DraPrepareError(f"resourceclaim {namespace}/{claim_name} is not reserved for this pod")
            results = ((status.get("allocation") or {}).get("devices") or {}).get("results") or []
            drivers = sorted({str(r.get("driver")) for r in results})
            uid = str(_meta(claim).get("uid"))
            cdi: list[str] = []
            for name in drivers:
                driver = self.drivers.get(name)
                if driver is None:
                    raise DraPrepareError(f"DRA driver {name} is not registered on this node")
                ref = PreparedPodClaim(namespace=namespace, name=claim_name, uid=uid, driver=name, cdi_ids=())
                try:
                    response = await self._call(driver, [ref], prepare=True)
                except Exception as e:
                    raise DraPrepareError(f"NodePrepareResources of {name} failed: {e}") from e
                answer = response.claims.get(uid)
                if answer is None:
                    raise DraPrepareError(f"driver {name} did not answer for claim {claim_name}")
                if answer.error:
                    raise DraPrepareError(f"driver {name}: {answer.error}")
                cdi.extend(i for d in answer.devices for i in d.cdi_device_ids)
            prepared = PreparedPodClaim(
                namespace=namespace, name=claim_name, uid=uid, driver=",".join(drivers), cdi_ids=tuple(cdi)
            )
            self._prepared[uid] = prepared
            self._users.setdefault(uid, set()).add(pod_uid)
            claims_of_pod = self._pods.setdefault(pod_uid, [])
            if uid not in claims_of_pod:
                claims_of_pod.append(uid)
            by_pod_claim[pod_claim] = prepared
        containers: dict[str, tuple[str, ...]] = {}
        spec = pod.get("spec") or {}
        for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
            ids: list[str] = []
            for ref in (container.get("resources") or {}).get("claims") or []:
                prepared_claim = by_pod_claim.get(str(ref.get("name")))
                if prepared_claim is not None:
                    ids.extend(i for i in prepared_claim.cdi_ids if i not in ids)
            if ids:
                containers[str(container.get("name"))] = tuple(ids)
        return PodDevices(containers=containers, claims=tuple(by_pod_claim.values()))

    async def unprepare_pod(self, pod_uid: str) -> list[str]:
        """Unprepare the pod's claims no other pod on this node uses; returns the errors (empty: done)."""
        errors: list[str] = []
        for uid in self._pods.pop(pod_uid, []):
            users = self._users.get(uid, set())
            users.discard(pod_uid)
            if users:
                continue
            prepared = self._prepared.get(uid)
            if prepared is None:
                continue
            failed = False
            for name in prepared.driver.split(","):
                driver = self.drivers.get(name)
                if driver is None:
                    errors.append(f"driver {name} is not registered: claim {prepared.name} left prepared")
                    failed = True
                    continue
                try:
                    response = await self._call(driver, [prepared], prepare=False)
                except Exception as e:
                    errors.append(f"NodeUnprepareResources of {name} failed: {e}")
                    failed = True
                    continue
                answer = response.claims.get(uid)
                if answer is None or answer.error:
                    errors.append(f"driver {name}: {answer.error if answer else 'no answer'}")
                    failed = True
            if failed:
                # Keep it known so a later call can retry (the pod is gone, the claim is not).
                self._pods.setdefault(pod_uid, []).append(uid)
                users.add(pod_uid)
            else:
                self._prepared.pop(uid, None)
                self._users.pop(uid, None)
        if errors:
            logger.warning("unpreparing the claims of pod %s: %s", pod_uid, "; ".join(errors))
        return errors

    def prepared_claims(self) -> Mapping[str, PreparedPodClaim]:
        return dict(self._prepared)


# --------------------------------------------------------------------------------------- CDI


@dataclass(frozen=True, slots=True, kw_only=True)
class CdiEdits:
    """The container edits a CDI-enabled runtime would apply."""

    env: Mapping[str, str] = field(default_factory=dict)
    device_nodes: tuple[str, ...] = ()
    mounts: tuple[tuple[str, str, tuple[str, ...]], ...] = ()  # (host, container, options)


def _merge(edits: Mapping[str, Any], env: dict[str, str], nodes: list[str], mounts: list[Any]) -> None:
    for item in edits.get("env") or []:
        key, _, value = str(item).partition("=")
        env[key] = value
    for node in edits.get("deviceNodes") or []:
        if node.get("path") not in nodes:
            nodes.append(str(node.get("path")))
    for mount in edits.get("mounts") or []:
        entry = (
            str(mount.get("hostPath")),
            str(mount.get("containerPath")),
            tuple(mount.get("options") or ()),
        )
        if entry not in mounts:
            mounts.append(entry)


def resolve_cdi(spec_dirs: Iterable[Path], device_ids: Sequence[str]) -> CdiEdits:
    """Apply the CDI specs found in ``spec_dirs`` (later directories win) to ``device_ids``.

    Raises ``KeyError`` naming an ID no spec defines, as a runtime fails the container.
    """
    specs: dict[str, tuple[Mapping[str, Any], Mapping[str, Any]]] = {}
    for directory in spec_dirs:
        for path in sorted(Path(directory).glob("*.json")):
            try:
                spec = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                logger.warning("ignoring unreadable CDI spec %s: %s", path, e)
                continue
            for device in spec.get("devices") or []:
                specs[f"{spec.get('kind')}={device.get('name')}"] = (spec, device)
    env: dict[str, str] = {}
    nodes: list[str] = []
    mounts: list[Any] = []
    applied: set[int] = set()
    for device_id in device_ids:
        if device_id not in specs:
            raise KeyError(f"unresolvable CDI device {device_id}")
        spec, device = specs[device_id]
        if id(spec) not in applied:
            applied.add(id(spec))
            _merge(spec.get("containerEdits") or {}, env, nodes, mounts)
        _merge(device.get("containerEdits") or {}, env, nodes, mounts)
    return CdiEdits(env=env, device_nodes=tuple(nodes), mounts=tuple(mounts))


def cdi_env(spec_dirs: Iterable[Path], device_ids: Sequence[str]) -> dict[str, str]:
    """Shorthand: only the env of :func:`resolve_cdi`."""
    return dict(resolve_cdi(spec_dirs, device_ids).env)
