"""Generates tokend-dashboard.json (Grafana) with grafana-foundation-sdk, Grafana's own typed
builder, so panels, variables and queries are reviewed code rather than hand-edited JSON.

    .venv/bin/python deploy/grafana/generate.py          # rewrite tokend-dashboard.json
    .venv/bin/python deploy/grafana/generate.py --check  # exit 1 if the JSON is out of date

Queries use only metrics tokend exports (tests/integration/test_promql_names.py checks them
against a running tokend) and the `datasource`, `instance` and `token` variables.
docs/operations.md explains each panel.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as board
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    DataTransformerConfig,
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableModel,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUTPUT = Path(__file__).with_name("tokend-dashboard.json")
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
SELECTED = 'instance=~"$instance", token=~"$token"'
"""The label filter of every per-token query."""
SERIES_NAME = "{{token}} ({{instance}})"
SINK_SERIES_NAME = "{{token}} → {{sink}} ({{instance}})"
BUCKETS = 'tokend_token_refresh_duration_seconds_bucket{instance=~"$instance"}'


def metric(name: str) -> str:
    return f"{name}{{{SELECTED}}}"


def query(
    expr: str, legend: str = "", ref: str = "A", *, instant: bool = False
) -> prometheus.Dataquery:
    built = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        built = built.legend_format(legend)
    return built.instant().format(PromQueryFormat.TABLE) if instant else built.range()


def thresholds(*steps: tuple[float | None, str]) -> board.ThresholdsConfig:
    return (
        board.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for value, color in steps])
    )


def prop(key: str, value: object) -> DynamicConfigValue:
    return DynamicConfigValue(id_val=key, value=value)


def variables() -> list[Builder[VariableModel]]:
    def labels(name: str, source: str) -> board.QueryVariable:
        return (
            board.QueryVariable(name)
            .label(name)
            .datasource(DATASOURCE)
            .query({"query": f"label_values({source}, {name})", "refId": name})
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(VariableOption(selected=True, text="All", value="$__all"))
        )

    return [
        board.DatasourceVariable("datasource").label("Prometheus").type("prometheus"),
        labels("instance", "tokend_build_info"),
        labels("token", 'tokend_token_valid{instance=~"$instance"}'),
    ]


def counter(title: str, description: str, *targets: tuple[str, str]) -> stat.Panel:
    panel = stat.Panel().title(title).description(description).datasource(DATASOURCE)
    for index, (expr, legend) in enumerate(targets):
        panel = panel.with_target(query(expr, legend, "ABC"[index]))
    return panel.height(4).span(6)


def graph(title: str, description: str, unit: str, *targets: tuple[str, str]) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).datasource(DATASOURCE)
    for index, (expr, legend) in enumerate(targets):
        panel = panel.with_target(query(expr, legend, "ABC"[index]))
    table_legend = (
        common_builders.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.TABLE)
        .placement(common.LegendPlacement.RIGHT)
        .show_legend(True)
        .calcs(["lastNotNull"])
    )
    return panel.unit(unit).legend(table_legend).height(8).span(12)


def bars(panel: timeseries.Panel) -> timeseries.Panel:
    stacked = common_builders.StackingConfig().mode(common.StackingMode.NORMAL)
    return panel.draw_style(common.GraphDrawStyle.BARS).stacking(stacked)


def token_table() -> table.Panel:
    columns = {  # refId: (column title, query)
        "A": ("valid", metric("tokend_token_valid")),
        "B": ("expires in", f"{metric('tokend_token_expiry_timestamp_seconds')} - time()"),
        "C": (
            "next refresh in",
            f"{metric('tokend_token_next_refresh_timestamp_seconds')} - time()",
        ),
        "D": ("last refresh", f"time() - {metric('tokend_token_last_success_timestamp_seconds')}"),
        "E": ("consecutive failures", metric("tokend_token_consecutive_failures")),
    }
    renames = {f"Value #{ref}": title for ref, (title, _) in columns.items()}
    valid = ValueMap(
        {"0": ValueMappingResult("NOT VALID", "red"), "1": ValueMappingResult("valid", "green")}
    )
    panel = (
        table.Panel()
        .title("Tokens")
        .description(
            "One row per token: valid (a non-expired token is held), time until it expires, "
            "until the next planned attempt, since the last successful refresh, and failed "
            "attempts since. "
            '`tokend status` on the instance says more; the README\'s "When things go wrong" says '
            "what to do."
        )
        .datasource(DATASOURCE)
        .targets([query(expr, ref=ref, instant=True) for ref, (_, expr) in columns.items()])
        .with_transformation(DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True, "job": True, "__name__": True},
                    "indexByName": {"token": 0, "instance": 1},
                    "renameByName": renames,
                },
            )
        )
        .override_by_name(
            "valid",
            [prop("mappings", [valid]), prop("custom.cellOptions", {"type": "color-background"})],
        )
        .override_by_name(
            "consecutive failures",
            [
                prop("thresholds", thresholds((None, "green"), (1, "red")).build()),
                prop("custom.cellOptions", {"type": "color-text"}),
            ],
        )
        .sort_by([common_builders.TableSortByFieldState().display_name("valid")])
    )
    for title in ("expires in", "next refresh in", "last refresh"):
        panel = panel.override_by_name(title, [prop("unit", "s")])
    return panel.height(9).span(24)


def token_panels(dashboard: board.Dashboard) -> board.Dashboard:
    return (
        dashboard.with_row(board.Row("Tokens"))
        .with_panel(
            counter(
                "Tokens valid",
                "Tokens holding a non-expired token, out of all tokens shown.",
                (f"sum({metric('tokend_token_valid')})", "valid"),
                (f"count({metric('tokend_token_valid')})", "tokens"),
            )
        )
        .with_panel(
            counter(
                "Tokens not valid",
                "Consumers of these tokens are failing now (alert TokendTokenInvalid).",
                (f"count({metric('tokend_token_valid')} == 0) or vector(0)", ""),
            ).thresholds(thresholds((None, "green"), (1, "red")))
        )
        .with_panel(
            counter(
                "Failing tokens",
                "Tokens whose attempts failed since their last success (retrying or failing).",
                (f"count({metric('tokend_token_consecutive_failures')} > 0) or vector(0)", ""),
            ).thresholds(thresholds((None, "green"), (1, "orange")))
        )
        .with_panel(
            counter(
                "tokend versions",
                "Running tokend instances by version.",
                ('count by (version) (tokend_build_info{instance=~"$instance"})', "{{version}}"),
            )
        )
        .with_panel(token_table())
        .with_panel(
            graph(
                "Time to expiry",
                "Time left until each token held expires: it falls steadily and jumps back up at "
                "each refresh. Near zero means consumers are about to fail.",
                "s",
                (f"{metric('tokend_token_expiry_timestamp_seconds')} - time()", SERIES_NAME),
            )
            .thresholds(thresholds((None, "red"), (300, "orange"), (600, "green")))
            .thresholds_style(
                common_builders.GraphThresholdsStyleConfig().mode(
                    common.GraphTresholdsStyleMode.LINE
                )
            )
            .min(0)
        )
        .with_panel(
            graph(
                "Time since last successful refresh",
                "How long ago each token was last obtained. A sawtooth is healthy; a line that "
                "keeps rising means its refreshes fail.",
                "s",
                (f"time() - {metric('tokend_token_last_success_timestamp_seconds')}", SERIES_NAME),
            ).min(0)
        )
        .with_panel(
            graph(
                "Next refresh in",
                "Time until the next planned attempt: the refresh (its threshold before expiry), "
                "or the next retry after a failure. Below zero: an attempt is late "
                "(alert TokendTokenRefreshStuck).",
                "s",
                (f"{metric('tokend_token_next_refresh_timestamp_seconds')} - time()", SERIES_NAME),
            )
        )
        .with_panel(
            graph(
                "Consecutive failures",
                "Failed attempts since each token's last success; 0 when healthy. "
                "`tokend status` shows the last error.",
                "short",
                (metric("tokend_token_consecutive_failures"), SERIES_NAME),
            ).min(0)
        )
    )


def refresh_and_sink_panels(dashboard: board.Dashboard) -> board.Dashboard:
    def quantile(q: str) -> tuple[str, str]:
        return (
            f"histogram_quantile({q}, sum by (le) (rate({BUCKETS}[$__rate_interval])))",
            f"p{q[2:]}",
        )

    refreshes = metric("tokend_token_refresh_total")
    publishes = metric("tokend_sink_publish_total")
    return (
        dashboard.with_row(board.Row("Refreshes"))
        .with_panel(
            bars(
                graph(
                    "Refresh results",
                    "Token requests to identity providers per interval, by token and result "
                    "(success, transient_error, permanent_error).",
                    "short",
                    (
                        f"sum by (instance, token, result) "
                        f"(increase({refreshes}[$__rate_interval]))",
                        "{{token}} {{result}} ({{instance}})",
                    ),
                )
            )
        )
        .with_panel(
            graph(
                "Refresh latency",
                "Time taken by token requests, successful or not: median, 90th and 99th "
                "percentile. Not per token: the token filter does not apply.",
                "s",
                quantile("0.50"),
                quantile("0.90"),
                quantile("0.99"),
            )
        )
        .with_row(board.Row("Sinks"))
        .with_panel(
            bars(
                graph(
                    "Sink publish results",
                    "Attempts to write a token to each sink per interval, by result. Errors are "
                    "retried on the sink's own backoff.",
                    "short",
                    (
                        f"sum by (instance, token, sink, result) "
                        f"(increase({publishes}[$__rate_interval]))",
                        "{{token}} → {{sink}} {{result}} ({{instance}})",
                    ),
                )
            )
        )
        .with_panel(
            graph(
                "Sink age",
                'Time since each sink last accepted a token. It follows "Time since last '
                'successful refresh"; one that keeps rising is a sink failing to publish '
                "(alert TokendSinkPublishFailing).",
                "s",
                (
                    f"time() - {metric('tokend_sink_last_success_timestamp_seconds')}",
                    SINK_SERIES_NAME,
                ),
            ).min(0)
        )
    )


def credential_panels(dashboard: board.Dashboard) -> board.Dashboard:
    expiry = 'tokend_identity_certificate_expiry_timestamp_seconds{instance=~"$instance"}'
    return dashboard.with_row(board.Row("Credentials")).with_panel(
        graph(
            "Certificate time to expiry",
            "Time until the certificate each identity signs its requests with (type: "
            "certificate) expires; renew it before it reaches 14 days (alert "
            "TokendCertificateExpiringSoon; below 2 days TokendCertificateExpiring). Per "
            "identity: the token filter does not apply.",
            "s",
            (f"{expiry} - time()", "{{identity}} ({{instance}})"),
        )
        .thresholds(thresholds((None, "red"), (2 * 86400, "orange"), (14 * 86400, "green")))
        .thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.LINE)
        )
        .span(24)
    )


def endpoint_panels(dashboard: board.Dashboard) -> board.Dashboard:
    """The local token endpoint (when configured): not per token, so the token filter does not
    apply."""
    selected = 'instance=~"$instance"'
    requests = f"tokend_endpoint_requests_total{{{selected}}}"
    buckets = f"tokend_endpoint_request_duration_seconds_bucket{{{selected}}}"

    def quantile(q: str) -> tuple[str, str]:
        return (
            f"histogram_quantile({q}, sum by (le, protocol) (rate({buckets}[$__rate_interval])))",
            f"{{{{protocol}}}} p{q[2:]}",
        )

    return (
        dashboard.with_row(board.Row("Local token endpoint"))
        .with_panel(
            bars(
                graph(
                    "Endpoint requests",
                    "Requests to the local token endpoint per second, by protocol (app_service, "
                    "imds, requesttoken) and result. unauthorized: a wrong header secret or "
                    "password; not_served: a resource tokend has no token for; unavailable: no "
                    "valid token yet (503).",
                    "reqps",
                    (
                        f"sum by (instance, protocol, result) (rate({requests}[$__rate_interval]))",
                        "{{protocol}} {{result}} ({{instance}})",
                    ),
                )
            )
        )
        .with_panel(
            graph(
                "Endpoint latency",
                "Time to answer a token request: median and 99th percentile by protocol. "
                "A token held is answered from memory; a first request may wait for its "
                "acquisition (up to endpoint.wait).",
                "s",
                quantile("0.50"),
                quantile("0.99"),
            )
        )
    )


def build() -> board.Dashboard:
    dashboard = (
        board.Dashboard("tokend")
        .uid("tokend")
        .description(
            "Token freshness, refreshes, sink publishing and the local token endpoint of tokend "
            "instances."
        )
        .tags(["tokend", "oauth2"])
        .time("now-6h", "now")
        .refresh("1m")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .variables(variables())
    )
    return endpoint_panels(credential_panels(refresh_and_sink_panels(token_panels(dashboard))))


def render() -> str:
    dashboard = build().build()
    for number, panel in enumerate(dashboard.panels or [], start=1):
        panel.id_val = number  # stable ids: links to a panel name it by id
    return (
        json.dumps(dashboard, cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    )


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUTPUT.read_text() == text:
            return 0
        sys.stderr.write(f"{OUTPUT} is out of date: run {Path(__file__)}\n")
        return 1
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
