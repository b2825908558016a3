"""Where the apiserver is and how to authenticate: kubeconfig, in-cluster, or a bare URL.

Parsing kubeconfig is delegated to kubernetes-asyncio's loaders (contexts, embedded and
file-referenced CA/client certificates, bearer tokens and token files, basic auth, exec
plugins, in-cluster service-account tokens re-read every minute); this module turns their
``Configuration`` into what our aiohttp client needs: a base URL, an ``SSLContext`` and an
``Authorization`` header fetched per request (so rotated tokens are picked up).

Selection, first match wins (``NetworkingSettings``):
1. ``--kubeconfig`` given: that file (``--kube-context``), ``--kube-api-server`` overriding its server;
2. ``--kube-api-server`` alone: that URL without credentials (the embedded cluster);
3. ``KUBERNETES_SERVICE_HOST`` set: in-cluster service account;
4. ``$KUBECONFIG`` or ``~/.kube/config``.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Mapping
from typing import Any

from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.config import ConfigException
from kubernetes_asyncio.config.incluster_config import (
    SERVICE_CERT_FILENAME,
    SERVICE_HOST_ENV_NAME,
    SERVICE_TOKEN_FILENAME,
    InClusterConfigLoader,
)
from kubernetes_asyncio.config.kube_config import KubeConfigLoader, load_kube_config

from hami.config.settings import NetworkingSettings
from hami.core.errors import ConfigError

_logger = logging.getLogger(__name__)


class Credentials:
    """Endpoint + TLS + auth header for one apiserver."""

    def __init__(
        self,
        host: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        configuration: Configuration | None = None,
        reloader: KubeConfigLoader | None = None,
        source: str = "url",
        proxy: str | None = None,
    ) -> None:
        host = host.rstrip("/")
        if not host.startswith(("http://", "https://")):
            raise ConfigError("--kube-api-server", f"must be an http:// or https:// URL, got {host!r}")
        self.host = host
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname
        self.source = source
        self.proxy = proxy
        self._configuration = configuration
        self._reloader = reloader

    def __repr__(self) -> str:  # never print tokens
        return f"Credentials(host={self.host!r}, source={self.source!r})"

    @classmethod
    def anonymous(cls, host: str, *, ssl_context: ssl.SSLContext | None = None) -> Credentials:
        """No credentials (the embedded cluster, or a proxy such as ``kubectl proxy``)."""
        if ssl_context is None and host.startswith("https://"):
            ssl_context = ssl.create_default_context()
        return cls(host, ssl_context=ssl_context, source="url")

    @classmethod
    def from_configuration(
        cls,
        cfg: Configuration,
        *,
        reloader: KubeConfigLoader | None = None,
        host: str | None = None,
        source: str = "configuration",
    ) -> Credentials:
        url = host or str(cfg.host)
        return cls(
            url,
            ssl_context=_ssl_context(cfg) if url.startswith("https://") else None,
            server_hostname=getattr(cfg, "tls_server_name", None) or None,
            configuration=cfg,
            reloader=reloader,
            source=source,
            proxy=getattr(cfg, "proxy", None) or None,
        )

    async def headers(self) -> dict[str, str]:
        """The ``Authorization`` header, if any (calls the library's token-refresh hook)."""
        if self._configuration is None:
            return {}
        value = await self._configuration.get_api_key_with_prefix("BearerToken")
        return {"Authorization": str(value)} if value else {}

    async def refresh(self) -> bool:
        """Reload credentials after a 401 (expired exec-plugin or OIDC token). True if a
        reload happened, so that the caller may retry once."""
        if self._reloader is None or self._configuration is None:
            return False
        try:
            await self._reloader.load_and_set(self._configuration)
        except (ConfigException, OSError) as exc:
            _logger.warning("cannot reload kubeconfig credentials: %s", exc)
            return False
        return True


def _ssl_context(cfg: Configuration) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, keyfile=cfg.key_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("--kubeconfig", f"cannot load TLS material: {exc}") from exc
    if not cfg.verify_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _existing_file(path: str) -> str | None:
    """The expanded path if it is a file (startup-time check; blocking is fine here)."""
    full = os.path.expanduser(path)
    return full if os.path.isfile(full) else None


async def load_kubeconfig(path: str, *, context: str | None = None, host: str | None = None) -> Credentials:
    full = _existing_file(path)
    if full is None:
        raise ConfigError("--kubeconfig", f"{path} does not exist")
    cfg = Configuration()
    try:
        loader: Any = await load_kube_config(
            config_file=full,
            context=context,
            client_configuration=cfg,
            persist_config=False,
        )
    except (ConfigException, OSError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError("--kubeconfig", f"cannot load {path}: {exc}") from exc
    return Credentials.from_configuration(cfg, reloader=loader, host=host, source=f"kubeconfig {path}")


def load_in_cluster(
    environ: Mapping[str, str],
    *,
    token_file: str = SERVICE_TOKEN_FILENAME,
    ca_file: str = SERVICE_CERT_FILENAME,
) -> Credentials:
    cfg = Configuration()
    try:
        InClusterConfigLoader(
            token_filename=token_file, cert_filename=ca_file, try_refresh_token=True, environ=dict(environ)
        ).load_and_set(cfg)
    except (ConfigException, OSError) as exc:
        raise ConfigError("in-cluster config", str(exc)) from exc
    return Credentials.from_configuration(cfg, source="in-cluster")


async def load_credentials(settings: NetworkingSettings, *, environ: Mapping[str, str]) -> Credentials:
    """Pick and load credentials as described in the module docstring."""
    if settings.kubeconfig:
        return await load_kubeconfig(settings.kubeconfig, context=settings.context, host=settings.api_server)
    if settings.api_server:
        return Credentials.anonymous(settings.api_server)
    if environ.get(SERVICE_HOST_ENV_NAME):
        return load_in_cluster(environ)
    default = environ.get("KUBECONFIG", "").split(os.pathsep)[0] or "~/.kube/config"
    if _existing_file(default) is None:
        raise ConfigError(
            "--kubeconfig",
            f"no apiserver configured: not in a cluster and {default} does not exist "
            "(pass --kubeconfig or --kube-api-server)",
        )
    return await load_kubeconfig(default, context=settings.context)
