"""The library over real sockets: routing, retries, fallback, residency, streaming, metering."""

from __future__ import annotations

import asyncio
import time

import pytest

from router import Router
from router.core.errors import InvalidRequest, NoCandidate, UpstreamFailed
from router.core.meter import MemoryMeter
from router.core.policy_parser import parse_policy
from router.dev.simulator import MISTRAL_CHAT_FIELDS, ModelConfig, Simulator, count_prompt_tokens

PRICES = {"coder": (0.03, 0.03), "ds-chat": (0.28, 0.42), "ds-r1": (0.55, 2.19), "mini": (0.4, 1.6),
          "large": (0.5, 1.5)}

POLICY = """
version: 1
providers:
  gpu-eu:  {{kind: vllm, base_url: "{gpu}", region: eu}}
  ds:      {{kind: deepseek, base_url: "{ds}", api_key: "sk-ds-secret", region: cn}}
  oa:      {{kind: openai, base_url: "{oa}", api_key: "sk-oa-secret", region: us}}
  mi:      {{kind: mistral, base_url: "{mi}", api_key: "sk-mi-secret", region: eu}}
models:
  coder:   {{provider: gpu-eu, model: Qwen/Qwen3-Coder-Next, price: {{input_per_mtok: 0.03, output_per_mtok: 0.03}},
             capabilities: [tools]}}
  ds-chat: {{provider: ds, model: deepseek-chat, price: {{input_per_mtok: 0.28, output_per_mtok: 0.42}}, capabilities: [tools]}}
  ds-r1:   {{provider: ds, model: deepseek-reasoner, price: {{input_per_mtok: 0.55, output_per_mtok: 2.19}}}}
  mini:    {{provider: oa, model: gpt-4.1-mini, price: {{input_per_mtok: 0.4, output_per_mtok: 1.6}}, capabilities: [tools]}}
  large:   {{provider: mi, model: mistral-large-latest, price: {{input_per_mtok: 0.5, output_per_mtok: 1.5}},
             capabilities: [tools]}}
routes:
  coding:    {{targets: [coder, ds-chat, mini]}}
  reasoning: {{targets: [ds-r1, mini]}}
  general:   {{targets: [ds-chat, mini]}}
  eu:        {{targets: [large, coder]}}
rules:
  - {{if: {{residency: eu}}, route: eu}}
  - {{if: {{task: coding}}, route: coding}}
  - {{if: {{task: reasoning}}, route: reasoning}}
  - {{route: general}}
residency:
  eu: [eu]
retry: {{attempts: 2, backoff_s: 0.01, max_backoff_s: 0.05, retry_after_max_s: 1}}
timeouts: {{connect_s: 1, first_token_s: 1, total_s: 10, attempt_s: 0.5}}
"""


@pytest.fixture
async def sims():
    gpu = Simulator(models=["Qwen/Qwen3-Coder-Next"])
    ds = Simulator(models=[ModelConfig("deepseek-chat"), ModelConfig("deepseek-reasoner", reasoning=True)],
                   require_api_key="sk-ds-secret")
    oa = Simulator(models=["gpt-4.1-mini"], require_api_key="sk-oa-secret")
    mi = Simulator(models=["mistral-large-latest"], strict_fields=MISTRAL_CHAT_FIELDS, require_api_key="sk-mi-secret")
    all_ = {"gpu": gpu, "ds": ds, "oa": oa, "mi": mi}
    for s in all_.values():
        await s.start()
    yield all_
    for s in all_.values():
        await s.stop()


@pytest.fixture
async def rt(sims):
    meter = MemoryMeter()
    policy = parse_policy(POLICY.format(**{k: s.base_url for k, s in sims.items()}), env={})
    r = Router(policy, meters=[meter])
    r.meter = meter
    yield r
    await r.aclose()


def msgs(text: str = "hello there") -> list[dict]:
    return [{"role": "user", "content": text}]


def hand_cost(alias: str, prompt: int, completion: int) -> float:
    pin, pout = PRICES[alias]
    return (prompt * pin + completion * pout) / 1e6


