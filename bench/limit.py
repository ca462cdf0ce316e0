"""The practical limit for benchmark 1: the least code that makes the same token requests with
the same concurrency and writes the same files atomically, with httpx2 on asyncio.

    python bench/limit.py TOKEN_URL COUNT OUT_DIR [CONCURRENCY]
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx2


def write_atomic(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


async def main(url: str, count: int, out: Path, concurrency: int) -> None:
    slots = asyncio.Semaphore(concurrency)
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(limits=limits, timeout=15) as client:

        async def one(index: int) -> None:
            form = {
                "grant_type": "client_credentials",
                "client_id": "bench",
                "client_secret": "bench-secret",
                "resource": f"https://api{index}.bench",
            }
            async with slots:
                response = await client.post(url, data=form)
            token = response.json()["access_token"]
            await asyncio.to_thread(write_atomic, out / f"t{index}.token", token.encode())

        await asyncio.gather(*(one(index) for index in range(count)))


if __name__ == "__main__":
    url, count, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    asyncio.run(main(url, count, out, int(sys.argv[4]) if len(sys.argv) > 4 else 16))
