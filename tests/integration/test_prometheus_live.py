"""A real Prometheus (Debian's binary) scraping a real `tokend run`, with tokend's alert rules
loaded: the "token not valid" alert goes pending while the identity provider refuses, and clears
once it answers; then every query of the Grafana dashboard finds data. Nothing ages: the token is
simply never valid until the provider is healthy.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import entra_identity, write_config
from tests.support.entra import EntraFake, certificate_identity
from tests.support.idp import CLIENT_SECRET, FakeIdp, RecordedRequest, running_idp, status
from tests.support.processes import start_tokend, wait_for
from tests.support.prometheus import RULES, Prometheus, binary, running_prometheus
from tests.support.promql import dashboard_expressions, rule_expressions
from tests.support.servers import free_port


def _config(idp: FakeIdp, tmp_path: Path, port: int, signer: dict[str, Any]) -> Path:
    return write_config(
        tmp_path / "config.yaml",
        {
            "identities": {"app": entra_identity(idp, CLIENT_SECRET), "signer": signer},
            "tokens": {
                "crm": {
                    "identity": "app",
                    "resource": "https://crm.example",
                    "sinks": [{"type": "file", "path": str(tmp_path / "crm.token")}],
                },
                # from another, healthy provider: a certificate credential, for its metric
                "signed": {
                    "identity": "signer",
                    "resource": "https://crm.example",
                    "sinks": [{"type": "file", "path": str(tmp_path / "signed.token")}],
                },
            },
            # Retries at most a second apart: the token arrives soon after the provider heals.
            "defaults": {
                "jitter": 0,
                "startup_spread": 0,
                "backoff": {"min": "200ms", "max": "1s"},
            },
            "listen": f"127.0.0.1:{port}",
            # On, so that the dashboard's endpoint panels have series to read.
            "endpoint": {
                "listen": f"127.0.0.1:{free_port()}",
                "header_secret": {"env": "ENDPOINT_HEADER"},
            },
        },
    )


@pytest.fixture
def tokend_url(idp: FakeIdp, tmp_path: Path) -> Iterator[str]:
    """`tokend run` whose identity provider answers every token request with a 503 (and a
    second identity, with a certificate, at a healthy one)."""
    binary("prometheus")  # skip (or fail under CI) before starting anything
    idp.policy = _unavailable
    port = free_port()
    with running_idp(kind=EntraFake) as healthy:
        signer = certificate_identity(healthy.provider, healthy.url, tmp_path)
        config = _config(idp, tmp_path, port, signer)
        process = start_tokend(
            "run",
            "-c",
            str(config),
            log=tmp_path / "tokend.log",
            env={"ENDPOINT_HEADER": "h-1"},
        )
        try:
            yield f"127.0.0.1:{port}"
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0


def _unavailable(_request: RecordedRequest) -> Any:
    return status(503, {"error": "temporarily_unavailable"})


def test_token_invalid_alert_pends_while_the_idp_refuses_and_clears_when_it_heals(
    idp: FakeIdp, tokend_url: str, tmp_path: Path
) -> None:
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    with running_prometheus(workdir, [tokend_url], [RULES]) as prometheus:
        groups = prometheus.api("rules")["groups"]
        loaded = [rule["name"] for group in groups for rule in group["rules"]]
        assert "TokendTokenInvalid" in loaded and len(loaded) == 9, loaded

        # Scraped: tokend's own metrics are in Prometheus, the token not valid, failures counted.
        wait_for(
            lambda: _value(prometheus, 'tokend_token_valid{job="tokend",token="crm"}') == 0.0,
            what="tokend_token_valid scraped as 0",
        )
        assert _value(prometheus, 'up{job="tokend"}') == 1.0
        wait_for(
            lambda: (_value(prometheus, 'tokend_token_consecutive_failures{token="crm"}') or 0) > 0,
            what="failed refreshes scraped",
        )
        alert = wait_for(
            lambda: _alert(prometheus, "TokendTokenInvalid", "crm"), what="alert pending"
        )
        assert alert["state"] in ("pending", "firing")
        assert alert["labels"]["token"] == "crm"
        assert alert["labels"]["severity"] == "critical"
        assert "tokend status" in alert["annotations"]["description"]

        idp.policy = None  # the identity provider is back
        wait_for(
            lambda: _value(prometheus, 'tokend_token_valid{job="tokend",token="crm"}') == 1.0,
            what="the new token scraped as valid",
        )
        wait_for(
            lambda: _alert(prometheus, "TokendTokenInvalid") is None,
            what="TokendTokenInvalid cleared",
        )
        assert (tmp_path / "crm.token").exists()

        # Every dashboard query runs on real data and finds some (rates need two scrapes).
        for where, expr in dashboard_expressions().items():
            wait_for(lambda expr=expr: prometheus.query(expr), what=f"data for {where}: {expr}")
        for expr in rule_expressions().values():
            prometheus.query(expr)  # accepted by the server; most find nothing while healthy


def _value(prometheus: Prometheus, expr: str) -> float | None:
    result = prometheus.query(expr)
    return float(result[0]["value"][1]) if result else None


def _alert(prometheus: Prometheus, name: str, token: str | None = None) -> dict[str, Any] | None:
    for alert in prometheus.alerts():
        labels = alert["labels"]
        if labels["alertname"] == name and token in (None, labels.get("token")):
            return alert
    return None
