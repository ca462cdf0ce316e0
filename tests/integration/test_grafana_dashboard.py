"""deploy/grafana/tokend-dashboard.json: exactly what deploy/grafana/generate.py makes, and a
dashboard Grafana can import (variables, datasource references, ids, a grid without overlaps)."""

from __future__ import annotations

import importlib.util
import json
from types import ModuleType
from typing import Any

from tests.support.prometheus import DASHBOARD

GENERATOR = DASHBOARD.with_name("generate.py")


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tokend_dashboard_generator", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_committed_json_is_what_the_generator_makes() -> None:
    assert DASHBOARD.read_text() == _generator().render(), (
        "tokend-dashboard.json is out of date: run .venv/bin/python deploy/grafana/generate.py"
    )


def test_variables() -> None:
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert list(variables) == ["datasource", "instance", "token"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("instance", "token"):
        assert variables[name]["type"] == "query"
        assert variables[name]["multi"] and variables[name]["includeAll"]
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    assert '$instance"' in variables["token"]["query"]["query"]


def test_every_query_goes_to_the_chosen_datasource_and_token() -> None:
    for panel in _dashboard()["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            expr = target["expr"]
            if any(
                name in expr
                for name in (
                    "tokend_token_refresh_duration",
                    "tokend_build_info",
                    "tokend_identity_certificate_expiry",
                    "tokend_endpoint_",
                )
            ):
                continue  # not per token (no token label: global, per identity, the endpoint)
            assert 'token=~"$token"' in expr and 'instance=~"$instance"' in expr, expr


def test_panels_the_issue_asks_for() -> None:
    titles = {panel["title"]: panel for panel in _dashboard()["panels"]}
    for title in (
        "Time to expiry",
        "Time since last successful refresh",
        "Next refresh in",
        "Refresh results",
        "Refresh latency",
        "Sink publish results",
        "Sink age",
        "Endpoint requests",
        "Endpoint latency",
    ):
        assert titles[title]["type"] == "timeseries", title
    assert titles["Tokens"]["type"] == "table"
    assert "histogram_quantile" in titles["Refresh latency"]["targets"][0]["expr"]


def test_ids_unique_and_grid_without_overlaps() -> None:
    panels = _dashboard()["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
