"""Benchmark 7: 100,000 tokens in one `tokend run`, file sinks across 100 directories.

One run, in phases, against the fast local provider (`fastidp.py --spread`):
1. config load: `tokend.configfile.load_config` in this process, and `tokend check` on the file;
2. `tokend run` settles (`/readyz`): time, RSS (VmRSS, VmHWM), then CPU over an idle window
   (nothing is due until the refresh phase begins);
3. `/metrics`: time and size of a scrape, `metrics.per_token: problems`, and the slowest
   `/healthz` answer meanwhile (as in 6);
4. SIGHUP with the config unchanged: time from the signal to the `reloaded:` log line, and the
   provider's token requests before and after (none may be made), and RSS after it;
5. refreshes: the provider hands out lifetimes that make refreshes fall uniformly at `--rate`
   a second; over `--window` seconds (scraped every 30 s, as Prometheus would), the lateness of
   each refresh against its plan, recorded by a scheduler hook in the daemon process as
   bench/scheduling.py does; then RSS again (every token has been replaced once or twice, and
   what replaced it is not in the frozen heap: the steady state a long-running daemon lives in);
6. `/status`: time and size of three, the slowest `/healthz` answer meanwhile (polled from a
   thread: what a liveness probe would see), RSS after (with its peak); the same for
   `/status?tokens=problems`;
7. `/metrics` with `metrics.per_token: all` last, time, size and the peak RSS it leaves (over
   twice the daemon's own at 100,000 tokens: measured last, so that nothing before it carries
   what its 1.1 million series left behind).

    python bench/scale.py [--tokens N] [--window S] [--dirs D] [--rate R] [--idle S] [--lead S]
                          [--allocator]
    default: 100,000 tokens, 600 s, 100 directories, 300/s, 60 s idle; `--lead` (seconds from
    the first token request to the refresh phase) defaults to enough for the phases before it;
    `--allocator` adds, to the RSS read after settling, the reload and the refresh phase, where
    the memory is (as bench/footprint.py does).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from dataclasses import dataclass
from pathlib import Path

import httpx2
from common import (
    ENV,
    PYTHON,
    Provider,
    fast_provider,
    free_port,
    machine,
    percentile,
    process_cpu,
    run_measured,
    self_cpu,
    write_config,
)
from memory import allocators, memory_mb, report_allocators_on_signal, wait_for_file

from tokend.configfile import load_config


def write_scale_config(path: Path, provider: Provider, count: int, dirs: int, out: Path) -> Path:
    """`count` tokens of one identity, each with a file sink in one of `dirs` directories.
    refresh_threshold is over half of every lifetime the provider gives (so refreshes come at
    half-life) and jitter 0 (so they come when the provider aimed them)."""
    listen = f"127.0.0.1:{free_port()}"
    top: dict[str, object] = {"metrics": {"per_token": "problems"}}
    return write_config(
        path,
        provider,
        count,
        out,
        listen=listen,
        dirs=dirs,
        top=top,
        refresh_threshold="12h",
        jitter=0,
    )


def loadavg() -> str:
    return "load " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--window", type=float, default=600.0)
    parser.add_argument("--dirs", type=int, default=100)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--lead", type=float, default=None)
    parser.add_argument("--allocator", action="store_true")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)  # the daemon process
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), Path(args.serve[1]))
        return
    period = args.tokens / args.rate
    lead = args.lead or args.tokens / 125 + args.idle + 120
    print(f"machine: {machine()}")
    os.environ.update(ENV)
    spread = ("--spread", str(lead), str(period))
    with fast_provider(*spread) as provider, tempfile.TemporaryDirectory() as tmp:
        measure(provider, Path(tmp), args, lead)


def measure(provider: Provider, tmp: Path, args: argparse.Namespace, lead: float) -> None:
    config = write_scale_config(tmp / "scale.yaml", provider, args.tokens, args.dirs, tmp / "out")
    started, cpu = time.perf_counter(), self_cpu()
    loaded = load_config(config)
    print(
        f"config load (in process): {time.perf_counter() - started:.2f}s wall, "
        f"{self_cpu() - cpu:.2f}s CPU, {config.stat().st_size / 2**20:.1f} MB of YAML  "
        f"[{loadavg()}]"
    )
    port = int(str(loaded.config.listen).rsplit(":", 1)[1])
    del loaded
    check = run_measured(
        [str(Path(sys.executable).with_name("tokend")), "check", "-c", str(config)]
    )
    print(
        f"tokend check: {check.wall:.2f}s wall, {check.cpu:.2f}s CPU, exit {check.returncode}  "
        f"[{loadavg()}]"
    )
    lateness_file, stats, log = tmp / LATENESS, tmp / ALLOCATORS, tmp / "tokend.log"
    begun = time.time()
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [PYTHON, __file__, "--serve", str(config), str(tmp)],
            env={**os.environ, "SCALE_FROM": str(begun + lead)},
            stderr=stderr,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, process, every=READY_EVERY if args.tokens > 1000 else 0.2)
        settled = time.time() - begun
        rss, peak = memory_mb(process.pid)
        print(f"settled: {settled:.1f}s; RSS {rss:.1f} MB (peak {peak:.1f} MB)  [{loadavg()}]")
        if args.allocator:
            print(allocators(stats, process))
        before = process_cpu(process.pid)
        time.sleep(args.idle)  # the benchmark observes an idle daemon; nothing is waited for
        idle = process_cpu(process.pid) - before
        print(
            f"idle CPU: {idle / args.idle:.2%} of one core over {args.idle:.0f}s "
            f"({idle * 1000:.0f} ms)  [{loadavg()}]"
        )
        scrape(base, process.pid, "problems")
        reload_unchanged(process, log, provider)
        if args.allocator:
            print(allocators(stats, process))
        start = float(httpx2.get(f"{provider.url}/start").text)
        if time.time() > start:
            print(f"WARNING: the refresh phase began {time.time() - start:.0f}s ago: raise --lead")
        time.sleep(max(0.0, start - time.time()))  # the benchmark observes; it waits for nothing
        cpu = process_cpu(process.pid)
        scrapes = Poller(f"{base}/metrics", every=30.0)
        time.sleep(args.window)  # the benchmark observes the refresh phase
        scrapes.stop()
        cpu = process_cpu(process.pid) - cpu
        report_lateness(lateness_file, process, args.window, scrapes.times)
        print(f"CPU during the refresh phase: {cpu / args.window:.1%} of one core  [{loadavg()}]")
        rss, peak = memory_mb(process.pid)
        print(f"after the refresh phase: RSS {rss:.1f} MB (peak {peak:.1f} MB)")
        if args.allocator:
            print(allocators(stats, process))
        status(base, process.pid)
        switch(config, process, log, "all")
        scrape(base, process.pid, "all")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(120)


LATENESS, ALLOCATORS = "lateness", "allocators"
"""What the daemon process hands over, by file in the run's directory (`serve`)."""
READY_EVERY = 10.0
"""Seconds between /readyz polls, as a Kubernetes readiness probe (each walks every token)."""


