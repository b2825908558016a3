"""Least privilege: the chart grants each role exactly the API verbs its code uses.

The code side comes from an AST scan of each role's package (and its CLI module) for calls on
the ``KubeApi`` port (``get``/``list_all``/``watch``/``patch``/... with a resource constant such as
``PODS``, ``bind_pod``, ``create_event``) and for the shared helpers that call it for them
(``Informer``/``Reflector`` list and watch the resource they are given; classes of ``hami.k8s`` and
``hami.cache`` such as ``LeaderElector`` are scanned the same way). ``TABLE`` states the result;
the tests fail when the code, the table and the rendered ClusterRoles/Roles disagree, and when
the scan meets an API call or a resource constant it cannot attribute (so it never silently
misses one).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from chartkit import REPO, Rendered

HAMI = REPO / "hami"

# role → what it may do: (apiGroup, resource) → verbs. The kube-scheduler sidecar needs nothing
# beyond the scheduler's own Lease verbs plus the built-in system:kube-scheduler and
# system:volume-scheduler roles (bound separately, checked below).
TABLE: dict[str, dict[tuple[str, str], set[str]]] = {
    "scheduler": {
        ("", "pods"): {"list", "watch", "patch"},
        ("", "pods/binding"): {"create"},
        ("", "nodes"): {"list", "watch", "patch"},
        ("", "resourcequotas"): {"list", "watch"},
        ("", "events"): {"create"},
        ("coordination.k8s.io", "leases"): {"get", "create", "update", "list", "watch"},
        # --dra-mode=translate only (GATED below): the webhook's TemplateCreator.
        ("resource.k8s.io", "resourceclaimtemplates"): {"create", "get"},
    },
    "device-plugin": {
        ("", "pods"): {"get", "list", "patch"},
        ("", "nodes"): {"get", "patch"},
        ("", "nodes/status"): {"patch"},
    },
    "monitor": {
        ("", "pods"): {"list", "watch"},
    },
    "dra-plugin": {
        ("resource.k8s.io", "resourceslices"): {"get", "list", "create", "update", "delete"},
        ("resource.k8s.io", "resourceclaims"): {"get"},
        ("", "nodes"): {"get"},
    },
}

# Grants of code behind a chart switch: role → (the fixture rendered with the switch on, the grants).
# The role's own fixture (RENDERED_ROLES) renders with it off and must not grant them.
GATED: dict[str, tuple[str, dict[tuple[str, str], set[str]]]] = {
    # dra.webhookTranslate
    "scheduler": ("cdi_dra", {("resource.k8s.io", "resourceclaimtemplates"): {"create", "get"}}),
}

ROLE_CODE: dict[str, tuple[str, ...]] = {
    "scheduler": ("scheduler", "cli/scheduler.py"),
    "device-plugin": ("deviceplugin", "cli/device_plugin.py"),
    "monitor": ("monitor", "cli/monitor.py"),
    "dra-plugin": ("dra", "cli/dra_plugin.py"),
}
HELPER_CODE = ("k8s", "cache")
KUBE_API = {"k8s/api.py", "k8s/client.py"}  # the port and its adapter, not callers

VERB_OF = {
    "get": "get",
    "list_page": "list",
    "list_all": "list",
    "watch": "watch",
    "create": "create",
    "replace": "update",
    "patch": "patch",
    "delete": "delete",
}
FIXED = {"bind_pod": ("", "pods/binding", "create"), "create_event": ("", "events", "create")}
# Generic helpers: they list and watch the resource they are constructed with (2nd argument).
LIST_WATCH_HELPERS = {"Informer", "Reflector"}

Grant = tuple[str, str, str]  # apiGroup, resource, verb


def flatten(table: dict[tuple[str, str], set[str]]) -> set[Grant]:
    return {(group, resource, verb) for (group, resource), verbs in table.items() for verb in verbs}


def py_files(*relative: str) -> Iterator[Path]:
    for rel in relative:
        path = HAMI / rel
        if path.is_file():
            yield path
        else:
            yield from sorted(path.rglob("*.py"))


def resource_constants() -> dict[str, tuple[str, str]]:
    """``NAME = Resource(group=..., plural=...)`` anywhere in hami/ → (group, plural)."""
    found: dict[str, tuple[str, str]] = {}
    for path in py_files("."):
        if "_proto" in path.parts:
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            target, value = _assignment(node)
            if target is None or not isinstance(value, ast.Call):
                continue
            if not (isinstance(value.func, ast.Name) and value.func.id == "Resource"):
                continue
            kw = {k.arg: k.value for k in value.keywords}
            group, plural = kw.get("group"), kw.get("plural")
            assert isinstance(group, ast.Constant) and isinstance(plural, ast.Constant), path
            spec = (str(group.value), str(plural.value))
            assert found.get(target, spec) == spec, f"{target} means two resources"
            found[target] = spec
    return found


def _assignment(node: ast.stmt) -> tuple[str | None, ast.expr | None]:
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id, node.value
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id, node.value
    return None, None


def _show(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def _callee(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _looks_like_api(expr: ast.expr) -> bool:
    """``api``, ``self.api``, ``self._api``, ``kube_api``: receivers that must be resolvable."""
    name = expr.attr if isinstance(expr, ast.Attribute) else expr.id if isinstance(expr, ast.Name) else ""
    return name.lower().rstrip("_").endswith("api")


def _arg(call: ast.Call, index: int, keyword: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    return call.args[index] if len(call.args) > index else None


@dataclass(slots=True)
class Scan:
    grants: set[Grant] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    where: dict[Grant, str] = field(default_factory=dict)

    def add(self, grant: Grant, at: str) -> None:
        self.grants.add(grant)
        self.where.setdefault(grant, at)


class Scanner:
    def __init__(self) -> None:
        self.constants = resource_constants()
        self.helpers: dict[str, set[Grant]] = {}
        self.helper_problems: dict[str, list[str]] = {}
        for path in py_files(*HELPER_CODE):
            if str(path.relative_to(HAMI)) in KUBE_API:
                continue
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                    scan = Scan()
                    self._visit(node, path, scan)
                    if scan.grants or scan.problems:
                        self.helpers[node.name] = scan.grants
                        self.helper_problems[node.name] = scan.problems

    def _resource(self, expr: ast.expr | None) -> tuple[str, str] | None:
        if isinstance(expr, ast.Name) and expr.id in self.constants:
            return self.constants[expr.id]
        if isinstance(expr, ast.Attribute) and expr.attr in self.constants:
            return self.constants[expr.attr]
        return None

    def _visit(self, tree: ast.AST, path: Path, scan: Scan) -> None:
        consumed: set[int] = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            at = f"{_show(path)}:{node.lineno}"
            name = _callee(node)
            if name in FIXED and isinstance(node.func, ast.Attribute):
                scan.add(FIXED[name], at)
            elif name in VERB_OF and isinstance(node.func, ast.Attribute):
                target = _arg(node, 0, "resource")
                resource = self._resource(target)
                if resource is None:
                    if _looks_like_api(node.func.value):
                        scan.problems.append(f"{at}: {name}() on an API object with an unresolvable resource")
                    continue
                consumed.add(id(target))
                group, plural = resource
                sub = next((k.value for k in node.keywords if k.arg == "subresource"), None)
                if sub is not None and not (
                    isinstance(sub, ast.Constant) and isinstance(sub.value, str | None)
                ):
                    scan.problems.append(f"{at}: subresource is not a literal")
                    continue
                if isinstance(sub, ast.Constant) and sub.value:
                    plural = f"{plural}/{sub.value}"
                scan.add((group, plural, VERB_OF[name]), at)
            elif name in LIST_WATCH_HELPERS:
                target = _arg(node, 1, "resource")
                resource = self._resource(target)
                if resource is None:
                    scan.problems.append(f"{at}: {name}() with an unresolvable resource")
                    continue
                consumed.add(id(target))
                for verb in ("list", "watch"):
                    scan.add((*resource, verb), at)
            elif name in self.helpers:
                for grant in self.helpers[name]:
                    scan.add(grant, f"{at} ({name})")
        for node in ast.walk(tree):
            is_ref = (
                isinstance(node, ast.Name) and node.id in self.constants and isinstance(node.ctx, ast.Load)
            )
            if is_ref and id(node) not in consumed and not self._attribute_base(tree, node):
                scan.problems.append(
                    f"{_show(path)}:{getattr(node, 'lineno', '?')}: {node.id} used outside a call "
                    "the RBAC scan understands (pass it to a KubeApi method, or extend the scan)"
                )

    @staticmethod
    def _attribute_base(tree: ast.AST, name: ast.AST) -> bool:
        """``PODS.kind``, ``LEASES.api_version``: reading the constant's fields calls nothing."""
        return any(isinstance(n, ast.Attribute) and n.value is name for n in ast.walk(tree))

    def scan_files(self, files: Iterable[Path]) -> Scan:
        scan = Scan()
        for path in files:
            self._visit(ast.parse(path.read_text(encoding="utf-8")), path, scan)
        return scan

    def scan_role(self, role: str) -> Scan:
        return self.scan_files(py_files(*ROLE_CODE[role]))


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner()


