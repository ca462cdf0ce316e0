"""Benchmark 8: CPU per token request in tokend's HTTP layer, against plain httpx2.

In one process, against the fast local provider: N token requests, CONCURRENCY at a time, through
`tokend.oauth.http.Clients.exchange` (httpx2 on tokend's asyncio network backend) and through a
plain `httpx2.AsyncClient` with the same limits (httpx2 on anyio, as `bench/limit.py` uses it).
Alternating rounds; the CPU (this process: the provider runs in its own) per request and the rate.

    python bench/exchange.py [--requests N] [--concurrency C] [--rounds R]
    default: 3,000 requests, 16 at a time (tokend's default request cap), 3 rounds
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx2
from common import fast_provider, machine, median

from tokend.oauth.http import Clients

FORM = {
    "grant_type": "client_credentials",
    "client_id": "bench",
    "client_secret": "bench-secret",
    "resource": "https://api0.bench",
}
Post = Callable[[], Awaitable[None]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    results: dict[str, list[tuple[float, float]]] = {"tokend": [], "httpx2": []}
    with fast_provider() as provider:
        url = f"{provider.url}/bench/oauth2/token"
        for _ in range(args.rounds):
            for name, rounds in results.items():
                rounds.append(asyncio.run(measure(name, url, args.requests, args.concurrency)))
    for name, rounds in results.items():
        rate = median([rate for rate, _ in rounds])
        cpu = median([cpu for _, cpu in rounds])
        print(f"{name}: {rate:,.0f} requests/s, {cpu * 1e6:,.0f} us CPU per request (median)")
    ratio = median([ours[1] / theirs[1] for ours, theirs in zip(*results.values(), strict=True)])
    print(f"tokend/httpx2 CPU per request, median of {args.rounds} rounds: {ratio:.3f}")


async def measure(name: str, url: str, count: int, concurrency: int) -> tuple[float, float]:
    """(requests a second, CPU seconds per request) of `count` requests, after a warm-up."""
    post, close = _poster(name, url, concurrency)
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            await post()

    await asyncio.gather(*(one() for _ in range(min(count, 200))))
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await close()
    return count / wall, cpu / count


def _poster(name: str, url: str, concurrency: int) -> tuple[Post, Callable[[], Awaitable[None]]]:
    if name == "tokend":
        clients = Clients(deadline=15, connect_timeout=5, max_connections=concurrency)

        async def via_tokend() -> None:
            answer = await clients.exchange("POST", url, data=FORM)
            assert answer.status == 200, answer.status

        return via_tokend, clients.aclose
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    client = httpx2.AsyncClient(limits=limits, timeout=15)

    async def via_httpx2() -> None:
        response = await client.post(url, data=FORM)
        assert response.status_code == 200, response.status_code

    return via_httpx2, client.aclose


if __name__ == "__main__":
    main()