async def test_json_completion_reads_like_openai_and_costs_tokens_times_price(rt, sims):
    resp = await rt.acomplete(msgs("Write a Rust function"), task="coding", max_tokens=10)
    assert resp.choices[0].message.content
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.to_dict()["object"] == "chat.completion"
    info = resp.router
    assert (info.task, info.task_source, info.route, info.provider, info.model) == (
        "coding", "hint", "coding", "gpu-eu", "coder")
    prompt = count_prompt_tokens(msgs("Write a Rust function"))
    assert resp.usage.prompt_tokens == prompt and resp.usage.completion_tokens == 10
    assert info.cost_usd == pytest.approx(hand_cost("coder", prompt, 10), rel=1e-12)
    assert [a.outcome for a in info.attempts] == ["ok"]
    assert sims["gpu"].requests[-1].body["model"] == "Qwen/Qwen3-Coder-Next"
    assert rt.meter.records[-1] is info and info.status == "ok"


async def test_each_task_goes_to_its_route(rt):
    for task, route, model in [("coding", "coding", "coder"), ("reasoning", "reasoning", "ds-r1"),
                               ("general", "general", "ds-chat")]:
        resp = await rt.acomplete(msgs(), task=task)
        assert (resp.router.route, resp.router.model) == (route, model)


@pytest.mark.parametrize("fault,outcome", [
    ("status:500", "http_500"), ("status:503", "http_503"), ("status:429", "http_429"),
    ("drop", "protocol_error"), ("malformed", "malformed"), ("hang", "timeout"), ("delay:2", "timeout"),
])
async def test_fallback_on_every_fault_kind(rt, sims, fault, outcome):
    sims["gpu"].set_fault(fault)
    resp = await rt.acomplete(msgs(), task="coding")
    outcomes = [(a.provider, a.outcome) for a in resp.router.attempts]
    assert outcomes == [("gpu-eu", outcome), ("gpu-eu", outcome), ("ds", "ok")]
    assert resp.router.model == "ds-chat"


async def test_retry_then_success_on_same_candidate(rt, sims):
    sims["gpu"].inject("status:502", times=1)
    resp = await rt.acomplete(msgs(), task="coding")
    assert [(a.provider, a.outcome) for a in resp.router.attempts] == [("gpu-eu", "http_502"), ("gpu-eu", "ok")]


async def test_retry_after_is_honoured(rt, sims):
    sims["gpu"].inject("status:429:retry-after=0.3", times=1)
    t0 = time.perf_counter()
    resp = await rt.acomplete(msgs(), task="coding")
    assert time.perf_counter() - t0 >= 0.3
    assert [a.outcome for a in resp.router.attempts] == ["http_429", "ok"]


async def test_retry_after_over_cap_moves_on(rt, sims):
    sims["gpu"].inject("status:429:retry-after=30", times=1)
    t0 = time.perf_counter()
    resp = await rt.acomplete(msgs(), task="coding")
    assert time.perf_counter() - t0 < 1
    assert [(a.provider, a.outcome) for a in resp.router.attempts] == [("gpu-eu", "http_429"), ("ds", "ok")]


async def test_auth_and_not_found_move_on_without_retry(rt, sims):
    sims["ds"].set_fault("status:401")
    resp = await rt.acomplete(msgs(), task="general")
    assert [(a.provider, a.outcome) for a in resp.router.attempts] == [("ds", "http_401"), ("oa", "ok")]


async def test_client_error_is_returned_not_retried(rt, sims):
    sims["gpu"].set_fault("status:400")
    with pytest.raises(InvalidRequest) as ei:
        await rt.acomplete(msgs(), task="coding")
    assert ei.value.status == 400
    assert len(sims["ds"].requests) == 0 and len(sims["gpu"].requests) == 1
    assert rt.meter.records[-1].status == "error"


async def test_all_fail_lists_attempts_without_secrets(rt, sims):
    for s in sims.values():
        s.set_fault("status:503")
    with pytest.raises(UpstreamFailed) as ei:
        await rt.acomplete(msgs(), task="general")
    err = ei.value
    assert err.status == 503
    assert "ds/ds-chat: http_503" in err.message and "oa/mini: http_503" in err.message
    assert "sk-" not in err.message and "127.0.0.1" not in err.message
    assert rt.meter.records[-1].status == "error"


