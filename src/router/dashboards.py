"""Grafana dashboards for router's metrics, generated from code: overview, cost, providers.

``python -m router.dashboards dashboards/`` writes ``<uid>.json`` for each dashboard; the files in
the repository are its output (a test keeps them in sync, and a test evaluates every panel's
PromQL against a real Prometheus). Each panel is one `Panel`; a dashboard is a title and a list.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["DASHBOARDS", "Dashboard", "Panel", "Target", "build", "write_all"]

DS = {"type": "prometheus", "uid": "${datasource}"}


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
        description="Static 0 until health tracking lands."),
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

DASHBOARDS = (OVERVIEW, COST, PROVIDERS)


def _panel(p: Panel, pid: int, x: int, y: int) -> dict:
    out = {
        "id": pid, "type": p.kind, "title": p.title, "description": p.description, "datasource": DS,
        "gridPos": {"h": 8, "w": p.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
        if p.kind == "timeseries" else {},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DS, "expr": t.expr, "legendFormat": t.legend,
                     "format": "table" if p.kind == "table" else "time_series",
                     "instant": p.kind == "table", "range": p.kind != "table"}
                    for i, t in enumerate(p.targets)],
    }
    return out


def build(d: Dashboard) -> dict:
    """The Grafana dashboard JSON model of `d` (schemaVersion 39)."""
    panels, x, y = [], 0, 0
    for i, p in enumerate(d.panels):
        if x + p.width > 24:
            x, y = 0, y + 8
        panels.append(_panel(p, i + 1, x, y))
        x += p.width
    return {
        "uid": d.uid, "title": d.title, "description": d.description, "tags": ["router"],
        "editable": True, "schemaVersion": 39, "version": 1, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"}, "timezone": "utc",
        "templating": {"list": [{"name": "datasource", "label": "Prometheus", "type": "datasource",
                                 "query": "prometheus", "current": {}, "hide": 0}]},
        "annotations": {"list": []}, "links": [], "panels": panels,
    }


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
