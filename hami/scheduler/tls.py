"""Server TLS whose certificate and key are re-read from disk when they change (spec §1.1, HAMi #1573).

HAMi 2.8 hot-reloads ``--cert_file``/``--key_file`` with controller-runtime's certwatcher. Here
:class:`ReloadingCertificate` owns one *listener* :class:`ssl.SSLContext` (give it to the HTTPS
site once) and reacts to file changes in two ways, both cheap:

* **On every new connection.** The listener's ``sni_callback`` runs for every ClientHello (OpenSSL
  calls it with ``server_name=None`` when the client sends no SNI, e.g. kube-scheduler dialling
  ``https://127.0.0.1:443``). It ``stat``s both files (a few microseconds, optionally throttled by
  ``min_check_interval``); when their (device, inode, size, mtime) signature changed it loads the
  pair into a **fresh** context and switches the connection being accepted to it
  (``SSLObject.context = ...``, OpenSSL ``SSL_set_SSL_CTX``), so the very first handshake after a
  rotation already presents the new certificate. Open connections keep theirs.
* **Optionally by polling** (:meth:`ReloadingCertificate.watch`, run it in the role's TaskGroup),
  so a rotation is logged, and a broken pair reported, even while no client connects.

After a successful reload the listener context itself also loads the new pair, so a handshake
that somehow bypasses the callback still gets it. Kubernetes Secret volumes rotate by swapping a
symlink, which changes the inode: covered by the signature. A half-written pair (new cert, old
key) fails to load: the previous certificate keeps being served, the failure is logged once per
signature, and the next write of either file triggers another attempt.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from hami.core.errors import ConfigError

logger = logging.getLogger(__name__)

Signature = tuple[tuple[int, int, int, int], tuple[int, int, int, int]]


ContextHook = Callable[[ssl.SSLContext], None]
"""Extra settings (ciphers, ALPN...) applied to every context built, the listener's and reloads'."""


def server_context(cert_file: Path, key_file: Path, configure: ContextHook | None = None) -> ssl.SSLContext:
    """A TLS ≥ 1.2 server context serving ``cert_file`` (PEM chain) with ``key_file``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if configure is not None:
        configure(context)
    context.load_cert_chain(cert_file, key_file)
    return context


def _stat(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ReloadingCertificate:
    """The HTTPS listener's certificate, re-read when ``cert_file``/``key_file`` change."""

    __slots__ = (
        "_clock",
        "_configure",
        "_current",
        "_failed",
        "_last_check",
        "_listener",
        "_signature",
        "cert_file",
        "generation",
        "key_file",
        "last_error",
        "min_check_interval",
    )

    def __init__(
        self,
        cert_file: str | os.PathLike[str],
        key_file: str | os.PathLike[str],
        *,
        min_check_interval: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        configure: ContextHook | None = None,
    ) -> None:
        """Load the pair now; :class:`ConfigError` naming the file if it cannot be served."""
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self.min_check_interval = min_check_interval
        self._clock = clock
        self._configure = configure
        try:
            self._signature: Signature = (_stat(self.cert_file), _stat(self.key_file))
            self._listener = server_context(self.cert_file, self.key_file, configure)
        except FileNotFoundError as e:
            raise ConfigError("tls", f"cannot read {e.filename}: no such file") from None
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(
                "tls", f"cannot serve certificate {self.cert_file} with key {self.key_file}: {e}"
            ) from None
        self._listener.sni_callback = self._on_client_hello
        self._current = self._listener
        self._failed: Signature | None = None
        self._last_check = clock()
        self.generation = 1
        """Increments at every certificate loaded (1 = the one loaded at start)."""
        self.last_error: str | None = None
        """Why the latest changed pair could not be loaded (None after a successful load)."""

    @property
    def context(self) -> ssl.SSLContext:
        """The listener context: pass it once as the HTTPS site's ``ssl_context``."""
        return self._listener

    def check(self) -> bool:
        """Reload if the files changed since the last load; True if a new certificate was loaded."""
        self._last_check = self._clock()
        try:
            signature: Signature = (_stat(self.cert_file), _stat(self.key_file))
        except OSError as e:
            # Mid-rotation (a file briefly missing): keep serving the loaded certificate.
            logger.debug("TLS files not readable, keeping the current certificate: %s", e)
            return False
        if signature == self._signature or signature == self._failed:
            return False
        try:
            fresh = server_context(self.cert_file, self.key_file, self._configure)
        except (OSError, ssl.SSLError) as e:
            self._failed = signature
            self.last_error = str(e)
            logger.warning(
                "TLS certificate %s / key %s changed but cannot be loaded (%s); still serving the "
                "previous one",
                self.cert_file,
                self.key_file,
                e,
            )
            return False
        self._current = fresh
        self._signature = signature
        self._failed = None
        self.last_error = None
        self.generation += 1
        try:
            self._listener.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as e:
            # Changed again since the read above; the next check picks that up.
            logger.debug("listener context kept its certificate: %s", e)
        logger.info("TLS certificate %s reloaded (generation %d)", self.cert_file, self.generation)
        return True

    def _on_client_hello(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        # Runs inside the handshake: must never raise (OpenSSL would abort the handshake).
        try:
            if self._clock() - self._last_check >= self.min_check_interval:
                self.check()
            if self._current is not context:
                connection.context = self._current
        except Exception:  # pragma: no cover - defensive: keep accepting with the old certificate
            logger.exception("TLS certificate check failed during a handshake")

    async def watch(self, interval: float = 10.0) -> None:
        """Check every ``interval`` seconds until cancelled (controller-runtime polls every 10 s)."""
        while True:
            await asyncio.sleep(interval)
            self.check()
