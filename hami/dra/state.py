"""The plugin's checkpoint of prepared claims (``<plugin dir>/prepared-claims.json``).

Written atomically (temp file, fsync, rename) after every change, so a restarted plugin answers
a repeated ``NodePrepareResources`` with exactly what it answered before and can still undo
every claim. An unreadable file is moved aside (``.corrupt``) rather than trusted or deleted:
the plugin starts empty and ``NodeUnprepareResources`` still cleans up, because every host path
of a claim derives from its UID.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from hami.dra.claims import PreparedClaim

logger = logging.getLogger(__name__)

STATE_FILE: Final = "prepared-claims.json"
STATE_VERSION: Final = 1


class ClaimCheckpoint:
    """Claim UID → :class:`PreparedClaim`, mirrored to one JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._claims: dict[str, PreparedClaim] = {}

    @property
    def claims(self) -> Mapping[str, PreparedClaim]:
        return dict(self._claims)

    def get(self, uid: str) -> PreparedClaim | None:
        return self._claims.get(uid)

    def load(self) -> None:
        """Read the file (missing: start empty; unreadable: move it aside and start empty)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self._claims = {}
            return
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
                raise ValueError(f"expected {{'version': {STATE_VERSION}, 'claims': {{...}}}}")
            claims = {uid: PreparedClaim.from_json(raw) for uid, raw in dict(doc["claims"]).items()}
        except (ValueError, KeyError, TypeError) as e:
            aside = self.path.with_name(self.path.name + ".corrupt")
            logger.error("checkpoint %s is unreadable (%s); moved to %s, starting empty", self.path, e, aside)
            os.replace(self.path, aside)
            self._claims = {}
            return
        self._claims = claims
        logger.info("checkpoint %s: %d prepared claims", self.path, len(claims))

    def put(self, claim: PreparedClaim) -> None:
        self._claims[claim.ref.uid] = claim
        self._write()

    def remove(self, uid: str) -> PreparedClaim | None:
        claim = self._claims.pop(uid, None)
        if claim is not None:
            self._write()
        return claim

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "version": STATE_VERSION,
            "claims": {uid: c.to_json() for uid, c in sorted(self._claims.items())},
        }
        fd, tmp = tempfile.mkstemp(prefix=".prepared-", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
