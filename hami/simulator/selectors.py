"""Label and field selectors with apimachinery's grammar and matching rules (k8s-apis.md §6.6).

Labels: comma = AND of ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k`` (exists),
``!k`` (does not exist), ``k>N``, ``k<N``. Fields: comma = AND of ``k=v``, ``k==v``, ``k!=v`` over the
keys a kind supports (unsupported key → 400 with the kind's own message).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from hami.simulator.resources import ResourceType
from hami.simulator.statuses import StatusError, bad_request

LabelOp = Literal["=", "!=", "in", "notin", "exists", "!", ">", "<"]

_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid qualified label key, or None."""
    prefix, sep, name = key.rpartition("/")
    if sep and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return "prefix part must be a lowercase RFC 1123 subdomain"
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
            "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
            "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        )
    return None


def label_value_problem(value: str) -> str | None:
    if value == "":
        return None
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _LABEL_NAME.match(value):
        return (
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
            "'12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
        )
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelRequirement:
    key: str
    op: LabelOp
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key, "")
        match self.op:
            case "=" | "in":
                return present and value in self.values
            case "!=" | "notin":
                return not present or value not in self.values
            case "exists":
                return present
            case "!":
                return not present
            case ">" | "<":
                if not present:
                    return False
                try:
                    number = int(value)
                except ValueError:
                    return False
                bound = int(self.values[0])
                return number > bound if self.op == ">" else number < bound


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelSelector:
    requirements: tuple[LabelRequirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        the_labels = labels or {}
        return all(r.matches(the_labels) for r in self.requirements)

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        return cls(requirements=tuple(_LabelParser(text).requirements()))

    @classmethod
    def from_object(cls, selector: Mapping[str, Any] | None) -> LabelSelector:
        """From a ``metav1.LabelSelector`` (matchLabels + matchExpressions), as webhooks carry."""
        if not selector:
            return cls()
        reqs: list[LabelRequirement] = []
        for key, value in sorted((selector.get("matchLabels") or {}).items()):
            reqs.append(LabelRequirement(key=key, op="=", values=(str(value),)))
        ops: Mapping[str, LabelOp] = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
        for expr in selector.get("matchExpressions") or []:
            op = ops.get(str(expr.get("operator")))
            if op is None:
                raise bad_request(f"{expr.get('operator')!r} is not a valid label selector operator")
            reqs.append(
                LabelRequirement(key=str(expr.get("key", "")), op=op, values=tuple(expr.get("values") or ()))
            )
        return cls(requirements=tuple(reqs))


class _LabelParser:
    """A small recursive-descent parser over apimachinery's selector grammar."""

    _TOKEN = re.compile(r"\s*(==|!=|=|!|,|\(|\)|>|<|[^\s=!,()<>]+)")

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[str] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = self._TOKEN.match(text, pos)
            if m is None:  # pragma: no cover - the token regex accepts every non-space char
                raise self._error(f"unexpected character at {pos}")
            self.tokens.append(m.group(1))
            pos = m.end()
        self.i = 0

    def _error(self, detail: str) -> StatusError:
        return bad_request(f"unable to parse requirement: {detail} (in label selector {self.text!r})")

    def _peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _next(self) -> str:
        tok = self._peek()
        if tok is None:
            raise self._error("unexpected end of selector")
        self.i += 1
        return tok

    def requirements(self) -> list[LabelRequirement]:
        reqs: list[LabelRequirement] = []
        if not self.tokens:
            return reqs
        while True:
            reqs.append(self._requirement())
            tok = self._peek()
            if tok is None:
                return reqs
            if tok != ",":
                raise self._error(f"found '{tok}', expected: ',' or end of string")
            self.i += 1

    def _key(self, tok: str) -> str:
        if tok in {"=", "==", "!=", "!", ",", "(", ")", ">", "<"}:
            raise self._error(f"found '{tok}', expected: identifier")
        problem = label_key_problem(tok)
        if problem:
            raise self._error(f'key: Invalid value: "{tok}": {problem}')
        return tok

    def _value(self) -> str:
        tok = self._peek()
        if tok is None or tok in {",", ")"}:
            return ""
        if tok in {"=", "==", "!=", "!", "(", ">", "<"}:
            raise self._error(f"found '{tok}', expected: identifier")
        self.i += 1
        problem = label_value_problem(tok)
        if problem:
            raise self._error(f'values[0]: Invalid value: "{tok}": {problem}')
        return tok

    def _requirement(self) -> LabelRequirement:
        tok = self._next()
        if tok == "!":
            return LabelRequirement(key=self._key(self._next()), op="!")
        key = self._key(tok)
        op = self._peek()
        if op is None or op == ",":
            return LabelRequirement(key=key, op="exists")
        self.i += 1
        if op in {"=", "=="}:
            return LabelRequirement(key=key, op="=", values=(self._value(),))
        if op == "!=":
            return LabelRequirement(key=key, op="!=", values=(self._value(),))
        if op in {">", "<"}:
            bound = self._next()
            if not re.fullmatch(r"-?\d+", bound):
                raise self._error(f"for 'Gt', 'Lt' operators, the value must be an integer, got {bound!r}")
            return LabelRequirement(key=key, op=op, values=(bound,))  # type: ignore[arg-type]
        if op in {"in", "notin"}:
            if self._next() != "(":
                raise self._error("expected: '(' after set operator")
            values: list[str] = []
            while True:
                tok2 = self._peek()
                if tok2 == ")":
                    self.i += 1
                    break
                values.append(self._value())
                sep = self._next()
                if sep == ")":
                    break
                if sep != ",":
                    raise self._error(f"found '{sep}', expected: ',' or ')'")
            return LabelRequirement(key=key, op=op, values=tuple(values))  # type: ignore[arg-type]
        raise self._error(f"found '{op}', expected: in, notin, =, ==, !=, gt, lt")


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldRequirement:
    key: str
    equal: bool
    value: str


def _bool_text(value: Any) -> str:
    return "true" if value is True else "false"


def _pod_fields(obj: Mapping[str, Any]) -> dict[str, str]:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    pod_ips = status.get("podIPs") or []
    return {
        "spec.nodeName": str(spec.get("nodeName") or ""),
        "spec.host": str(spec.get("nodeName") or ""),
        "spec.restartPolicy": str(spec.get("restartPolicy") or ""),
        "spec.schedulerName": str(spec.get("schedulerName") or ""),
        "spec.serviceAccountName": str(spec.get("serviceAccountName") or ""),
        "spec.hostNetwork": _bool_text(spec.get("hostNetwork")),
        "status.phase": str(status.get("phase") or ""),
        "status.podIP": str(status.get("podIP") or ""),
        "status.podIPs": str(pod_ips[0].get("ip", "")) if pod_ips else "",
        "status.nominatedNodeName": str(status.get("nominatedNodeName") or ""),
    }


def _event_fields(obj: Mapping[str, Any]) -> dict[str, str]:
    involved = obj.get("involvedObject") or {}
    fields = {
        f"involvedObject.{k}": str(involved.get(k) or "")
        for k in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
    }
    fields["reason"] = str(obj.get("reason") or "")
    fields["reportingComponent"] = str(obj.get("reportingComponent") or "")
    fields["source"] = str((obj.get("source") or {}).get("component") or "")
    fields["type"] = str(obj.get("type") or "")
    return fields


_FIELD_EXTRACTORS: Mapping[str, Callable[[Mapping[str, Any]], dict[str, str]]] = {
    "pods": _pod_fields,
    "nodes": lambda o: {"spec.unschedulable": _bool_text((o.get("spec") or {}).get("unschedulable"))},
    "namespaces": lambda o: {"status.phase": str((o.get("status") or {}).get("phase") or "")},
    "secrets": lambda o: {"type": str(o.get("type") or "")},
    "events": _event_fields,
    "resourceslices.resource.k8s.io": lambda o: {
        "spec.nodeName": str((o.get("spec") or {}).get("nodeName") or ""),
        "spec.driver": str((o.get("spec") or {}).get("driver") or ""),
    },
}


def object_fields(rt: ResourceType, obj: Mapping[str, Any]) -> dict[str, str]:
    """Every selectable field of ``obj`` as its string value."""
    meta = obj.get("metadata") or {}
    fields = {
        "metadata.name": str(meta.get("name") or ""),
        "metadata.namespace": str(meta.get("namespace") or ""),
    }
    extract = _FIELD_EXTRACTORS.get(rt.store_key)
    if extract is not None:
        fields.update(extract(obj))
    return fields


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, rt: ResourceType, obj: Mapping[str, Any]) -> bool:
        if not self.requirements:
            return True
        fields = object_fields(rt, obj)
        return all((fields.get(r.key, "") == r.value) == r.equal for r in self.requirements)

    def value_of(self, key: str) -> str | None:
        """The value of an equality requirement on ``key`` (used to narrow a scan), or None."""
        for r in self.requirements:
            if r.key == key and r.equal:
                return r.value
        return None

    @classmethod
    def parse(cls, text: str, rt: ResourceType) -> FieldSelector:
        reqs: list[FieldRequirement] = []
        for term in _split_unescaped(text, ","):
            if term.strip() == "":
                continue
            parsed = _parse_field_term(term)
            if parsed is None:
                raise bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
            key, equal, value = parsed
            if key not in ("metadata.name", "metadata.namespace") and key not in rt.field_labels:
                raise bad_request(_unsupported_field_message(rt, key))
            reqs.append(FieldRequirement(key=key, equal=equal, value=value))
        return cls(requirements=tuple(reqs))


def _unsupported_field_message(rt: ResourceType, key: str) -> str:
    if rt.field_label_style == "core":
        return f"field label not supported: {key}"
    if rt.field_label_style == "group":
        return f"field label not supported for {rt.api_version}, Kind={rt.kind}: {key}"
    return f'"{key}" is not a known field selector: only "metadata.name", "metadata.namespace"'


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in text:
        if escaped:
            current.append("\\" + ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _parse_field_term(term: str) -> tuple[str, bool, str] | None:
    for i, ch in enumerate(term):
        if ch == "\\":
            continue
        if i > 0 and term[i - 1] == "\\":
            continue
        if term.startswith("!=", i):
            return term[:i].strip(), False, _unescape(term[i + 2 :])
        if term.startswith("==", i):
            return term[:i].strip(), True, _unescape(term[i + 2 :])
        if ch == "=":
            return term[:i].strip(), True, _unescape(term[i + 1 :])
    return None
