"""Health- and load-aware routing over real sockets: simulator faults, vLLM /metrics, two replicas."""

from __future__ import annotations

import asyncio
import socket

import pytest

from router import Router
from router.core.errors import NoCandidate, UpstreamFailed
from router.core.policy_parser import parse_policy
from router.dev.simulator import Simulator
from router.monitor.monitor import Monitor

POLICY = """
version: 1
providers:
  gpu: {{kind: vllm, base_url: "{gpu_base}", metrics_url: "{gpu_metrics}", region: eu, {gpu_extra}
        health: {{failure_threshold: 2, open_s: 30, half_open_probes: 1}}}}
  mi:  {{kind: mistral, base_url: "{mi_base}", api_key: "k", region: eu,
        health: {{failure_threshold: 1, open_s: 30}}}}
  ds:  {{kind: deepseek, base_url: "{ds_base}", api_key: "k", region: cn}}
  fast: {{kind: openai, base_url: "{fast_base}", api_key: "k", region: us}}
models:
  qwen:  {{provider: gpu, model: Qwen/Qwen3.5, price: {{input_per_mtok: 0.05, output_per_mtok: 0.05}}}}
  large: {{provider: mi, model: mistral-large-latest, price: {{input_per_mtok: 0.5, output_per_mtok: 1.5}}}}
  ds:    {{provider: ds, model: deepseek-chat, price: {{input_per_mtok: 0.28, output_per_mtok: 0.42}}}}
  quick: {{provider: fast, model: gpt-4.1-mini, price: {{input_per_mtok: 0.4, output_per_mtok: 1.6}}}}
routes:
  general: {{targets: [qwen, ds]}}
  eu:      {{targets: [qwen, large, ds]}}
  speed:   {{targets: [ds, quick], strategy: fastest}}
rules:
  - {{if: {{residency: eu}}, route: eu}}
  - {{route: general}}
residency:
  eu: [eu]
retry: {{attempts: 1}}
timeouts: {{connect_s: 1, first_token_s: 2, total_s: 5, attempt_s: 2}}
"""

SAT = ("max_concurrency: {mc}, saturation: {{max_waiting: 5, recover_waiting: 1, max_kv_cache: 0.9, "
       "scrape_interval_s: 0.02, stale_after_s: 5}},")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def sims():
    s = {"gpu": Simulator(models=["Qwen/Qwen3.5"]), "mi": Simulator(models=["mistral-large-latest"]),
         "ds": Simulator(models=["deepseek-chat"]), "fast": Simulator(models=["gpt-4.1-mini"])}
    for sim in s.values():
        await sim.start()
    yield s
    for sim in s.values():
        await sim.stop()


def make_policy(sims, gpu_extra: str = "", mc: int = 100):
    text = POLICY.format(gpu_base=sims["gpu"].base_url, gpu_metrics=sims["gpu"].metrics_url,
                         mi_base=sims["mi"].base_url, ds_base=sims["ds"].base_url, fast_base=sims["fast"].base_url,
                         gpu_extra=gpu_extra.format(mc=mc))
    return parse_policy(text, env={})


def msgs(text: str = "hello") -> list[dict]:
    return [{"role": "user", "content": text}]


def chat_count(sim: Simulator) -> int:
    return sum(1 for r in sim.requests if r.path.endswith("/chat/completions"))


