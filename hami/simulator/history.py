"""ResourceVersions of the simulated API server and the store's bounded change history
(k8s-apis.md §6.3-§6.5).

The history is what watches resume from and what paginated and exact-resourceVersion lists roll
back through. It keeps the newest events only; everything at or below :attr:`ChangeHistory.
compacted_rv` is gone, so a watch or a continue token from that far back is answered with 410
``Expired``, as kube-apiserver does once etcd has compacted. Continue tokens carry the list's
resourceVersion and the key to resume after, so every page of a list shows the same snapshot.
"""

from __future__ import annotations

import base64
import bisect
import collections
from collections.abc import Iterator
from typing import Any, Final

import orjson

from hami.simulator.statuses import bad_request, expired
from hami.simulator.watchers import Key, StoreEvent

JsonObj = dict[str, Any]

CONTINUE_TOO_OLD: Final = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new "
    "list without the continue parameter, or use the continue token in this response to retrieve the "
    "remainder of the results. Continuing with the provided token results in an inconsistent list - objects "
    "that were created, modified, or deleted between the time the first chunk was returned and now may show "
    "up in the list."
)


def parse_resource_version(text: str) -> int:
    """A client-sent resourceVersion as a number (400 BadRequest when it is not one)."""
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f"invalid resource version: {text!r}") from None
    if value < 0:
        raise bad_request(f"invalid resource version: {text!r}")
    return value


class ChangeHistory:
    """The newest ``size`` change events of every kind, in resourceVersion order."""

    def __init__(self, size: int) -> None:
        self._events: collections.deque[StoreEvent] = collections.deque(maxlen=max(1, size))
        self._compacted_rv = 0

    @property
    def compacted_rv(self) -> int:
        """The newest resourceVersion no longer retained (0 while nothing was dropped)."""
        return self._compacted_rv

    def append(self, event: StoreEvent) -> None:
        if len(self._events) == self._events.maxlen:
            self._compacted_rv = self._events[0].rv
        self._events.append(event)

    def compact(self, keep: int, current_rv: int) -> None:
        """Drop all but the newest ``keep`` events (tests use it to force 410 Expired)."""
        while len(self._events) > keep:
            self._compacted_rv = self._events.popleft().rv
        if not self._events:
            self._compacted_rv = current_rv

    def events_after(self, rv: int) -> Iterator[StoreEvent]:
        events = self._events
        if not events or events[-1].rv <= rv:
            return iter(())
        start = bisect.bisect_right(events, rv, key=lambda event: event.rv)
        return (events[i] for i in range(start, len(events)))

    def rolled_back(self, store_key: str, table: dict[Key, JsonObj], rv: int) -> dict[Key, JsonObj] | None:
        """The objects of ``table`` as of ``rv``, or None when none of them changed since then
        (``table`` itself is that state). 410 when the history no longer reaches back to ``rv``."""
        if rv < self._compacted_rv:
            raise expired(CONTINUE_TOO_OLD)
        later = [e for e in self.events_after(rv) if e.store_key == store_key]
        if not later:
            return None
        state = dict(table)
        for event in reversed(later):
            if event.type == "ADDED":
                state.pop(event.key, None)
            elif event.old is not None:
                state[event.key] = event.old
        return state


def encode_continue(rv: int, start: str) -> str:
    raw = orjson.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, str]:
    """The list resourceVersion and resume key of a continue token (400 when it is not ours)."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = orjson.loads(raw)
        return int(data["rv"]), str(data["start"])
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        raise bad_request(f"continue key is not valid: {token!r}") from None
