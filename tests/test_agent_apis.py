"""Anthropic Messages and OpenAI Responses through the proxy, over real sockets, with the official
`anthropic` and `openai` SDKs and `openai-agents` as clients and simulators upstream.

Each test checks what the client sees and what the engine did: the route, the provider, the
attempts (RouterInfo), that every request is metered exactly once, and that upstreams outside a
tenant's residency never see a byte.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import aiohttp
import anthropic
import openai
import pytest
from aiohttp import web

from router.core.meter import MemoryMeter
from router.core.policy import hash_key
from router.core.policy_parser import parse_policy
from router.dev.simulator import ModelConfig, Simulator
from router.engine.engine import Engine
from router.metering.budget import InProcessBudget
from router.metering.ledger import LedgerMeter, open_ledger
from router.server.proxy import Proxy, ProxyOptions
from router.transport.aiohttp_client import AiohttpTransport

DEV_KEY, ACME_KEY, BROKE_KEY = "sk-dev-1", "sk-acme-eu-2", "sk-broke-3"

POLICY = """
version: 1
providers:
  gpu-eu: {{kind: vllm, base_url: "{gpu}", region: eu}}
  ds:     {{kind: deepseek, base_url: "{ds}", api_key: "sk-ds-secret", region: cn}}
  oa:     {{kind: openai, base_url: "{oa}", api_key: "sk-oa-secret", region: us}}
models:
  coder:   {{provider: gpu-eu, model: Qwen/Qwen3-Coder-Next, price: {{input_per_mtok: 0.03, output_per_mtok: 0.03}},
             capabilities: [tools]}}
  ds-chat: {{provider: ds, model: deepseek-chat, price: {{input_per_mtok: 0.28, output_per_mtok: 0.42}},
             capabilities: [tools]}}
  ds-r1:   {{provider: ds, model: deepseek-reasoner, price: {{input_per_mtok: 0.28, output_per_mtok: 0.42}},
             capabilities: [reasoning]}}
  mini:    {{provider: oa, model: gpt-4.1-mini, price: {{input_per_mtok: 0.4, output_per_mtok: 1.6}},
             capabilities: [tools]}}
routes:
  coding:    {{targets: [coder, ds-chat, mini]}}
  cheap:     {{targets: [ds-chat, mini]}}
  reasoning: {{targets: [ds-r1]}}
client_models:
  claude-haiku-*: cheap        # Claude Code's small fast model: background work
  claude-*: auto               # its main model: the rules decide
  gpt-*: auto                  # the Agents SDK's default model
  o4-mini: reasoning
rules:
  - {{if: {{api: [messages, responses], tools: true}}, route: coding}}   # agent sessions
  - {{route: cheap}}
residency:
  eu: [eu]
retry: {{attempts: 2, backoff_s: 0.01, max_backoff_s: 0.02, retry_after_max_s: 1}}
timeouts: {{connect_s: 1, first_token_s: 2, total_s: 5, attempt_s: 1}}
tenants:
  dev:   {{keys: ["{dev}"]}}
  acme:  {{keys: ["{acme}"], residency: eu}}
  broke: {{keys: ["{broke}"], budget: {{daily_usd: 0.0000001}}}}
