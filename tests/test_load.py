"""vLLM /metrics parsing, saturation hysteresis, staleness, the scraper (respx) and the saturation keys."""

from __future__ import annotations

import httpx
import pytest
import respx

from router.core.decision import EMPTY_STATE, LiveState
from router.core.errors import PolicyError
from router.core.policy import SaturationSettings
from router.core.policy_parser import parse_policy
from router.monitor.load import LoadMonitor, LoadSample, SaturationGate, parse_vllm_metrics
from router.monitor.monitor import Monitor
from router.monitor.probes import Scraper

METRICS = """\
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen3.5"} 3.0
vllm:num_requests_waiting{engine="1",model_name="Qwen/Qwen3.5"} 4.0
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen3.5"} 10.0
vllm:num_requests_running{engine="1",model_name="Qwen/Qwen3.5"} 12.0
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen3.5"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="Qwen/Qwen3.5"} 0.7
vllm:num_requests_waiting{model_name="other \\"quoted\\""} 1
vllm:prompt_tokens_total{model_name="Qwen/Qwen3.5"} 12345.0
process_cpu_seconds_total 3.2
"""

LEGACY = """\
vllm:num_requests_waiting{model_name="m"} 2
vllm:gpu_cache_usage_perc{model_name="m"} 0.91
vllm:num_requests_running{model_name="m"} NaN
"""

POLICY = """
version: 1
providers:
  gpu: {{kind: vllm, base_url: "http://gpu.test/v1", metrics_url: "http://gpu.test/metrics", region: eu
        {sat}}}
  api: {{kind: deepseek, base_url: "http://api.test/v1", region: cn}}
models:
  qwen: {{provider: gpu, model: Qwen/Qwen3.5, price: {{input_per_mtok: 0.1, output_per_mtok: 0.1}}}}
  ds: {{provider: api, model: deepseek-chat, price: {{input_per_mtok: 0.28, output_per_mtok: 0.42}}}}
routes:
  general: {{targets: [qwen, ds]}}
rules:
  - {{route: general}}
"""


def policy(sat: str = "{max_waiting: 5, recover_waiting: 1, max_kv_cache: 0.9, stale_after_s: 10}"):
    return parse_policy(POLICY.format(sat=(", saturation: " + sat) if sat else ""), env={})


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_parse_sums_label_sets_and_averages_kv_cache() -> None:
    out = parse_vllm_metrics(METRICS)
    q = out["Qwen/Qwen3.5"]
    assert (q.waiting, q.running) == (7.0, 22.0)
    assert q.kv_cache == pytest.approx(0.6)
    assert out['other "quoted"'] == LoadSample(1.0, 0.0, None)


def test_parse_falls_back_to_the_legacy_kv_metric_and_skips_nan() -> None:
    m = parse_vllm_metrics(LEGACY)["m"]
    assert m == LoadSample(2.0, 0.0, 0.91)
    assert parse_vllm_metrics("garbage\n{}\nvllm:num_requests_waiting{model_name=\"x\"} abc\n") == {}


def test_gate_hysteresis_does_not_flap() -> None:
    g = SaturationGate(SaturationSettings(max_waiting=10, recover_waiting=3, max_kv_cache=0.9, recover_kv_cache=0.7))
    seq = [(5, 0.5), (11, 0.5), (9, 0.5), (4, 0.5), (3, 0.8), (3, 0.7), (2, 0.95), (2, 0.85), (0, 0.1)]
    assert [g.update(LoadSample(w, 0, kv)) for w, kv in seq] == [
        False, True, True, True, True, False, True, True, False]


def test_monitor_saturates_recovers_and_goes_stale() -> None:
    clock = Clock()
    lm = LoadMonitor(policy(), clock=clock)
    assert lm.saturated() == frozenset()
    lm.observe("gpu", {"Qwen/Qwen3.5": LoadSample(waiting=8)})
    first = lm.saturated()
    assert first == {"qwen"} and lm.saturated() is first
    clock.t += 5
    lm.observe("gpu", {"Qwen/Qwen3.5": LoadSample(waiting=3)})     # between the thresholds: still saturated
    assert lm.saturated() == {"qwen"}
    lm.failed("gpu", "HTTP 500")
    clock.t += 10.5                                                # the last sample is now stale
    assert lm.saturated() == frozenset() and lm.fresh("qwen") is None
    assert lm.errors["gpu"] == "HTTP 500"
    lm.observe("gpu", {"Qwen/Qwen3.5": LoadSample(waiting=1)})
    assert lm.saturated() == frozenset() and lm.fresh("qwen") == LoadSample(waiting=1)
    lm.observe("gpu", {"Qwen/Qwen3.5": LoadSample(kv_cache=0.95)})
    assert lm.saturated() == {"qwen"}


