"""`metav1.Status` error objects exactly as kube-apiserver renders them (k8s-apis.md §6.11).

Every failure inside the simulated API server is a :class:`StatusError`; the HTTP layer turns it into
the JSON body and status code, the watch layer into an ``ERROR`` event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hami.simulator.resources import ResourceType

JsonObj = dict[str, Any]

REASON_BY_CODE: Mapping[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class StatusError(Exception):
    """A request failed with a Kubernetes ``Status`` (kind Status, status Failure)."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details: JsonObj | None = dict(details) if details else None

    def to_status(self) -> JsonObj:
        status: JsonObj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
        }
        if self.reason:
            status["reason"] = self.reason
        if self.details:
            status["details"] = self.details
        status["code"] = self.code
        return status


def _details(rt: ResourceType | None, name: str, kind: str | None = None) -> JsonObj:
    details: JsonObj = {}
    if name:
        details["name"] = name
    if rt is not None:
        if rt.group:
            details["group"] = rt.group
        details["kind"] = kind if kind is not None else rt.plural
    return details


def not_found(rt: ResourceType, name: str) -> StatusError:
    return StatusError(404, "NotFound", f'{rt.qualified} "{name}" not found', _details(rt, name))


def namespace_not_found(namespace: str) -> StatusError:
    return StatusError(
        404, "NotFound", f'namespaces "{namespace}" not found', {"name": namespace, "kind": "namespaces"}
    )


def already_exists(rt: ResourceType, name: str) -> StatusError:
    return StatusError(409, "AlreadyExists", f'{rt.qualified} "{name}" already exists', _details(rt, name))


def generate_name_exhausted(rt: ResourceType, name: str) -> StatusError:
    details = _details(rt, name)
    details["retryAfterSeconds"] = 1
    return StatusError(
        409,
        "AlreadyExists",
        f'{rt.qualified} "{name}" already exists, the server was not able to generate a unique name for '
        "the object",
        details,
    )


def conflict(rt: ResourceType, name: str, why: str, *, qualified: str | None = None) -> StatusError:
    what = qualified if qualified is not None else rt.qualified
    return StatusError(
        409, "Conflict", f'Operation cannot be fulfilled on {what} "{name}": {why}', _details(rt, name)
    )


OPTIMISTIC_LOCK = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def modified_conflict(rt: ResourceType, name: str) -> StatusError:
    return conflict(rt, name, OPTIMISTIC_LOCK)


def field_error(kind: str, field: str, detail: str) -> JsonObj:
    """One ``StatusCause`` (``kind`` is Invalid / Required / Forbidden / ...)."""
    reasons = {
        "Invalid": "FieldValueInvalid",
        "Required": "FieldValueRequired",
        "Forbidden": "FieldValueForbidden",
        "NotSupported": "FieldValueNotSupported",
        "Duplicate": "FieldValueDuplicate",
        "TooLong": "FieldValueTooLong",
    }
    labels = {
        "Invalid": "Invalid value",
        "Required": "Required value",
        "Forbidden": "Forbidden",
        "NotSupported": "Unsupported value",
        "Duplicate": "Duplicate value",
        "TooLong": "Too long",
    }
    message = f"{labels[kind]}: {detail}" if detail else labels[kind]
    return {"reason": reasons[kind], "message": message, "field": field}


def invalid(
    rt: ResourceType | None,
    name: str,
    causes: Sequence[JsonObj],
    *,
    kind: str | None = None,
    group: str | None = None,
    details_kind: str | None = None,
) -> StatusError:
    """422 Invalid: ``<Kind> "<name>" is invalid: <field>: <error>`` (group-qualified outside core)."""
    the_kind = kind if kind is not None else (rt.kind if rt else "")
    the_group = group if group is not None else (rt.group if rt else "")
    qualified_kind = f"{the_kind}.{the_group}" if the_group else the_kind
    rendered = [f"{c['field']}: {c['message']}" if c.get("field") else str(c["message"]) for c in causes]
    summary = rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"
    details: JsonObj = {}
    if name:
        details["name"] = name
    if the_group:
        details["group"] = the_group
    details["kind"] = details_kind if details_kind is not None else the_kind
    details["causes"] = list(causes)
    return StatusError(422, "Invalid", f'{qualified_kind} "{name}" is invalid: {summary}', details)


def bad_request(message: str) -> StatusError:
    return StatusError(400, "BadRequest", message)


def method_not_allowed(
    message: str = "the server does not allow this method on the requested resource",
) -> StatusError:
    return StatusError(405, "MethodNotAllowed", message)


def expired(message: str) -> StatusError:
    return StatusError(410, "Expired", message)


def internal(message: str) -> StatusError:
    return StatusError(
        500, "InternalError", f"Internal error occurred: {message}", {"causes": [{"message": message}]}
    )


def plain_error(message: str) -> StatusError:
    """A non-Status Go error surfaced by the apiserver: 500 with an empty reason."""
    return StatusError(500, "", message)


def unprocessable_patch(message: str) -> StatusError:
    """A JSON patch op failed: 422 with the generic message and the failure as a cause."""
    return StatusError(
        422,
        "Invalid",
        "the server rejected our request due to an error in our request",
        {"causes": [{"reason": "UnexpectedServerResponse", "message": message}]},
    )


def too_large_resource_version(requested: int, current: int) -> StatusError:
    return StatusError(
        504,
        "Timeout",
        f"Timeout: Too large resource version: {requested}, current: {current}",
        {
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        },
    )


def success(
    rt: ResourceType | None = None, name: str = "", uid: str = "", code: int | None = None
) -> JsonObj:
    status: JsonObj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
    if rt is not None:
        details = _details(rt, name)
        if uid:
            details["uid"] = uid
        status["details"] = details
    if code is not None:
        status["code"] = code
    return status