def wait_ready(base: str, process: subprocess.Popen[bytes], every: float) -> None:
    while process.poll() is None:
        try:
            if httpx2.get(f"{base}/readyz", timeout=60).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(every)  # polling another process for an event, with a probe's period
    raise SystemExit(f"tokend exited with status {process.returncode}")


def scrape(base: str, pid: int, mode: str) -> None:
    """Three scrapes with `/healthz` asked meanwhile: median wall time, the daemon's CPU for
    them, the size, the slowest probe answer, and the daemon's RSS after them (with its peak)."""
    cpu = process_cpu(pid)
    answers = three_gets(base, "/metrics")
    cpu = (process_cpu(pid) - cpu) / 3
    print(
        f"/metrics per_token={mode}: {answers.median:.3f}s median of 3, {cpu:.3f}s CPU each, "
        f"{answers.describe(pid)}"
    )


def status(base: str, pid: int) -> None:
    """The same for `/status`, then for `/status?tokens=problems` (`tokend status --problems`)."""
    for query in ("", "?tokens=problems"):
        answers = three_gets(base, f"/status{query}")
        print(f"/status{query}: {answers.median:.3f}s median of 3, {answers.describe(pid)}")


@dataclass(frozen=True)
class Answers:
    median: float
    size: int
    probes: list[float]
    """How long each `/healthz` asked meanwhile took to answer."""

    def describe(self, pid: int) -> str:
        rss, peak = memory_mb(pid)
        return (
            f"{self.size / 2**20:.2f} MB; /healthz meanwhile: slowest "
            f"{max(self.probes) * 1000:.0f} ms of {len(self.probes)}; "
            f"RSS after {rss:.1f} MB (peak {peak:.1f} MB)  [{loadavg()}]"
        )


def three_gets(base: str, path: str) -> Answers:
    """GET `path` three times, one after the other, with `/healthz` asked every 10 ms meanwhile."""
    times, size = [], 0
    probes = Poller(f"{base}/healthz", every=0.01)
    for _ in range(3):
        started = time.perf_counter()
        size = len(httpx2.get(f"{base}{path}", timeout=300).content)
        times.append(time.perf_counter() - started)
    probes.stop()
    return Answers(sorted(times)[1], size, probes.times)


