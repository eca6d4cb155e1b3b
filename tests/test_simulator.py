"""The upstream simulator, exercised over real sockets with aiohttp and the official openai SDK."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import pathlib
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.dev.simulator import (
    MISTRAL_CHAT_FIELDS,
    Fault,
    ModelConfig,
    Simulator,
    SimulatorConfig,
    count_prompt_tokens,
    parse_fault,
)

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"
HELLO: Any = [{"role": "user", "content": "hello world"}]  # 4 + ceil(11 / 4) = 7 prompt tokens
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "note": {"type": "string"},
            },
            "required": ["city", "days", "unit"],
        },
    },
}
TIME_TOOL: Any = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(models=["sim-a", ModelConfig("sim-r1", reasoning=True, reasoning_tokens=5)]) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[openai.AsyncOpenAI]:
    c = openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
    yield c
    await c.close()


async def post(
    http: aiohttp.ClientSession, sim: Simulator, body: dict[str, Any], fault: str | None = None, **kw: Any
) -> tuple[int, dict[str, str], bytes]:
    headers = {"X-Sim-Fault": fault} if fault else {}
    async with http.post(sim.base_url + "/chat/completions", json=body, headers=headers, **kw) as r:
        return r.status, dict(r.headers), await r.read()


def first_call(reply: Any) -> Any:
    """The first tool call of a non-streamed SDK reply."""
    return reply.choices[0].message.tool_calls[0]


def sse_events(raw: bytes) -> list[str]:
    text = raw.decode()
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") for e in events), events
    return [e[len("data: ") :] for e in events]


# ---- token accounting ----------------------------------------------------------------------


def test_count_prompt_tokens_formula() -> None:
    assert count_prompt_tokens(HELLO) == 7
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "x" * 10},
        {
            "role": "user",
            "content": [{"type": "text", "text": "y" * 5}, {"type": "image_url", "image_url": {}}],
        },
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]},
    ]
    assert count_prompt_tokens(messages) == 3 * 4 + math.ceil(15 / 4)
    assert count_prompt_tokens([]) == 0


# ---- JSON and streaming shapes -------------------------------------------------------------


async def test_json_completion_shape_and_usage(sim: Simulator, http: aiohttp.ClientSession) -> None:
    status, headers, raw = await post(http, sim, {"model": "gpt-4o-mini", "messages": HELLO})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    body = json.loads(raw)
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-") and isinstance(body["created"], int)
    assert body["model"] == "gpt-4o-mini"  # echoed, even though only sim-a / sim-r1 are configured
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "stop"
    assert len(choice["message"]["content"].split()) == 16
    assert "reasoning_content" not in choice["message"]
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 16, "total_tokens": 23}


async def test_sdk_max_tokens_truncates_deterministically(sim: Simulator, client: openai.AsyncOpenAI) -> None:
    first = await client.chat.completions.create(model="sim-a", messages=HELLO, max_tokens=5)
    second = await client.chat.completions.create(model="sim-a", messages=HELLO, max_completion_tokens=5)
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.choices[0].message.content == "The quick brown fox jumps"
    assert first.choices[0].finish_reason == "length"
    assert first.usage is not None and first.usage.completion_tokens == 5 and first.usage.total_tokens == 12
    assert first.id != second.id


async def test_stream_framing_matches_openai(sim: Simulator, http: aiohttp.ClientSession) -> None:
    status, headers, raw = await post(http, sim, {"model": "sim-a", "messages": HELLO, "stream": True})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["choices"][0]["delta"] == {}
    assert all("usage" not in c for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    _, _, plain = await post(http, sim, {"model": "sim-a", "messages": HELLO})
    assert text == json.loads(plain)["choices"][0]["message"]["content"]


async def test_stream_include_usage_final_chunk(sim: Simulator, client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="sim-a", messages=HELLO, max_tokens=3, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (7, 3)
    assert chunks[-2].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == "The quick brown"


# ---- reasoning and tools -------------------------------------------------------------------


async def test_reasoning_content_json_and_stream(sim: Simulator, client: openai.AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(model="sim-r1", messages=HELLO, max_tokens=4)
    message = reply.choices[0].message.model_dump()
    assert message["reasoning_content"] == "Let me think about this"
    assert reply.usage is not None and reply.usage.completion_tokens == 4 + 5
    assert reply.usage.completion_tokens_details is not None
    assert reply.usage.completion_tokens_details.reasoning_tokens == 5

    stream = await client.chat.completions.create(model="sim-r1", messages=HELLO, max_tokens=4, stream=True)
    deltas = [c.choices[0].delta.model_dump() async for c in stream]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == "Let me think about this"
    assert "".join(d.get("content") or "" for d in deltas) == "The quick brown fox"


async def test_tool_call_when_required(sim: Simulator, client: openai.AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(
        model="sim-a",
        messages=HELLO,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice="required",
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call = first_call(reply)
    assert call.function.name == "get_weather"
    arguments = call.function.arguments
    assert json.loads(arguments) == {"city": "sim", "days": 1, "unit": "celsius"}
    assert reply.usage is not None
    assert reply.usage.completion_tokens == math.ceil((len("get_weather") + len(arguments)) / 4)


async def test_tool_call_triggers(sim: Simulator, client: openai.AsyncOpenAI) -> None:
    tools: Any = [WEATHER_TOOL, TIME_TOOL]
    named = await client.chat.completions.create(
        model="sim-a",
        messages=HELLO,
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    assert first_call(named).function.name == "get_time"
    marker = await client.chat.completions.create(
        model="sim-a", messages=[{"role": "user", "content": "please CALL_TOOL:get_time now"}], tools=tools
    )
    assert first_call(marker).function.name == "get_time"
    plain = await client.chat.completions.create(model="sim-a", messages=HELLO, tools=tools)
    assert plain.choices[0].message.tool_calls is None and plain.choices[0].finish_reason == "stop"
    none = await client.chat.completions.create(
        model="sim-a", messages=[{"role": "user", "content": "CALL_TOOL"}], tools=tools, tool_choice="none"
    )
    assert none.choices[0].message.tool_calls is None


async def test_call_tools_flag_answers_tool_results() -> None:
    async with Simulator(call_tools=True) as sim:
        client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="k", max_retries=0)
        try:
            first = await client.chat.completions.create(model="m", messages=HELLO, tools=[TIME_TOOL])
            assert first.choices[0].finish_reason == "tool_calls"
            call = first_call(first)
            followup: Any = [
                *HELLO,
                {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id, "content": "12:00"},
            ]
            second = await client.chat.completions.create(model="m", messages=followup, tools=[TIME_TOOL])
            assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content
        finally:
            await client.close()


async def test_tool_call_streamed_as_deltas(sim: Simulator, client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="sim-a",
        messages=HELLO,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        stream=True,
    )
    chunks = [c async for c in stream]
    parts = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(parts) > 2  # the header delta plus several argument pieces
    assert parts[0].id and parts[0].function and parts[0].function.name == "get_weather"
    arguments = "".join(p.function.arguments or "" for p in parts if p.function)
    assert json.loads(arguments) == {"city": "sim", "days": 1, "unit": "celsius"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


# ---- latency -------------------------------------------------------------------------------


async def test_latency_json_and_stream_pacing(http: aiohttp.ClientSession) -> None:
    async with Simulator(latency_s=0.15, ttft_s=0.1, tokens_per_s=50, reply_tokens=6) as sim:
        start = time.perf_counter()
        status, _, _ = await post(http, sim, {"model": "m", "messages": HELLO})
        assert status == 200 and time.perf_counter() - start >= 0.15

        start = time.perf_counter()
        arrivals: list[float] = []
        async with http.post(
            sim.base_url + "/chat/completions", json={"model": "m", "messages": HELLO, "stream": True}
        ) as r:
            async for line in r.content:
                if line.startswith(b"data: {") and b'"content":"' in line and b'"content":""' not in line:
                    arrivals.append(time.perf_counter() - start)
        assert len(arrivals) == 6
        assert arrivals[0] >= 0.1  # time to first token
        assert arrivals[-1] - arrivals[0] >= 5 / 50 * 0.9  # five more tokens at 50/s


async def test_zero_latency_is_fast(sim: Simulator, http: aiohttp.ClientSession) -> None:
    start = time.perf_counter()
    for _ in range(50):
        await post(http, sim, {"model": "sim-a", "messages": HELLO, "stream": True})
    assert time.perf_counter() - start < 1.0


# ---- faults --------------------------------------------------------------------------------


def test_parse_fault_syntax() -> None:
    assert parse_fault("status:429:retry-after=1:code=rate_limit_exceeded") == (
        Fault("status", status=429, retry_after="1", code="rate_limit_exceeded"),
    )
    assert [f.kind for f in parse_fault("status:500, delay:0.1")] == ["delay", "status"]
    assert parse_fault("drop-mid-stream:3") == (Fault("drop-mid-stream", chunks=3),)
    for bad in (
        "status:200",
        "status:abc",
        "delay:-1",
        "explode",
        "drop:1",
        "drop,hang",
        "status:429:wait=1",
    ):
        with pytest.raises(ValueError):
            parse_fault(bad)


@pytest.mark.parametrize("via", ["header", "inject"])
async def test_status_fault_with_retry_after(via: str, sim: Simulator, http: aiohttp.ClientSession) -> None:
    fault = "status:429:retry-after=1"
    if via == "inject":
        sim.inject(fault)
    status, headers, raw = await post(
        http, sim, {"model": "sim-a", "messages": HELLO}, fault if via == "header" else None
    )
    assert status == 429 and headers["Retry-After"] == "1"
    error = json.loads(raw)["error"]
    assert error["type"] == "rate_limit_error" and "429" in error["message"]
    status, headers, _ = await post(http, sim, {"model": "sim-a", "messages": HELLO})
    assert status == 200 and "Retry-After" not in headers


async def test_status_fault_maps_to_sdk_errors(sim: Simulator, client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        await client.chat.completions.create(
            model="sim-a", messages=HELLO, extra_headers={"X-Sim-Fault": "status:503"}
        )
    assert info.value.status_code == 503
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(
            model="sim-a", messages=HELLO, extra_headers={"X-Sim-Fault": "status:429:code=insufficient_quota"}
        )


async def test_delay_fault(sim: Simulator, http: aiohttp.ClientSession) -> None:
    start = time.perf_counter()
    status, _, _ = await post(http, sim, {"model": "sim-a", "messages": HELLO}, "delay:0.2")
    assert status == 200 and time.perf_counter() - start >= 0.2


@pytest.mark.parametrize("stream", [False, True])
async def test_drop_fault_closes_before_response(
    stream: bool, sim: Simulator, client: openai.AsyncOpenAI
) -> None:
    sim.inject("drop")
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="sim-a", messages=HELLO, stream=stream)
    assert sim.request_count == 1
    ok = await client.chat.completions.create(model="sim-a", messages=HELLO)
    assert ok.choices[0].finish_reason == "stop"


async def test_drop_mid_stream_sends_n_chunks(sim: Simulator, http: aiohttp.ClientSession) -> None:
    lines: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(
            sim.base_url + "/chat/completions",
            json={"model": "sim-a", "messages": HELLO, "stream": True},
            headers={"X-Sim-Fault": "drop-mid-stream:3"},
        ) as r:
            assert r.status == 200
            async for line in r.content:
                if line.startswith(b"data: "):
                    lines.append(line)
    assert len(lines) == 3 and not any(b"[DONE]" in line for line in lines)


async def test_drop_mid_stream_on_json_truncates_body(sim: Simulator, http: aiohttp.ClientSession) -> None:
    with pytest.raises(aiohttp.ClientPayloadError):
        await post(http, sim, {"model": "sim-a", "messages": HELLO}, "drop-mid-stream:1")


async def test_malformed_fault(sim: Simulator, http: aiohttp.ClientSession) -> None:
    status, _, raw = await post(http, sim, {"model": "sim-a", "messages": HELLO}, "malformed")
    assert status == 200 and raw
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)
    status, _, raw = await post(http, sim, {"model": "sim-a", "messages": HELLO, "stream": True}, "malformed")
    events = sse_events(raw)
    assert status == 200 and events[-1] == "[DONE]"
    with pytest.raises(json.JSONDecodeError):
        json.loads(events[1])


async def test_hang_fault_until_client_gives_up(sim: Simulator, http: aiohttp.ClientSession) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await post(
            http, sim, {"model": "sim-a", "messages": HELLO}, "hang", timeout=aiohttp.ClientTimeout(total=0.2)
        )
    status, _, _ = await post(http, sim, {"model": "sim-a", "messages": HELLO})
    assert status == 200


async def test_invalid_fault_header_is_400(sim: Simulator, http: aiohttp.ClientSession) -> None:
    status, _, raw = await post(http, sim, {"model": "sim-a", "messages": HELLO}, "explode")
    assert status == 400 and "X-Sim-Fault" in json.loads(raw)["error"]["message"]


async def test_fault_queue_counts_and_targets_models(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.inject("status:500", times=2)
    sim.inject("status:502", model="sim-r1")
    statuses = [(await post(http, sim, {"model": "sim-a", "messages": HELLO}))[0] for _ in range(3)]
    assert statuses == [500, 500, 200]
    assert (await post(http, sim, {"model": "sim-r1", "messages": HELLO}))[0] == 502
    assert (await post(http, sim, {"model": "sim-r1", "messages": HELLO}))[0] == 200


async def test_persistent_fault_and_clear(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.set_fault("status:503", model="sim-r1")
    for _ in range(2):
        assert (await post(http, sim, {"model": "sim-r1", "messages": HELLO}))[0] == 503
    assert (await post(http, sim, {"model": "sim-a", "messages": HELLO}))[0] == 200
    sim.clear_faults()
    assert (await post(http, sim, {"model": "sim-r1", "messages": HELLO}))[0] == 200


async def test_down_switch_per_model_and_global(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.set_down("sim-a")
    assert (await post(http, sim, {"model": "sim-a", "messages": HELLO}))[0] == 503
    assert (await post(http, sim, {"model": "sim-r1", "messages": HELLO}))[0] == 200
    sim.set_down("sim-a", down=False)
    sim.set_down()
    assert (await post(http, sim, {"model": "sim-r1", "messages": HELLO}))[0] == 503
    async with http.get(sim.url + "/health") as r:
        assert r.status == 503
    sim.set_down(down=False)
    assert (await post(http, sim, {"model": "sim-a", "messages": HELLO}))[0] == 200


# ---- provider quirks -----------------------------------------------------------------------


async def test_strict_fields_rejects_unknown_with_422(http: aiohttp.ClientSession) -> None:
    async with Simulator(strict_fields=MISTRAL_CHAT_FIELDS) as sim:
        ok = {"model": "mistral-small", "messages": HELLO, "max_tokens": 3, "random_seed": 1}
        assert (await post(http, sim, ok))[0] == 200
        status, _, raw = await post(http, sim, {**ok, "stream_options": {"include_usage": True}, "seed": 1})
        assert status == 422
        error = json.loads(raw)["error"]
        assert (
            error["param"] == "seed" and "seed" in error["message"] and "stream_options" in error["message"]
        )


async def test_require_api_key(http: aiohttp.ClientSession) -> None:
    async with Simulator(require_api_key="sk-right") as sim:
        assert (await post(http, sim, {"model": "m", "messages": HELLO}))[0] == 401
        wrong = openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-wrong", max_retries=0)
        right = openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-right", max_retries=0)
        try:
            with pytest.raises(openai.AuthenticationError):
                await wrong.chat.completions.create(model="m", messages=HELLO)
            reply = await right.chat.completions.create(model="m", messages=HELLO)
            assert reply.choices[0].finish_reason == "stop"
        finally:
            await wrong.close()
            await right.close()


async def test_unknown_models_rejected_when_configured(http: aiohttp.ClientSession) -> None:
    async with Simulator(models=["only"], serve_unknown_models=False) as sim:
        status, _, raw = await post(http, sim, {"model": "other", "messages": HELLO})
        assert status == 404 and json.loads(raw)["error"]["code"] == "model_not_found"
        assert (await post(http, sim, {"model": "only", "messages": HELLO}))[0] == 200
        sim.configure_model("only", reply_tokens=2)
        _, _, raw = await post(http, sim, {"model": "only", "messages": HELLO})
        assert json.loads(raw)["choices"][0]["message"]["content"] == "The quick"


async def test_bad_requests(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with http.post(sim.base_url + "/chat/completions", data=b"{not json") as r:
        assert r.status == 400
    assert (await post(http, sim, {"model": "sim-a"}))[0] == 400
    assert (await post(http, sim, {"model": "sim-a", "messages": ["hi"]}))[0] == 400
    assert (await post(http, sim, {"model": "sim-a", "messages": HELLO, "max_tokens": -1}))[0] == 400
    async with http.get(sim.url + "/v2/nothing") as r:
        assert r.status == 404
    async with http.get(sim.base_url + "/chat/completions") as r:
        assert r.status == 405


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        SimulatorConfig(models=(ModelConfig("a"), ModelConfig("a")))
    with pytest.raises(ValueError, match="latency_s"):
        ModelConfig("a", latency_s=-1)
    with pytest.raises(TypeError, match="bogus"):
        Simulator(bogus=1)


# ---- request log ---------------------------------------------------------------------------


async def test_request_log_shows_what_reached_which_upstream(http: aiohttp.ClientSession) -> None:
    async with Simulator(max_logged_requests=3) as eu, Simulator() as us:
        assert eu.base_url != us.base_url
        body = {"model": "eu-model", "messages": HELLO, "metadata": {"region": "eu"}}
        for _ in range(5):
            async with http.post(
                eu.base_url + "/chat/completions", json=body, headers={"X-Region": "eu"}
            ) as r:
                assert r.status == 200
        assert eu.request_count == 5 and len(eu.requests) == 3  # bounded log, exact counter
        last = eu.requests[-1]
        assert (last.method, last.path, last.model) == ("POST", "/v1/chat/completions", "eu-model")
        assert last.body == body and last.headers["x-region"] == "eu"
        assert us.request_count == 0 and not us.requests
        eu.reset()
        assert eu.request_count == 0 and not eu.requests


# ---- metrics -------------------------------------------------------------------------------


def parse_metrics(text: str) -> dict[tuple[str, str], float]:
    samples: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name, s.labels["model_name"]] = s.value
    return samples


async def scrape(http: aiohttp.ClientSession, sim: Simulator) -> dict[tuple[str, str], float]:
    async with http.get(sim.metrics_url) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse_metrics(await r.text())


async def test_metrics_reflect_running_waiting_and_tokens(http: aiohttp.ClientSession) -> None:
    async with Simulator(models=["m"], capacity=2, latency_s=0.15) as sim:
        start = time.perf_counter()
        tasks = [asyncio.create_task(post(http, sim, {"model": "m", "messages": HELLO})) for _ in range(5)]
        for _ in range(100):
            m = await scrape(http, sim)
            if m["vllm:num_requests_running", "m"] + m["vllm:num_requests_waiting", "m"] == 5:
                break
            await asyncio.sleep(0.005)
        assert m["vllm:num_requests_running", "m"] == 2
        assert m["vllm:num_requests_waiting", "m"] == 3
        assert m["vllm:kv_cache_usage_perc", "m"] == 1.0
        results = await asyncio.gather(*tasks)
        assert all(status == 200 for status, _, _ in results)
        assert time.perf_counter() - start >= 3 * 0.15  # two at a time: three rounds

        m = await scrape(http, sim)
        assert m["vllm:num_requests_running", "m"] == 0 and m["vllm:num_requests_waiting", "m"] == 0
        assert m["vllm:kv_cache_usage_perc", "m"] == 0.0
        assert m["vllm:prompt_tokens_total", "m"] == 5 * 7
        assert m["vllm:generation_tokens_total", "m"] == 5 * 16


async def test_metrics_unbounded_capacity_never_waits(http: aiohttp.ClientSession) -> None:
    async with Simulator(models=["m"], latency_s=0.1) as sim:
        tasks = [asyncio.create_task(post(http, sim, {"model": "m", "messages": HELLO})) for _ in range(4)]
        for _ in range(100):
            if sim.in_flight() == (4, 0):
                break
            await asyncio.sleep(0.005)
        m = await scrape(http, sim)
        assert m["vllm:num_requests_running", "m"] == 4 and m["vllm:num_requests_waiting", "m"] == 0
        await asyncio.gather(*tasks)


async def test_metrics_load_override(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.set_load(waiting=7, kv_cache=0.9)
    sim.set_load(running=3, model="sim-r1")
    m = await scrape(http, sim)
    assert m["vllm:num_requests_waiting", "sim-a"] == 7 and m["vllm:kv_cache_usage_perc", "sim-a"] == 0.9
    assert m["vllm:num_requests_running", "sim-a"] == 0 and m["vllm:num_requests_running", "sim-r1"] == 3
    with pytest.raises(ValueError):
        sim.set_load(kv_cache=1.5)
    sim.clear_load()
    assert (await scrape(http, sim))["vllm:num_requests_waiting", "sim-a"] == 0


# ---- other endpoints -----------------------------------------------------------------------


async def test_models_health_and_embeddings(sim: Simulator, client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()
    assert [m.id for m in models.data] == ["sim-a", "sim-r1"]
    # The SDK asks for base64 by default and decodes it.
    first = await client.embeddings.create(model="emb", input=["abcdefgh", "xyz"])
    again = await client.embeddings.create(model="emb", input="abcdefgh", encoding_format="float")
    assert first.usage.prompt_tokens == 2 + 1 and first.usage.total_tokens == 3
    assert len(first.data) == 2 and len(first.data[0].embedding) == 8
    assert first.data[0].embedding == pytest.approx(again.data[0].embedding, rel=1e-6)
    assert first.data[0].embedding != pytest.approx(first.data[1].embedding)
    assert math.isclose(sum(v * v for v in again.data[0].embedding), 1.0, rel_tol=1e-9)
    raw = (
        await client.embeddings.with_raw_response.create(model="emb", input="q", encoding_format="base64")
    ).http_response
    packed = base64.b64decode(raw.json()["data"][0]["embedding"])
    assert len(struct.unpack("<8f", packed)) == 8


def test_start_in_thread_serves_sync_callers() -> None:
    handle = Simulator(models=["t"]).start_in_thread()
    try:
        handle.sim.inject("status:418")
        request = urllib.request.Request(
            handle.base_url + "/chat/completions",
            data=json.dumps({"model": "t", "messages": HELLO}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=5)
        info.value.close()
        assert info.value.code == 418
        with urllib.request.urlopen(request, timeout=5) as r:
            assert json.load(r)["usage"]["prompt_tokens"] == 7
        with urllib.request.urlopen(handle.metrics_url, timeout=5) as r:
            assert b"vllm:num_requests_running" in r.read()
    finally:
        handle.stop()
    with pytest.raises(RuntimeError):
        _ = handle.base_url


def test_cli_main_serves_until_terminated() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "router.dev.simulator", "--port", "0", "--model", "cli-m", "--reply-tokens", "3"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        base_url = line.split()[0].removeprefix("base_url=")
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        with urllib.request.urlopen(base_url + "/models", timeout=5) as r:
            assert [m["id"] for m in json.load(r)["data"]] == ["cli-m"]
        request = urllib.request.Request(
            base_url + "/chat/completions", data=json.dumps({"model": "cli-m", "messages": HELLO}).encode()
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            assert json.load(r)["usage"]["completion_tokens"] == 3
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_client_disconnect_mid_stream_frees_the_slot(http: aiohttp.ClientSession) -> None:
    async with Simulator(models=["m"], capacity=1, tokens_per_s=20, reply_tokens=40) as sim:
        async with http.post(
            sim.base_url + "/chat/completions", json={"model": "m", "messages": HELLO, "stream": True}
        ) as r:
            await r.content.readline()
            assert sim.in_flight() == (1, 0)
            r.close()  # hang up mid-stream
        for _ in range(100):
            if sim.in_flight() == (0, 0):
                break
            await asyncio.sleep(0.01)
        assert sim.in_flight() == (0, 0)
        assert (await post(http, sim, {"model": "m", "messages": HELLO}))[0] == 200  # the slot was released


async def test_stop_cuts_off_hanging_requests(http: aiohttp.ClientSession) -> None:
    sim = await Simulator().start()
    pending = asyncio.create_task(post(http, sim, {"model": "m", "messages": HELLO}, "hang"))
    while sim.request_count == 0:
        await asyncio.sleep(0.005)
    start = time.perf_counter()
    await sim.stop()
    assert time.perf_counter() - start < 1.0
    with pytest.raises(aiohttp.ClientError):
        await pending
