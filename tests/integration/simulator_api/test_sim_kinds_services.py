"""Services on the simulated API server: defaults, cluster IP and node port allocation, conflicts,
updates, and kubectl's view of them (apply, get, describe)."""

from __future__ import annotations

import ipaddress
import json
import random

import orjson
import pytest

from hami.simulator.resources import SERVICES
from hami.simulator.server import ApiServer
from hami.simulator.services import NODE_PORT_MAX, NODE_PORT_MIN, SERVICE_CIDR
from hami.simulator.statuses import StatusError
from hami.simulator.store import Store

BASE = "/api/v1/namespaces/default/services"

WEB = """
apiVersion: v1
kind: Service
metadata: {name: web, labels: {app: web}}
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: metrics, port: 9090, nodePort: 31990}
"""


async def call(http, method: str, url: str, body=None):
    data = None if body is None else json.dumps(body)
    async with http.request(method, url, data=data, headers={"Content-Type": "application/json"}) as r:
        text = await r.read()
        return r.status, (orjson.loads(text) if text.strip() else None)


def service(name: str, **spec) -> dict:
    spec.setdefault("ports", [{"port": 80}])
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def in_cidr(ip: str) -> bool:
    return ipaddress.ip_address(ip) in SERVICE_CIDR


async def test_kubectl_apply_get_describe_service(kube, apiserver):
    assert "service/web created" in await kube.ok("apply", "-f", "-", stdin=WEB)
    svc = json.loads(await kube.ok("get", "svc", "web", "-o", "json"))
    spec = svc["spec"]
    assert in_cidr(spec["clusterIP"]) and spec["clusterIPs"] == [spec["clusterIP"]]
    assert spec["ipFamilies"] == ["IPv4"] and spec["ipFamilyPolicy"] == "SingleStack"
    web, metrics = spec["ports"]
    assert web == {
        "name": "http",
        "port": 80,
        "targetPort": 8080,
        "protocol": "TCP",
        "nodePort": web["nodePort"],
    }
    assert NODE_PORT_MIN <= web["nodePort"] <= NODE_PORT_MAX and web["nodePort"] != 31990
    assert metrics["nodePort"] == 31990 and metrics["targetPort"] == 9090
    assert spec["sessionAffinity"] == "None" and spec["externalTrafficPolicy"] == "Cluster"
    assert spec["internalTrafficPolicy"] == "Cluster"
    assert svc["status"] == {"loadBalancer": {}}
    assert "generation" not in svc["metadata"]

    header, row = (await kube.ok("get", "svc", "-o", "wide")).splitlines()
    assert header.split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"]
    cells = row.split()
    assert cells[:5] == [
        "web",
        "NodePort",
        spec["clusterIP"],
        "<none>",
        f"80:{web['nodePort']}/TCP,9090:31990/TCP",
    ]
    assert cells[6] == "app=web"

    described = await kube.ok("describe", "svc", "web")
    assert f"IP:                       {spec['clusterIP']}" in described
    assert "Type:                     NodePort" in described
    assert "NodePort:                 metrics  31990/TCP" in described

    # Re-applying is a no-op; changing a port re-merges by port number and keeps the node ports.
    assert "service/web unchanged" in await kube.ok("apply", "-f", "-", stdin=WEB)
    changed = WEB.replace("port: 80, targetPort: 8080", "port: 8080, targetPort: 8080")
    assert "service/web configured" in await kube.ok("apply", "-f", "-", stdin=changed)
    stored = apiserver.store.get(SERVICES, "default", "web")
    assert [(p["port"], p["nodePort"]) for p in stored["spec"]["ports"]] == [
        (8080, web["nodePort"]),
        (9090, 31990),
    ]
    assert stored["spec"]["clusterIP"] == spec["clusterIP"]


async def test_requested_and_taken_addresses_via_kubectl(kube):
    await kube.ok("apply", "-f", "-", stdin=WEB)
    taken_ip = json.loads(await kube.ok("get", "svc", "web", "-o", "json"))["spec"]["clusterIP"]
    clash = json.dumps(service("clash", clusterIP=taken_ip))
    refused = await kube("apply", "-f", "-", stdin=clash)
    assert refused.rc == 1
    assert (
        f'Service "clash" is invalid: spec.clusterIPs: Invalid value: []string{{"{taken_ip}"}}: '
        f"failed to allocate IP {taken_ip}: provided IP is already allocated"
    ) in refused.err
    port_clash = json.dumps(service("port-clash", type="NodePort", ports=[{"port": 80, "nodePort": 31990}]))
    refused = await kube("apply", "-f", "-", stdin=port_clash)
    assert refused.rc == 1
    assert "spec.ports[0].nodePort: Invalid value: 31990: provided port is already allocated" in refused.err
    free = json.dumps(service("pinned", clusterIP="10.96.100.100"))
    assert "service/pinned created" in await kube.ok("apply", "-f", "-", stdin=free)
    assert (await kube.ok("get", "svc", "pinned", "-o", "jsonpath={.spec.clusterIP}")) == "10.96.100.100"


