"""`metrics.per_token`: the instance-wide series are always there; with `problems`, a token's own
series appear only while it needs attention. A real `tokend run`, its /metrics parsed with
prometheus_client's parser; the mode switched by SIGHUP."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import entra_identity, write_config
from tests.support.idp import CLIENT_SECRET, FakeIdp, RecordedRequest, entra_error, running_idp
from tests.support.processes import start_tokend, wait_for
from tests.support.servers import free_port
from tokend.check import warnings
from tokend.configfile import load_config

BROKEN = "https://broken.example"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def idp() -> Iterator[FakeIdp]:
    with running_idp() as idp:
        idp.policy = _refuse_broken
        yield idp


def _refuse_broken(request: RecordedRequest) -> Any:
    if BROKEN in request.form.get("resource", ""):
        return entra_error(401, "invalid_client", 7000215, "Invalid client secret provided.")
    return None


def _config(path: Path, idp: FakeIdp, port: int, names: list[str], per_token: str) -> Path:
    return write_config(
        path / "config.yaml",
        {
            "identities": {"app": entra_identity(idp, CLIENT_SECRET)},
            "tokens": {
                name: {
                    "identity": "app",
                    "resource": BROKEN if name == "broken" else f"https://{name}.example",
                    "sinks": [{"type": "file", "path": str(path / f"{name}.token")}],
                }
                for name in names
            },
            "defaults": {"startup_spread": 0},
            "listen": f"127.0.0.1:{port}",
            "metrics": {"per_token": per_token},
        },
    )


def _scrape(port: int) -> Samples:
    text = httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _tokens_with_own_series(samples: Samples) -> set[str]:
    return {dict(labels)["token"] for _, labels in samples if "token" in dict(labels)}


def test_problems_mode_exports_only_tokens_that_need_attention(
    idp: FakeIdp, tmp_path: Path
) -> None:
    port = free_port()
    config = _config(tmp_path, idp, port, ["crm", "erp", "broken"], "problems")
    process = start_tokend("run", "-c", str(config), log=tmp_path / "tokend.log")
    try:

        def settled() -> Samples | None:
            try:
                samples = _scrape(port)
            except httpx2.TransportError:
                return None
            fresh = _value(samples, "tokend_tokens", state="fresh")
            refused = _value(samples, "tokend_refreshes_total", result="permanent_error")
            return samples if fresh == 2 and refused else None

        samples = wait_for(settled, what="two fresh tokens and one refused")
        assert _tokens_with_own_series(samples) == {"broken"}
        assert _value(samples, "tokend_token_valid", token="broken") == 0
        assert _value(samples, "tokend_tokens", state="failing") == 1
        assert _value(samples, "tokend_tokens", state="expired") == 0
        assert _value(samples, "tokend_refreshes_total", result="success") == 2
        assert _value(samples, "tokend_sink_publishes_total", result="success") == 2
        earliest = _value(samples, "tokend_token_expiry_earliest_timestamp_seconds")
        assert earliest is not None and time.time() < earliest <= time.time() + 3600
        refused = _value(samples, "tokend_refreshes_total", result="permanent_error")

        # SIGHUP: every token's own series, and the removed token's attempts still counted.
        _config(tmp_path, idp, port, ["crm", "erp"], "all")
        process.send_signal(signal.SIGHUP)

        def every_token_reported() -> Samples | None:
            samples = _scrape(port)
            return samples if _tokens_with_own_series(samples) == {"crm", "erp"} else None

        samples = wait_for(every_token_reported, what="every token's own series after the reload")
        assert _value(samples, "tokend_token_valid", token="crm") == 1
        published = _value(
            samples, "tokend_sink_publish_total", token="erp", sink="file", result="success"
        )
        assert published == 1
        assert _value(samples, "tokend_tokens", state="failing") == 0
        assert (_value(samples, "tokend_refreshes_total", result="permanent_error") or 0) >= (
            refused or 0
        )
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


def test_check_warns_of_per_token_series_above_ten_thousand_tokens(
    idp: FakeIdp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tokend.check.MANY_TOKENS", 2)
    names = ["crm", "erp", "hr"]
    every = load_config(_config(tmp_path, idp, free_port(), names, "all"))
    lines = [line for line in warnings(every) if "metrics.per_token" in line]
    assert lines == [
        f"{tmp_path / 'config.yaml'}: metrics.per_token: all with 3 tokens exports 33 series on "
        "every scrape; per_token: problems exports only those of tokens that need attention "
        "(the instance-wide series stay)"
    ]
    problems = load_config(_config(tmp_path, idp, free_port(), names, "problems"))
    assert not [line for line in warnings(problems) if "metrics.per_token" in line]
