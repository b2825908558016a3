"""One retry policy for apiserver calls (style guide §3.4; kopf ``clients/api.py::request``).

A call the server demonstrably did not execute is retried for any verb: 429, any 5xx
carrying ``Retry-After``, and a failure to connect (the request never left this
process). Other 5xx, timeouts and dropped connections are retried only for idempotent
calls (GET/LIST): after them a write may have landed. ``Retry-After`` (header or
``details.retryAfterSeconds``) replaces the backoff delay, capped by
``NetworkingSettings.max_retry_after``; the backoff itself comes from
``NetworkingSettings.retry_backoff``. Each attempt is logged as ``#n/N``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from hami.config.settings import NetworkingSettings
from hami.k8s.errors import (
    ApiConnectionError,
    ApiError,
    ApiServerError,
    ApiTooManyRequests,
    ApiTransportError,
)
from hami.runtime.backoff import Backoff
from hami.runtime.clock import Clock, LoopClock

_logger = logging.getLogger(__name__)

T = TypeVar("T")


def is_retriable(error: ApiError, *, idempotent: bool) -> bool:
    """Whether ``error`` may be retried (see the module docstring)."""
    if isinstance(error, ApiTooManyRequests):
        return True
    if isinstance(error, ApiConnectionError):
        return True  # the request never left this process
    if isinstance(error, ApiServerError) and error.retry_after is not None:
        return True
    if isinstance(error, ApiServerError | ApiTransportError):
        return idempotent
    return False


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    settings: NetworkingSettings,
    idempotent: bool,
    what: str,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    logger: logging.Logger | None = None,
) -> T:
    """Run ``call`` and retry it per the rules above, with settings-driven backoff.

    ``Retry-After`` (header or ``details.retryAfterSeconds``) replaces the backoff delay,
    capped by ``settings.max_retry_after``. Attempts are logged as ``#n/N``.
    """
    log = logger or _logger
    backoff = Backoff(settings.retry_backoff, clock=clock or LoopClock(), rng=rng)
    attempt = 0
    while True:
        try:
            return await call()
        except ApiError as exc:
            if attempt >= settings.max_retries or not is_retriable(exc, idempotent=idempotent):
                raise
            attempt += 1
            delay = backoff.next_delay()
            if exc.retry_after is not None:
                delay = min(exc.retry_after, settings.max_retry_after)
            log.warning(
                "%s failed (%s); retry #%d/%d in %.2fs", what, exc, attempt, settings.max_retries, delay
            )
            await sleep(delay)
