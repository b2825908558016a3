"""Stateful property test: the store, its lists and every watcher's view agree with a simple model.

The model is a dict ``(namespace, name) -> (labels, phase, finalizers, terminating)``. Watchers are
opened at random moments (from "now", with initial events, or from an older resourceVersion) with
random namespace/label/field selectors; replaying each watcher's events must rebuild exactly the
model objects its selectors match. Lists, with and without pagination, must equal the model too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hami.simulator.resources import NAMESPACES, PODS
from hami.simulator.selectors import FieldSelector, LabelSelector
from hami.simulator.statuses import StatusError
from hami.simulator.store import Store
from hami.simulator.watchers import Watcher

NAMES = st.sampled_from(["a", "b", "c", "d", "e"])
NS = st.sampled_from(["default", "team"])
LABELS = st.dictionaries(st.sampled_from(["app", "tier"]), st.sampled_from(["x", "y"]), max_size=2)
LABEL_SELECTORS = st.sampled_from(
    ["", "app=x", "app!=x", "app in (x,y)", "!app", "tier", "app=x,tier notin (y)"]
)
FIELD_SELECTORS = st.sampled_from(["", "status.phase=Running", "status.phase!=Running", "metadata.name=a"])
PHASES = st.sampled_from(["Pending", "Running", "Succeeded"])


@dataclass
class ModelPod:
    labels: dict[str, str]
    phase: str = "Pending"
    finalizers: list[str] = field(default_factory=list)
    terminating: bool = False


@dataclass
class OpenWatch:
    watcher: Watcher
    labels: LabelSelector
    fields: FieldSelector
    namespace: str | None
    view: dict[tuple[str, str], dict] = field(default_factory=dict)
    last_rv: int = 0


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = Store(history_size=40)
        self.store.create(NAMESPACES, None, {"metadata": {"name": "team"}})
        self.model: dict[tuple[str, str], ModelPod] = {}
        self.watches: list[OpenWatch] = []
        self.rvs: list[int] = [self.store.resource_version]

    # ------------------------------------------------------------------ writes
    @rule(ns=NS, name=NAMES, labels=LABELS)
    def create(self, ns, name, labels):
        body = {
            "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }
        if (ns, name) in self.model:
            try:
                self.store.create(PODS, ns, body)
            except StatusError as e:
                assert e.code == 409 and e.reason == "AlreadyExists"
            else:
                raise AssertionError("duplicate create succeeded")
            return
        created = self.store.create(PODS, ns, body)
        assert created["status"]["phase"] == "Pending"
        self.model[(ns, name)] = ModelPod(labels=dict(labels))

    def _existing(self, data) -> tuple[str, str]:
        return data.draw(st.sampled_from(sorted(self.model)))

    @precondition(lambda self: self.model)
    @rule(data=st.data(), labels=LABELS)
    def relabel(self, data, labels):
        ns, name = self._existing(data)
        before = self.store.resource_version
        self.store.mutate(PODS, ns, name, lambda pod: pod["metadata"].__setitem__("labels", dict(labels)))
        changed = self.model[(ns, name)].labels != labels
        assert (self.store.resource_version > before) == changed, "no-op updates must not bump the RV"
        self.model[(ns, name)].labels = dict(labels)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), phase=PHASES)
    def set_phase(self, data, phase):
        ns, name = self._existing(data)

        def change(pod):
            pod["status"]["phase"] = phase
            pod["spec"]["containers"][0]["image"] = "ignored-by-status-writes"

        stored = self.store.mutate(PODS, ns, name, change, subresource="status")
        assert stored["spec"]["containers"][0]["image"] == "busybox"
        self.model[(ns, name)].phase = phase

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def add_finalizer(self, data):
        ns, name = self._existing(data)
        pod = self.model[(ns, name)]
        if pod.terminating:
            with_finalizer = lambda p: p["metadata"].__setitem__("finalizers", [*pod.finalizers, "x.io/new"])  # noqa: E731
            try:
                self.store.mutate(PODS, ns, name, with_finalizer)
            except StatusError as e:
                assert e.code == 422 and "no new finalizers" in e.message
            else:
                raise AssertionError("a finalizer was added to a terminating object")
            return
        self.store.mutate(PODS, ns, name, lambda p: p["metadata"].__setitem__("finalizers", ["x.io/hold"]))
        pod.finalizers = ["x.io/hold"]

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete(self, data):
        ns, name = self._existing(data)
        pod = self.model[(ns, name)]
        obj, removed = self.store.delete(PODS, ns, name)
        assert removed == (not pod.finalizers)
        if removed:
            del self.model[(ns, name)]
        else:
            assert obj["metadata"]["deletionTimestamp"]
            pod.terminating = True

    @precondition(lambda self: any(p.finalizers for p in self.model.values()))
    @rule(data=st.data())
    def clear_finalizers(self, data):
        key = data.draw(st.sampled_from(sorted(k for k, p in self.model.items() if p.finalizers)))
        self.store.mutate(PODS, key[0], key[1], lambda p: p["metadata"].pop("finalizers"))
        if self.model[key].terminating:
            del self.model[key]
            assert self.store.try_get(PODS, *key) is None
        else:
            self.model[key].finalizers = []

    @rule()
    def compact(self):
        self.store.compact(keep=5)

    # ------------------------------------------------------------------ watches
    def _open(self, ns, labels, fields, rv: str, initial: bool | None) -> None:
        label_sel = LabelSelector.parse(labels)
        field_sel = FieldSelector.parse(fields, PODS)
        watcher, _ = self.store.watch(
            PODS, ns, labels=label_sel, fields=field_sel, resource_version=rv, send_initial_events=initial
        )
        self.watches.append(OpenWatch(watcher, label_sel, field_sel, ns, last_rv=int(rv or 0)))

    @rule(ns=st.one_of(st.none(), NS), labels=LABEL_SELECTORS, fields=FIELD_SELECTORS)
    def watch_with_initial_state(self, ns, labels, fields):
        self._open(ns, labels, fields, "", None)

    @rule(ns=st.one_of(st.none(), NS), labels=LABEL_SELECTORS, fields=FIELD_SELECTORS, data=st.data())
    def watch_from_the_past(self, ns, labels, fields, data):
        """Watch from an old RV; the view starts as the list at that RV (the informer pattern)."""
        rv = data.draw(st.sampled_from(self.rvs))
        try:
            listing = self.store.list(
                PODS,
                ns,
                labels=LabelSelector.parse(labels),
                fields=FieldSelector.parse(fields, PODS),
                resource_version=str(rv),
                resource_version_match="Exact",
            )
        except StatusError as e:
            assert e.code == 410 and rv < self.store.oldest_retained_rv
            return
        self._open(ns, labels, fields, str(rv), None)
        watch = self.watches[-1]
        watch.view = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in listing.items}

    @rule()
    def remember_rv(self):
        self.rvs.append(self.store.resource_version)

    # ------------------------------------------------------------------ invariants
    def _expected(self, ns, labels: LabelSelector, fields: FieldSelector) -> dict[tuple[str, str], ModelPod]:
        result = {}
        for key, pod in self.model.items():
            if ns is not None and key[0] != ns:
                continue
            obj = {
                "metadata": {"name": key[1], "namespace": key[0], "labels": pod.labels},
                "status": {"phase": pod.phase},
            }
            if labels.matches(pod.labels) and fields.matches(PODS, obj):
                result[key] = pod
        return result

    @invariant()
    def store_matches_model(self):
        stored = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in self.store.objects(PODS)}
        assert set(stored) == set(self.model)
        for key, pod in self.model.items():
            obj = stored[key]
            assert obj["metadata"].get("labels", {}) == pod.labels
            assert obj["status"]["phase"] == pod.phase
            assert obj["metadata"].get("finalizers", []) == pod.finalizers
            assert bool(obj["metadata"].get("deletionTimestamp")) == pod.terminating
            assert int(obj["metadata"]["resourceVersion"]) <= self.store.resource_version

    @invariant()
    def paginated_list_matches_model(self):
        for ns in (None, "default"):
            full = self.store.list(PODS, ns)
            names = [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in full.items]
            assert names == sorted(k for k in self.model if ns is None or k[0] == ns)
            pages, token = [], ""
            while True:
                page = self.store.list(PODS, ns, limit=2, continue_token=token)
                pages.extend((o["metadata"]["namespace"], o["metadata"]["name"]) for o in page.items)
                token = page.continue_token
                if not token:
                    break
                assert page.remaining is not None and page.remaining > 0
            assert pages == names

    @invariant()
    def every_watcher_sees_the_model(self):
        for watch in self.watches:
            if watch.watcher.closed:
                continue
            for item in watch.watcher.take():
                obj = item.obj
                key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
                rv = int(obj["metadata"]["resourceVersion"])
                if item.type == "ADDED":
                    assert key not in watch.view, f"ADDED for an object already in view: {key}"
                    watch.view[key] = obj
                elif item.type == "MODIFIED":
                    assert key in watch.view
                    watch.view[key] = obj
                else:
                    assert item.type == "DELETED" and key in watch.view
                    del watch.view[key]
                watch.last_rv = max(watch.last_rv, rv)
            expected = self._expected(watch.namespace, watch.labels, watch.fields)
            assert set(watch.view) == set(expected)
            for key, pod in expected.items():
                assert watch.view[key]["metadata"].get("labels", {}) == pod.labels
                assert watch.view[key]["status"]["phase"] == pod.phase

    def teardown(self) -> None:
        self.store.close_all_watchers()
        assert self.store.watcher_count() == 0


StoreMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestStoreModel = StoreMachine.TestCase
