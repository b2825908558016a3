"""The apiserver error tree: the only errors that cross the HTTP client boundary.

aiohttp, ``OSError`` and timeouts are translated once, in ``hami.k8s.client``, into::

    ApiError                        (HamiError) any failed call; .status, .reason, .message
    ├── ApiTransportError           no HTTP answer: the call may or may not have been applied
    │   ├── ApiConnectionError      could not connect (request never sent); .refused
    │   ├── ApiTimeoutError         no (complete) answer in time
    │   └── ApiProtocolError        undecodable response or watch stream
    ├── ApiClientError              4xx: the server understood and refused
    │   ├── ApiBadRequest           400
    │   ├── ApiUnauthorized         401
    │   ├── ApiForbidden            403
    │   ├── ApiNotFound             404
    │   ├── ApiMethodNotAllowed     405
    │   ├── ApiConflict             409 optimistic lock, binding conflict
    │   │   └── ApiAlreadyExists    409 reason AlreadyExists
    │   ├── ApiGone                 410 Expired/Gone: resourceVersion too old → re-list
    │   ├── ApiUnsupportedMediaType 415
    │   ├── ApiInvalid              422
    │   └── ApiTooManyRequests      429 (.retry_after)
    └── ApiServerError              5xx
        ├── ApiServiceUnavailable   503
        └── ApiServerTimeout        504

Errors are built from the ``Status`` body when there is one (kopf ``errors.py``), keep it
in ``.body``, and cut text payloads to 256 characters so that secrets and megabyte bodies
stay out of logs. "Definite" failures (``ApiClientError``) are what may trigger undo
steps; after an ``ApiTransportError`` or ``ApiServerError`` a write may have landed.
"""

from __future__ import annotations

from typing import Final

import orjson

from hami.core.errors import HamiError
from hami.k8s.objects import RawStatus
from hami.runtime.logs import truncate

PAYLOAD_LIMIT: Final = 256


class ApiError(HamiError):
    """A failed apiserver call. ``status`` is the HTTP code (0 without a response)."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        reason: str = "",
        method: str = "",
        path: str = "",
        body: RawStatus | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.message = truncate(message, PAYLOAD_LIMIT)
        self.method = method
        self.path = path
        self.body = body
        self.retry_after = retry_after
        where = f"{method} {path}: " if method or path else ""
        code = f"{status} {reason}: " if status else (f"{reason}: " if reason else "")
        super().__init__(f"{where}{code}{self.message}")

    @property
    def details(self) -> dict[str, object]:
        return dict((self.body or {}).get("details") or {})


class ApiTransportError(ApiError):
    pass


class ApiConnectionError(ApiTransportError):
    def __init__(self, message: str, *, refused: bool = False, method: str = "", path: str = "") -> None:
        self.refused = refused
        super().__init__(
            message, reason="ConnectionRefused" if refused else "ConnectionError", method=method, path=path
        )


class ApiTimeoutError(ApiTransportError):
    pass


class ApiProtocolError(ApiTransportError):
    pass


class ApiClientError(ApiError):
    pass


class ApiBadRequest(ApiClientError):
    pass


class ApiUnauthorized(ApiClientError):
    pass


class ApiForbidden(ApiClientError):
    pass


class ApiNotFound(ApiClientError):
    pass


class ApiMethodNotAllowed(ApiClientError):
    pass


class ApiConflict(ApiClientError):
    pass


class ApiAlreadyExists(ApiConflict):
    pass


class ApiGone(ApiClientError):
    pass


class ApiUnsupportedMediaType(ApiClientError):
    pass


class ApiInvalid(ApiClientError):
    pass


class ApiTooManyRequests(ApiClientError):
    pass


class ApiServerError(ApiError):
    pass


class ApiServiceUnavailable(ApiServerError):
    pass


class ApiServerTimeout(ApiServerError):
    pass


_BY_CODE: Final[dict[int, type[ApiError]]] = {
    400: ApiBadRequest,
    401: ApiUnauthorized,
    403: ApiForbidden,
    404: ApiNotFound,
    405: ApiMethodNotAllowed,
    409: ApiConflict,
    410: ApiGone,
    415: ApiUnsupportedMediaType,
    422: ApiInvalid,
    429: ApiTooManyRequests,
    503: ApiServiceUnavailable,
    504: ApiServerTimeout,
}


def error_class(status: int, reason: str = "") -> type[ApiError]:
    if status == 409 and reason == "AlreadyExists":
        return ApiAlreadyExists
    cls = _BY_CODE.get(status)
    if cls is not None:
        return cls
    if 400 <= status < 500:
        return ApiClientError
    if status >= 500:
        return ApiServerError
    return ApiError


def error_from_status(
    status: RawStatus,
    *,
    http_status: int | None = None,
    method: str = "",
    path: str = "",
    retry_after: float | None = None,
) -> ApiError:
    """The most specific error for a ``Status`` (a response body or an ``ERROR`` event)."""
    code = status.get("code") or http_status or 0
    reason = str(status.get("reason") or "")
    message = str(status.get("message") or reason or "unknown error")
    if retry_after is None:
        seconds = (status.get("details") or {}).get("retryAfterSeconds")
        if isinstance(seconds, int | float) and seconds > 0:
            retry_after = float(seconds)
    return error_class(code, reason)(
        message, status=code, reason=reason, method=method, path=path, body=status, retry_after=retry_after
    )


def error_from_response(
    http_status: int,
    body: bytes,
    *,
    method: str = "",
    path: str = "",
    retry_after: float | None = None,
) -> ApiError:
    """Translate a non-2xx response; bodies that are not a ``Status`` become the message."""
    status: object = None
    try:
        status = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        status = None
    if isinstance(status, dict) and status.get("kind") == "Status":
        return error_from_status(
            status,  # type: ignore[arg-type]  # checked: kind == Status
            http_status=http_status,
            method=method,
            path=path,
            retry_after=retry_after,
        )
    message = truncate(body, PAYLOAD_LIMIT) if body else f"HTTP {http_status}"
    return error_class(http_status)(
        message, status=http_status, method=method, path=path, retry_after=retry_after
    )


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (the apiserver only sends delta-seconds)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