class Poller:
    """GETs `url` in a thread every `every` seconds (Prometheus scraping `/metrics`, a probe
    asking `/healthz`); the time of each answer."""

    def __init__(self, url: str, every: float) -> None:
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, every), daemon=True)
        self._thread.start()

    def _run(self, url: str, every: float) -> None:
        with httpx2.Client(timeout=300) as client:
            while not self._stop.wait(every):
                started = time.perf_counter()
                client.get(url)
                self.times.append(time.perf_counter() - started)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _wait_log(log: Path, offset: int, pattern: str, timeout: float) -> float:
    """Poll the daemon's log from `offset` for `pattern`: when it was seen (perf_counter)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with log.open() as text:
            text.seek(offset)
            if re.search(pattern, text.read()):
                return time.perf_counter()
        time.sleep(0.01)
    raise SystemExit(f"no {pattern!r} in the log within {timeout:.0f}s")


def _requests(provider: Provider) -> int:
    return int(httpx2.get(f"{provider.url}/requests").text)


def reload_unchanged(process: subprocess.Popen[bytes], log: Path, provider: Provider) -> None:
    requests, offset, cpu = _requests(provider), log.stat().st_size, process_cpu(process.pid)
    started = time.perf_counter()
    process.send_signal(signal.SIGHUP)
    seen = _wait_log(log, offset, r"reloaded: ", timeout=300)
    cpu = process_cpu(process.pid) - cpu
    time.sleep(2)  # would-be re-acquisitions have had time to reach the provider
    rss, peak = memory_mb(process.pid)
    print(
        f"reload (unchanged): {seen - started:.2f}s to 'reloaded:', {cpu:.2f}s CPU; token "
        f"requests {_requests(provider) - requests} during it; RSS after {rss:.1f} MB (peak "
        f"{peak:.1f} MB)  [{loadavg()}]"
    )


def switch(config: Path, process: subprocess.Popen[bytes], log: Path, mode: str) -> None:
    """Reload with `metrics.per_token: mode` (no token changes)."""
    text = re.sub(r"per_token: \w+", f"per_token: {mode}", config.read_text())
    config.write_text(text)
    offset = log.stat().st_size
    process.send_signal(signal.SIGHUP)
    _wait_log(log, offset, r"reloaded: ", timeout=300)


def report_lateness(
    path: Path, process: subprocess.Popen[bytes], window: float, scrapes: list[float]
) -> None:
    """Ask the daemon for the lateness it recorded (SIGUSR1: it stops recording) and report."""
    process.send_signal(signal.SIGUSR1)
    late = array("d")
    late.frombytes(wait_for_file(path, process))
    if not late:
        raise SystemExit("no refresh happened in the window: run longer")
    values = list(late)
    print(
        f"refreshes: {len(values)} in {window:.0f}s ({len(values) / window:.0f}/s); lateness "
        f"p50 {percentile(values, 0.5) * 1000:.1f} ms  p99 {percentile(values, 0.99) * 1000:.1f} "
        f"ms  max {max(values) * 1000:.1f} ms; {len(scrapes)} scrapes meanwhile, slowest "
        f"{max(scrapes, default=0):.2f}s  [{loadavg()}]"
    )


def serve(config: Path, tmp: Path) -> None:
    """`tokend run -c config`, recording how late each token's run planned from $SCALE_FROM on
    (the refresh phase) starts, until SIGUSR1 asks for the figures (written to `LATENESS` in
    `tmp`); reporting its allocators on a signal (to `ALLOCATORS` in `tmp`). The hook
    wraps `TokenJob`'s run at the class, so it holds nothing per token (a closure per scheduled
    run held ~330 bytes a token: ~35 MB of the RSS this benchmark reported at 100,000 tokens
    until 2026-11-26)."""
    from tokend.cli import main as tokend_main
    from tokend.engine.job import TokenJob

    since, reported = float(os.environ["SCALE_FROM"]), threading.Event()
    lateness = array("d")
    run = TokenJob.__call__

    async def timed(job: TokenJob) -> None:
        planned = job.next_run.timestamp() if job.next_run else 0.0
        if planned >= since and not reported.is_set():  # not first acquisitions
            lateness.append(time.time() - planned)
        await run(job)

    def report(*_: object) -> None:
        reported.set()  # the window is over: later runs are not measured
        partial = (tmp / LATENESS).with_suffix(".part")
        partial.write_bytes(lateness.tobytes())
        partial.rename(tmp / LATENESS)

    TokenJob.__call__ = timed  # type: ignore[method-assign]
    signal.signal(signal.SIGUSR1, report)
    report_allocators_on_signal(tmp / ALLOCATORS)
    tokend_main(["run", "-c", str(config)])


if __name__ == "__main__":
    main()