"""

WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
WEATHER_FN = {"type": "function", "name": "get_weather", "description": "The weather in a city",
              "parameters": WEATHER["input_schema"]}
CALL = 'CALL_TOOL:get_weather {"city": "Paris"}'


@pytest.fixture
async def sims():
    gpu = Simulator(models=["Qwen/Qwen3-Coder-Next"])
    ds = Simulator(models=[ModelConfig("deepseek-chat"), ModelConfig("deepseek-reasoner", reasoning=True)],
                   require_api_key="sk-ds-secret")
    oa = Simulator(models=["gpt-4.1-mini"], require_api_key="sk-oa-secret")
    all_ = {"gpu": gpu, "ds": ds, "oa": oa}
    for s in all_.values():
        await s.start()
    yield all_
    for s in all_.values():
        await s.stop()


@pytest.fixture
async def px(sims, tmp_path):
    keys = {"dev": hash_key(DEV_KEY), "acme": hash_key(ACME_KEY), "broke": hash_key(BROKE_KEY)}
    policy = parse_policy(POLICY.format(**{k: s.base_url for k, s in sims.items()}, **keys), env={})
    meter = MemoryMeter()
    ledger = LedgerMeter(open_ledger(tmp_path / "ledger.db"), flush_interval_s=0.01)
    engine = Engine(policy, AiohttpTransport(), [meter, ledger], budget=InProcessBudget())
    proxy = Proxy(engine, ProxyOptions(keepalive_s=0.2))
    runner = web.ServerRunner(proxy.server(), handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    p = SimpleNamespace(url=f"http://127.0.0.1:{runner.addresses[0][1]}", meter=meter, ledger=ledger, engine=engine)
    yield p
    await runner.cleanup()
    await engine.transport.aclose()
    await ledger.aclose()


def claude(p, key: str = DEV_KEY, **kw) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=p.url, api_key=key, **{"max_retries": 0, **kw})


def oai(p, key: str = DEV_KEY, **kw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=p.url + "/v1", api_key=key, **{"max_retries": 0, **kw})


def once_each(p, n: int) -> None:
    """`n` requests made, `n` records: each request metered exactly once."""
    records = p.meter.records
    assert len(records) == n, [(r.request_id, r.status) for r in records]
    assert len({r.request_id for r in records}) == n


# ---------------------------------------------------------------------------- Anthropic Messages

async def test_messages_plain_json(px, sims):
    async with claude(px) as client:
        raw = await client.messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=64, system="Be brief.",
            messages=[{"role": "user", "content": "hello there"}])
        msg = await raw.parse()
    assert msg.type == "message" and msg.role == "assistant" and msg.model == "claude-haiku-4-5"
    assert msg.content[0].type == "text" and msg.content[0].text.startswith("The quick brown fox")
    assert msg.stop_reason == "end_turn" and msg.usage.output_tokens == 16 and msg.usage.input_tokens > 0
    info = px.meter.records[-1]
    assert (info.api, info.route, info.provider, info.status) == ("messages", "cheap", "ds", "ok")
    assert raw.headers["x-router-route"] == "cheap" and raw.headers["x-request-id"] == info.request_id
    sent = sims["ds"].requests[-1].body
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."} and sent["max_tokens"] == 64
    assert msg.usage.input_tokens == info.prompt_tokens and msg.usage.output_tokens == info.completion_tokens
    once_each(px, 1)


async def test_messages_streaming_text(px, sims):
    async with claude(px) as client, client.messages.stream(
            model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "hello"}]) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.content[0].text == "The quick brown fox jumps" and final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 5
    assert px.meter.records[-1].api == "messages"
    once_each(px, 1)


@pytest.mark.parametrize("stream", [False, True])
async def test_messages_tool_use_round_trip(px, sims, stream):
    """Claude Code's loop: tool_use, then a tool_result, then the final answer, on the coding route."""
    async with claude(px) as client:
        first_req = {"model": "claude-sonnet-4-5", "max_tokens": 256, "tools": [WEATHER],
                     "messages": [{"role": "user", "content": CALL}]}
        if stream:
            async with client.messages.stream(**first_req) as s:
                deltas = [e.delta.type async for e in s if e.type == "content_block_delta"]
                first = await s.get_final_message()
            assert "input_json_delta" in deltas
        else:
            first = await client.messages.create(**first_req)
        assert first.stop_reason == "tool_use"
        use = next(b for b in first.content if b.type == "tool_use")
        assert (use.name, use.input) == ("get_weather", {"city": "Paris"})
        second = await client.messages.create(
            model="claude-sonnet-4-5", max_tokens=256, tools=[WEATHER],
            messages=[{"role": "user", "content": CALL},
                      {"role": "assistant", "content": [b.model_dump() for b in first.content]},
                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                    "content": "sunny, 24 C"}]}])
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"
    sent = sims["gpu"].requests[-1].body  # the simulator checks tool turns as OpenAI does
    assert sent["messages"][-1] == {"role": "tool", "tool_call_id": use.id, "content": "sunny, 24 C"}
    assert sent["messages"][-2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert [(r.api, r.route, r.provider) for r in px.meter.records] == [("messages", "coding", "gpu-eu")] * 2
    once_each(px, 2)


@pytest.mark.parametrize("stream", [False, True])
async def test_messages_thinking_from_a_reasoning_model(px, sims, stream):
    async with claude(px) as client:
        body = {"model": "ds-r1", "max_tokens": 64, "messages": [{"role": "user", "content": "Prove it"}],
                "thinking": {"type": "enabled", "budget_tokens": 2048}}
        if stream:
            async with client.messages.stream(**body) as s:
                deltas = [e.delta.type async for e in s if e.type == "content_block_delta"]
                msg = await s.get_final_message()
            assert "thinking_delta" in deltas
        else:
            msg = await client.messages.create(**body)
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == "Let me think about this step by step."
    assert sims["ds"].requests[-1].body["reasoning_effort"] == "low"
    assert px.meter.records[-1].reasoning_tokens == 8


async def test_messages_errors_in_anthropics_shape(px, sims):
    async with claude(px, key="sk-wrong") as bad:
        with pytest.raises(anthropic.AuthenticationError) as e:
            await bad.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 401 and e.value.body["error"]["type"] == "authentication_error"
    async with claude(px) as client:
        with pytest.raises(anthropic.NotFoundError) as e:
            await client.messages.create(model="llama-unknown", max_tokens=8, messages=[{"role": "user", "content": "x"}])
        assert "claude-haiku-*" in e.value.body["error"]["message"]  # lists the names that work
        with pytest.raises(anthropic.BadRequestError) as e:
            await client.messages.create(model="claude-x", max_tokens=8,
                                         messages=[{"role": "user", "content": "x"}],
                                         tools=[{"type": "web_search_20250305", "name": "web_search"}])
        assert e.value.body["error"]["message"].startswith("tools.0.type: 'web_search_20250305'")
    async with claude(px, key=BROKE_KEY, max_retries=2) as broke:  # SDK retries on: the 429 must stop them
        with pytest.raises(anthropic.RateLimitError) as e:
            await broke.messages.create(model="claude-haiku-4-5", max_tokens=8,
                                        messages=[{"role": "user", "content": "x"}])
    assert e.value.response.headers["x-should-retry"] == "false"
    assert not sims["ds"].requests and not sims["oa"].requests
    once_each(px, 4)
    assert [r.status for r in px.meter.records] == ["error"] * 4
    assert {r.api for r in px.meter.records} == {"messages"}


async def test_messages_every_candidate_down_is_overloaded_with_router_headers(px, sims):
    for s in sims.values():
        s.set_down()
    async with claude(px) as client:
        with pytest.raises(anthropic.APIStatusError) as e:
            await client.messages.create(model="claude-haiku-4-5", max_tokens=8,
                                         messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 529 and e.value.body["error"]["type"] == "overloaded_error"
    h = e.value.response.headers
    assert h["x-router-task"] and h["x-router-route"] == "cheap" and int(h["x-router-attempts"]) == 4
    once_each(px, 1)


async def test_eu_tenant_never_reaches_a_non_eu_provider(px, sims):
    """acme is EU-resident: its coding traffic stays on gpu-eu; when gpu-eu is down it fails rather than
    leave the EU, and a route with no EU target is a 403. Over both APIs, checked on the upstreams."""
    async with claude(px, key=ACME_KEY) as c, oai(px, key=ACME_KEY) as o:
        msg = await c.messages.create(model="claude-sonnet-4-5", max_tokens=16, tools=[WEATHER],
                                      messages=[{"role": "user", "content": "hi"}])
        resp = await o.responses.create(model="gpt-5", input="hi", tools=[WEATHER_FN])
        assert msg.content and resp.output_text
        with pytest.raises(anthropic.PermissionDeniedError):  # cheap = ds + mini: nowhere in the EU
            await c.messages.create(model="claude-haiku-4-5", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.PermissionDeniedError):
            await o.responses.create(model="gpt-5", input="hi")  # no tools: the cheap route
        sims["gpu"].set_down()
        with pytest.raises(anthropic.APIStatusError) as e:
            await c.messages.create(model="claude-sonnet-4-5", max_tokens=16, tools=[WEATHER],
                                    messages=[{"role": "user", "content": "hi"}])
        assert e.value.status_code == 529
        with pytest.raises(openai.APIStatusError) as e2:
            await o.responses.create(model="gpt-5", input="hi", tools=[WEATHER_FN], stream=False)
        assert e2.value.status_code == 503
    assert not sims["ds"].requests and not sims["oa"].requests
    records = px.meter.records
    assert {r.tenant for r in records} == {"acme"} and {r.api for r in records} == {"messages", "responses"}
    assert {a.provider for r in records for a in r.attempts} == {"gpu-eu"}
    assert {r.region for r in records if r.provider} == {"eu"}
    once_each(px, 6)


async def test_x_api_key_and_bearer_both_identify_the_tenant_and_count_tokens(px, sims):
    async with anthropic.AsyncAnthropic(base_url=px.url, auth_token=ACME_KEY, max_retries=0) as bearer:
        await bearer.messages.create(model="claude-sonnet-4-5", max_tokens=8, tools=[WEATHER],
                                     messages=[{"role": "user", "content": "x"}])
        counted = await bearer.messages.count_tokens(model="claude-sonnet-4-5", tools=[WEATHER],
                                                     messages=[{"role": "user", "content": "hello world"}])
    assert px.meter.records[-1].tenant == "acme"
    assert counted.input_tokens > 10  # the tools' schema counts
    async with claude(px, key=ACME_KEY) as c:
        await c.messages.create(model="claude-sonnet-4-5", max_tokens=8, tools=[WEATHER],
                                messages=[{"role": "user", "content": "x"}])
        with pytest.raises(anthropic.AuthenticationError):
            async with claude(px, key="nope") as bad:
                await bad.messages.count_tokens(model="m", messages=[{"role": "user", "content": "x"}])
    assert [r.tenant for r in px.meter.records] == ["acme", "acme"]  # count_tokens is no request upstream


# ---------------------------------------------------------------------------- OpenAI Responses

async def test_responses_plain_and_streaming(px, sims):
    async with oai(px) as client:
        raw = await client.responses.with_raw_response.create(model="gpt-5", instructions="Be brief.", input="hello")
        resp = raw.parse()
        assert resp.status == "completed" and resp.output_text.startswith("The quick brown fox")
        assert resp.model == "gpt-5" and resp.usage.output_tokens == 16 and resp.id.startswith("resp_")
        assert raw.headers["x-router-route"] == "cheap"
        async with client.responses.stream(model="gpt-5", input="hello", max_output_tokens=4) as stream:
            events = [e async for e in stream]
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.incomplete"
    assert "response.output_text.delta" in kinds
    final = events[-1].response  # as OpenAI does, a response cut by max_output_tokens ends "incomplete"
    assert final.output_text == "The quick brown fox" and final.incomplete_details.reason == "max_output_tokens"
    assert [r.api for r in px.meter.records] == ["responses", "responses"]
    assert sims["ds"].requests[0].body["messages"][0] == {"role": "system", "content": "Be brief."}
    once_each(px, 2)


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_function_call_round_trip(px, sims, stream):
    async with oai(px) as client:
        if stream:
            async with client.responses.stream(model="gpt-5", input=CALL, tools=[WEATHER_FN]) as s:
                kinds = [e.type async for e in s]
                first = await s.get_final_response()
            assert "response.function_call_arguments.delta" in kinds
        else:
            first = await client.responses.create(model="gpt-5", input=CALL, tools=[WEATHER_FN])
        call = next(i for i in first.output if i.type == "function_call")
        assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
        second = await client.responses.create(
            model="gpt-5", tools=[WEATHER_FN],
            input=[{"role": "user", "content": CALL}, *[i.model_dump(exclude_none=True) for i in first.output],
                   {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert second.status == "completed" and second.output_text
    sent = sims["gpu"].requests[-1].body
    assert sent["messages"][-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}
    assert [(r.api, r.route) for r in px.meter.records] == [("responses", "coding")] * 2
    once_each(px, 2)


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_reasoning_summary(px, sims, stream):
    async with oai(px) as client:
        if stream:
            async with client.responses.stream(model="o4-mini", input="Prove it",
                                               reasoning={"effort": "high", "summary": "auto"}) as s:
                kinds = [e.type async for e in s]
                resp = await s.get_final_response()
            assert "response.reasoning_summary_text.delta" in kinds
        else:
            resp = await client.responses.create(model="o4-mini", input="Prove it",
                                                 reasoning={"effort": "high", "summary": "auto"})
    assert [i.type for i in resp.output] == ["reasoning", "message"]
    assert resp.output[0].summary[0].text.startswith("Let me think")
    assert resp.usage.output_tokens_details.reasoning_tokens == 8
    assert sims["ds"].requests[-1].body["reasoning_effort"] == "high"


async def test_responses_errors(px, sims):
    async with oai(px, key="bad") as bad:
        with pytest.raises(openai.AuthenticationError):
            await bad.responses.create(model="gpt-5", input="x")
    async with oai(px) as client:
        with pytest.raises(openai.BadRequestError) as e:
            await client.responses.create(model="gpt-5", input="x", previous_response_id="resp_123")
        assert e.value.body["param"] == "previous_response_id" and "whole conversation" in e.value.body["message"]
        with pytest.raises(openai.BadRequestError) as e:
            await client.responses.create(model="gpt-5", input="x", tools=[{"type": "web_search"}])
        assert "web_search" in e.value.body["message"]
        with pytest.raises(openai.NotFoundError):
            await client.responses.create(model="llama-unknown", input="x")
    async with oai(px, key=BROKE_KEY, max_retries=2) as broke:
        with pytest.raises(openai.RateLimitError):
            await broke.responses.create(model="gpt-5", input="x")
    for s in sims.values():
        s.set_down()
    async with oai(px) as client:
        with pytest.raises(openai.APIStatusError) as e:
            await client.responses.create(model="gpt-5", input="x")
    assert e.value.status_code == 503 and e.value.response.headers["x-router-route"] == "cheap"
    once_each(px, 6)
    assert {r.api for r in px.meter.records} == {"responses"}


async def test_responses_stream_failure_mid_stream_ends_with_response_failed(px, sims):
    sims["ds"].set_fault("drop-mid-stream:3")
    sims["oa"].set_fault("drop-mid-stream:3")
    async with aiohttp.ClientSession() as http, http.post(
            px.url + "/v1/responses", json={"model": "gpt-5", "input": "hello", "stream": True},
            headers={"Authorization": f"Bearer {DEV_KEY}"}) as r:
        raw = (await r.read()).decode()
    assert r.status == 200
    kinds = [line[7:] for line in raw.split("\n") if line.startswith("event: ")]
    assert kinds[0] == "response.created" and kinds[-1] == "response.failed"
    assert px.meter.records[-1].status == "error"
    once_each(px, 1)


async def test_messages_stream_failure_mid_stream_ends_with_an_error_event(px, sims):
    sims["ds"].set_fault("drop-mid-stream:3")
    async with claude(px) as client:
        with pytest.raises(anthropic.APIStatusError):
            async with client.messages.stream(model="claude-haiku-4-5", max_tokens=64,
                                              messages=[{"role": "user", "content": "hello"}]) as s:
                async for _ in s:
                    pass
    once_each(px, 1)
    assert px.meter.records[-1].status == "error"


# ---------------------------------------------------------------------------- OpenAI Agents SDK

async def test_agents_sdk_default_model_with_a_tool(px, sims):
    from agents import Agent, RunConfig, Runner, function_tool
    from agents.models.openai_provider import OpenAIProvider

    ran: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        ran.append(city)
        return f"sunny in {city}"

    client = oai(px)
    config = RunConfig(model_provider=OpenAIProvider(openai_client=client, use_responses=True), tracing_disabled=True)
    agent = Agent(name="weather", instructions="Use tools.", tools=[get_weather])
    result = await Runner.run(agent, CALL, run_config=config)
    streamed = Runner.run_streamed(agent, CALL, run_config=config)
    async for _ in streamed.stream_events():
        pass
    await client.close()
    assert ran == ["Paris", "Paris"]
    assert result.final_output.startswith("The quick brown fox") and streamed.final_output == result.final_output
    assert [(r.api, r.route, r.provider) for r in px.meter.records] == [("responses", "coding", "gpu-eu")] * 4
    once_each(px, 4)


# ---------------------------------------------------------------------------- endpoint basics, ledger

async def test_endpoint_basics(px, sims):
    async with aiohttp.ClientSession() as http:
        for method in ("HEAD", "GET"):
            async with http.request(method, px.url + "/") as r:
                assert r.status == 200
        async with http.get(px.url + "/v1/nowhere", headers={"x-api-key": "wrong"}) as r:
            assert r.status == 401 and (await r.json())["error"]["type"] == "authentication_error"
        async with http.post(px.url + "/v1/messages/batches", headers={"x-api-key": "wrong"}) as r:
            assert r.status == 401 and (await r.json())["type"] == "error"
        async with http.get(px.url + "/v1/nowhere", headers={"Authorization": f"Bearer {DEV_KEY}"}) as r:
            assert r.status == 404
    async with oai(px) as client:
        assert (await client.models.retrieve("auto")).id == "auto"
        mapped = await client.models.retrieve("claude-haiku-4-5")
        assert mapped.model_dump()["router_target"] == "cheap"
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("nope")
    assert not px.meter.records  # no model was called


async def test_the_ledger_records_the_api(px, sims):
    async with claude(px) as c, oai(px) as o:
        await c.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=[{"role": "user", "content": "x"}])
        await o.responses.create(model="gpt-5", input="x")
        await o.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}])
    assert px.ledger.flush()
    rows = px.ledger.ledger.records()
    assert sorted(r.api for r in rows) == ["chat", "messages", "responses"]
    assert {s.key: s.requests for s in px.ledger.ledger.summary(by="api")} == {"chat": 1, "messages": 1, "responses": 1}
