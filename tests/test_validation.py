"""Request validation at the edge (router.core.validate): types and ranges of the standard fields,
400 with `param`, for the library and the proxy alike; usage and cost never negative."""

from __future__ import annotations

import math

import openai
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router import Router
from router.core.decision import decide
from router.core.errors import InvalidRequest, RequestError
from router.core.meter import MemoryMeter
from router.core.translate import build_call, read_usage
from router.core.validate import MAX_DEPTH, validate_chat, validate_embeddings
from router.server.proxy import Proxy, ProxyOptions
from tests.metering_support import make_policy, msgs

USER = [{"role": "user", "content": "hi"}]

BAD_CHAT = [
    ({"messages": None}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": ["str"]}, "messages[0]"),
    ({"messages": [None]}, "messages[0]"),
    ({"messages": [[1]]}, "messages[0]"),
    ({"messages": [{"content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": 5, "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [5]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 5}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [*USER, {"role": "tool", "content": "42"}]}, "messages[1].tool_call_id"),
    ({"messages": [*USER, {"role": "assistant", "content": None, "tool_calls": "x"}]}, "messages[1].tool_calls"),
    ({"messages": [*USER, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                                 "function": {"name": 5}}]}]},
     "messages[1].tool_calls[0].function.name"),
    ({"messages": [{"role": "user", "content": "hi", "name": 5}]}, "messages[0].name"),
    ({"max_tokens": "100"}, "max_tokens"),
    ({"max_tokens": -1000000}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 1e9}, "max_tokens"),
    ({"max_tokens": 100.0}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": 10**40}, "max_tokens"),
    ({"max_completion_tokens": -5}, "max_completion_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"n": 100000}, "n"),
    ({"n": 0}, "n"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": "x"}, "frequency_penalty"),
    ({"seed": 1.5}, "seed"),
    ({"logprobs": "yes"}, "logprobs"),
    ({"top_logprobs": 21}, "top_logprobs"),
    ({"logit_bias": {"50256": 200}}, "logit_bias.50256"),
    ({"logit_bias": [1]}, "logit_bias"),
    ({"user": 5}, "user"),
    ({"stop": 5}, "stop"),
    ({"stop": ["a", 5]}, "stop[1]"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": True}, "stream_options"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ({"tools": True}, "tools"),
    ({"tools": 5}, "tools"),
    ({"tools": [5]}, "tools[0]"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
     "tools[0].function.parameters"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {}}}, "tool_choice.function.name"),
    ({"parallel_tool_calls": 1}, "parallel_tool_calls"),
    ({"response_format": "json"}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"metadata": {"k": 5}}, "metadata.k"),
    ({"max_cost_usd": "x"}, "max_cost_usd"),
    ({"max_cost_usd": -1}, "max_cost_usd"),
    ({"max_cost_usd": math.inf}, "max_cost_usd"),
    ({"model": 5}, "model"),
]


@pytest.mark.parametrize("fields,param", BAD_CHAT, ids=[p for _, p in BAD_CHAT])
def test_malformed_chat_fields_are_400_with_their_param(fields, param):
    body = {"model": "auto", "messages": USER, **fields}
    with pytest.raises(InvalidRequest) as e:
        validate_chat(body)
    assert e.value.param == param and e.value.status == 400
    assert param in e.value.message


GOOD_CHAT = [
    {},
    {"max_tokens": 1, "max_completion_tokens": 2_000_000, "temperature": 0, "top_p": 1, "n": 128,
     "presence_penalty": -2, "frequency_penalty": 2.0, "seed": -(2**63), "logprobs": True, "top_logprobs": 20,
     "logit_bias": {"50256": -100}, "user": "u1", "stop": ["a", "b", "c", "d"], "stream": False,
     "stream_options": {"include_usage": True}, "parallel_tool_calls": False, "store": True,
     "metadata": {"k": "v"}, "reasoning_effort": "low", "service_tier": "auto", "modalities": ["text"],
     "max_cost_usd": 0.5, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
    {"stop": "END", "temperature": None, "tools": None, "tool_choice": None, "stream_options": None},
    {"tools": [], "tool_choice": "none"},
    {"tools": [{"type": "function", "function": {"name": "get_weather", "description": "d",
                                                  "parameters": {"type": "object", "properties": {
                                                      "city": {"type": "string"}}}, "strict": True}}],
     "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    {"tools": [{"type": "custom", "custom": {"name": "x"}}], "tool_choice": "required"},
    {"messages": [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": [{"type": "text", "text": "rules"}]},
        {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
                                     {"type": "image_url", "image_url": "https://x/y.png"},
                                     {"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}},
                                     {"type": "video_url", "video_url": {"url": "https://x/v.mp4"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}], "reasoning_content": "hmm"},
        {"role": "function", "name": "f", "content": None},
        {"role": "user", "content": "thanks", "name": "bob"},
    ]},
    {"vllm_extra": {"guided_json": {"a": [1, 2, {"b": None}]}}, "top_k": 5},
]


@pytest.mark.parametrize("fields", GOOD_CHAT)
def test_valid_chat_bodies_pass(fields):
    validate_chat({"model": "auto", "messages": USER, **fields})


def lists(n: int) -> object:
    """`n` arrays, one inside the other."""
    v: object = 1
    for _ in range(n):
        v = [v]
    return v


def test_nesting_is_bounded_below_what_can_be_forwarded():
    validate_chat({"messages": USER, "x": lists(MAX_DEPTH - 1)})  # the body itself is level 1
    with pytest.raises(InvalidRequest) as e:
        validate_chat({"messages": USER, "x": lists(MAX_DEPTH)})
    assert e.value.param == "x"
    with pytest.raises(InvalidRequest) as e:
        validate_chat({"messages": [{"role": "user", "content": "hi", "extra": lists(200)}]})
    assert e.value.param == "messages"
    assert MAX_DEPTH < 254  # orjson re-encodes (forwards) up to 254 levels


BAD_EMBEDDINGS = [
    ({"model": 5, "input": "x"}, "model"),
    ({"model": "e", "input": ""}, "input"),
    ({"model": "e", "input": []}, "input"),
    ({"model": "e", "input": 5}, "input"),
    ({"model": "e", "input": ["a", None]}, "input[1]"),
    ({"model": "e", "input": [[1, "a"]]}, "input[0]"),
    ({"model": "e", "input": "x", "dimensions": 0}, "dimensions"),
    ({"model": "e", "input": "x", "dimensions": "8"}, "dimensions"),
    ({"model": "e", "input": "x", "encoding_format": "hex"}, "encoding_format"),
    ({"model": "e", "input": "x", "user": 5}, "user"),
]


@pytest.mark.parametrize("body,param", BAD_EMBEDDINGS, ids=[p for _, p in BAD_EMBEDDINGS])
def test_malformed_embeddings_are_400_with_their_param(body, param):
    with pytest.raises(InvalidRequest) as e:
        validate_embeddings(body)
    assert e.value.param == param


def test_valid_embeddings_pass():
    for inp in ("x", ["a", "b"], [1, 2, 3], [[1, 2], [3]]):
        validate_embeddings({"model": "e", "input": inp, "dimensions": 8, "encoding_format": "base64", "user": "u"})


# ---------------------------------------------------------------------------- property: validated => routable

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12)
FIELDS = ["max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "tools", "tool_choice",
          "stream_options", "max_cost_usd", "logit_bias", "seed", "response_format", "user", "metadata"]
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", 5, None]),
                                 "content": json_values}) | json_values
bodies = st.fixed_dictionaries(
    {"messages": st.lists(message, min_size=0, max_size=3) | json_values},
    optional={k: json_values for k in FIELDS})


@pytest.fixture(scope="module")
def policy():
    return make_policy({"gpu": _Url("http://127.0.0.1:9/v1"), "ds": _Url("http://127.0.0.1:9/v1"),
                        "oa": _Url("http://127.0.0.1:9/v1")})


class _Url:
    def __init__(self, url: str):
        self.base_url = url


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_any_body_is_refused_cleanly_or_routes_and_forwards(policy, body):
    """Fuzzed bodies: validation raises only InvalidRequest; whatever passes is decided, translated and
    encoded for the upstream without any other exception (the 500s of the adversarial run)."""
    try:
        validate_chat(body)
    except InvalidRequest as e:
        assert e.param
        return
    try:
        d = decide(policy, body, task="general", language=False)
    except RequestError:
        return
    for c in d.allowed:
        model = policy.models[c.model]
        call = build_call(policy.providers[model.provider], model, body, stream=False)
        orjson.dumps(call.payload)
        assert c.estimated_cost_usd >= 0


# ---------------------------------------------------------------------------- the library and the proxy


async def test_library_refuses_malformed_fields_with_param_and_meters_them(sims):
    meter = MemoryMeter()
    r = Router(make_policy(sims), meters=[meter], monitor=False)
    with pytest.raises(InvalidRequest) as e:
        await r.acomplete(msgs(), task="general", max_tokens=-1000000)
    assert e.value.param == "max_tokens"
    with pytest.raises(InvalidRequest) as e:
        await r.aembed(["a", None], model="mini")
    assert e.value.param == "input[1]"
    assert [(i.status, i.error is not None) for i in meter.records] == [("error", True), ("error", True)]
    assert all(len(s.requests) == 0 for s in sims.values())  # nothing malformed reached an upstream
    await r.aclose()


async def test_openai_sdk_gets_bad_request_with_param(sims):
    meter = MemoryMeter()
    r = Router(make_policy(sims), meters=[meter], monitor=False)
    runner = web.ServerRunner(Proxy(r.engine, ProxyOptions()).server(), handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{runner.addresses[0][1]}/v1", api_key="x",
                                    max_retries=0)
        with pytest.raises(openai.BadRequestError) as e:
            await client.chat.completions.create(model="auto", messages=msgs(), temperature="hot")  # type: ignore[arg-type]
        assert e.value.body["param"] == "temperature" and e.value.status_code == 400
        with pytest.raises(openai.BadRequestError) as e:
            await client.chat.completions.create(model="auto", messages=[{"role": "user", "content": [5]}])  # type: ignore[list-item]
        assert e.value.body["param"] == "messages[0].content[0]"
        await client.close()
    finally:
        await runner.cleanup()
        await r.aclose()


# ---------------------------------------------------------------------------- usage and cost never negative


def test_read_usage_clamps_counts_at_zero():
    u = read_usage({"usage": {"prompt_tokens": -5, "completion_tokens": -1000000,
                              "completion_tokens_details": {"reasoning_tokens": -3}}})
    assert (u.prompt_tokens, u.completion_tokens, u.reasoning_tokens) == (0, 0, 0)
    assert read_usage({"usage": {"prompt_tokens": True, "completion_tokens": 1}}) is None


async def test_negative_upstream_usage_is_metered_as_zero(sims):
    async def chat(request: web.Request) -> web.Response:
        return web.json_response({"id": "x", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": -1000000, "completion_tokens": -1000000, "total_tokens": -2000000}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        from router.metering.prometheus import PrometheusMeter

        prom, meter = PrometheusMeter(), MemoryMeter()
        policy = make_policy({**sims, "ds": _Url(f"http://127.0.0.1:{runner.addresses[0][1]}/v1")})
        r = Router(policy, meters=[prom, meter], monitor=False)
        resp = await r.acomplete(msgs(), model="ds-chat")
        info = resp.router
        assert (info.prompt_tokens, info.completion_tokens) == (0, 0)
        assert info.cost_usd == 0.0 and info.reference_cost_usd == 0.0
        samples = [s for m in prom.registry.collect() for s in m.samples]
        assert sum(s.value for s in samples if s.name == "router_requests_total" and s.labels["status"] == "ok") == 1
        assert all(s.value >= 0 for s in samples if s.name in ("router_tokens_total", "router_cost_usd_total"))
        await r.aclose()
    finally:
        await runner.cleanup()