async def wait_for(predicate, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def scraped(monitor: Monitor, n: int = 2) -> None:
    """Wait for `n` more completed scrapes of the gpu provider."""
    for _ in range(n):
        before = monitor.load.scrapes.get("gpu", 0)
        await wait_for(lambda b=before: monitor.load.scrapes.get("gpu", 0) > b)


async def test_circuit_opens_skips_and_closes(sims) -> None:
    clock = Clock()
    policy = make_policy(sims)
    monitor = Monitor(policy, clock=clock)
    async with Router(policy, monitor=monitor) as r:
        sims["gpu"].set_down("Qwen/Qwen3.5")
        for _ in range(2):
            resp = await r.acomplete(msgs())
            assert resp.router.model == "ds"
            assert [a.outcome for a in resp.router.attempts] == ["http_503", "ok"]
        assert monitor.states()["gpu", "qwen"] == 2
        before = chat_count(sims["gpu"])
        resp = await r.acomplete(msgs())
        assert resp.router.model == "ds" and [a.model for a in resp.router.attempts] == ["ds"]
        assert chat_count(sims["gpu"]) == before                # not even tried
        excluded = {c.model: c.excluded for c in r.explain(msgs()).candidates}
        assert excluded == {"qwen": "circuit_open", "ds": None}

        sims["gpu"].set_down("Qwen/Qwen3.5", down=False)
        clock.t += 30                                            # half-open: one probe request
        assert monitor.states()["gpu", "qwen"] == 1
        resp = await r.acomplete(msgs())
        assert resp.router.model == "qwen"
        assert monitor.states()["gpu", "qwen"] == 0
        assert (await r.acomplete(msgs())).router.model == "qwen"


async def test_half_open_failure_reopens_over_sockets(sims) -> None:
    clock = Clock()
    policy = make_policy(sims)
    monitor = Monitor(policy, clock=clock)
    async with Router(policy, monitor=monitor) as r:
        sims["gpu"].set_fault("drop")
        for _ in range(2):
            assert (await r.acomplete(msgs())).router.model == "ds"
        clock.t += 30
        resp = await r.acomplete(msgs())                       # the half-open probe fails again
        assert [(a.model, a.outcome) for a in resp.router.attempts][0][0] == "qwen"
        assert monitor.health.breakers["qwen"].opens == 2 and monitor.states()["gpu", "qwen"] == 2


async def test_saturated_deployment_is_skipped_and_recovers(sims) -> None:
    policy = make_policy(sims, SAT)
    async with Router(policy) as r:
        monitor = r.engine.monitor
        assert monitor is not None
        assert (await r.acomplete(msgs())).router.model == "qwen"   # starts the scraper
        sims["gpu"].set_load(waiting=20)
        await scraped(monitor)
        resp = await r.acomplete(msgs())
        assert resp.router.model == "ds"
        assert {c.model: c.excluded for c in r.explain(msgs()).candidates}["qwen"] == "saturated"
        assert monitor.states()["gpu", "qwen"] == 1

        sims["gpu"].set_load(waiting=3)                              # below enter, above leave: stays out
        await scraped(monitor)
        assert (await r.acomplete(msgs())).router.model == "ds"
        sims["gpu"].set_load(waiting=0, kv_cache=0.95)               # KV cache full: still out
        await scraped(monitor)
        assert (await r.acomplete(msgs())).router.model == "ds"
        sims["gpu"].set_load(kv_cache=0.5)
        await scraped(monitor)
        assert (await r.acomplete(msgs())).router.model == "qwen"


async def test_a_metrics_url_alone_spills_a_full_queue_to_the_api(sims) -> None:
    """No `saturation:` block: the documented defaults (more than max_concurrency / 8 waiting) apply."""
    policy = make_policy(sims, "max_concurrency: {mc},", mc=16)
    assert policy.providers["gpu"].saturation is not None and policy.providers["gpu"].saturation.max_waiting == 2
    async with Router(policy) as r:
        monitor = r.engine.monitor
        assert monitor is not None
        assert (await r.acomplete(msgs())).router.model == "qwen"   # starts the scraper
        sims["gpu"].set_load(waiting=3)
        await scraped(monitor, 1)
        assert (await r.acomplete(msgs())).router.model == "ds"
        sims["gpu"].set_load(waiting=0)
        await scraped(monitor, 1)
        assert (await r.acomplete(msgs())).router.model == "qwen"


async def test_failing_scrape_degrades_to_in_flight_counts(sims) -> None:
    with socket.socket() as sock:                                    # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/metrics"
    policy = parse_policy(POLICY.format(
        gpu_base=sims["gpu"].base_url, gpu_metrics=dead, mi_base=sims["mi"].base_url, ds_base=sims["ds"].base_url,
        fast_base=sims["fast"].base_url, gpu_extra=SAT.format(mc=1)), env={})
    sims["gpu"].configure_model("Qwen/Qwen3.5", latency_s=0.3)
    sims["gpu"].set_load(waiting=50)                                 # would saturate it, if it could be read
    async with Router(policy) as r:
        monitor = r.engine.monitor
        assert monitor is not None
        first = asyncio.create_task(r.acomplete(msgs()))
        await wait_for(lambda: "ConnectError" in monitor.load.errors.get("gpu", ""))
        await wait_for(lambda: monitor.health.provider_inflight.get("gpu") == 1)
        spilled = await r.acomplete(msgs())                          # max_concurrency 1 reached in this process
        assert (spilled.router.model, (await first).router.model) == ("ds", "qwen")
        assert (await r.acomplete(msgs())).router.model == "qwen"   # the slot is free again


async def test_residency_never_spills_outside_the_region(sims) -> None:
    clock = Clock()
    policy = make_policy(sims, SAT)
    monitor = Monitor(policy, clock=clock)
    async with Router(policy, monitor=monitor) as r:
        await r.acomplete(msgs(), residency="eu")
        sims["gpu"].set_load(waiting=20)
        await scraped(monitor)
        resp = await r.acomplete(msgs(), residency="eu")          # saturated gpu -> the other EU model
        assert (resp.router.model, resp.router.region) == ("large", "eu")
        sims["mi"].set_down()
        ds_before = chat_count(sims["ds"])
        with pytest.raises(UpstreamFailed) as e:                         # mistral fails, gpu saturated: no spill to cn
            await r.acomplete(msgs(), residency="eu")
        assert "large" in str(e.value)
        with pytest.raises(NoCandidate) as e2:                      # now its circuit is open too
            await r.acomplete(msgs(), residency="eu")
        reasons = {c.model: c.excluded for c in e2.value.decision.candidates}
        assert reasons == {"qwen": "saturated", "large": "circuit_open", "ds": "residency"}
        assert chat_count(sims["ds"]) == ds_before
        resp = await r.acomplete(msgs())                             # without residency, ds takes it
        assert resp.router.model == "ds"


async def test_two_replicas_share_vllm_load_but_not_in_flight_counts(sims) -> None:
    policy = make_policy(sims, SAT, mc=1)
    sims["gpu"].configure_model("Qwen/Qwen3.5", latency_s=0.4)
    async with Router(policy) as a, Router(policy) as b:
        ma, mb = a.engine.monitor, b.engine.monitor
        assert ma is not None and mb is not None and ma is not mb
        first = asyncio.create_task(a.acomplete(msgs()))            # replica A's slot on the gpu
        await wait_for(lambda: ma.health.provider_inflight.get("gpu") == 1)
        spilled = await a.acomplete(msgs())                          # A is at max_concurrency: spills
        other = await b.acomplete(msgs())                            # B counts only its own: gpu
        assert (spilled.router.model, other.router.model, (await first).router.model) == ("ds", "qwen", "qwen")

        sims["gpu"].set_load(waiting=30)                             # the shared truth: vLLM's own queue
        await scraped(ma)
        await scraped(mb)
        ra, rb = await asyncio.gather(a.acomplete(msgs()), b.acomplete(msgs()))
        assert (ra.router.model, rb.router.model) == ("ds", "ds")
        sims["gpu"].clear_load()
        await scraped(ma)
        await scraped(mb)
        ra, rb = await asyncio.gather(a.acomplete(msgs()), b.acomplete(msgs()))
        assert (ra.router.model, rb.router.model) == ("qwen", "qwen")


async def test_probe_marks_provider_down_before_users_hit_it(sims) -> None:
    text = POLICY.format(gpu_base=sims["gpu"].base_url, gpu_metrics=sims["gpu"].metrics_url,
                         mi_base=sims["mi"].base_url, ds_base=sims["ds"].base_url,
                         fast_base=sims["fast"].base_url, gpu_extra="").replace(
        "half_open_probes: 1}", f'half_open_probes: 1, probe: {{path: "{sims["gpu"].url}/health", interval_s: 0.02}}}}')
    policy = parse_policy(text, env={})
    async with Router(policy) as r:
        monitor = r.engine.monitor
        assert monitor is not None
        assert (await r.acomplete(msgs())).router.model == "qwen"
        sims["gpu"].set_down()
        await wait_for(lambda: "gpu" in monitor.health.probe_down)
        before = chat_count(sims["gpu"])
        resp = await r.acomplete(msgs())
        assert resp.router.model == "ds" and chat_count(sims["gpu"]) == before
        sims["gpu"].set_down(down=False)
        await wait_for(lambda: "gpu" not in monitor.health.probe_down)
        assert (await r.acomplete(msgs())).router.model == "qwen"


async def test_fastest_strategy_follows_the_ttft_estimate(sims) -> None:
    sims["ds"].configure_model("deepseek-chat", latency_s=0.15)
    async with Router(make_policy(sims)) as r:
        first = await r.acomplete(msgs(), model="speed")             # nothing measured: policy order
        second = await r.acomplete(msgs(), model="speed")            # quick unmeasured: tried to measure it
        third = await r.acomplete(msgs(), model="speed")
        assert [x.router.model for x in (first, second, third)] == ["ds", "quick", "quick"]
        assert [c.model for c in r.explain(msgs(), model="speed").candidates] == ["quick", "ds"]
