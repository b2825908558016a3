"""Services as kube-apiserver stores them: defaults, validation, cluster IPs and node ports.

The real apiserver allocates ``spec.clusterIP(s)`` from the service CIDR (``--service-cluster-ip-range``,
here 10.96.0.0/12, single-stack IPv4) and ``nodePort``/``healthCheckNodePort`` from
``--service-node-port-range`` (30000-32767) while it stores a Service, and keeps what is taken in etcd.
Here what is taken is derived from the stored Services themselves, so it lives exactly as long as
they do (a restored store restores it) and deleting a Service frees its addresses. Dynamic picks are
random and prefer the upper part of each range, which the real allocators leave to them so that
requested (static) values rarely collide (KEP-3070, KEP-3668). 10.96.0.1 is the ``kubernetes``
Service's address on a real cluster and is never handed out.

A requested IP or port that is out of range or taken is 422 ``Invalid`` with the real message. On
update the allocated values a body leaves out are kept (``kubectl replace`` of a manifest without
them), a changed cluster IP is refused, and values the new type no longer needs are dropped when the
client left them as they were (``dropTypeDependentFields``). No Endpoints or EndpointSlices exist:
nothing routes traffic to a Service.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from hami.simulator.resources import SERVICES
from hami.simulator.statuses import bad_request, field_error, invalid

JsonObj = dict[str, Any]
Causes = list[JsonObj]

SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/12")
NODE_PORT_MIN, NODE_PORT_MAX = 30000, 32767
KUBERNETES_SERVICE_IP = ipaddress.IPv4Address("10.96.0.1")
TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")
PROTOCOLS = ("SCTP", "TCP", "UDP")
_IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")


def _go_strings(values: Sequence[Any]) -> str:
    return "[]string{" + ", ".join(orjson.dumps(str(v)).decode() for v in values) + "}"


def _spec(svc: JsonObj) -> JsonObj:
    spec = svc.get("spec")
    if spec is None:
        spec = svc["spec"] = {}
    return spec  # check_shape made it a dict


def _ports(spec: Mapping[str, Any]) -> list[JsonObj]:
    ports = spec.get("ports") or []
    if not isinstance(ports, list) or not all(isinstance(p, dict) for p in ports):
        raise bad_request(
            "json: cannot unmarshal into Go struct field ServiceSpec.spec.ports of type []v1.ServicePort"
        )
    return ports


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def default_service(svc: JsonObj) -> None:
    """``SetDefaults_Service`` (in place)."""
    spec = _spec(svc)
    spec["type"] = spec.get("type") or "ClusterIP"
    spec["sessionAffinity"] = spec.get("sessionAffinity") or "None"
    if spec["sessionAffinity"] == "None":
        spec.pop("sessionAffinityConfig", None)
    elif spec["sessionAffinity"] == "ClientIP" and not (
        ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds")
    ):
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": 10800}}
    for port in _ports(spec):
        port["protocol"] = port.get("protocol") or "TCP"
        if port.get("targetPort") in (None, 0, "") and "port" in port:
            port["targetPort"] = port["port"]
    kind = spec["type"]
    if (kind in ("NodePort", "LoadBalancer") or spec.get("externalIPs")) and not spec.get(
        "externalTrafficPolicy"
    ):
        spec["externalTrafficPolicy"] = "Cluster"
    if kind in ("ClusterIP", "NodePort", "LoadBalancer") and not spec.get("internalTrafficPolicy"):
        spec["internalTrafficPolicy"] = "Cluster"
    if kind == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is None:
        spec["allocateLoadBalancerNodePorts"] = True


def initial_status(svc: JsonObj) -> None:
    svc["status"] = {"loadBalancer": {}}


def _needs_cluster_ip(spec: Mapping[str, Any]) -> bool:
    return spec.get("type") != "ExternalName"


def _needs_node_ports(spec: Mapping[str, Any]) -> bool:
    kind = spec.get("type")
    return kind == "NodePort" or (
        kind == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is not False
    )


def _needs_health_check_port(spec: Mapping[str, Any]) -> bool:
    return spec.get("type") == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local"


def validate_service(svc: JsonObj) -> Causes:
    """The visible part of ``ValidateService`` (type, ports, ExternalName, node port placement)."""
    spec = _spec(svc)
    causes: Causes = []
    kind = spec.get("type")
    if kind not in TYPES:
        supported = ", ".join(f'"{t}"' for t in TYPES)
        causes.append(field_error("NotSupported", "spec.type", f'"{kind}": supported values: {supported}'))
    if spec.get("sessionAffinity") not in ("None", "ClientIP"):
        causes.append(
            field_error(
                "NotSupported",
                "spec.sessionAffinity",
                f'"{spec.get("sessionAffinity")}": supported values: "ClientIP", "None"',
            )
        )
    ports = _ports(spec)
    headless = spec.get("clusterIP") == "None"
    if not ports and not headless and kind != "ExternalName":
        causes.append(field_error("Required", "spec.ports", ""))
    if kind == "ExternalName" and not spec.get("externalName"):
        causes.append(field_error("Required", "spec.externalName", ""))
    names: set[str] = set()
    seen: set[tuple[Any, Any]] = set()
    for i, port in enumerate(ports):
        where = f"spec.ports[{i}]"
        name = port.get("name") or ""
        if len(ports) > 1 and not name:
            causes.append(field_error("Required", f"{where}.name", ""))
        elif name and name in names:
            causes.append(field_error("Duplicate", f"{where}.name", f'"{name}"'))
        names.add(name)
        number = _int(port.get("port"))
        if number is None or not 1 <= number <= 65535:
            causes.append(
                field_error(
                    "Invalid", f"{where}.port", f"{port.get('port')}: must be between 1 and 65535, inclusive"
                )
            )
        if port.get("protocol") not in PROTOCOLS:
            causes.append(
                field_error(
                    "NotSupported",
                    f"{where}.protocol",
                    f'"{port.get("protocol")}": supported values: "SCTP", "TCP", "UDP"',
                )
            )
        if (number, port.get("protocol")) in seen:
            causes.append(field_error("Duplicate", where, f'"{number}/{port.get("protocol")}"'))
        seen.add((number, port.get("protocol")))
        target = port.get("targetPort")
        if isinstance(target, str):
            if not _IANA_SVC_NAME.match(target) or "--" in target or not any(c.isalpha() for c in target):
                causes.append(
                    field_error(
                        "Invalid",
                        f"{where}.targetPort",
                        f'"{target}": must be a port name of at most 15 characters: lowercase letters, '
                        "digits and '-', with at least one letter, no '--' and no '-' at either end",
                    )
                )
        elif not 1 <= (_int(target) or 0) <= 65535:
            causes.append(
                field_error(
                    "Invalid", f"{where}.targetPort", f"{target}: must be between 1 and 65535, inclusive"
                )
            )
        if port.get("nodePort") and kind == "ClusterIP":
            causes.append(
                field_error("Forbidden", f"{where}.nodePort", "may not be used when `type` is 'ClusterIP'")
            )
    health = spec.get("healthCheckNodePort")
    if health and not _needs_health_check_port(spec):
        causes.append(
            field_error(
                "Invalid",
                "spec.healthCheckNodePort",
                f"{health}: may only be set when `type` is 'LoadBalancer' and "
                "`externalTrafficPolicy` is 'Local'",
            )
        )
    if spec.get("externalTrafficPolicy") and not (
        kind in ("NodePort", "LoadBalancer") or spec.get("externalIPs")
    ):
        causes.append(
            field_error(
                "Invalid",
                "spec.externalTrafficPolicy",
                f'"{spec["externalTrafficPolicy"]}": may only be set for externally-accessible services',
            )
        )
    return causes


# ---------------------------------------------------------------------------- what is taken
def _cluster_ips(spec: Mapping[str, Any]) -> list[str]:
    ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    return [str(ip) for ip in ips if ip and ip != "None"]


def _node_ports(spec: Mapping[str, Any]) -> list[int]:
    found = [n for p in spec.get("ports") or [] if isinstance(p, dict) and (n := _int(p.get("nodePort")))]
    health = _int(spec.get("healthCheckNodePort"))
    return [*found, health] if health else found


def _taken(others: Iterable[JsonObj]) -> tuple[set[int], set[int]]:
    """Cluster IPs (as integers) and node ports held by ``others``."""
    ips: set[int] = {int(KUBERNETES_SERVICE_IP)}
    ports: set[int] = set()
    for other in others:
        spec = other.get("spec") or {}
        for ip in _cluster_ips(spec):
            try:
                ips.add(int(ipaddress.IPv4Address(ip)))
            except ValueError:
                continue
        ports.update(_node_ports(spec))
    return ips, ports


def _pick(low: int, high: int, static_band: int, taken: set[int], rng: random.Random) -> int | None:
    """A free value, the dynamic band above ``low + static_band`` first, each band scanned from a
    random start."""
    for start, end in ((low + static_band, high), (low, low + static_band - 1)):
        size = end - start + 1
        if size <= 0:
            continue
        offset = rng.randrange(size)
        for k in range(size):
            candidate = start + (offset + k) % size
            if candidate not in taken:
                return candidate
    return None


def _static_band(size: int, divisor: int, cap: int) -> int:
    return min(max(16, size // divisor), cap)


# ---------------------------------------------------------------------------- allocation
def _allocate_cluster_ip(spec: JsonObj, taken: set[int], rng: random.Random) -> Causes:
    policy = spec.get("ipFamilyPolicy")
    if policy == "RequireDualStack":
        return [
            field_error(
                "Invalid",
                "spec.ipFamilyPolicy",
                '"RequireDualStack": this cluster is not configured for dual-stack services',
            )
        ]
    for i, family in enumerate(spec.get("ipFamilies") or []):
        if family != "IPv4":
            return [
                field_error("Invalid", f"spec.ipFamilies[{i}]", f'"{family}": not configured on this cluster')
            ]
    ip = str(spec.get("clusterIP") or "")
    ips = [str(v) for v in spec.get("clusterIPs") or []]
    if ip and ips and ips[0] != ip:
        return [field_error("Invalid", "spec.clusterIPs[0]", f'"{ips[0]}": must match `clusterIP` when set')]
    if len(ips) > 1:
        return [
            field_error(
                "Invalid",
                "spec.clusterIPs",
                f"{_go_strings(ips)}: this cluster is not configured for dual-stack services",
            )
        ]
    ip = ip or (ips[0] if ips else "")
    if ip == "None":
        if spec.get("type") in ("NodePort", "LoadBalancer"):
            return [
                field_error(
                    "Invalid",
                    "spec.clusterIPs[0]",
                    f"\"None\": may not be set to 'None' for {spec['type']} services",
                )
            ]
    elif ip:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return [
                field_error(
                    "Invalid", "spec.clusterIPs[0]", f"\"{ip}\": must be empty, 'None', or a valid IP address"
                )
            ]
        failed = f"{_go_strings([ip])}: failed to allocate IP {ip}"
        usable = address.version == 4 and address in SERVICE_CIDR
        if not usable or address in (SERVICE_CIDR.network_address, SERVICE_CIDR.broadcast_address):
            return [
                field_error(
                    "Invalid",
                    "spec.clusterIPs",
                    f"{failed}: the provided IP ({ip}) is not in the valid range. "
                    f"The range of valid IPs is {SERVICE_CIDR}",
                )
            ]
        if int(address) in taken:
            return [field_error("Invalid", "spec.clusterIPs", f"{failed}: provided IP is already allocated")]
    else:
        low = int(SERVICE_CIDR.network_address) + 1
        high = int(SERVICE_CIDR.broadcast_address) - 1
        picked = _pick(low, high, _static_band(SERVICE_CIDR.num_addresses, 16, 256), taken, rng)
        if picked is None:
            return [field_error("Invalid", "spec.clusterIPs", "[]string{}: range is full")]
        ip = str(ipaddress.IPv4Address(picked))
    spec["clusterIP"] = ip
    spec["clusterIPs"] = [ip]
    spec["ipFamilies"] = ["IPv4"]
    spec["ipFamilyPolicy"] = policy or "SingleStack"
    return []


def _node_port_cause(field: str, value: Any, taken: set[int]) -> JsonObj | None:
    number = _int(value)
    if number is None or not NODE_PORT_MIN <= number <= NODE_PORT_MAX:
        return field_error(
            "Invalid",
            field,
            f"{value}: provided port is not in the valid range. "
            f"The range of valid ports is {NODE_PORT_MIN}-{NODE_PORT_MAX}",
        )
    if number in taken:
        return field_error("Invalid", field, f"{number}: provided port is already allocated")
    return None


def _free_node_port(taken: set[int], rng: random.Random) -> int | None:
    size = NODE_PORT_MAX - NODE_PORT_MIN + 1
    return _pick(NODE_PORT_MIN, NODE_PORT_MAX, _static_band(size, 32, 128), taken, rng)


def _allocate_node_ports(spec: JsonObj, taken: set[int], rng: random.Random) -> Causes:
    causes: Causes = []
    needed = _needs_node_ports(spec)
    mine: dict[int, set[str]] = {}  # node port → protocols using it in this Service
    by_port: dict[Any, int] = {}
    for i, port in enumerate(spec.get("ports") or []):
        value = port.get("nodePort")
        if value:
            cause = _node_port_cause(f"spec.ports[{i}].nodePort", value, taken)
            if cause is None and port.get("protocol") in mine.get(value, set()):
                cause = field_error("Duplicate", f"spec.ports[{i}].nodePort", str(value))
            if cause is not None:
                causes.append(cause)
                continue
        elif needed:
            # TCP and UDP on one port number share a node port, as the real allocator arranges.
            shared = by_port.get(port.get("port"))
            value = shared if shared and port.get("protocol") not in mine.get(shared, set()) else None
            value = value or _free_node_port(taken | set(mine), rng)
            if value is None:
                causes.append(field_error("Invalid", f"spec.ports[{i}].nodePort", "range is full"))
                continue
            port["nodePort"] = value
        else:
            continue
        mine.setdefault(value, set()).add(str(port.get("protocol")))
        by_port.setdefault(port.get("port"), value)
    if _needs_health_check_port(spec):
        used = taken | set(mine)
        value = spec.get("healthCheckNodePort")
        if value:
            cause = _node_port_cause("spec.healthCheckNodePort", value, used)
            if cause is not None:
                causes.append(cause)
        else:
            picked = _free_node_port(used, rng)
            if picked is None:
                causes.append(field_error("Invalid", "spec.healthCheckNodePort", "range is full"))
            else:
                spec["healthCheckNodePort"] = picked
    return causes


def allocate(svc: JsonObj, others: Iterable[JsonObj], rng: random.Random) -> None:
    """Give ``svc`` its cluster IP and node ports (in place); 422 if a requested one cannot be had."""
    spec = _spec(svc)
    taken_ips, taken_ports = _taken(others)
    causes = _allocate_cluster_ip(spec, taken_ips, rng) if _needs_cluster_ip(spec) else []
    if not _needs_cluster_ip(spec) and _cluster_ips(spec):
        causes.append(
            field_error(
                "Invalid",
                "spec.clusterIPs",
                f"{_go_strings(_cluster_ips(spec))}: may not be set for ExternalName services",
            )
        )
    causes.extend(_allocate_node_ports(spec, taken_ports, rng))
    if causes:
        raise invalid(SERVICES, str(svc["metadata"].get("name", "")), causes)


def carry_allocated(old: JsonObj, new: JsonObj) -> None:
    """``patchAllocatedValues`` then ``dropTypeDependentFields`` of an update (in place on ``new``)."""
    old_spec, spec = old.get("spec") or {}, _spec(new)
    if _needs_cluster_ip(old_spec) and _needs_cluster_ip(spec):
        for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
            if not spec.get(key) and old_spec.get(key):
                spec[key] = old_spec[key]
    if _needs_node_ports(old_spec) and _needs_node_ports(spec):
        by_name = {p.get("name", ""): p.get("nodePort") for p in old_spec.get("ports") or []}
        used = set(_node_ports(spec))
        for port in _ports(spec):
            if not port.get("nodePort") and by_name.get(port.get("name", "")) not in (None, *used):
                port["nodePort"] = by_name[port.get("name", "")]
    if _needs_health_check_port(old_spec) and _needs_health_check_port(spec):
        if not spec.get("healthCheckNodePort") and old_spec.get("healthCheckNodePort"):
            spec["healthCheckNodePort"] = old_spec["healthCheckNodePort"]
    if _needs_cluster_ip(old_spec) and not _needs_cluster_ip(spec):
        for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
            if spec.get(key) == old_spec.get(key):
                spec.pop(key, None)
    if _needs_node_ports(old_spec) and not _needs_node_ports(spec):
        if [p.get("nodePort") for p in old_spec.get("ports") or []] == [
            p.get("nodePort") for p in _ports(spec)
        ]:
            for port in _ports(spec):
                port.pop("nodePort", None)
    if _needs_health_check_port(old_spec) and not _needs_health_check_port(spec):
        if spec.get("healthCheckNodePort") == old_spec.get("healthCheckNodePort"):
            spec.pop("healthCheckNodePort", None)
    for key, needed in (
        ("allocateLoadBalancerNodePorts", spec.get("type") == "LoadBalancer"),
        (
            "externalTrafficPolicy",
            spec.get("type") in ("NodePort", "LoadBalancer") or spec.get("externalIPs"),
        ),
    ):
        if not needed and spec.get(key) == old_spec.get(key):
            spec.pop(key, None)
    leaves_lb = old_spec.get("type") == "LoadBalancer" and spec.get("type") != "LoadBalancer"
    if leaves_lb and isinstance(new.get("status"), dict):
        new["status"] = {**new["status"], "loadBalancer": {}}


def validate_update(old: JsonObj, new: JsonObj) -> Causes:
    """A cluster IP, once set, stays (unless the Service turns into or out of ExternalName)."""
    old_spec, spec = old.get("spec") or {}, _spec(new)
    if not (_needs_cluster_ip(old_spec) and _needs_cluster_ip(spec)):
        return []
    before = old_spec.get("clusterIPs") or []
    after = spec.get("clusterIPs") or []
    if spec.get("clusterIP") and spec["clusterIP"] != old_spec.get("clusterIP"):
        after = [spec["clusterIP"]]
    if before and after != before:
        return [
            field_error("Invalid", "spec.clusterIPs[0]", f"{_go_strings(after)}: may not change once set")
        ]
    return []


def check_unique(svc: JsonObj, others: Iterable[JsonObj]) -> None:
    """At commit: nothing ``svc`` holds was taken meanwhile (by a write that overtook this one)."""
    spec = svc.get("spec") or {}
    taken_ips, taken_ports = _taken(others)
    taken_ips.discard(int(KUBERNETES_SERVICE_IP))
    causes: Causes = []
    for ip in _cluster_ips(spec):
        try:
            clash = int(ipaddress.IPv4Address(ip)) in taken_ips
        except ValueError:
            continue
        if clash:
            causes.append(
                field_error(
                    "Invalid",
                    "spec.clusterIPs",
                    f"{_go_strings([ip])}: failed to allocate IP {ip}: provided IP is already allocated",
                )
            )
    causes.extend(
        field_error("Invalid", "spec.ports", f"{port}: provided port is already allocated")
        for port in _node_ports(spec)
        if port in taken_ports
    )
    if causes:
        raise invalid(SERVICES, str(svc["metadata"].get("name", "")), causes)


__all__ = [
    "NODE_PORT_MAX",
    "NODE_PORT_MIN",
    "SERVICE_CIDR",
    "allocate",
    "carry_allocated",
    "check_unique",
    "default_service",
    "initial_status",
    "validate_service",
    "validate_update",
]