@pytest.mark.parametrize("fault", ["status:500", "drop", "malformed", "hang", "status:401", "status:429"])
async def test_residency_holds_on_every_fault_path(rt, sims, fault):
    sims["mi"].set_fault(fault)
    sims["gpu"].set_fault(fault)
    with pytest.raises(UpstreamFailed):
        await rt.acomplete(msgs(), task="general", residency="eu")
    assert len(sims["ds"].requests) == 0 and len(sims["oa"].requests) == 0
    assert {a.provider for a in rt.meter.records[-1].attempts} <= {"mi", "gpu-eu"}


async def test_eu_request_falls_back_within_eu(rt, sims):
    sims["mi"].set_fault("status:500")
    resp = await rt.acomplete(msgs(), task="general", residency="eu")
    assert resp.router.route == "eu" and resp.router.provider == "gpu-eu"
    assert len(sims["ds"].requests) == len(sims["oa"].requests) == 0


async def test_mistral_quirks(rt, sims):
    resp = await rt.acomplete(msgs(), model="large", seed=7, user="u1", thinking={"type": "enabled"},
                              max_completion_tokens=5)
    assert resp.router.provider == "mi"
    sent = sims["mi"].requests[-1].body
    assert sent["random_seed"] == 7 and sent["max_tokens"] == 5
    assert "seed" not in sent and "user" not in sent and "thinking" not in sent


async def test_unknown_params_pass_through_elsewhere(rt, sims):
    await rt.acomplete(msgs(), model="ds-chat", thinking={"type": "enabled"}, reasoning_effort="high")
    sent = sims["ds"].requests[-1].body
    assert sent["thinking"] == {"type": "enabled"} and sent["reasoning_effort"] == "high"


async def test_deepseek_reasoning_content_survives_and_is_stripped_on_input(rt, sims):
    history = [{"role": "user", "content": "2+2?"},
               {"role": "assistant", "content": "4", "reasoning_content": "adding"},
               {"role": "user", "content": "and 3+3?"}]
    resp = await rt.acomplete(history, task="reasoning")
    assert resp.router.model == "ds-r1"
    assert resp.choices[0].message.reasoning_content
    assert all("reasoning_content" not in m for m in sims["ds"].requests[-1].body["messages"])


async def test_async_streaming(rt, sims):
    stream = await rt.acomplete(msgs("stream me"), task="coding", stream=True, max_tokens=6)
    parts = []
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        assert "usage" not in chunk  # the client did not ask for usage
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    assert parts
    info = stream.router
    assert info.status == "ok" and not info.usage_estimated
    prompt = count_prompt_tokens(msgs("stream me"))
    assert (info.prompt_tokens, info.completion_tokens) == (prompt, 6)
    assert info.cost_usd == pytest.approx(hand_cost("coder", prompt, 6))
    assert sims["gpu"].requests[-1].body["stream_options"] == {"include_usage": True}


