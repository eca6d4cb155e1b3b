"""Grafana dashboards for router's metrics, generated from code: overview, cost, providers, features.

The panels are data (`Dashboard`, `Panel`, `Target`: title, PromQL, unit, kind) and `build()` turns
each dashboard into Grafana's JSON model with Grafana's foundation SDK (`grafana-foundation-sdk`,
the build for Grafana 11.1: ``pip install 'router[dashboards]'``), which also lays the panels out.
Only `build()` needs the SDK; the panel list (read by the PromQL test) does not.

``python -m router.dev.dashboards dashboards/`` writes ``<uid>.json`` for each dashboard; the files in
the repository are its output (a test keeps them in sync, and a test evaluates every panel's
PromQL against a real Prometheus).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DASHBOARDS", "Dashboard", "Panel", "Target", "build", "write_all"]

DATASOURCE_UID = "${datasource}"   # a dashboard variable: pick the Prometheus data source in Grafana


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    targets: tuple[Target, ...]
    unit: str = "short"
    kind: str = "timeseries"      # timeseries | stat | table
    description: str = ""
    width: int = 12


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def _q(q: float, metric: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket[$__rate_interval])))"


OVERVIEW = Dashboard("router-overview", "router / overview", "Traffic, errors, fallbacks, latency and TTFT.", (
    Panel("Requests per second by route", (Target("sum by (route) (rate(router_requests_total[$__rate_interval]))",
                                                  "{{route}}"),), "reqps"),
    Panel("Requests per second by provider",
          (Target("sum by (provider) (rate(router_requests_total[$__rate_interval]))", "{{provider}}"),), "reqps"),
    Panel("Error rate by route", (Target(
        'sum by (route) (rate(router_requests_total{status="error"}[$__rate_interval])) '
        "/ sum by (route) (rate(router_requests_total[$__rate_interval]))", "{{route}}"),), "percentunit",
        description="Share of requests that ended in an error (every candidate failed, or a rejection)."),
    Panel("Fallbacks per second by route and reason", (Target(
        "sum by (route, reason) (rate(router_fallbacks_total[$__rate_interval]))", "{{route}}: {{reason}}"),), "ops",
        description="Moves to the next candidate; reason is the outcome of the last failed attempt."),
    Panel("Latency p50 / p95 by route", (
        Target(_q(0.5, "router_request_duration_seconds", "route"), "p50 {{route}}"),
        Target(_q(0.95, "router_request_duration_seconds", "route"), "p95 {{route}}")), "s"),
    Panel("Time to first token p50 / p95 by route", (
        Target(_q(0.5, "router_time_to_first_token_seconds", "route"), "p50 {{route}}"),
        Target(_q(0.95, "router_time_to_first_token_seconds", "route"), "p95 {{route}}")), "s"),
    Panel("Task decisions by source", (Target(
        "sum by (task, source) (rate(router_classifier_decisions_total[$__rate_interval]))",
        "{{task}} ({{source}})"),), "ops"),
    Panel("Ledger records pending", (Target("sum(router_ledger_pending_records)", "pending"),), "short",
          description="Above zero for long: the ledger is down or slow; records are kept and retried."),
))

COST = Dashboard("router-cost", "router / cost", "Spend, savings against the reference model, budgets.", (
    Panel("Spend by route (USD per hour)", (Target(
        "sum by (route) (increase(router_cost_usd_total[1h]))", "{{route}}"),), "currencyUSD"),
    Panel("Spend by provider (USD per hour)", (Target(
        "sum by (provider) (increase(router_cost_usd_total[1h]))", "{{provider}}"),), "currencyUSD"),
    Panel("Spend by model (USD per hour)", (Target(
        "sum by (model) (increase(router_cost_usd_total[1h]))", "{{model}}"),), "currencyUSD"),
    Panel("Spend by tenant (USD per hour)", (Target(
        "sum by (tenant) (increase(router_cost_usd_total[1h]))", "{{tenant}}"),), "currencyUSD",
        description="Per tenant only when the policy sets metering.tenant_label: true; else one series."),
    Panel("Savings vs reference model by route (USD per hour)", (Target(
        "sum by (route) (increase(router_savings_usd_total[1h]))", "{{route}}"),), "currencyUSD"),
    Panel("Spend and savings, last 24 h", (
        Target("sum(increase(router_cost_usd_total[24h]))", "spend"),
        Target("sum(increase(router_savings_usd_total[24h]))", "saved")), "currencyUSD", "stat"),
    Panel("Budget remaining by tenant", (Target("min by (tenant) (router_budget_remaining_usd)", "{{tenant}}"),),
          "currencyUSD", description="The tightest of the tenant's daily and monthly budgets."),
    Panel("Tokens per second by model and kind", (Target(
        "sum by (model, kind) (rate(router_tokens_total[$__rate_interval]))", "{{model}} {{kind}}"),), "short"),
))

PROVIDERS = Dashboard("router-providers", "router / providers", "Provider state, attempts and load.", (
    Panel("Provider state (0 healthy, 1 degraded, 2 down)", (Target(
        "max by (provider, model) (router_provider_state)", "{{provider}}/{{model}}"),), "short", "table",
        description="From the health monitor at scrape time: 1 while a circuit is half-open, 2 while it is "
                    "open or the provider's probe fails."),
    Panel("Upstream attempts per second by outcome", (Target(
        "sum by (provider, outcome) (rate(router_upstream_attempts_total[$__rate_interval]))",
        "{{provider}}: {{outcome}}"),), "ops"),
    Panel("Upstream calls in flight", (Target("sum by (provider) (router_inflight_requests)", "{{provider}}"),),
          "short"),
    Panel("Attempt failure share by provider", (Target(
        'sum by (provider) (rate(router_upstream_attempts_total{outcome!="ok"}[$__rate_interval])) '
        "/ sum by (provider) (rate(router_upstream_attempts_total[$__rate_interval]))", "{{provider}}"),),
        "percentunit"),
    Panel("Latency p95 by provider", (Target(_q(0.95, "router_request_duration_seconds", "provider"),
                                             "{{provider}}"),), "s"),
    Panel("Ledger write errors per second", (Target("sum(rate(router_ledger_errors_total[$__rate_interval]))",
                                                    "errors"),), "ops"),
))

FEATURES = Dashboard("router-features", "router / APIs, classifier, cache and fleets",
                     "The API surface, task classification, the response cache, rate limits, replicas, "
                     "hedging and stream recovery.", (
    Panel("Requests per second by API and status", (Target(
        "sum by (api, status) (rate(router_api_requests_total[$__rate_interval]))", "{{api}} {{status}}"),), "reqps",
        description="chat: /v1/chat/completions and /v1/embeddings; messages: Anthropic's /v1/messages; "
                    "responses: OpenAI's /v1/responses."),
    Panel("Error share by API", (Target(
        'sum by (api) (rate(router_api_requests_total{status="error"}[$__rate_interval])) '
        "/ sum by (api) (rate(router_api_requests_total[$__rate_interval]))", "{{api}}"),), "percentunit"),
    Panel("Task decisions per second by task (custom tasks included)", (Target(
        "sum by (task) (rate(router_classifier_decisions_total[$__rate_interval]))", "{{task}}"),), "ops",
        description="Every task the policy's classifier settings define, custom tasks with the built-in ones."),
    Panel("Classifier decisions below the confidence threshold", (Target(
        '(sum(rate(router_classifier_decisions_total{source="fallback"}[$__rate_interval])) or vector(0)) '
        '/ sum(rate(router_classifier_decisions_total{source=~"classifier|fallback"}[$__rate_interval]))',
        "below min_confidence"),), "percentunit",
        description="Share of classified requests whose confidence was under classifier.min_confidence and "
                    "went to the fallback task. A rising share: the traffic has drifted from what the model "
                    "was trained on."),
    Panel("Classifier confidence by task (p50 / p10, custom tasks included)", (
        Target("histogram_quantile(0.5, sum by (le, task) (rate(router_classifier_confidence_bucket"
               '{source=~"classifier|fallback"}[$__rate_interval])))', "p50 {{task}}"),
        Target("histogram_quantile(0.1, sum by (le, task) (rate(router_classifier_confidence_bucket"
               '{source=~"classifier|fallback"}[$__rate_interval])))', "p10 {{task}}")),
        "percentunit",
        description="The classifier's probability of the task it picked, for classified requests (source "
                    "classifier or fallback; hints and task-named routes are always 1). A falling p10: more "
                    "prompts the model is unsure of."),
    Panel("Response cache hit ratio by route", (Target(
        "sum by (route) (rate(router_cache_hits_total[$__rate_interval])) / (sum by (route) "
        "(rate(router_cache_hits_total[$__rate_interval])) + sum by (route) "
        "(rate(router_cache_misses_total[$__rate_interval])))", "{{route}}"),), "percentunit",
        description="Hits over cacheable requests (hits + misses) on routes with a cache."),
    Panel("Response cache savings by route (USD per hour)", (Target(
        "sum by (route) (increase(router_cache_savings_usd_total[1h]))", "{{route}}"),), "currencyUSD",
        description="What the upstream calls that cache hits replaced would have cost."),
    Panel("Rate-limited requests per second by tenant and limit", (Target(
        "sum by (tenant, kind) (rate(router_rate_limited_total[$__rate_interval]))", "{{tenant}}: {{kind}}"),),
        "reqps", description="Requests refused with 429 by a requests, tokens or concurrent limit."),
    Panel("Replica picks per second by model and how", (Target(
        "sum by (model, how) (rate(router_replica_picks_total[$__rate_interval]))", "{{model}}: {{how}}"),), "ops",
        description="affinity: the conversation's replica; spill: another, its own was loaded past the cap; "
                    "least_loaded, round_robin: no affinity key; only: one usable replica."),
    Panel("Affinity hit rate by model", (Target(
        'sum by (model) (rate(router_replica_picks_total{how="affinity"}[$__rate_interval])) '
        '/ sum by (model) (rate(router_replica_picks_total{how=~"affinity|spill"}[$__rate_interval]))',
        "{{model}}"),), "percentunit",
        description="Of the picks that had an affinity replica, the share that went to it (prefix caches hit)."),
    Panel("Hedges per second by route and result", (Target(
        "sum by (route, result) (rate(router_hedges_total[$__rate_interval]))", "{{route}}: {{result}}"),), "ops",
        description="won: the hedge streamed first; lost: the first attempt did; failed: neither; capped: a cap "
                    "refused to hedge."),
    Panel("Hedges won share and their cost", (
        Target('sum by (route) (rate(router_hedges_total{result="won"}[$__rate_interval])) / sum by (route) '
               '(rate(router_hedges_total{result=~"won|lost|failed"}[$__rate_interval]))', "won share {{route}}"),
        Target("sum by (route) (increase(router_hedge_cost_usd_total[1h]))", "losing attempts USD/h {{route}}")),
        "short"),
    Panel("Streams recovered after the first byte per second", (Target(
        "sum by (route) (rate(router_stream_resumes_total[$__rate_interval]))", "{{route}}"),), "ops",
        description="Streams cut mid-way and continued on another deployment, one stream to the client."),
))

DASHBOARDS = (OVERVIEW, COST, PROVIDERS, FEATURES)


def _panel(p: Panel, pid: int) -> Any:
    """The SDK builder of one panel: a Prometheus query per target, the unit, the legend below."""
    from grafana_foundation_sdk.builders import common, prometheus, stat, table, timeseries
    from grafana_foundation_sdk.models import common as cm
    from grafana_foundation_sdk.models.dashboard import DataSourceRef
    from grafana_foundation_sdk.models.prometheus import PromQueryFormat

    ds = DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
    kinds = {"timeseries": timeseries.Panel, "stat": stat.Panel, "table": table.Panel}
    b = kinds[p.kind]().id(pid).title(p.title).datasource(ds).unit(p.unit).height(8).span(p.width)
    if p.description:
        b = b.description(p.description)
    for i, t in enumerate(p.targets):
        q = prometheus.Dataquery().ref_id(chr(ord("A") + i)).datasource(ds).expr(t.expr).legend_format(t.legend)
        b = b.with_target(q.instant().format(PromQueryFormat.TABLE) if p.kind == "table" else q.range())
    if p.kind == "timeseries":
        b = b.legend(common.VizLegendOptions().display_mode(cm.LegendDisplayMode.LIST)
                     .placement(cm.LegendPlacement.BOTTOM).show_legend(True))
    elif p.kind == "stat":
        b = b.reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]))
    return b


def build(d: Dashboard) -> dict:
    """The Grafana dashboard JSON model of `d`, built with Grafana's foundation SDK."""
    try:
        from grafana_foundation_sdk.builders import dashboard
        from grafana_foundation_sdk.cog.encoder import JSONEncoder
    except ImportError as e:
        raise ImportError(f"building dashboards needs Grafana's foundation SDK: "
                          f"pip install 'router[dashboards]' ({e})") from e

    b = (dashboard.Dashboard(d.title).uid(d.uid).description(d.description).tags(["router"]).editable()
         .refresh("30s").time("now-6h", "now").timezone("utc").version(1)
         .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")))
    for i, p in enumerate(d.panels):
        b = b.with_panel(_panel(p, i + 1))
    return json.loads(json.dumps(b.build(), cls=JSONEncoder))


def write_all(directory: str, dashboards: Sequence[Dashboard] = DASHBOARDS) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    paths = []
    for d in dashboards:
        path = os.path.join(directory, f"{d.uid}.json")
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(build(d), indent=2) + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":  # pragma: no cover
    for written in write_all(sys.argv[1] if len(sys.argv) > 1 else "dashboards"):
        print(written)
