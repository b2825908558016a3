#!/usr/bin/env python3
"""Benchmark the simulated API server: LIST of N pods and watch fan-out to W watchers.

    python scripts/bench_apiserver.py [--pods 10000] [--watchers 10] [--events 2000]

Prints the time to LIST all pods over HTTP (whole and paginated) and the watch throughput: events
delivered per second summed over all watchers while the store is being written as fast as it can.
Client and server share one event loop, so the numbers include the client's JSON decoding.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp
import orjson

from hami.simulator.resources import PODS
from hami.simulator.server import ApiServer, ApiServerSettings


def pod(i: int) -> dict:
    return {
        "metadata": {
            "name": f"pod-{i:05d}",
            "namespace": "default",
            "labels": {"app": f"app-{i % 50}"},
            "annotations": {"hami.io/vgpu-devices-allocated": "GPU-0,NVIDIA,1024,30:;"},
        },
        "spec": {
            "schedulerName": "hami-scheduler",
            "nodeName": f"node-{i % 100}",
            "containers": [
                {
                    "name": "main",
                    "image": "busybox:1.36",
                    "resources": {"limits": {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1024"}},
                }
            ],
        },
    }


async def time_list(session: aiohttp.ClientSession, url: str, rounds: int) -> tuple[float, int]:
    timings, count = [], 0
    for _ in range(rounds):
        start = time.perf_counter()
        async with session.get(url) as resp:
            body = orjson.loads(await resp.read())
        timings.append(time.perf_counter() - start)
        count = len(body["items"])
    return statistics.median(timings), count


async def time_paginated(session: aiohttp.ClientSession, url: str, limit: int) -> tuple[float, int]:
    start, count, token = time.perf_counter(), 0, ""
    while True:
        async with session.get(
            url, params={"limit": str(limit), **({"continue": token} if token else {})}
        ) as resp:
            body = orjson.loads(await resp.read())
        count += len(body["items"])
        token = body["metadata"].get("continue", "")
        if not token:
            return time.perf_counter() - start, count


async def watcher(
    session: aiohttp.ClientSession,
    url: str,
    rv: int,
    expected: int,
    ready: asyncio.Event,
    counts: list[int],
    index: int,
) -> None:
    async with session.get(
        url, params={"watch": "true", "resourceVersion": str(rv), "timeoutSeconds": "300"}
    ) as resp:
        ready.set()
        async for line in resp.content:
            orjson.loads(line)
            counts[index] += 1
            if counts[index] >= expected:
                return


async def main(args: argparse.Namespace) -> None:
    settings = ApiServerSettings(
        history_size=max(20_000, args.events * 2), watch_queue_limit=10 * args.events
    )
    async with ApiServer.running(settings=settings) as srv:
        start = time.perf_counter()
        for i in range(args.pods):
            srv.store.create(PODS, "default", pod(i))
        print(f"created {args.pods} pods in the store in {time.perf_counter() - start:.2f} s")
        start = time.perf_counter()
        listed = srv.store.list(PODS, None)
        encoded = orjson.dumps({"kind": "PodList", "items": listed.items})
        print(
            f"server side: list {len(listed.items)} pods + encode {len(encoded) / 1e6:.1f} MB: "
            f"{(time.perf_counter() - start) * 1000:.0f} ms"
        )
        url = f"{srv.url}/api/v1/pods"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.watchers + 4)) as session:
            seconds, count = await time_list(session, url, rounds=5)
            print(f"LIST {count} pods over HTTP incl. client decode: {seconds * 1000:.0f} ms (median of 5)")
            seconds, count = await time_list(session, url + "?labelSelector=app%3Dapp-7", rounds=5)
            print(f"LIST with label selector ({count} of {args.pods}): {seconds * 1000:.0f} ms")
            seconds, count = await time_paginated(session, url, 500)
            print(f"LIST {count} pods in pages of 500: {seconds * 1000:.0f} ms")

            rv = srv.store.resource_version
            counts = [0] * args.watchers
            readies = [asyncio.Event() for _ in range(args.watchers)]
            tasks = [
                asyncio.create_task(watcher(session, url, rv, args.events, readies[i], counts, i))
                for i in range(args.watchers)
            ]
            await asyncio.gather(*(r.wait() for r in readies))
            start = time.perf_counter()
            for i in range(args.events):
                name = f"pod-{i % args.pods:05d}"
                srv.store.mutate(
                    PODS,
                    "default",
                    name,
                    lambda o, i=i: o["metadata"]["annotations"].__setitem__("bench", str(i)),
                )
                if i % 100 == 99:
                    await asyncio.sleep(0)  # let the watch streams drain, as concurrent writers would
            written = time.perf_counter() - start
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=300)
            elapsed = time.perf_counter() - start
            total = sum(counts)
            print(f"wrote {args.events} updates in {written:.2f} s ({args.events / written:.0f}/s)")
            print(
                f"watch: {args.watchers} watchers received {total} events in {elapsed:.2f} s "
                f"= {total / elapsed:.0f} events/s ({args.events / elapsed:.0f} events/s per watcher)"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--watchers", type=int, default=10)
    parser.add_argument("--events", type=int, default=2_000)
    asyncio.run(main(parser.parse_args()))
