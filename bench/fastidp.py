"""A deliberately cheap Entra-ID-shaped token endpoint for benchmarks, in its own process.

Hand-written HTTP/1.1 on asyncio with keep-alive; one RS256 JWT is signed per lifetime and reused
(only the JSON around it is made per request), so the provider costs as little CPU as possible
and the client under test is what gets measured. v1 (`/oauth2/token`) answers with string numbers
and, as Entra ID does, names the resource asked for; v2 answers with integers. A resource or
scope containing `/life-N` gets tokens living N seconds (default 3600).

    python bench/fastidp.py PORT        prints `READY http://127.0.0.1:PORT`; SIGTERM stops it
    python bench/fastidp.py PORT --spread DELAY PERIOD
        lifetimes that make refreshes at half-life (`refresh_threshold` over half of every
        lifetime, `jitter: 0`) fall uniformly over PERIOD seconds from DELAY seconds after the
        first token request, and then every PERIOD seconds: N tokens refresh at N/PERIOD a
        second, whenever each was first acquired (bench/scale.py).

`GET /requests` answers with the number of token requests so far; `GET /start` with the Unix
time `--spread`'s period starts at (0 before the first token request).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from functools import cache
from urllib.parse import unquote_plus

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")
_LIFETIME = re.compile(rb"life-(\d+)")
_RESOURCE = re.compile(rb"(?:^|&)resource=([^&]*)")


@cache
def signed(lifetime: int) -> tuple[str, int]:
    """A token living `lifetime` seconds, and when it was issued."""
    now = int(time.time())
    claims = {"aud": "bench", "iss": "fastidp", "iat": now, "exp": now + lifetime, "sub": "bench"}
    return jwt.encode(claims, _KEY, algorithm="RS256"), now


def response(version: int, lifetime: int, form: bytes) -> bytes:
    token, now = signed(lifetime)
    if version == 1:
        asked = _RESOURCE.search(form)
        body: dict[str, object] = {
            "token_type": "Bearer",
            "expires_in": str(lifetime),
            "access_token": token,
            "expires_on": str(now + lifetime),
            "resource": unquote_plus(asked.group(1).decode()) if asked else "",
        }
    else:
        body = {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }
    payload = json.dumps(body).encode()
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\n"
        b"content-length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
    )


class Spread:
    """Lifetimes for `--spread`: the k-th request before the start gets a token whose half-life
    ends at start + u_k x period (u_k: the golden-ratio sequence, uniform in [0, 1)); requests
    from the start on get a lifetime of 2 x period."""

    def __init__(self, delay: float, period: float) -> None:
        self.delay, self.period = delay, period
        self.start: float | None = None
        self.count = 0

    def lifetime(self) -> int:
        now = time.time()
        if self.start is None:
            self.start = now + self.delay
        self.count += 1
        due = self.start + (self.count * 0.6180339887498949 % 1.0) * self.period
        if now >= self.start:
            return max(2, round(2 * self.period))
        return max(2, round(2 * (due - now)))


REQUESTS = [0]
SPREAD: list[Spread] = []


class TokenEndpoint(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (head_end := self.buffer.find(b"\r\n\r\n")) >= 0:
            match = _LENGTH.search(self.buffer, 0, head_end + 2)
            total = head_end + 4 + (int(match.group(1)) if match else 0)
            if len(self.buffer) < total:
                return
            request, self.buffer = self.buffer[:total], self.buffer[total:]
            line = request[: request.find(b"\r\n")]
            if line.startswith(b"GET /"):  # /requests: how many so far; /start: --spread's
                count = str(
                    SPREAD[0].start or 0
                    if line.startswith(b"GET /start") and SPREAD
                    else REQUESTS[0]
                ).encode()
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\ncontent-length: "
                    + str(len(count)).encode()
                    + b"\r\n\r\n"
                    + count
                )
                continue
            REQUESTS[0] += 1
            version = 2 if b"/v2.0/" in line else 1
            form = request[head_end + 4 :]
            if SPREAD:
                self.transport.write(response(version, SPREAD[0].lifetime(), form))
                continue
            lifetime = _LIFETIME.search(unquote_plus(form.decode()).encode())
            seconds = int(lifetime.group(1)) if lifetime else 3600
            self.transport.write(response(version, seconds, form))


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(TokenEndpoint, "127.0.0.1", port, backlog=1024)
    print(f"READY http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    if "--spread" in sys.argv:
        at = sys.argv.index("--spread")
        SPREAD.append(Spread(float(sys.argv[at + 1]), float(sys.argv[at + 2])))
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
