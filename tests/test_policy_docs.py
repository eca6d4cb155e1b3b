"""Every key the policy parser accepts is documented: docs/policy.md, or the doc it links for the details."""

from __future__ import annotations

import re

from router.core.policy_parser import _Parser, parse_policy

from .conftest import ROOT

KITCHEN_SINK = """
version: 1
providers:
  gpu: {kind: vllm, base_url: "http://gpu:8000/v1", api_key: none, region: eu, metrics_url: "http://gpu:8000/metrics",
        max_concurrency: 8, headers: {X-A: b}, self_hosted: true, gpu_hour_usd: 2, gpus: 2,
        health: {failure_threshold: 5, window_s: 30, min_requests: 20, failure_rate: 0.5, open_s: 30,
                 half_open_probes: 1, probe: {path: "http://gpu:8000/health", interval_s: 10, timeout_s: 2}},
        saturation: {max_waiting: 32, max_kv_cache: 0.95, recover_waiting: 8, recover_kv_cache: 0.85,
                     scrape_interval_s: 2, stale_after_s: 10}}
models:
  m: {provider: gpu, model: m, price: {input_per_mtok: 1, output_per_mtok: 2}, context_window: 1000,
      capabilities: [tools], params: {temperature: 0.2}}
routes:
  general: {targets: [m], strategy: cheapest, max_cost_usd: 1, expected_output_tokens: 10}
rules:
  - {if: {task: general, residency: eu, language: en, tenant: t, tools: false}, route: general}
  - {route: general}
residency: {eu: [eu]}
tenants:
  t: {keys: [], residency: eu, allow_hints: true, routes: [general],
      budget: {daily_usd: 1, monthly_usd: 10, on_exhausted: reject, routes: {general: {daily_usd: 1, monthly_usd: 2}}}}
retry: {attempts: 2, backoff_s: 0.1, max_backoff_s: 1, retry_after_max_s: 5}
timeouts: {connect_s: 1, first_token_s: 2, total_s: 3, attempt_s: 2}
classifier: {min_confidence: 0.5, fallback_task: general}
defaults: {expected_output_tokens: 100}
reference_model: {name: ref, price: {input_per_mtok: 3, output_per_mtok: 15}}
metering: {tenant_label: true, ledger: "x.db"}
"""


def test_every_accepted_key_is_documented(monkeypatch):
    seen: set[str] = set()
    original = _Parser.mapping

    def spy(self, path, value, allowed, required=()):
        seen.update(allowed)
        return original(self, path, value, allowed, required)

    monkeypatch.setattr(_Parser, "mapping", spy)
    parse_policy(KITCHEN_SINK, env={})
    assert {"providers", "health", "saturation", "probe", "metering", "reference_model"} <= seen
    docs = "".join((ROOT / "docs" / name).read_text() for name in ("policy.md", "routing.md", "metering.md"))
    missing = sorted(k for k in seen if not re.search(rf"`{re.escape(k)}`|\b{re.escape(k)}:", docs))
    assert missing == [], f"policy keys without documentation: {missing}"
