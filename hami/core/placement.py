"""Choosing a node and devices for a pod (hami-scheduler-spec.md §5.2 steps 3-6, §5.4, §5.7).

:func:`schedule` is HAMi's Filter decision as a pure function of one :class:`ClusterSnapshot`:

* per node (``calcScore``/``fitInDevices``): for each container in order, score the node's
  devices for that container's request, stable-sort them for the GPU policy, run each requested
  vendor's Fit on its devices, and apply the chosen devices to a tentative copy of the usage, so
  later containers see them;
* the node score is HAMi's default score of the usage before the pod, plus each vendor's
  ScoreNode; binpack takes the highest, spread the lowest; ties go to the smallest node name.

HAMi evaluates every candidate. We get the same answer (with deterministic ties) for less:

* a node's score does not depend on its fit when no requested vendor scores nodes (NVIDIA never
  does), so :func:`schedule` visits candidates best-first in the snapshot's precomputed order and
  stops at the first that fits; a cheap bound (:meth:`Vendor.prefilter`) skips nodes that cannot;
* when each device's verdict does not depend on the devices picked before it (no quota, no NUMA
  binding, no MIG GPU, one vendor in the container), fit/unfit and the reason counts of the first
  requesting container do not depend on the device order, so that Fit first runs unsorted: a
  failure is HAMi's exact failure, without scoring or sorting the devices.

Only when no node fits is every candidate evaluated, so the failure carries HAMi's exact reasons
for each. ``evaluate_all=True`` evaluates every candidate anyway (HAMi's FilteringSucceed event
lists every fitting node with its score); devices are then chosen for the winner only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, cast

from hami.core.errors import HamiError, InvalidRequest
from hami.core.fit import (
    ContainerFit,
    DeviceRejection,
    FitContext,
    QuotaCheck,
    RawRejection,
    Reason,
    reason_text,
)
from hami.core.fragmentation import MILLI
from hami.core.ids import NodeName
from hami.core.model import MODE_MIG, PERCENTAGE_UNSET, ContainerDevice, ContainerDeviceRequest, PodDevices
from hami.core.packing import FragmentationAware
from hami.core.pod_annotations import device_id_of
from hami.core.policy import (
    DEFAULT_GPU_POLICY,
    DEFAULT_NODE_POLICY,
    GpuPolicy,
    NodePolicy,
    gpu_policy_of,
    node_policy_of,
    sort_for_search,
)
from hami.core.requests import PodRequest
from hami.core.scoring import RequestLoad, add_score, device_scores
from hami.core.snapshot import ClusterSnapshot, DeviceUsage, NodeSnapshot, NodeTable
from hami.core.vendor import Vendor, VendorRegistry

logger = logging.getLogger(__name__)

NODE_UNREGISTERED: Final = "node unregistered"  # HAMi's FailedNodes value for an unknown node
NODE_QUARANTINED: Final = "NodeQuarantined"  # ours: a pod's allocation on the node is unreadable
DEVICE_TYPE_NOT_FOUND: Final = "Device type not found"
_UNFIT: Final[str] = Reason.NODE_UNFIT_POD.value
ADD_RESOURCE_USAGE_FAILED: Final = "AddResourceUsage failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeFailure:
    """Why a candidate node cannot take the pod.

    ``reason`` is the value for the extender's ``FailedNodes`` (``NodeUnfitPod``, ``node
    unregistered``, ``NodeQuarantined``); :attr:`detail` is HAMi's reason string (``"2/8
    CardInsufficientMemory, 1/8 CardTypeMismatch"``, ``NodeInsufficientDevice``...), built on
    demand from the per-reason ``counts`` (or ``note`` for reasons outside the ``n/m`` format).
    """

    node: NodeName
    reason: str
    note: str = ""
    counts: Mapping[str, int] = field(default_factory=dict)
    considered: int = 0  # devices handed to the vendor Fit
    container: int | None = None  # index of the first container that did not fit
    vendor: str | None = None
    raw_rejections: tuple[RawRejection, ...] = ()

    @property
    def detail(self) -> str:
        return self.note or reason_text(self.counts, self.considered)

    @property
    def rejections(self) -> tuple[DeviceRejection, ...]:
        return tuple(DeviceRejection._make(r) for r in self.raw_rejections)

    def messages(self) -> list[str]:
        """One line per device, e.g. ``GPU-3: free 7200 MiB < 8000 MiB``."""
        return [r.message for r in self.rejections]


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeFit:
    """A node that fits, with its final score. ``devices`` (vendor -> one entry per container) is
    None for the nodes of an ``evaluate_all`` decision that were not chosen: whether a node fits
    is decided without sorting its devices (see :func:`_evaluate`), the choice of devices is not."""

    node: NodeName
    score: float
    devices: PodDevices | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The chosen node and devices, and what was learned on the way.

    ``fits`` are the fitting nodes evaluated, best first (all of them when ``complete``, i.e. with
    ``evaluate_all``); ``failures`` the candidates found unfit on the way (unregistered,
    quarantined, and those ranked before the chosen node; all of them when ``complete``).
    """

    node: NodeName
    score: float
    devices: PodDevices
    generation: int
    fits: tuple[NodeFit, ...] = ()
    failures: Mapping[NodeName, NodeFailure] = field(default_factory=dict)
    complete: bool = False

    def success_message(self, candidates: int) -> str:
        """HAMi's FilteringSucceed event text (meaningful with ``evaluate_all=True``), e.g.
        ``find fit node(node-a), 1 nodes not fit, 1 nodes fit(node-a:2.87)``; the fitting nodes are
        listed in HAMi's sort order, the chosen one last."""
        listed = ",".join(f"{f.node}:{f.score:.2f}" for f in reversed(self.fits))
        return (
            f"find fit node({self.node}), {candidates - len(self.fits)} nodes not fit, "
            f"{len(self.fits)} nodes fit({listed})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Unschedulable:
    """No candidate fits; ``failures`` has an entry for every candidate."""

    generation: int
    failures: Mapping[NodeName, NodeFailure]

    @property
    def failed_nodes(self) -> dict[str, str]:
        """The extender's ``FailedNodes`` map."""
        return {name: f.reason for name, f in self.failures.items()}

    def event_messages(self) -> list[str]:
        """HAMi's per-reason FilteringFailed messages, ``<N> nodes <Reason>(<sorted nodes>)``; only
        reasons in the ``n/m Reason`` format count, as in HAMi (spec §5.9)."""
        by_reason: dict[str, list[str]] = {}
        for name, failure in self.failures.items():
            if not failure.note:
                # The detail is reason_text(counts): one "n/m Reason" item per counted reason,
                # so the counts give the reasons without formatting and parsing that text.
                for reason in failure.counts:
                    if reason:
                        by_reason.setdefault(reason, []).append(name)
                continue
            for item in failure.note.split(", "):
                count, sep, reason = item.partition(" ")
                if sep and "/" in count and reason:
                    by_reason.setdefault(reason, []).append(name)
        return [
            f"{len(nodes)} nodes {r}({','.join(sorted(nodes))})" for r, nodes in sorted(by_reason.items())
        ]


_Entry = tuple[str, Vendor | None, ContainerDeviceRequest]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Plan:
    """The per-decision part of the work, computed once and shared by every node evaluation."""

    containers: tuple[tuple[_Entry, ...], ...]  # per container: (vendor, impl or None, request)
    loads: tuple[RequestLoad | None, ...]
    contexts: Mapping[str, FitContext]
    gpu_policy: GpuPolicy
    node_policy: NodePolicy
    vendors_used: tuple[Vendor, ...]
    first: int  # index of the first container that requests devices
    single: bool  # only that container requests devices
    order_free: bool  # its fit outcome and reasons do not depend on the device order


_QUICK: Final = NodeFailure(node=NodeName(""), reason=_UNFIT)  # marker: a cheap bound failed


def schedule(
    snapshot: ClusterSnapshot,
    candidates: Iterable[str],
    request: PodRequest,
    vendors: VendorRegistry,
    *,
    default_node_policy: NodePolicy = DEFAULT_NODE_POLICY,
    default_gpu_policy: GpuPolicy = DEFAULT_GPU_POLICY,
    quota: QuotaCheck | None = None,
    evaluate_all: bool = False,
    fragmentation: FragmentationAware | None = None,
) -> Decision | Unschedulable:
    """Pick one node of ``candidates`` and the devices for every container of ``request``.

    Policies come from the pod's annotations (``request.gpu_policy``/``node_policy``), else the
    defaults. ``quota`` is the namespace's ResourceQuota check (None: no quota). Raises
    InvalidRequest if the pod requests no device (HAMi passes such pods through unfiltered).

    ``fragmentation`` ranks the fitting nodes under the ``fragmentation-aware`` node policy
    (every candidate is then evaluated); without it that policy falls back to binpack.
    """
    if request.is_empty:
        raise InvalidRequest(f"pod {request.namespace}/{request.name} requests no device")
    plan = _plan(request, vendors, default_node_policy, default_gpu_policy, quota)
    # NodeName is a NewType (a str at run time): no per-name conversion for 500 candidates, and a
    # frozenset (C-level, about half the cost of an ordered dict) for the membership tests.
    listed = cast(
        "Sequence[NodeName]", candidates if isinstance(candidates, tuple | list) else tuple(candidates)
    )
    wanted = frozenset(listed)
    failures: dict[NodeName, NodeFailure] = {}
    fits: list[NodeFit] = []
    nodes = snapshot.nodes
    if not (nodes.names >= wanted if isinstance(nodes, NodeTable) else nodes.keys() >= wanted):
        for name in dict.fromkeys(listed):  # candidate order, for the failures
            if name not in nodes:
                failures[name] = NodeFailure(node=name, reason=NODE_UNREGISTERED)

    frag = fragmentation if plan.node_policy is NodePolicy.FRAGMENTATION_AWARE else None
    early_exit = frag is None and not evaluate_all and not any(v.scores_nodes for v in plan.vendors_used)
    quick: list[NodeSnapshot] = []
    for name in _visit_order(snapshot, wanted, plan.node_policy):
        node = nodes[name]
        if node.quarantined:
            failures[name] = _quarantine_failure(node)
            continue
        result = _evaluate(node, plan, bound=early_exit, need_devices=early_exit)
        if result is _QUICK:
            quick.append(node)
            continue
        if isinstance(result, NodeFailure):
            failures[name] = result
            continue
        fits.append(result)
        if early_exit:
            break

    if not fits:
        for node in quick:  # exact reasons for the nodes the bound skipped
            result = _evaluate(node, plan, bound=False, need_devices=False)
            if isinstance(result, NodeFit):  # a vendor's bound was wrong: still place correctly
                logger.error("prefilter of %s rejected node %s, which fits", plan.vendors_used, node.name)
                fits.append(result)
            else:
                failures[node.name] = result
        if not fits:
            return Unschedulable(generation=snapshot.generation, failures=MappingProxyType(failures))
    fitting = {f.node for f in fits}
    for node in quick:
        if node.name not in failures and node.name not in fitting:
            failures[node.name] = NodeFailure(
                node=node.name, reason=_UNFIT, note="cannot fit (bound); reasons not computed"
            )
    if frag is not None:
        frag.refresh()
        shape = pod_shape(request)
        fits.sort(
            key=lambda f: (*fragmentation_key(frag, free_milli(nodes[f.node]), *shape), -f.score, f.node)
        )
    elif plan.node_policy is NodePolicy.SPREAD:
        fits.sort(key=lambda f: (f.score, f.node))
    else:
        fits.sort(key=lambda f: (-f.score, f.node))
    while True:
        best = fits[0]
        if best.devices is not None:
            devices = best.devices
            break
        # Whether a node fits was decided without choosing its devices: choose them now.
        chosen = _evaluate(nodes[best.node], plan, bound=False, need_devices=True)
        if isinstance(chosen, NodeFit) and chosen.devices is not None:
            devices = chosen.devices
            fits[0] = chosen
            break
        logger.error("node %s fit without device choice, then did not: %s", best.node, chosen)
        del fits[0]
        failures[best.node] = chosen if isinstance(chosen, NodeFailure) else _failure_of(best.node)
        if not fits:
            return Unschedulable(generation=snapshot.generation, failures=MappingProxyType(failures))
    complete = not early_exit
    return Decision(
        node=best.node,
        score=best.score,
        devices=devices,
        generation=snapshot.generation,
        fits=tuple(fits),
        failures=MappingProxyType(failures),
        complete=complete,
    )


def evaluate_node(
    node: NodeSnapshot,
    request: PodRequest,
    vendors: VendorRegistry,
    *,
    default_node_policy: NodePolicy = DEFAULT_NODE_POLICY,
    default_gpu_policy: GpuPolicy = DEFAULT_GPU_POLICY,
    quota: QuotaCheck | None = None,
) -> NodeFit | NodeFailure:
    """HAMi's ``calcScore`` for one node, fully evaluated (no bound): its fit or its failure."""
    if node.quarantined:
        return _quarantine_failure(node)
    plan = _plan(request, vendors, default_node_policy, default_gpu_policy, quota)
    result = _evaluate(node, plan, bound=False, need_devices=True)
    assert result is not _QUICK
    return result


# The extender never sees CPU (kube-scheduler filters it), so the fragmentation-aware policy scores
# GPU only: every node has "plenty" of CPU left and pods ask none. CPU-stranded GPU, which the
# replay's version of the policy also weighs, is therefore invisible here.
UNKNOWN_CPU_LEFT: Final = 1 << 40


def pod_shape(request: PodRequest) -> tuple[int, int]:
    """(GPU milli per GPU, number of GPUs) of a pod for the fragmentation model.

    milli is the core share (``coresreq`` x 10, as in the replay); without one, the memory
    percentage; without either, a whole GPU. The GPU count sums every container's requests.
    """
    number = 0
    milli = 0
    for container in request.containers:
        for req in container.devices.values():
            if req.nums <= 0:
                continue
            number += req.nums
            if req.coresreq > 0:
                share = req.coresreq * 10
            elif req.mem_percentage_req != PERCENTAGE_UNSET and req.mem_percentage_req > 0:
                share = req.mem_percentage_req * 10
            else:
                share = MILLI
            milli = max(milli, min(MILLI, share))
    return milli, number


def free_milli(node: NodeSnapshot) -> tuple[int, ...]:
    """Free share of each healthy GPU of a node, x1000, ascending: the smaller of its free cores
    and free memory fractions (0 once its task slots are full)."""
    lefts: list[int] = []
    for d in node.devices:
        if not d.health or d.mode == MODE_MIG:
            continue
        if d.count and d.used >= d.count:
            lefts.append(0)
            continue
        core = MILLI if d.totalcore <= 0 else (d.totalcore - d.usedcores) * MILLI // d.totalcore
        mem = MILLI if d.totalmem <= 0 else (d.totalmem - d.usedmem) * MILLI // d.totalmem
        lefts.append(max(0, min(MILLI, core, mem)))
    lefts.sort()
    return tuple(lefts)


def fragmentation_key(
    policy: FragmentationAware, lefts_sorted: tuple[int, ...], milli: int, number: int
) -> tuple[int, float]:
    """The policy's node key (smaller is better) for a node with these free shares. A node the
    vendor's Fit accepted but whose shares look too small (its fit followed memory, not cores)
    ranks last rather than feeding the model a placement it assumes impossible."""
    if sum(1 for v in lefts_sorted if v >= milli) < number:
        return (1 << 30, 0.0)
    return policy.node_key("", UNKNOWN_CPU_LEFT, lefts_sorted, 0, milli, number)


# ---------------------------------------------------------------------------------------- internals


def _plan(
    request: PodRequest,
    vendors: VendorRegistry,
    default_node_policy: NodePolicy,
    default_gpu_policy: GpuPolicy,
    quota: QuotaCheck | None,
) -> _Plan:
    gpu_policy = gpu_policy_of(request.gpu_policy, default_gpu_policy)
    node_policy = node_policy_of(request.node_policy, default_node_policy)
    containers: list[tuple[_Entry, ...]] = []
    loads: list[RequestLoad | None] = []
    used: dict[str, Vendor] = {}
    contexts: dict[str, FitContext] = {}
    for container in request.containers:
        entries: list[_Entry] = []
        for name, req in container.devices.items():
            if req.nums <= 0:
                continue
            impl = vendors.get(name)
            entries.append((name, impl, req))  # an unknown vendor fails each node ("Device type not found")
            if impl is not None and name not in contexts:
                used[name] = impl
                contexts[name] = FitContext(
                    vendor=name, selectors=request.selectors_for(name), policy=gpu_policy, quota=quota
                )
        containers.append(tuple(entries))
        loads.append(RequestLoad(container.devices.values()) if entries else None)
    requesting = [i for i, entries in enumerate(containers) if entries]
    if not requesting:
        raise InvalidRequest(f"pod {request.namespace}/{request.name} requests no device")
    first = requesting[0]
    head = containers[first]
    # The first requesting container's fit is order-independent when each device's verdict does
    # not depend on the devices picked before it: no quota (it sums the picks), no NUMA grouping
    # (it depends on group order), no MIG GPU (it replays the picks), one vendor (a second one's
    # fit would follow the first's usage). MIG is checked per node.
    order_free = (
        quota is None
        and len(head) == 1
        and head[0][1] is not None
        and not request.selectors_for(head[0][0]).numa_bind
    )
    return _Plan(
        containers=tuple(containers),
        loads=tuple(loads),
        contexts=contexts,
        gpu_policy=gpu_policy,
        node_policy=node_policy,
        vendors_used=tuple(used.values()),
        first=first,
        single=len(requesting) == 1,
        order_free=order_free,
    )


def _visit_order(
    snapshot: ClusterSnapshot, names: frozenset[NodeName], policy: NodePolicy
) -> Iterable[NodeName]:
    """Registered candidates, best default score first (ties: node name ascending).

    With many candidates, the snapshot's precomputed order filtered lazily: a decision that stops
    at the first fitting node reads only the head of the order."""
    nodes = snapshot.nodes
    order = snapshot.spread_order if policy is NodePolicy.SPREAD else snapshot.binpack_order
    if len(order) == len(nodes) and len(names) * 4 >= len(order):
        return (n for n in order if n in names)
    present = [n for n in names if n in nodes]
    if policy is NodePolicy.SPREAD:
        present.sort(key=lambda n: (nodes[n].score, n))
    else:
        present.sort(key=lambda n: (-nodes[n].score, n))
    return present


def _quarantine_failure(node: NodeSnapshot) -> NodeFailure:
    detail = "; ".join(f"pod {uid}: {why}" for uid, why in node.quarantined)
    return NodeFailure(node=node.name, reason=NODE_QUARANTINED, note=f"unreadable allocation of {detail}")


def _evaluate(node: NodeSnapshot, plan: _Plan, *, bound: bool, need_devices: bool) -> NodeFit | NodeFailure:
    """HAMi's ``calcScore`` for one node (see the module docstring).

    ``bound``: return the ``_QUICK`` marker as soon as a vendor's cheap bound says the node cannot
    fit. When the first requesting container's outcome does not depend on the device order
    (``plan.order_free``), its fit first runs on the devices as registered, skipping the scores and
    the sort: a failure there is HAMi's exact failure, and for a one-container pod a success means
    the node fits (``need_devices=False`` then stops there, without choosing devices).
    """
    devs = node.devices
    ndev = len(devs)
    if bound:
        summaries = node.summaries
        for entries in plan.containers:
            for name, impl, req in entries:
                if req.nums > ndev or (impl is not None and not impl.prefilter(summaries.get(name), req)):
                    return _QUICK
    if plan.order_free:
        name, impl, req = plan.containers[plan.first][0]
        assert impl is not None
        if req.nums > ndev:
            return _failure(node, plan.first, name, Reason.NODE_INSUFFICIENT_DEVICE)
        # The node's summary of this vendor (same ``name in d.type`` test) saves a pass over the
        # devices when they are all this vendor's and none is in MIG mode.
        summary = node.summaries.get(name)
        own: Sequence[DeviceUsage]
        if summary is not None and summary.devices == ndev:
            own, mig = devs, summary.mig > 0
        else:
            own = [d for d in devs if name in d.type]
            mig = any(d.mode == MODE_MIG for d in own)
        if not mig:
            result = impl.fit(own, req, plan.contexts[name], ())
            if not result.ok:
                return _unfit(node, plan.first, name, result)
            # Without devices there is no ScoreNode: only a shortcut when no vendor scores nodes.
            if plan.single and not need_devices and not any(v.scores_nodes for v in plan.vendors_used):
                return NodeFit(node=node.name, score=node.score)

    work: list[DeviceUsage] | tuple[DeviceUsage, ...] = devs
    order = list(range(ndev))
    numa = [d.numa for d in devs]
    assigned: dict[str, list[tuple[ContainerDevice, ...]]] = {}
    n_containers = len(plan.containers)
    gpu_policy = plan.gpu_policy
    for ci, entries in enumerate(plan.containers):
        if not entries:
            continue
        load = plan.loads[ci]
        assert load is not None
        scores = device_scores(work, load)
        sort_for_search(order, numa, scores, gpu_policy)
        for name, impl, req in entries:
            if req.nums > ndev:
                return _failure(node, ci, name, Reason.NODE_INSUFFICIENT_DEVICE)
            if impl is None:
                return _failure(node, ci, name, DEVICE_TYPE_NOT_FOUND)
            candidates = [work[i] for i in order if name in work[i].type]
            per_container = assigned.get(name)
            earlier = [cd for chosen in per_container for cd in chosen] if per_container else []
            result = impl.fit(candidates, req, plan.contexts[name], earlier)
            if not result.ok:
                return _unfit(node, ci, name, result)
            if isinstance(work, tuple):
                work = list(work)
            chosen: list[ContainerDevice] = []
            for cd in result.devices:
                try:
                    pos = _position(work, device_id_of(cd.uuid))
                    work[pos], cd_done = impl.add_resource_usage(work[pos], cd)
                except HamiError as e:
                    rejection = (cd.uuid, ADD_RESOURCE_USAGE_FAILED, 0, 0, str(e))
                    return _failure(node, ci, name, ADD_RESOURCE_USAGE_FAILED, (rejection,))
                chosen.append(cd_done)
            if per_container is None:
                per_container = assigned[name] = [()] * n_containers
            per_container[ci] = tuple(chosen)
    score = node.score
    devices = MappingProxyType({name: tuple(per) for name, per in assigned.items()})
    for impl in plan.vendors_used:
        if impl.scores_nodes and impl.name in devices:
            score = add_score(score, impl.score_node(node, devices[impl.name], devs, plan.node_policy))
    return NodeFit(node=node.name, score=score, devices=devices)


def _failure_of(name: NodeName) -> NodeFailure:
    return NodeFailure(node=name, reason=_UNFIT, note="inconsistent fit")


def _failure(
    node: NodeSnapshot, container: int, vendor: str, note: str, rejections: tuple[RawRejection, ...] = ()
) -> NodeFailure:
    return NodeFailure(
        node=node.name,
        reason=_UNFIT,
        note=note,
        container=container,
        vendor=vendor,
        raw_rejections=rejections,
    )


def _unfit(node: NodeSnapshot, container: int, vendor: str, result: ContainerFit) -> NodeFailure:
    return NodeFailure(
        node=node.name,
        reason=_UNFIT,
        counts=result.reasons,
        considered=result.considered,
        container=container,
        vendor=vendor,
        raw_rejections=result.raw_rejections,
    )


def _position(devices: Sequence[DeviceUsage], device_id: str) -> int:
    for pos, d in enumerate(devices):
        if d.id == device_id:
            return pos
    raise HamiError(f"fit chose device {device_id}, which is not on the node")  # a vendor Fit bug