async def test_allocation_is_unique_and_headless_stays_none(http, apiserver):
    ips, node_ports = set(), set()
    for i in range(40):
        kind = "NodePort" if i % 2 else "ClusterIP"
        status, svc = await call(http, "POST", BASE, service(f"s{i}", type=kind))
        assert status == 201, svc
        ips.add(svc["spec"]["clusterIP"])
        node_ports.update(p["nodePort"] for p in svc["spec"]["ports"] if "nodePort" in p)
    assert len(ips) == 40 and all(in_cidr(ip) for ip in ips) and "10.96.0.1" not in ips
    assert len(node_ports) == 20 and all(NODE_PORT_MIN <= p <= NODE_PORT_MAX for p in node_ports)
    status, headless = await call(http, "POST", BASE, service("headless", clusterIP="None", ports=[]))
    assert status == 201 and headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["clusterIPs"] == ["None"] and headless["spec"]["type"] == "ClusterIP"
    # dryRun allocates in the answer but keeps nothing
    status, dry = await call(http, "POST", f"{BASE}?dryRun=All", service("dry"))
    assert status == 201 and in_cidr(dry["spec"]["clusterIP"])
    assert apiserver.store.try_get(SERVICES, "default", "dry") is None


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        (
            {"clusterIP": "1.2.3.4"},
            "spec.clusterIPs",
            'Invalid value: []string{"1.2.3.4"}: failed to allocate IP 1.2.3.4: the provided IP (1.2.3.4) '
            "is not in the valid range. The range of valid IPs is 10.96.0.0/12",
        ),
        ({"clusterIP": "10.96.0.1"}, "spec.clusterIPs", "provided IP is already allocated"),
        ({"clusterIP": "nope"}, "spec.clusterIPs[0]", "must be empty, 'None', or a valid IP address"),
        (
            {"type": "NodePort", "ports": [{"port": 80, "nodePort": 40000}]},
            "spec.ports[0].nodePort",
            "Invalid value: 40000: provided port is not in the valid range. The range of valid ports is "
            "30000-32767",
        ),
        (
            {"ports": [{"port": 80, "nodePort": 30500}]},
            "spec.ports[0].nodePort",
            "Forbidden: may not be used when `type` is 'ClusterIP'",
        ),
        ({"type": "NodePort", "clusterIP": "None"}, "spec.clusterIPs[0]", "may not be set to 'None'"),
        ({"ports": []}, "spec.ports", "Required value"),
        ({"ports": [{"port": 80}, {"port": 81}]}, "spec.ports[1].name", "Required value"),
        ({"ports": [{"port": 0}]}, "spec.ports[0].port", "must be between 1 and 65535, inclusive"),
        ({"type": "Magic"}, "spec.type", 'Unsupported value: "Magic"'),
        ({"ipFamilyPolicy": "RequireDualStack"}, "spec.ipFamilyPolicy", "not configured for dual-stack"),
    ],
)
async def test_invalid_services_are_422(http, spec, field, message):
    status, body = await call(http, "POST", BASE, service("bad", **spec))
    assert status == 422 and body["reason"] == "Invalid", body
    assert body["details"]["kind"] == "Service" and body["details"]["name"] == "bad"
    assert any(c["field"] == field and message in c["message"] for c in body["details"]["causes"]), body
    assert body["message"].startswith('Service "bad" is invalid: ')


async def test_updates_keep_allocations_and_drop_what_the_type_no_longer_needs(http):
    status, created = await call(http, "POST", BASE, service("u", type="NodePort"))
    ip, node_port = created["spec"]["clusterIP"], created["spec"]["ports"][0]["nodePort"]
    # A PUT of the manifest without the allocated values keeps them (kubectl replace).
    status, replaced = await call(
        http, "PUT", f"{BASE}/u", service("u", type="NodePort", ports=[{"port": 80}])
    )
    assert status == 200, replaced
    assert replaced["spec"]["clusterIP"] == ip and replaced["spec"]["ports"][0]["nodePort"] == node_port
    status, moved = await call(http, "PUT", f"{BASE}/u", service("u", type="NodePort", clusterIP="10.96.9.9"))
    assert (
        status == 422
        and "spec.clusterIPs[0]" in moved["message"]
        and "may not change once set" in moved["message"]
    )
    # NodePort → ClusterIP: node ports and externalTrafficPolicy the client left as they were go away.
    current = replaced
    current["spec"]["type"] = "ClusterIP"
    status, plain = await call(http, "PUT", f"{BASE}/u", current)
    assert status == 200, plain
    assert "nodePort" not in plain["spec"]["ports"][0] and "externalTrafficPolicy" not in plain["spec"]
    assert plain["spec"]["clusterIP"] == ip
    # the freed node port can be requested by another Service
    status, other = await call(
        http, "POST", BASE, service("v", type="NodePort", ports=[{"port": 80, "nodePort": node_port}])
    )
    assert status == 201, other


async def test_delete_frees_the_ip_and_a_restart_keeps_allocations():
    store = Store(rng=random.Random(7))
    async with ApiServer.running(store=store) as server:
        created = server.store.create(SERVICES, "default", service("keep"))
        ip = created["spec"]["clusterIP"]
    # A new server over the same store (state kept) still sees the address as taken.
    async with ApiServer.running(store=store) as server:
        with pytest.raises(StatusError) as taken:
            server.store.create(SERVICES, "default", service("again", clusterIP=ip))
        assert taken.value.code == 422 and "provided IP is already allocated" in taken.value.message
        server.store.delete(SERVICES, "default", "keep")
        assert (
            server.store.create(SERVICES, "default", service("again", clusterIP=ip))["spec"]["clusterIP"]
            == ip
        )