def test_single_model_server_matches_a_different_served_name() -> None:
    lm = LoadMonitor(policy(), clock=Clock())
    lm.observe("gpu", {"qwen35-served": LoadSample(waiting=50)})
    assert lm.saturated() == {"qwen"}


def test_a_metrics_url_alone_is_watched_with_the_default_thresholds() -> None:
    p = policy(sat="")
    assert p.providers["gpu"].saturation == SaturationSettings.default_for(None)
    lm = LoadMonitor(p, clock=Clock())
    assert set(lm.watched) == {"gpu"}
    lm.observe("gpu", {"Qwen/Qwen3.5": LoadSample(waiting=9)})      # default: more than 8 waiting
    assert lm.saturated() == {"qwen"}
    lm.observe("gpu", {"Qwen/Qwen3.5": LoadSample(waiting=4, kv_cache=0.5)})
    assert lm.saturated() == frozenset()


def test_default_thresholds_follow_max_concurrency() -> None:
    text = POLICY.format(sat=", max_concurrency: 32").replace('metrics_url: "http://gpu.test/metrics", ', "")
    assert parse_policy(text, env={}).providers["gpu"].saturation is None   # nothing to scrape: not watched
    p = parse_policy(POLICY.format(sat=", max_concurrency: 32"), env={})
    assert p.providers["gpu"].saturation.max_waiting == 4 and p.providers["gpu"].saturation.max_kv_cache == 0.95


@respx.mock
async def test_scrape_over_httpx() -> None:
    p = policy()
    route = respx.get("http://gpu.test/metrics")
    lm = LoadMonitor(p, clock=Clock())
    scraper = Scraper(lm)
    route.mock(return_value=httpx.Response(200, text=METRICS))
    assert await scraper.scrape(p.providers["gpu"])
    assert lm.saturated() == {"qwen"}                     # 7 waiting > 5
    route.mock(return_value=httpx.Response(500))
    assert not await scraper.scrape(p.providers["gpu"]) and lm.errors["gpu"] == "HTTP 500"
    route.mock(side_effect=httpx.ConnectTimeout("slow"))
    assert not await scraper.scrape(p.providers["gpu"]) and "ConnectTimeout" in lm.errors["gpu"]
    assert lm.saturated() == {"qwen"}                     # not stale yet: keeps the last verdict
    await scraper.aclose()


def test_monitor_overlay_composes_with_the_given_state() -> None:
    clock = Clock()
    m = Monitor(policy(), clock=clock, background=False)
    p = m.policy
    assert m.overlay(EMPTY_STATE, p) is m.overlay(EMPTY_STATE, p)      # cached when nothing changed
    m.load.observe("gpu", {"Qwen/Qwen3.5": LoadSample(waiting=9)})
    m.health.record("ds", "ok", 0.4)
    s = m.overlay(LiveState({"t": 1.0}, frozenset({"x"}), frozenset(), {"y": 1.0}), p)
    assert s.budget_remaining == {"t": 1.0} and s.circuit_open == {"x"}
    assert s.saturated == {"qwen"} and dict(s.ttft) == {"ds": 0.4, "y": 1.0}
    assert m.states() == {("gpu", "qwen"): 1, ("api", "ds"): 0}


def test_saturation_keys_are_strict_and_validated() -> None:
    with pytest.raises(PolicyError) as e:
        policy("{max_wating: 5, max_kv_cache: 90, recover_kv_cache: 0.95}")
    text = str(e.value)
    assert "providers.gpu.saturation.max_wating" in text
    assert "providers.gpu.saturation.max_kv_cache: KV-cache usage is a fraction" in text
    with pytest.raises(PolicyError, match="saturation: no threshold"):
        policy("{scrape_interval_s: 1}")
    with pytest.raises(PolicyError, match="recover_waiting: must not exceed max_waiting"):
        policy("{max_waiting: 5, recover_waiting: 6}")
    text = POLICY.format(sat=", saturation: {max_waiting: 5}").replace(', metrics_url: "http://gpu.test/metrics"', "")
    with pytest.raises(PolicyError, match="has no metrics_url"):
        parse_policy(text, env={})


def test_saturation_defaults_and_cost_keys() -> None:
    p = policy("{max_waiting: 8, max_kv_cache: 0.9}")
    s = p.providers["gpu"].saturation
    assert s is not None and (s.recover_waiting, s.recover_kv_cache) == (4, pytest.approx(0.8))
    text = POLICY.format(sat=", gpu_hour_usd: 2.05, gpus: 2")
    gpu = parse_policy(text, env={}).providers["gpu"]
    assert (gpu.gpu_hour_usd, gpu.gpus, gpu.saturation) == (2.05, 2, SaturationSettings.default_for(None))
    with pytest.raises(PolicyError, match="providers.gpu.gpus: expected a whole number"):
        parse_policy(POLICY.format(sat=", gpus: 1.5"), env={})
