"""The scheduler side of the HTTP extender protocol, as kube-scheduler's ``HTTPExtender`` speaks it.

``POST <urlPrefix>/<verb>`` with capitalised JSON keys (k8s-apis.md §8.2-§8.3): ``ExtenderArgs``
(``Pod``, ``Nodes``, ``NodeNames``), ``ExtenderBindingArgs`` (``PodName``, ``PodNamespace``,
``PodUID``, ``Node``). Answers are read case-insensitively, as Go's ``encoding/json`` does. Any
status but 200 is an error named like the real one.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping, Sequence
from typing import Any, Final

import aiohttp

from hami.simulator.schedconfig import ExtenderConfig

JsonObj = dict[str, Any]
MAX_EXTENDER_PRIORITY: Final = 10
MAX_NODE_SCORE: Final = 100


class ExtenderError(Exception):
    """The extender failed (transport, status, or a non-empty ``Error`` field)."""


def _field(obj: object, name: str) -> Any:
    """Go ``encoding/json`` field lookup: exact key first, then case-insensitive."""
    if not isinstance(obj, Mapping):
        return None
    if name in obj:
        return obj[name]
    lowered = name.lower()
    for key, value in obj.items():
        if isinstance(key, str) and key.lower() == lowered:
            return value
    return None


def _name(node: Mapping[str, Any]) -> str:
    return str((node.get("metadata") or {}).get("name", ""))


def _reason_map(value: object, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ExtenderError(f"extender returned {what} that is not an object")
    return {str(k): str(v) for k, v in value.items()}


class HttpExtender:
    """One configured extender. Owns an aiohttp session; close it with :meth:`close`."""

    def __init__(self, config: ExtenderConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return self.config.url_prefix

    def _ssl(self) -> ssl.SSLContext | bool:
        cfg = self.config
        if not cfg.enable_https:
            return True
        tls = cfg.tls
        context = ssl.create_default_context()
        has_ca = tls is not None and bool(tls.ca_file or tls.ca_data)
        # kube-scheduler forces insecure when no CA is given with enableHTTPS (k8s-apis.md §8.1).
        if tls is None or tls.insecure or not has_ca:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context.load_verify_locations(
                cafile=tls.ca_file or None, cadata=tls.ca_data.decode() if tls.ca_data else None
            )
        if tls is not None and tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file or None)
        return context

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl()))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _send(self, verb: str, args: Mapping[str, Any]) -> Any:
        url = self.config.url_prefix.rstrip("/") + "/" + verb
        server_name = self.config.tls.server_name if self.config.tls else ""
        try:
            async with self._client().post(
                url,
                data=json.dumps(args).encode(),
                headers={"Content-Type": "application/json"},
                server_hostname=server_name or None,
                timeout=aiohttp.ClientTimeout(total=self.config.http_timeout),
            ) as resp:
                if resp.status != 200:
                    raise ExtenderError(f"failed {verb} with extender at URL {url}, code {resp.status}")
                body = await resp.read()
        except TimeoutError as exc:
            raise ExtenderError(f'Post "{url}": context deadline exceeded (Client.Timeout exceeded)') from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ExtenderError(f'Post "{url}": {exc}') from exc
        try:
            return json.loads(body)
        except ValueError as exc:
            raise ExtenderError(f"extender at URL {url} returned invalid JSON for {verb}: {exc}") from exc

    def _args(self, pod: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]]) -> JsonObj:
        if self.config.node_cache_capable:
            return {"Pod": pod, "Nodes": None, "NodeNames": [_name(n) for n in nodes]}
        return {"Pod": pod, "Nodes": {"metadata": {}, "items": list(nodes)}, "NodeNames": None}

    async def filter(
        self, pod: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]]
    ) -> tuple[list[str], dict[str, str], dict[str, str]]:
        """Feasible node names, FailedNodes and FailedAndUnresolvableNodes."""
        result = await self._send(self.config.filter_verb, self._args(pod, nodes))
        error = _field(result, "Error")
        if error:
            raise ExtenderError(str(error))
        inputs = {_name(n) for n in nodes}
        names = _field(result, "NodeNames")
        feasible: list[str] = []
        if self.config.node_cache_capable and names is not None:
            if not isinstance(names, list):
                raise ExtenderError(f"extender {self.url!r} returned NodeNames that is not a list")
            for name in names:
                if name not in inputs:
                    raise ExtenderError(
                        f"extender {self.url!r} claims a filtered node {name!r} "
                        "which is not found in the input node list"
                    )
                feasible.append(str(name))
        else:
            node_list = _field(result, "Nodes")
            items = _field(node_list, "items") if node_list is not None else None
            for item in items or []:
                name = _name(item) if isinstance(item, Mapping) else ""
                if name in inputs:
                    feasible.append(name)
        return (
            feasible,
            _reason_map(_field(result, "FailedNodes"), "FailedNodes"),
            _reason_map(_field(result, "FailedAndUnresolvableNodes"), "FailedAndUnresolvableNodes"),
        )

    async def prioritize(self, pod: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        """Host → score × weight (the caller scales by MaxNodeScore / MaxExtenderPriority)."""
        result = await self._send(self.config.prioritize_verb, self._args(pod, nodes))
        if not isinstance(result, list):
            raise ExtenderError(f"extender {self.url!r} returned a HostPriorityList that is not a list")
        scores: dict[str, int] = {}
        for entry in result:
            host, score = _field(entry, "Host"), _field(entry, "Score")
            if isinstance(host, str) and isinstance(score, int):
                scores[host] = scores.get(host, 0) + score * self.config.weight
        return scores

    async def bind(self, *, name: str, namespace: str, uid: str, node: str) -> None:
        args = {"PodName": name, "PodNamespace": namespace, "PodUID": uid, "Node": node}
        result = await self._send(self.config.bind_verb, args)
        error = _field(result, "Error")
        if error:
            raise ExtenderError(str(error))
