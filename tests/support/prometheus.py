"""Debian's `prometheus` and `promtool` for tests: found where `scripts/prometheus` unpacks them
(or on PATH), run on 127.0.0.1 on a free port with a temporary config and TSDB directory.

Where the binaries are missing the tests skip with one line saying how to get them; under
CI=true they fail instead (CI never skips).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from tests.support.processes import wait_for
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "tokend-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tokend-rules.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "tokend-dashboard.json"
MISSING = (
    "needs Debian's prometheus/promtool: run scripts/prometheus (or apt-get install prometheus)"
)


def _cache_bins() -> list[Path]:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tokend"
    return sorted(cache.glob("prometheus-*/usr/bin"), reverse=True)


def binary(name: str) -> str:
    """Path of `promtool` or `prometheus`; skips the test (fails under CI) when absent."""
    for directory in _cache_bins():
        if (directory / name).is_file():
            return str(directory / name)
    found = shutil.which(name)
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} missing under CI: scripts/setup --test should have provided it")
    pytest.skip(MISSING)


def promtool(
    *args: str, cwd: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> Any:
        """`data` of a successful API answer; any other answer fails the test with its error."""
        response = httpx2.get(f"{self.url}/api/v1/{path}", params=params, timeout=5)
        body = response.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@contextmanager
def running_prometheus(
    workdir: Path, targets: list[str], rule_files: list[Path]
) -> Iterator[Prometheus]:
    """A Prometheus scraping `targets` (job `tokend`) and evaluating `rule_files` every second."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": "tokend", "static_configs": [{"targets": targets}]}],
    }
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_for(lambda: _ready(prometheus), timeout=30, what="Prometheus ready")
        yield prometheus
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _ready(prometheus: Prometheus) -> bool:
    if prometheus.process.poll() is not None:
        raise AssertionError(
            f"prometheus exited with {prometheus.process.returncode}:\n{prometheus.tail()}"
        )
    try:
        return httpx2.get(f"{prometheus.url}/-/ready", timeout=2).status_code == 200
    except httpx2.TransportError:
        return False
