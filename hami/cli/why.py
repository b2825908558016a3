"""``hami why NS/POD``: why the scheduler placed a pod where it did, or why nowhere.

Fetches the decision record the scheduler keeps in memory for each pending pod
(``GET /why/{namespace}/{name}`` on its extender port) and prints it: the pod's request, then per
candidate node the reason it was refused and, per device, the check that failed with its numbers.

Examples::

    hami why default/train-0
    hami why team-a/infer --scheduler-url https://hami-scheduler.kube-system:443 --insecure
    hami why default/train-0 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from typing import Any
from urllib.parse import quote

import aiohttp

from hami.scheduler.explain import render_text

DEFAULT_URL = "http://127.0.0.1:8080"


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "why",
        help="explain the scheduler's last decision for a pod",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pod", metavar="NS/POD", help="the pod, as namespace/name (namespace default if omitted)")
    p.add_argument(
        "--scheduler-url", default=DEFAULT_URL, help=f"the scheduler's extender URL (default {DEFAULT_URL})"
    )
    p.add_argument("--insecure", action="store_true", help="do not verify the scheduler's TLS certificate")
    p.add_argument("--json", action="store_true", help="print the raw JSON record")
    p.add_argument("--timeout", type=float, default=10.0, help="request timeout in seconds (default 10)")
    p.set_defaults(func=run)


def split_pod(text: str) -> tuple[str, str]:
    namespace, sep, name = text.partition("/")
    if not sep:
        return "default", text
    if not namespace or not name or "/" in name:
        raise ValueError(f"expected NS/POD, got {text!r}")
    return namespace, name


async def fetch(url: str, namespace: str, name: str, *, insecure: bool, time_limit: float) -> tuple[int, Any]:
    ssl_arg: ssl.SSLContext | bool = True
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        ssl_arg = context
    target = f"{url.rstrip('/')}/why/{quote(namespace, safe='')}/{quote(name, safe='')}"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=time_limit)) as session,
        session.get(target, ssl=ssl_arg) as resp,
    ):
        body = await resp.read()
        try:
            return resp.status, json.loads(body)
        except ValueError:
            return resp.status, {"error": body.decode("utf-8", "replace")[:500]}


def run(args: argparse.Namespace) -> int:
    try:
        namespace, name = split_pod(args.pod)
    except ValueError as e:
        print(f"hami why: {e}", file=sys.stderr)
        return 2
    try:
        status, doc = asyncio.run(
            fetch(args.scheduler_url, namespace, name, insecure=args.insecure, time_limit=args.timeout)
        )
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        print(f"hami why: cannot reach the scheduler at {args.scheduler_url}: {e}", file=sys.stderr)
        return 1
    if status != 200:
        message = doc.get("error") if isinstance(doc, dict) else None
        print(f"hami why: {message or f'HTTP {status}'}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        sys.stdout.write(render_text(doc))
    return 0