def rules_of(obj: dict[str, Any]) -> set[Grant]:
    return {
        (group, resource, verb)
        for rule in obj.get("rules", [])
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


# role → (the fixture whose render holds it, the workload running it, its own ClusterRoles/Roles)
RENDERED_ROLES: dict[str, tuple[str, tuple[str, str], tuple[tuple[str, str], ...]]] = {
    "scheduler": (
        "default",
        ("Deployment", "hami-scheduler"),
        (("ClusterRole", "hami-scheduler"), ("Role", "hami-scheduler-leases")),
    ),
    "device-plugin": (
        "default",
        ("DaemonSet", "hami-device-plugin"),
        (("ClusterRole", "hami-device-plugin"),),
    ),
    "monitor": (
        "default",
        ("DaemonSet", "hami-device-plugin"),
        (("ClusterRole", "hami-device-plugin-monitor"),),
    ),
    "dra-plugin": ("cdi_dra", ("DaemonSet", "hami-dra-plugin"), (("ClusterRole", "hami-dra-plugin"),)),
}
BUILTIN_FOR_SIDECAR = {"system:kube-scheduler", "system:volume-scheduler"}


def granted(rendered: Rendered, role: str) -> set[Grant]:
    _, _, objects = RENDERED_ROLES[role]
    out: set[Grant] = set()
    for kind, name in objects:
        out |= rules_of(rendered.get(kind, name))
    return out


@pytest.mark.parametrize("role", sorted(TABLE))
def test_code_uses_exactly_the_table(scanner: Scanner, role: str) -> None:
    scan = scanner.scan_role(role)
    assert scan.problems == []
    used, table = scan.grants, flatten(TABLE[role])
    missing = {f"{g}: {scan.where[g]}" for g in used - table}
    assert not missing, f"{role} code makes calls the table (and so the chart) does not grant: {missing}"
    assert not table - used, f"{role}: granted but never called (least privilege): {table - used}"


def gated(role: str) -> set[Grant]:
    return flatten(GATED[role][1]) if role in GATED else set()


def everything_on(role: str) -> str:
    """The fixture whose render turns on every switch gating this role's grants."""
    return GATED[role][0] if role in GATED else RENDERED_ROLES[role][0]


@pytest.mark.parametrize("role", sorted(TABLE))
def test_chart_grants_exactly_the_table(request: pytest.FixtureRequest, role: str) -> None:
    fixture, _, _ = RENDERED_ROLES[role]
    assert gated(role) <= flatten(TABLE[role])
    assert granted(request.getfixturevalue(fixture), role) == flatten(TABLE[role]) - gated(role)
    assert granted(request.getfixturevalue(everything_on(role)), role) == flatten(TABLE[role])


@pytest.mark.parametrize("role", sorted(TABLE))
def test_every_call_in_code_is_granted_by_the_chart(
    request: pytest.FixtureRequest, scanner: Scanner, role: str
) -> None:
    fixture = everything_on(role)
    scan = scanner.scan_role(role)
    have = granted(request.getfixturevalue(fixture), role)
    denied = sorted(f"{g} at {scan.where[g]}" for g in scan.grants - have)
    assert not denied, f"the chart's {role} roles would forbid: {denied}"


@pytest.mark.parametrize("role", sorted(TABLE))
def test_roles_are_bound_to_the_workloads_account_only(request: pytest.FixtureRequest, role: str) -> None:
    fixture, (kind, name), objects = RENDERED_ROLES[role]
    rendered: Rendered = request.getfixturevalue(fixture)
    account = rendered.get(kind, name)["spec"]["template"]["spec"]["serviceAccountName"]
    bound: set[tuple[str, str]] = set()
    for binding in rendered.all("ClusterRoleBinding") + rendered.all("RoleBinding"):
        subjects = {(s["kind"], s["name"]) for s in binding["subjects"]}
        if ("ServiceAccount", account) in subjects:
            assert subjects == {("ServiceAccount", account)}
            bound.add((binding["roleRef"]["kind"], binding["roleRef"]["name"]))
    sidecar = {("ClusterRole", r) for r in BUILTIN_FOR_SIDECAR} if role == "scheduler" else set()
    others = {
        ("ClusterRole", other_name)
        for other, (fx, (k, n), objs) in RENDERED_ROLES.items()
        if other != role and fx == fixture and (k, n) == (kind, name)
        for _, other_name in objs
    }
    assert bound == set(objects) | sidecar | others


def test_helpers_are_modelled(scanner: Scanner) -> None:
    # Reflector lists and watches whatever it is given: exactly the two unresolvable calls.
    problems = scanner.helper_problems["Reflector"]
    assert len(problems) == 2 and all("unresolvable" in p for p in problems), problems
    assert any("list_all()" in p or "list_page()" in p for p in problems)
    assert any("watch()" in p for p in problems)
    # Informer builds a Reflector on its resource; LeaderElector uses a fixed resource.
    (informer,) = scanner.helper_problems["Informer"]
    assert "Reflector() with an unresolvable resource" in informer
    lease = {(g, r, v) for g, r, v in scanner.helpers["LeaderElector"]}
    assert lease == {
        ("coordination.k8s.io", "leases", v) for v in ("get", "create", "update", "list", "watch")
    }
    others = {n: p for n, p in scanner.helper_problems.items() if n not in LIST_WATCH_HELPERS and p}
    assert others == {}, "a new generic helper in hami.k8s/hami.cache needs modelling here"


def test_scanner_on_known_code(scanner: Scanner, tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text(
        "from hami.k8s.objects import NODES, PODS, LEASES\n"
        "async def f(api, elector_settings, resource, kube):\n"
        "    await api.patch(NODES, 'n', {}, subresource='status')\n"
        "    await api.bind_pod('ns', 'p', 'n')\n"
        "    await kube.create_event({}, reason='r', message='m')\n"
        "    Informer(api, PODS, field_selector='x')\n"
        "    LeaderElector(api, elector_settings)\n"
        "    {}.get('key')\n"
        "    await self_api.get(resource, 'x')\n"
        "    kinds = [PODS]\n"
        "    return LEASES.kind\n",
        encoding="utf-8",
    )
    scan = scanner.scan_files([source])
    assert scan.grants == {
        ("", "nodes/status", "patch"),
        ("", "pods/binding", "create"),
        ("", "events", "create"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        *{("coordination.k8s.io", "leases", v) for v in ("get", "create", "update", "list", "watch")},
    }
    assert len(scan.problems) == 2
    assert "get() on an API object with an unresolvable resource" in scan.problems[0]
    assert "PODS used outside a call" in scan.problems[1]
