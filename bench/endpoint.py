"""Benchmark 6: the local token endpoint against the kind of server it replaces.

Side by side in one run, alternating: tokend's endpoint (App Service protocol, one cached token)
and a reference written here, a minimal Flask app (werkzeug's threaded server, as the original
helper ran) returning a cached JSON token. Each is loaded for `--seconds`, `--runs` times
(medians) by 16 concurrent keep-alive clients, either

- `--load-with httpx2` (the default, as the issue prescribes): 16 threads of httpx2, spread over
  `--client-processes` processes so the client's GIL is not what is measured. Every answer is
  checked (status 200 and the token). On a 2-core machine the Python clients need more CPU per
  request than either server, so they, not the servers, set the pace;
- `--load-with wrk`: Debian's wrk (C; installed, or fetched and cached by `scripts/wrk`), 16
  connections on 2 threads, which spends a few microseconds per request and so measures what
  each server can serve. Answers other than 2xx fail the run; the token served is checked once
  before.

Memory: tokend's RSS once ready, before any request, and after all of them.

    python bench/endpoint.py [--runs R] [--seconds S] [--threads T] [--client-processes P]
                             [--load-with httpx2|wrk]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2
import yaml
from common import (
    BENCH,
    ENV,
    PYTHON,
    TOKEND,
    fast_provider,
    free_port,
    machine,
    median,
    process_cpu,
)
from common import percentile as pct

RESOURCE = "https://api0.bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--load-with", choices=("httpx2", "wrk"), default="httpx2")
    args = parser.parse_args()
    wrk = _wrk() if args.load_with == "wrk" else ""
    print(f"machine: {machine()}")
    print(f"load before: {_loadavg()}")
    with fast_provider() as provider, tempfile.TemporaryDirectory() as tmp:
        baseline, _, _ = _start_tokend(provider, Path(tmp) / "off", endpoint=False)
        rss_without = _rss_mb(baseline.pid)
        baseline.terminate()
        baseline.wait(10)
        tokend, port, env = _start_tokend(provider, Path(tmp))
        reference = _start_reference(Path(tmp) / "api.token")
        try:
            targets = {
                "tokend": Target(f"http://127.0.0.1:{port}/msi/token", tokend, env["header"]),
                "flask": Target(f"http://127.0.0.1:{reference[1]}/token", reference[0], ""),
            }
            _check_same_token(targets)
            rss_before = _rss_mb(tokend.pid)
            results: dict[str, list[Figures]] = {name: [] for name in targets}
            for _ in range(args.runs):
                for name, target in targets.items():
                    figures = load_wrk(wrk, target, args) if wrk else load(target, args)
                    results[name].append(figures)
            rss_after = _rss_mb(tokend.pid)
        finally:
            for process in (tokend, reference[0]):
                process.terminate()
                process.wait(10)
    report(results, args, (rss_without, rss_before, rss_after))


class Target:
    def __init__(self, url: str, process: subprocess.Popen[bytes], header: str) -> None:
        self.url = url
        self.process = process
        self.header = header


class Figures:
    def __init__(self, rps: float, p50: float, p99: float, cpu_per_request: float) -> None:
        self.rps, self.p50, self.p99, self.cpu_per_request = rps, p50, p99, cpu_per_request


def load(target: Target, args: argparse.Namespace) -> Figures:
    """`args.threads` threads over `args.client_processes` processes for `args.seconds`."""
    per_process = _split(args.threads, args.client_processes)
    cpu_before = process_cpu(target.process.pid)
    clients = [
        subprocess.Popen(
            [PYTHON, __file__, "--client", target.url, target.header, str(n), str(args.seconds)],
            stdout=subprocess.PIPE,
        )
        for n in per_process
    ]
    latencies: list[float] = []
    for client in clients:
        out, _ = client.communicate(timeout=args.seconds + 60)
        if client.returncode != 0:
            raise SystemExit(f"client failed against {target.url}")
        latencies += json.loads(out)
    cpu = process_cpu(target.process.pid) - cpu_before  # includes each client's warm-up request
    return Figures(
        rps=len(latencies) / args.seconds,  # counted over the measured window of each client
        p50=pct(latencies, 0.5) * 1000,
        p99=pct(latencies, 0.99) * 1000,
        cpu_per_request=cpu / max(len(latencies), 1) * 1e6,
    )


def load_wrk(wrk: str, target: Target, args: argparse.Namespace) -> Figures:
    """wrk: `args.threads` connections on (up to) 2 threads for `args.seconds`."""
    url = f"{target.url}?api-version=2019-08-01&resource={RESOURCE}"
    header = ["-H", f"X-IDENTITY-HEADER: {target.header}"] if target.header else []
    threads, connections = str(min(2, args.threads)), str(args.threads)
    command = [wrk, "-t", threads, "-c", connections, "-d", f"{args.seconds:g}s", "--latency"]
    cpu_before = process_cpu(target.process.pid)
    out = subprocess.run([*command, *header, url], capture_output=True, text=True, check=True)
    cpu = process_cpu(target.process.pid) - cpu_before
    text = out.stdout
    if "Non-2xx" in text or "Socket errors" in text:
        raise SystemExit(f"wrk saw failed requests against {target.url}:\n{text}")
    rps = float(_wrk_figure(r"Requests/sec:\s+([\d.]+)", text)[0])
    requests = int(_wrk_figure(r"(\d+) requests in", text)[0])
    return Figures(
        rps=rps,
        p50=_wrk_ms(text, "50%"),
        p99=_wrk_ms(text, "99%"),
        cpu_per_request=cpu / max(requests, 1) * 1e6,
    )


def _wrk() -> str:
    """Debian's wrk: installed, or fetched once into the cache by scripts/wrk."""
    found = subprocess.run(
        [str(BENCH.parent / "scripts" / "wrk")], capture_output=True, text=True, check=False
    )
    if found.returncode != 0 or not found.stdout.strip():
        raise SystemExit(found.stderr.strip() or "scripts/wrk provided no wrk")
    return str(Path(found.stdout.strip()) / "wrk")


