"""Every PromQL expression in the alert rules and the Grafana dashboard parses, and reads only
metrics that tokend really exports: the list comes from the /metrics of a running `tokend run`,
never from a list kept by hand."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import entra_identity, write_config
from tests.support.entra import EntraFake, certificate_identity
from tests.support.idp import CLIENT_SECRET, running_idp
from tests.support.processes import start_tokend, wait_for
from tests.support.prometheus import promtool
from tests.support.promql import dashboard_expressions, metric_names, rule_expressions
from tests.support.servers import free_port

PROMETHEUS_OWN = {"up"}  # series Prometheus makes itself for every target


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """/metrics of a `tokend run` that has published tokens to file sinks (one of them for an
    identity with a certificate credential)."""
    tmp_path = tmp_path_factory.mktemp("metrics")
    with running_idp(kind=EntraFake) as idp:
        port = free_port()
        signer = certificate_identity(idp.provider, idp.url, tmp_path)
        config = write_config(
            tmp_path / "config.yaml",
            {
                "identities": {"app": entra_identity(idp, CLIENT_SECRET), "signer": signer},
                "tokens": {
                    name: {
                        "identity": name,
                        "resource": "https://crm.example",
                        "sinks": [{"type": "file", "path": str(tmp_path / f"{name}.token")}],
                    }
                    for name in ("app", "signer")
                },
                "defaults": {"startup_spread": 0},
                "listen": f"127.0.0.1:{port}",
                # On, so that its metrics (which the dashboard reads) are exported too.
                "endpoint": {
                    "listen": f"127.0.0.1:{free_port()}",
                    "header_secret": {"env": "ENDPOINT_HEADER"},
                },
            },
        )
        process = start_tokend(
            "run", "-c", str(config), log=tmp_path / "tokend.log", env={"ENDPOINT_HEADER": "h-1"}
        )
        try:
            wait_for(lambda: _ready(port), what="tokend ready")
            yield httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0


def _ready(port: int) -> bool:
    try:
        return httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx2.TransportError:
        return False


@pytest.fixture(scope="module")
def exported(exposition: str) -> set[str]:
    """Every series name in the exposition (histograms as _bucket/_sum/_count, counters _total)."""
    return {
        sample.name
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def test_tokend_exports_what_the_design_names(exported: set[str]) -> None:
    """The running tokend's names, seen from here (a sanity check of the fixture, not the list)."""
    assert "tokend_token_valid" in exported
    assert "tokend_token_refresh_duration_seconds_bucket" in exported
    assert "tokend_sink_last_success_timestamp_seconds" in exported
    assert "tokend_endpoint_requests_total" in exported
    assert "tokend_endpoint_request_duration_seconds_bucket" in exported


@pytest.mark.parametrize(
    ("where", "expr"),
    [*rule_expressions().items(), *dashboard_expressions().items()],
)
def test_expression_reads_only_exported_metrics(where: str, expr: str, exported: set[str]) -> None:
    names = metric_names(expr)
    assert names, f"{where}: selects no metric"
    unknown = names - exported - PROMETHEUS_OWN
    assert not unknown, f"{where}: tokend exports no {sorted(unknown)}"


def test_dashboard_expressions_pass_prometheus_own_parser(tmp_path: Path) -> None:
    """promql-parser follows Prometheus closely; Prometheus's parser has the last word. Each
    dashboard expression becomes a recording rule for `promtool check rules`."""
    expressions = dashboard_expressions()
    rules = [
        {"record": f"dashboard:query_{index}", "expr": expr}
        for index, expr in enumerate(expressions.values())
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_exposition_passes_promtool_lint(exposition: str) -> None:
    """Prometheus's own linter on tokend's /metrics: names, units, counters' _total, help."""
    result = promtool("check", "metrics", stdin=exposition)
    assert result.returncode == 0, result.stdout + result.stderr