async def test_streaming_include_usage_is_passed_on(rt):
    stream = await rt.acomplete(msgs(), task="coding", stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0


async def test_stream_fails_over_before_first_chunk(rt, sims):
    sims["gpu"].set_fault("drop-mid-stream:0")
    stream = await rt.acomplete(msgs(), task="coding", stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text and stream.router.provider == "ds"
    assert [a.outcome for a in stream.router.attempts][-1] == "ok"


async def test_stream_cut_after_first_chunk_errors_and_estimates(rt, sims):
    sims["gpu"].set_fault("drop-mid-stream:3")
    stream = await rt.acomplete(msgs(), task="coding", stream=True)
    got = 0
    with pytest.raises(UpstreamFailed):
        async for _ in stream:
            got += 1
    assert got == 3
    info = rt.meter.records[-1]
    assert info.status == "error" and info.usage_estimated and info.cost_usd > 0
    assert len(sims["ds"].requests) == 0  # no failover after the first chunk


async def test_abandoned_stream_is_cancelled_and_metered(rt, sims):
    sims["gpu"].configure_model("Qwen/Qwen3-Coder-Next", tokens_per_s=200, reply_tokens=400)
    stream = await rt.acomplete(msgs(), task="coding", stream=True)
    async for _ in stream:
        break
    await stream.aclose()
    info = rt.meter.records[-1]
    assert info.status == "cancelled" and info.completion_tokens >= 0 and info.usage_estimated
    for _ in range(50):
        if sims["gpu"].in_flight()[0] == 0:
            break
        await asyncio.sleep(0.02)
    assert sims["gpu"].in_flight()[0] == 0  # the upstream request was aborted


async def test_cancelled_json_request_is_metered(rt, sims):
    sims["gpu"].set_fault("hang")
    task = asyncio.create_task(rt.acomplete(msgs(), task="coding"))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rt.meter.records[-1].status == "cancelled"


async def test_sync_api_works_inside_a_running_loop(sims_thread):
    # As in Jupyter: a loop is running in this thread and the sync API is called anyway.
    # (The upstream runs in its own thread: this thread's loop is blocked by the sync call.)
    asyncio.get_running_loop()
    url = sims_thread.base_url
    r = Router(parse_policy(POLICY.format(gpu=url, ds=url, oa=url, mi=url), env={}))
    resp = r.complete(msgs(), task="coding")
    assert resp.router.model == "coder"
    chunks = list(r.complete(msgs(), task="coding", stream=True))
    assert chunks and chunks[0].object == "chat.completion.chunk"
    r.close()


def test_sync_api_without_a_loop(sims_thread):
    policy = parse_policy(POLICY.format(gpu=sims_thread.base_url, ds=sims_thread.base_url,
                                        oa=sims_thread.base_url, mi=sims_thread.base_url), env={})
    with Router(policy) as r:
        resp = r.complete(msgs(), model="coder", task="coding")
        assert resp.choices[0].message.content
        stream = r.complete(msgs(), model="coder", task="coding", stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert stream.router.status == "ok"


@pytest.fixture
def sims_thread():
    handle = Simulator(models=["Qwen/Qwen3-Coder-Next"]).start_in_thread()
    yield handle
    handle.stop()


async def test_deadline_bounds_the_whole_request(sims):
    text = POLICY.format(**{k: s.base_url for k, s in sims.items()}).replace(
        "total_s: 10, attempt_s: 0.5", "total_s: 0.4")
    r = Router(parse_policy(text, env={}))
    for s in sims.values():
        s.set_fault("hang")
    t0 = time.perf_counter()
    with pytest.raises(UpstreamFailed) as ei:
        await r.acomplete(msgs(), task="coding")
    assert time.perf_counter() - t0 < 1.5 and ei.value.status == 504
    await r.aclose()


async def test_a_stream_dropped_unread_is_metered_as_cancelled(rt, sims):
    import gc

    stream = await rt.acomplete(msgs(), task="coding", stream=True)
    rid = stream.router.request_id
    del stream
    gc.collect()
    await asyncio.sleep(0.01)
    assert [r.status for r in rt.meter.records if r.request_id == rid] == ["cancelled"]
    assert len(sims["gpu"].requests) == 0  # nothing was sent


def test_a_sync_stream_closed_unread_is_metered_once(sims_thread):
    url = sims_thread.base_url
    meter = MemoryMeter()
    with Router(parse_policy(POLICY.format(gpu=url, ds=url, oa=url, mi=url), env={}), meters=[meter]) as r:
        stream = r.complete(msgs(), task="coding", stream=True)
        stream.close()
        stream.close()
        dropped = r.complete(msgs(), task="coding", stream=True)
        rid = dropped.router.request_id
        del dropped
        import gc

        gc.collect()
        time.sleep(0.05)
    assert [m.status for m in meter.records] == ["cancelled", "cancelled"]
    assert meter.records[1].request_id == rid


async def test_embeddings_through_the_library(rt, sims):
    resp = await rt.aembed(["one", "two"], model="mini")
    assert len(resp.data) == 2 and resp.data[0].embedding
    info = resp.router
    assert (info.task, info.task_source, info.provider, info.model) == ("embedding", "alias", "oa", "mini")
    assert info.prompt_tokens > 0 and info.cost_usd == pytest.approx(hand_cost("mini", info.prompt_tokens, 0))
    assert sims["oa"].requests[-1].body == {"model": "gpt-4.1-mini", "input": ["one", "two"]}
    with pytest.raises(NoCandidate) as ei:  # residency holds for embeddings too
        await rt.aembed("x", model="mini", residency="eu")
    assert ei.value.status == 403 and len(sims["oa"].requests) == 1
    assert rt.meter.records[-1].status == "error"