def _wrk_ms(text: str, percentile: str) -> float:
    value, unit = _wrk_figure(rf"^\s+{percentile}\s+([\d.]+)(us|ms|s)\s*$", text)
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def _wrk_figure(pattern: str, text: str) -> tuple[str, ...]:
    found = re.search(pattern, text, re.M)
    if found is None:
        raise SystemExit(f"no {pattern!r} in wrk's output:\n{text}")
    return found.groups()


def _split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


def client(url: str, header: str, threads: int, seconds: float) -> None:
    """One client process: `threads` threads, each with its own keep-alive httpx2 client, timing
    every request for `seconds` (after a warm-up request each); prints the latencies as JSON."""
    headers = {"X-IDENTITY-HEADER": header} if header else {}
    params = {"api-version": "2019-08-01", "resource": RESOURCE}
    start = threading.Barrier(threads)
    latencies: list[list[float]] = [[] for _ in range(threads)]

    def worker(mine: list[float]) -> None:
        with httpx2.Client(headers=headers, timeout=30) as http:
            http.get(url, params=params).raise_for_status()
            start.wait()
            deadline = time.perf_counter() + seconds
            while (began := time.perf_counter()) < deadline:
                response = http.get(url, params=params)
                if response.status_code != 200 or "access_token" not in response.json():
                    raise SystemExit(f"bad answer: {response.status_code}")
                mine.append(time.perf_counter() - began)

    pool = [threading.Thread(target=worker, args=(mine,)) for mine in latencies]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    json.dump([value for mine in latencies for value in mine], sys.stdout)


