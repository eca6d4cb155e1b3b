"""Circuit breakers, in-flight counts and TTFT estimates (pure, fake clock), and active probes (respx)."""

from __future__ import annotations

import httpx
import pytest
import respx

from router.core.errors import PolicyError
from router.core.policy import HealthSettings
from router.core.policy_parser import parse_policy
from router.monitor.health import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
    HealthTracker,
    is_failure,
)
from router.monitor.probes import Prober, probe_url

POLICY = """
version: 1
providers:
  gpu: {{kind: vllm, base_url: "http://gpu.test/v1", region: eu, max_concurrency: 2 {health}}}
  api: {{kind: openai, base_url: "http://api.test/v1", api_key: "sk-x", region: us}}
models:
  qwen: {{provider: gpu, model: qwen, price: {{input_per_mtok: 0.1, output_per_mtok: 0.1}}}}
  qwen-b: {{provider: gpu, model: qwen-b, price: {{input_per_mtok: 0.1, output_per_mtok: 0.1}}}}
  mini: {{provider: api, model: gpt-4.1-mini, price: {{input_per_mtok: 0.4, output_per_mtok: 1.6}}}}
routes:
  general: {{targets: [qwen, mini]}}
rules:
  - {{route: general}}
"""


def policy(health: str = ""):
    return parse_policy(POLICY.format(health=(", health: " + health) if health else ""), env={})


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_outcome_classes() -> None:
    assert is_failure("ok") is False
    for bad in ("connect_error", "timeout", "protocol_error", "malformed", "http_500", "http_503"):
        assert is_failure(bad) is True, bad
    for neutral in ("http_400", "http_429", "cancelled", "http_x"):
        assert is_failure(neutral) is None, neutral


def test_consecutive_failures_open_then_half_open_then_close() -> None:
    b = CircuitBreaker(HealthSettings(failure_threshold=3, open_s=10, half_open_probes=2))
    assert not b.record(True, 0) and not b.record(True, 1)
    assert b.state == CLOSED
    assert b.record(True, 2) and b.state == OPEN and b.opens == 1
    assert not b.allows(0)
    assert not b.record(False, 5) and b.state == OPEN      # a late success while open is ignored
    assert not b.poll(11.9) and b.poll(12) and b.state == HALF_OPEN
    assert b.allows(1) and not b.allows(2)                 # two probes at once, not three
    assert not b.record(False, 13) and b.state == HALF_OPEN
    assert b.record(False, 14) and b.state == CLOSED


def test_half_open_failure_reopens() -> None:
    b = CircuitBreaker(HealthSettings(failure_threshold=1, open_s=5))
    b.record(True, 0)
    b.poll(5)
    assert b.state == HALF_OPEN
    assert b.record(True, 6) and b.state == OPEN and b.opens == 2
    assert b.reopens_at == 11


def test_success_resets_the_consecutive_count() -> None:
    b = CircuitBreaker(HealthSettings(failure_threshold=3, min_requests=100))
    for t in range(20):
        b.record(t % 3 == 0 or t % 3 == 1, t)  # fail, fail, ok, ...
    assert b.state == CLOSED


def test_failure_rate_over_the_window() -> None:
    b = CircuitBreaker(HealthSettings(failure_threshold=100, min_requests=10, failure_rate=0.5, window_s=10))
    for i in range(9):
        b.record(i % 2 == 0, i * 0.1)          # 5 failures of 9: below min_requests
    assert b.state == CLOSED
    assert b.record(True, 1.0) and b.state == OPEN  # 6 of 10


def test_old_outcomes_leave_the_window() -> None:
    b = CircuitBreaker(HealthSettings(failure_threshold=100, min_requests=4, failure_rate=0.5, window_s=10))
    for t in (0, 1, 2):
        b.record(True, t)
    for t in (20, 21, 22):
        b.record(False, t)                      # the failures at 0..2 are out of the window
    b.record(True, 23)                          # 1 of 4
    assert b.state == CLOSED


def test_tracker_excludes_open_circuits_and_reopens_on_the_clock() -> None:
    clock = Clock()
    t = HealthTracker(policy("{failure_threshold: 2, open_s: 30}"), clock=clock)
    first = t.circuit_open()
    assert first == frozenset() and t.circuit_open() is first   # cached
    t.record("qwen", "http_503")
    assert t.circuit_open() == frozenset()
    t.record("qwen", "timeout")
    assert t.circuit_open() == {"qwen"}
    assert t.states()["gpu", "qwen"] == 2 and t.states()["gpu", "qwen-b"] == 0
    clock.t += 30
    assert t.circuit_open() == frozenset()       # half-open: one probe may go
    assert t.states()["gpu", "qwen"] == 1
    t.begin("qwen")
    assert t.circuit_open() == {"qwen"}          # the probe slot is taken
    t.end("qwen")
    t.record("qwen", "ok", 0.2)
    assert t.circuit_open() == frozenset() and t.states()["gpu", "qwen"] == 0


