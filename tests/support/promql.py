"""The PromQL in deploy/: every expression of the alert rules and of the Grafana dashboard, with
Grafana's variables replaced by values Prometheus accepts, and the metric names each one reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import promql_parser
import yaml

from tests.support.prometheus import DASHBOARD, RULES

GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*", "$token": ".*"}
_LABEL_VALUES = re.compile(r"label_values\((?P<selector>.+),\s*\w+\)")


def rule_expressions(path: Path = RULES) -> dict[str, str]:
    """Alert name -> expression."""
    groups = yaml.safe_load(path.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_expressions(path: Path = DASHBOARD) -> dict[str, str]:
    """`panel title/refId` (or `variable NAME`) -> expression, with variables substituted."""
    dashboard = json.loads(path.read_text())
    found: dict[str, str] = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found[f"{panel['title']}/{target['refId']}"] = substitute(target["expr"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = _LABEL_VALUES.fullmatch(variable["query"]["query"])
            assert match, f"variable {variable['name']}: not label_values(selector, label)"
            found[f"variable {variable['name']}"] = substitute(match["selector"])
    return found


def substitute(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects, from the parsed expression (raises on bad
    PromQL)."""
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"selector without a metric name in {expr!r}"
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names
