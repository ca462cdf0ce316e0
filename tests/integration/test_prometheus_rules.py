"""The alert rules in deploy/prometheus, checked and unit-tested by Prometheus's own promtool:
series in, alerts out (deploy/prometheus/tokend-rules.test.yaml)."""

from __future__ import annotations

import yaml

from tests.support.prometheus import RULE_TESTS, RULES, promtool


def test_rules_are_valid() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 12 rules found" in result.stdout


def test_rules_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_says_what_to_check() -> None:
    """Each alert has `for:`, a severity, a summary and a description pointing the on-call at
    `tokend status` (or the host) and the README, and the unit tests see each one fire."""
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    silent = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if not case["exp_alerts"]
    }
    names = {rule["alert"] for rule in rules}
    assert fired == names
    assert silent == names
    for rule in rules:
        assert rule["for"], rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        description = rule["annotations"]["description"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert "tokend status" in description, rule["alert"]
        assert "When things go wrong" in description or "docs/operations.md" in description