def test_an_open_circuit_half_opens_even_if_never_read_while_open() -> None:
    clock = Clock()
    t = HealthTracker(policy("{failure_threshold: 1, open_s: 5}"), clock=clock)
    t.record("qwen", "timeout")
    clock.t += 5
    assert t.circuit_open() == frozenset()


def test_tracker_ignores_neutral_outcomes_and_unknown_aliases() -> None:
    t = HealthTracker(policy("{failure_threshold: 1}"), clock=Clock())
    t.record("qwen", "http_429")
    t.record("qwen", "http_400")
    t.record("nope", "timeout")
    assert t.circuit_open() == frozenset()


def test_in_flight_against_max_concurrency() -> None:
    t = HealthTracker(policy(), clock=Clock())
    t.begin("qwen")
    assert t.over_capacity() == frozenset()
    t.begin("qwen-b")                             # the provider's max_concurrency is 2
    assert t.over_capacity() == {"qwen", "qwen-b"}
    assert t.inflight == {"qwen": 1, "qwen-b": 1} and t.provider_inflight["gpu"] == 2
    t.end("qwen")
    assert t.over_capacity() == frozenset()
    t.end("qwen")
    t.end("qwen")                                 # never below zero
    assert t.inflight["qwen"] == 0


def test_ttft_ewma() -> None:
    t = HealthTracker(policy(), clock=Clock(), ttft_alpha=0.5)
    t.record("qwen", "ok", 1.0)
    assert t.ttft["qwen"] == 1.0
    t.record("qwen", "ok", 3.0)
    assert t.ttft["qwen"] == 2.0
    t.record("qwen", "timeout", 30.0)            # failures do not feed the estimate
    assert t.ttft["qwen"] == 2.0


def test_reload_keeps_breakers_whose_settings_did_not_change() -> None:
    clock = Clock()
    t = HealthTracker(policy("{failure_threshold: 1}"), clock=clock)
    t.record("qwen", "timeout")
    t.use(policy("{failure_threshold: 1}"))
    assert t.circuit_open() == {"qwen"}
    t.use(policy("{failure_threshold: 2}"))
    assert t.circuit_open() == frozenset()


def test_health_keys_are_strict() -> None:
    with pytest.raises(PolicyError) as e:
        policy("{failure_treshold: 2, failure_rate: 2, probe: {path: /health, intervl_s: 1}}")
    text = str(e.value)
    assert "providers.gpu.health.failure_treshold" in text and "did you mean 'failure_threshold'" in text
    assert "providers.gpu.health.failure_rate" in text
    assert "providers.gpu.health.probe.intervl_s" in text


def test_defaults_keep_existing_policies() -> None:
    p = policy()
    assert p.providers["gpu"].health == HealthSettings() and p.providers["gpu"].health.probe is None


# ---------------------------------------------------------------- active probes (respx)

@respx.mock
async def test_probe_marks_a_provider_down_and_up() -> None:
    p = policy("{probe: {path: /health, interval_s: 1, timeout_s: 0.5}}")
    gpu = p.providers["gpu"]
    assert probe_url(gpu) == "http://gpu.test/v1/health"
    route = respx.get("http://gpu.test/v1/health")
    t = HealthTracker(p, clock=Clock())
    async with httpx.AsyncClient() as client:
        prober = Prober(t, client)
        route.mock(return_value=httpx.Response(503))
        assert not await prober.probe(gpu)
        assert t.circuit_open() == {"qwen", "qwen-b"}
        assert t.states()["gpu", "qwen"] == 2
        route.mock(side_effect=httpx.ConnectError("refused"))
        assert not await prober.probe(gpu)
        route.mock(return_value=httpx.Response(200, json={"status": "ok"}))
        assert await prober.probe(gpu)
        assert t.circuit_open() == frozenset()


@respx.mock
async def test_probe_sends_the_api_key_and_full_urls_are_used_as_is() -> None:
    text = POLICY.format(health="").replace(
        'region: us}', 'region: us, health: {probe: {path: "http://status.test/ok"}}}')
    p = parse_policy(text, env={})
    route = respx.get("http://status.test/ok").mock(return_value=httpx.Response(204))
    t = HealthTracker(p, clock=Clock())
    prober = Prober(t)
    assert await prober.probe(p.providers["api"])
    assert route.calls.last.request.headers["authorization"] == "Bearer sk-x"
    await prober.aclose()


@respx.mock
async def test_probe_loop_runs_on_its_interval() -> None:
    p = policy("{probe: {interval_s: 7}}")
    respx.get("http://gpu.test/v1/models").mock(return_value=httpx.Response(500))
    t = HealthTracker(p, clock=Clock())
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)
        if len(waits) == 2:
            raise RuntimeError("stop")

    prober = Prober(t)
    with pytest.raises(RuntimeError):
        await prober.run(p.providers["gpu"], sleep=sleep)
    assert waits == [7, 7] and "gpu" in t.probe_down
    await prober.aclose()
