"""Error tree of the domain core.

HamiError
├── DecodeError        an annotation/label/file value could not be decoded (names key + excerpt)
├── ConfigError        a configuration file or value is invalid (names the key)
├── InvalidRequest     a pod's device request is malformed or impossible
└── LedgerError        an operation on the allocation ledger was inconsistent
"""

from __future__ import annotations

EXCERPT_LEN = 80


def excerpt(value: str, limit: int = EXCERPT_LEN) -> str:
    """A short, printable prefix of a possibly huge or hostile value for error messages."""
    text = value if len(value) <= limit else value[:limit] + "..."
    return text.encode("unicode_escape").decode("ascii")


class HamiError(Exception):
    """Base of every error raised by hami code (not by libraries)."""


class DecodeError(HamiError):
    def __init__(self, key: str, value: str, reason: str) -> None:
        self.key = key
        self.value = value
        self.reason = reason
        super().__init__(f"cannot decode {key}: {reason} (value: {excerpt(value)!r})")


class ConfigError(HamiError):
    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"invalid configuration {key}: {reason}")


class InvalidRequest(HamiError):
    pass


class LedgerError(HamiError):
    pass