def report(
    results: dict[str, list[Figures]], args: argparse.Namespace, rss: tuple[float, float, float]
) -> None:
    clients = (
        f"wrk, {args.threads} keep-alive connections on {min(2, args.threads)} threads"
        if args.load_with == "wrk"
        else f"{args.threads} client threads (httpx2, keep-alive) in {args.client_processes} "
        "processes"
    )
    print(f"{clients}, {args.runs} runs of {args.seconds:.0f}s each, alternating; medians:")
    rows = {}
    for name, runs in results.items():
        rows[name] = [median([getattr(run, key) for run in runs]) for key in Figures_KEYS]
        rps, p50, p99, cpu = rows[name]
        every = " ".join(f"{run.rps:.0f}" for run in runs)
        print(
            f"  {name:<7} {rps:7.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
            f"server CPU {cpu:6.0f} us/req   (req/s of each run: {every})"
        )
    ratio = rows["tokend"][0] / rows["flask"][0]
    print(
        f"  tokend/flask: throughput {ratio:.2f}x, p99 {rows['tokend'][2] / rows['flask'][2]:.2f}x,"
        f" server CPU per request {rows['tokend'][3] / rows['flask'][3]:.2f}x"
    )
    without, before, after = rss
    print(
        f"tokend RSS once ready: {without:.1f} MB without the endpoint, {before:.1f} MB with it "
        f"before any request, {after:.1f} MB after serving every run: the endpoint adds "
        f"{after - without:+.1f} MB ({after - before:+.1f} MB of it from serving)"
    )
    print(f"load after: {_loadavg()}")


Figures_KEYS = ("rps", "p50", "p99", "cpu_per_request")


def _start_tokend(
    provider: object, tmp: Path, *, endpoint: bool = True
) -> tuple[subprocess.Popen[bytes], int, dict[str, str]]:
    tmp.mkdir(exist_ok=True)
    port, metrics = free_port(), free_port()
    env_file = tmp / "endpoint.env"
    document = {
        "identities": {
            "bench": {
                "tenant": "bench",
                "authority_host": provider.url,  # type: ignore[attr-defined]
                "allow_insecure_http": True,
                "client_id": "bench",
                "credential": {"type": "client_secret", "secret": {"env": "BENCH_SECRET"}},
            }
        },
        "tokens": {
            "api": {
                "identity": "bench",
                "resource": RESOURCE,
                "sinks": [{"type": "file", "path": str(tmp / "api.token")}],
            }
        },
        "listen": f"127.0.0.1:{metrics}",
        "endpoint": {"listen": f"127.0.0.1:{port}", "env_file": str(env_file)},
    }
    if not endpoint:
        del document["endpoint"]
    config = tmp / "endpoint.yaml"
    config.write_text(yaml.safe_dump(document))
    process = subprocess.Popen(
        [TOKEND, "--log-level", "warning", "run", "-c", str(config)],
        env={**os.environ, **ENV},
    )
    _wait(lambda: _ready(metrics), "tokend ready")
    if not endpoint:
        return process, 0, {}
    header = next(
        line.split("=", 1)[1].strip("'")
        for line in env_file.read_text().splitlines()
        if line.startswith("IDENTITY_HEADER=")
    )
    return process, port, {"header": header}


def _start_reference(token_file: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The reference serves the very token tokend holds (read from tokend's file sink)."""
    port = free_port()
    process = subprocess.Popen(
        [PYTHON, str(BENCH / "endpoint_reference.py"), str(port), str(token_file), RESOURCE],
        stderr=subprocess.DEVNULL,
    )
    _wait(lambda: _answers(f"http://127.0.0.1:{port}/token"), "reference ready")
    return process, port


def _check_same_token(targets: dict[str, Target]) -> None:
    """Both answer with the same token, in bodies of about the same size."""
    bodies = {}
    for name, target in targets.items():
        headers = {"X-IDENTITY-HEADER": target.header} if target.header else {}
        params = {"api-version": "2019-08-01", "resource": RESOURCE}
        bodies[name] = httpx2.get(target.url, params=params, headers=headers, timeout=10).json()
    if len({body["access_token"] for body in bodies.values()}) != 1:
        raise SystemExit("tokend and the reference serve different tokens")
    sizes = ", ".join(f"{name} {len(json.dumps(body))} bytes" for name, body in bodies.items())
    print(f"both serve the same token; answer sizes: {sizes}")


def _answers(url: str) -> bool:
    try:
        return httpx2.get(url, timeout=2).status_code == 200
    except httpx2.TransportError:
        return False


def _ready(port: int) -> bool:
    return _answers(f"http://127.0.0.1:{port}/readyz")


def _wait(condition: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) + " (1, 5, 15 min)"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    else:
        main()
