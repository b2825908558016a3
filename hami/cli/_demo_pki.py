"""Throw-away TLS material for ``hami demo``: a CA and a serving certificate for 127.0.0.1.

The embedded API server calls admission webhooks over HTTPS only and verifies them against the
``caBundle`` of the MutatingWebhookConfiguration, exactly as a real one does, so the demo needs a
CA the scheduler's certificate chains to. ``cryptography`` is not a dependency; the ``openssl``
command is on nearly every machine, so it is used. Without it the demo runs the scheduler over
plain HTTP and submits pods with ``schedulerName`` already set (what the webhook would have done),
and says so.

EC P-256 keys keep generation in the tens of milliseconds.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

_EC: Final = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
_TIMEOUT_S: Final = 30.0


class PkiUnavailable(Exception):
    """No certificates could be made (no ``openssl``, or it failed); the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoPki:
    ca_cert: Path
    server_cert: Path
    server_key: Path

    @property
    def ca_bundle(self) -> str:
        """The CA as a webhook ``clientConfig.caBundle`` (base64 of the PEM)."""
        return base64.b64encode(self.ca_cert.read_bytes()).decode()


def _openssl(binary: str, *args: str, cwd: Path) -> None:
    try:
        done = subprocess.run(
            [binary, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PkiUnavailable(f"openssl {args[0]} could not run: {e}") from e
    if done.returncode != 0:
        raise PkiUnavailable(f"openssl {args[0]} failed: {done.stderr.strip()[-300:]}")


def make_pki(directory: Path, *, openssl: str | None = None) -> DemoPki:
    """A CA (``ca.crt``) and a certificate for ``IP:127.0.0.1, DNS:localhost`` signed by it.

    Raises :class:`PkiUnavailable` when ``openssl`` is missing or fails.
    """
    binary = openssl or shutil.which("openssl")
    if binary is None:
        raise PkiUnavailable("the openssl command is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        binary,
        "req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=hami-demo-ca",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        binary, "req", *_EC, "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=hami-scheduler",
        cwd=directory,
    )  # fmt: skip
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        binary,
        "x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "tls.crt", "-days", "2", "-extfile", "san.cnf",
        cwd=directory,
    )  # fmt: skip
    return DemoPki(
        ca_cert=directory / "ca.crt", server_cert=directory / "tls.crt", server_key=directory / "tls.key"
    )
