"""Vault's health as `/status` and `/metrics` show it, read from the sessions in use at the time
of the request or scrape (no request to Vault is made for it). Registered with the `vault`
resource kind, so `tokend.status` and `tokend.metrics` name nothing of Vault.

Metrics (each labelled with the Vault `address`):
- `tokend_vault_login_total{result}`, `tokend_vault_renewal_total{result}`: `success`, `error`
- `tokend_vault_token_expiry_timestamp_seconds`: when tokend's own Vault token expires
- `tokend_vault_up`: 1 when the last request got an answer from an unsealed Vault
- `tokend_vault_sealed`: 1 when Vault said it was sealed
- `tokend_vault_last_contact_timestamp_seconds`: when Vault last answered
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tokend.clock import format_span
from tokend.vault.health import Counts, VaultReport

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from tokend.vault.session import VaultSession


def vault_status(session: VaultSession, now: datetime) -> dict[str, Any]:
    report = session.report()
    health = report.health
    expires = report.token_expires_at
    return {
        "address": report.address,
        "auth_method": report.method,
        "logged_in": report.logged_in,
        "token_expires_at": _iso(expires),
        "token_expires_in_seconds": _seconds(expires, now),
        "renewable": report.renewable,
        "up": health.up,
        "sealed": health.sealed,
        "last_contact": _iso(health.last_contact),
        "last_error": health.last_error,
        "logins": vars(health.logins),
        "renewals": vars(health.renewals),
        "summary": _summary(report, now),
    }


def _summary(report: VaultReport, now: datetime) -> str:
    """`https://vault:8200: up, logged in (approle), token expires in 31m; logins 2 (0
    failed), renewals 5 (0 failed)`."""
    health = report.health
    state = {None: "not contacted yet", True: "up", False: "DOWN"}[health.up]
    if health.sealed:
        state = "SEALED"
    expires = report.token_expires_at
    if not report.logged_in:
        login = "not logged in"
    elif expires is None:
        login = f"logged in ({report.method}), token never expires"
    else:
        login = f"logged in ({report.method}), token expires in {format_span(expires - now)}"
    counts = f"logins {_counts(health.logins)}, renewals {_counts(health.renewals)}"
    error = f"; last error: {health.last_error}" if health.last_error else ""
    return f"{report.address}: {state}, {login}; {counts}{error}"


def _counts(counts: Counts) -> str:
    return f"{counts.success + counts.error} ({counts.error} failed)"


def vault_metrics(sessions: list[VaultSession]) -> Iterator[Metric]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    logins = CounterMetricFamily(
        "tokend_vault_login", "Logins to Vault by outcome.", labels=["address", "result"]
    )
    renewals = CounterMetricFamily(
        "tokend_vault_renewal",
        "Renewals of tokend's Vault token by outcome.",
        labels=["address", "result"],
    )
    gauges = {
        name: GaugeMetricFamily(f"tokend_vault_{name}", text, labels=["address"])
        for name, text in (
            ("token_expiry_timestamp_seconds", "When tokend's own Vault token expires."),
            ("up", "1 when the last request got an answer from an unsealed Vault, else 0."),
            ("sealed", "1 when Vault said it was sealed at the last request that reached it."),
            ("last_contact_timestamp_seconds", "When Vault last answered a request."),
        )
    }
    for session in sessions:
        report = session.report()
        health, address = report.health, [report.address]
        for family, counts in ((logins, health.logins), (renewals, health.renewals)):
            family.add_metric([*address, "success"], counts.success)
            family.add_metric([*address, "error"], counts.error)
        values = {
            "token_expiry_timestamp_seconds": _timestamp(report.token_expires_at),
            "up": None if health.up is None else float(health.up),
            "sealed": None if health.sealed is None else float(health.sealed),
            "last_contact_timestamp_seconds": _timestamp(health.last_contact),
        }
        for name, value in values.items():
            if value is not None:
                gauges[name].add_metric(address, value)
    yield from (logins, renewals, *gauges.values())


def _timestamp(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def _seconds(moment: datetime | None, now: datetime) -> int | None:
    return max(int((moment - now).total_seconds()), 0) if moment else None
