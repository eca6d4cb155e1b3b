"""The proxy over real sockets: simulators upstream, the openai SDK (and raw HTTP) as the client."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from router.core.decision import LiveState
from router.core.meter import MemoryMeter
from router.core.policy import hash_key
from router.core.policy_parser import parse_policy
from router.dev.simulator import ModelConfig, Simulator
from router.engine.engine import Engine
from router.server.proxy import Proxy, ProxyOptions
from router.transport.aiohttp_client import AiohttpTransport

ACME_KEY, GLOBEX_KEY, BROKE_KEY = "sk-acme-123", "sk-globex-456", "sk-broke-789"

POLICY = """
version: 1
providers:
  gpu-eu:  {{kind: vllm, base_url: "{gpu}", region: eu}}
  ds:      {{kind: deepseek, base_url: "{ds}", api_key: "sk-ds-secret", region: cn}}
  oa:      {{kind: openai, base_url: "{oa}", api_key: "sk-oa-secret", region: us}}
models:
  coder:   {{provider: gpu-eu, model: Qwen/Qwen3-Coder-Next, price: {{input_per_mtok: 0.03, output_per_mtok: 0.03}},
             capabilities: [tools]}}
  ds-chat: {{provider: ds, model: deepseek-chat, price: {{input_per_mtok: 0.28, output_per_mtok: 0.42}},
             capabilities: [tools]}}
  mini:    {{provider: oa, model: gpt-4.1-mini, price: {{input_per_mtok: 0.4, output_per_mtok: 1.6}},
             capabilities: [tools]}}
routes:
  coding:  {{targets: [coder, ds-chat, mini]}}
  general: {{targets: [ds-chat, mini]}}
  eu:      {{targets: [coder]}}
rules:
  - {{if: {{residency: eu}}, route: eu}}
  - {{if: {{task: coding}}, route: coding}}
  - {{route: general}}
residency:
  eu: [eu]
  us: [us]
retry: {{attempts: 2, backoff_s: 0.01, max_backoff_s: 0.02, retry_after_max_s: 1}}
timeouts: {{connect_s: 1, first_token_s: 2, total_s: 3, attempt_s: 0.5}}
{tenants}
"""

TENANTS = f"""
tenants:
  acme:   {{keys: ["{hash_key(ACME_KEY)}"], residency: eu}}
  globex: {{keys: ["{hash_key(GLOBEX_KEY)}"], routes: [general, mini]}}
  broke:  {{keys: ["{hash_key(BROKE_KEY)}"], budget: {{daily_usd: 1}}}}
"""


@pytest.fixture
async def sims():
    gpu = Simulator(models=["Qwen/Qwen3-Coder-Next"])
    ds = Simulator(models=[ModelConfig("deepseek-chat")], require_api_key="sk-ds-secret")
    oa = Simulator(models=["gpt-4.1-mini"], require_api_key="sk-oa-secret")
    all_ = {"gpu": gpu, "ds": ds, "oa": oa}
    for s in all_.values():
        await s.start()
    yield all_
    for s in all_.values():
        await s.stop()


async def start_proxy(sims, *, tenants: str = "", state=None, **options):
    policy = parse_policy(POLICY.format(tenants=tenants, **{k: s.base_url for k, s in sims.items()}), env={})
    meter = MemoryMeter()
    engine = Engine(policy, AiohttpTransport(), [meter], state=state)
    opts = ProxyOptions(**{"max_body_bytes": 64 * 1024, "keepalive_s": 0.2, **options})
    proxy = Proxy(engine, opts, metrics=lambda: (b"# metrics\nrouter_up 1\n", "text/plain; version=0.0.4"))
    runner = web.ServerRunner(proxy.server(), handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def stop():
        await runner.cleanup()
        await engine.transport.aclose()

    return SimpleNamespace(url=url, meter=meter, engine=engine, proxy=proxy, stop=stop)


@pytest.fixture
async def px(sims):
    p = await start_proxy(sims)
    yield p
    await p.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as s:
        yield s


def sdk(p, key: str = "anything", retries: int = 0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=p.url + "/v1", api_key=key, max_retries=retries)


def msgs(text: str = "hello there") -> list[dict]:
    return [{"role": "user", "content": text}]


CODING = {"X-Router-Task": "coding"}


async def read_sse(resp: aiohttp.ClientResponse) -> list[bytes]:
    raw = await resp.read()
    assert raw.endswith(b"\n\n")
    return raw[:-2].split(b"\n\n")


# ---------------------------------------------------------------------------- JSON chat

async def test_json_chat_with_router_headers(px, sims):
    async with sdk(px) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=msgs("Write a Rust function"), extra_headers=CODING, max_tokens=8)
        resp = raw.parse()
    assert resp.choices[0].message.content and resp.usage.completion_tokens == 8
    h = raw.headers
    assert (h["x-router-task"], h["x-router-route"], h["x-router-model"], h["x-router-provider"]) == (
        "coding", "coding", "coder", "gpu-eu")
    assert h["x-router-attempts"] == "1"
    info = px.meter.records[-1]
    assert h["x-request-id"] == info.request_id and info.request_id.startswith("req_")
    assert float(h["x-router-cost-usd"]) == pytest.approx(info.cost_usd, rel=1e-6) and info.cost_usd > 0
    assert sims["gpu"].requests[-1].body["model"] == "Qwen/Qwen3-Coder-Next"


async def test_client_request_id_is_kept_for_correlation_not_as_the_key(px, http):
    async with http.post(px.url + "/v1/chat/completions", json={"model": "mini", "messages": msgs()},
                         headers={"X-Request-Id": "my-req-42"}) as r:
        assert r.status == 200 and r.headers["x-client-request-id"] == "my-req-42"
        rid = r.headers["x-request-id"]
    info = px.meter.records[-1]
    assert (info.request_id, info.client_request_id) == (rid, "my-req-42") and rid.startswith("req_")


@pytest.mark.parametrize("model,route,alias,provider", [
    ("mini", "mini", "mini", "oa"), ("general", "general", "ds-chat", "ds"), ("coding", "coding", "coder", "gpu-eu"),
])
async def test_model_is_a_route_or_an_alias(px, model, route, alias, provider):
    async with sdk(px) as client:
        raw = await client.chat.completions.with_raw_response.create(model=model, messages=msgs())
    assert (raw.headers["x-router-route"], raw.headers["x-router-model"], raw.headers["x-router-provider"]) == (
        route, alias, provider)


async def test_tool_calls_json_and_stream(px):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    async with sdk(px) as client:
        resp = await client.chat.completions.create(model="coder", messages=msgs("CALL_TOOL please"), tools=tools)
        call = resp.choices[0].message.tool_calls[0]
        assert call.function.name == "get_weather" and "city" in orjson.loads(call.function.arguments)
        stream = await client.chat.completions.create(model="coder", messages=msgs("hi"), tools=tools,
                                                      tool_choice="required", stream=True)
        args, names = "", set()
        async for chunk in stream:
            for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                names.add(tc.function.name) if tc.function.name else None
                args += tc.function.arguments or ""
    assert names == {"get_weather"} and "city" in orjson.loads(args)


# ---------------------------------------------------------------------------- streaming

async def test_stream_framing_and_headers(px, http):
    body = {"model": "auto", "messages": msgs(), "stream": True, "max_tokens": 5}
    async with http.post(px.url + "/v1/chat/completions", json=body, headers=CODING) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        assert (r.headers["x-router-model"], r.headers["x-router-provider"]) == ("coder", "gpu-eu")
        assert "x-router-cost-usd" not in r.headers  # unknown until the end: in the usage chunk and the ledger
        frames = await read_sse(r)
    assert frames[-1] == b"data: [DONE]"
    chunks = [orjson.loads(f[6:]) for f in frames[:-1]]
    assert all(f.startswith(b"data: {") for f in frames[:-1])
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert px.meter.records[-1].status == "ok" and px.meter.records[-1].completion_tokens == 5


async def test_stream_include_usage_via_sdk(px):
    async with sdk(px) as client:
        stream = await client.chat.completions.create(model="mini", messages=msgs(), stream=True,
                                                      stream_options={"include_usage": True}, max_tokens=4)
        chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert sum(1 for c in chunks if c.usage) == 1


async def test_keepalive_comments_during_slow_first_token(px, sims, http):
    sims["gpu"].configure_model("Qwen/Qwen3-Coder-Next", ttft_s=0.7)
    body = {"model": "coder", "messages": msgs(), "stream": True}
    async with http.post(px.url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200
        frames = await read_sse(r)
    first_data = next(i for i, f in enumerate(frames) if f.startswith(b"data:"))
    assert first_data >= 2 and all(f == b": keep-alive" for f in frames[:first_data])
    assert frames[-1] == b"data: [DONE]"
    async with sdk(px) as client:  # and the SDK ignores the comments
        stream = await client.chat.completions.create(model="coder", messages=msgs(), stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


async def test_error_frame_after_mid_stream_drop(px, sims, http):
    sims["gpu"].set_fault("drop-mid-stream:3")
    body = {"model": "coding", "messages": msgs(), "stream": True}
    async with http.post(px.url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200
        frames = await read_sse(r)
    assert len(frames) == 4 and b"[DONE]" not in frames[-1]
    err = orjson.loads(frames[-1][6:])["error"]
    assert err["code"] == "upstream_failed" and "sk-" not in err["message"]
    assert px.meter.records[-1].status == "error"
    assert len(sims["ds"].requests) == 0  # no failover once the client has chunks
    async with sdk(px) as client:
        stream = await client.chat.completions.create(model="coding", messages=msgs(), stream=True)
        with pytest.raises(openai.APIError, match="stream interrupted"):
            async for _ in stream:
                pass


async def test_stream_fails_over_before_first_chunk_invisibly(px, sims, http):
    sims["gpu"].set_fault("drop-mid-stream:0")
    body = {"model": "coding", "messages": msgs(), "stream": True}
    async with http.post(px.url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200
        assert (r.headers["x-router-provider"], r.headers["x-router-attempts"]) == ("ds", "3")
        frames = await read_sse(r)
    assert frames[-1] == b"data: [DONE]" and not any(b"error" in f for f in frames)


async def test_stream_that_fails_before_first_chunk_is_a_plain_http_error(px, sims, http):
    for s in sims.values():
        s.set_fault("status:500")
    async with http.post(px.url + "/v1/chat/completions",
                         json={"model": "general", "messages": msgs(), "stream": True}) as r:
        assert r.status == 502 and r.headers["Content-Type"] == "application/json"
        assert r.headers["x-router-route"] == "general" and r.headers["x-router-attempts"] == "4"
        assert (await r.json())["error"]["code"] == "upstream_failed"


async def test_client_disconnect_cancels_upstream_and_meters(px, sims, http):
    sims["gpu"].configure_model("Qwen/Qwen3-Coder-Next", tokens_per_s=50, reply_tokens=400)
    body = {"model": "coder", "messages": msgs(), "stream": True}
    r = await http.post(px.url + "/v1/chat/completions", json=body)
    assert r.status == 200
    await r.content.readline()
    assert sims["gpu"].in_flight()[0] == 1
    r.close()  # drop the connection mid-stream
    for _ in range(100):
        if sims["gpu"].in_flight()[0] == 0 and px.meter.records:
            break
        await asyncio.sleep(0.02)
    assert sims["gpu"].in_flight()[0] == 0
    info = px.meter.records[-1]
    assert info.status == "cancelled" and info.usage_estimated and info.model == "coder"


async def test_client_disconnect_during_json_request_is_metered(px, sims, http):
    sims["gpu"].configure_model("Qwen/Qwen3-Coder-Next", latency_s=0.4)
    with pytest.raises(asyncio.TimeoutError):
        await http.post(px.url + "/v1/chat/completions", json={"model": "coder", "messages": msgs()},
                        timeout=aiohttp.ClientTimeout(total=0.15))
    for _ in range(50):
        if px.meter.records:
            break
        await asyncio.sleep(0.02)
    assert px.meter.records[-1].status == "cancelled"


# ---------------------------------------------------------------------------- errors

@pytest.mark.parametrize("data,status,code", [
    (b"{not json", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_request"),
    (b"", 400, "invalid_request"),
    (orjson.dumps({"model": "auto"}), 400, "invalid_request"),
    (orjson.dumps({"model": "auto", "messages": msgs(), "stream": "yes"}), 400, "invalid_request"),
    (orjson.dumps({"model": 3, "messages": msgs()}), 400, "invalid_request"),
    (orjson.dumps({"model": "nope", "messages": msgs()}), 404, "model_not_found"),
    (orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": "x" * 70_000}]}), 413,
     "payload_too_large"),
])
async def test_request_errors_in_openai_shape(px, http, data, status, code):
    async with http.post(px.url + "/v1/chat/completions", data=data,
                         headers={"Content-Type": "application/json"}) as r:
        assert r.status == status
        body = await r.json()
        assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["code"] == code
        assert r.headers["x-request-id"]
    # refused requests are metered too, once each, under the id the client was given
    records = [i for i in px.meter.records if i.request_id == r.headers["x-request-id"]]
    assert len(records) == 1 and records[0].status == "error" and records[0].error


async def test_auth_failures_are_metered_without_the_key(sims, http):
    p = await start_proxy(sims, tenants=TENANTS)
    try:
        async with http.post(p.url + "/v1/chat/completions", json={"model": "auto", "messages": msgs()},
                             headers={"Authorization": "Bearer sk-not-a-tenant"}) as r:
            assert r.status == 401
        rec = p.meter.records[-1]
        assert rec.request_id == r.headers["x-request-id"] and rec.status == "error" and rec.tenant is None
        assert "sk-not-a-tenant" not in repr(rec.to_dict())
    finally:
        await p.stop()


async def test_unknown_task_and_residency_headers_are_400(px, http):
    for headers in ({"X-Router-Task": "poetry"}, {"X-Router-Residency": "mars"}):
        async with http.post(px.url + "/v1/chat/completions", json={"messages": msgs()}, headers=headers) as r:
            assert r.status == 400


async def test_unknown_path_and_method(px, http):
    async with http.get(px.url + "/v1/nothing") as r:
        assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_url"
    async with http.get(px.url + "/v1/chat/completions") as r:
        assert r.status == 405


async def test_sdk_error_classes(px, sims):
    async with sdk(px) as client:
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="gpt-99", messages=msgs())
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="auto", messages=[])


@pytest.mark.parametrize("fault,status", [("status:500", 502), ("status:503", 503), ("hang", 504)])
async def test_all_candidates_failed(px, sims, http, fault, status):
    for s in sims.values():
        s.set_fault(fault)
    async with http.post(px.url + "/v1/chat/completions", json={"model": "general", "messages": msgs()}) as r:
        assert r.status == status
        err = (await r.json())["error"]
    assert "ds/ds-chat" in err["message"] and "oa/mini" in err["message"]
    assert "sk-" not in err["message"] and "127.0.0.1" not in err["message"]


async def test_sdk_retries_503_but_not_budget_429(sims):
    state = LiveState(budget_remaining={"broke": 0.0})
    p = await start_proxy(sims, tenants=TENANTS, state=lambda: state)
    try:
        for s in sims.values():
            s.set_fault("status:503")
        async with sdk(p, GLOBEX_KEY, retries=1) as client:
            with pytest.raises(openai.InternalServerError) as ei:
                await client.chat.completions.create(model="general", messages=msgs())
            assert ei.value.status_code == 503
        assert len(p.meter.records) == 2  # the SDK retried once
        p.meter.records.clear()
        async with sdk(p, BROKE_KEY, retries=2) as client:
            with pytest.raises(openai.RateLimitError) as ei:
                await client.chat.completions.create(model="general", messages=msgs())
        assert ei.value.response.headers["x-should-retry"] == "false"
        assert ei.value.code == "budget_exceeded"
        assert len(p.meter.records) == 1  # not retried
    finally:
        await p.stop()


# ---------------------------------------------------------------------------- auth and residency

@pytest.fixture
async def tpx(sims):
    p = await start_proxy(sims, tenants=TENANTS)
    yield p
    await p.stop()


async def test_auth_required_with_tenants(tpx, http):
    body = {"model": "auto", "messages": msgs()}
    async with http.post(tpx.url + "/v1/chat/completions", json=body) as r:
        assert r.status == 401 and (await r.json())["error"]["type"] == "authentication_error"
    for auth in ("Bearer sk-wrong", "Basic abc", "Bearer "):
        async with http.post(tpx.url + "/v1/chat/completions", json=body, headers={"Authorization": auth}) as r:
            assert r.status == 401
    async with sdk(tpx, "sk-wrong") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model="auto", messages=msgs())
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
    async with sdk(tpx, GLOBEX_KEY) as client:
        resp = await client.chat.completions.create(model="general", messages=msgs())
        assert resp.choices[0].message.content
    assert tpx.meter.records[-1].tenant == "globex"


async def test_tenant_route_restriction_is_403(tpx):
    async with sdk(tpx, GLOBEX_KEY) as client:
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(model="coder", messages=msgs())
        ids = {m.id async for m in client.models.list()}
    assert ids == {"auto", "general", "mini"}


async def test_tenant_residency_cannot_be_lifted_by_header(tpx, sims, http):
    auth = {"Authorization": f"Bearer {ACME_KEY}"}
    async with http.post(tpx.url + "/v1/chat/completions", json={"model": "auto", "messages": msgs()},
                         headers={**auth, "X-Router-Task": "general"}) as r:
        assert r.status == 200 and r.headers["x-router-route"] == "eu" and r.headers["x-router-provider"] == "gpu-eu"
    # asking for `us` adds a restriction (eu and us: nobody) rather than replacing eu
    async with http.post(tpx.url + "/v1/chat/completions", json={"model": "mini", "messages": msgs()},
                         headers={**auth, "X-Router-Residency": "us"}) as r:
        # a permanent refusal, not a 503 the SDK would retry
        assert r.status == 403 and (await r.json())["error"]["code"] == "residency"
    assert len(sims["oa"].requests) == 0 and len(sims["ds"].requests) == 0


async def test_residency_header_adds_a_restriction(px, sims, http):
    async with http.post(px.url + "/v1/chat/completions", json={"model": "auto", "messages": msgs()},
                         headers={"X-Router-Residency": "eu", "X-Router-Task": "general"}) as r:
        assert r.status == 200 and r.headers["x-router-provider"] == "gpu-eu"
    assert len(sims["ds"].requests) == 0


# ---------------------------------------------------------------------------- other endpoints

async def test_models_list(px):
    async with sdk(px) as client:
        models = [m async for m in client.models.list()]
    ids = [m.id for m in models]
    assert ids == ["auto", "coding", "general", "eu", "coder", "ds-chat", "mini"]
    assert all(m.object == "model" for m in models)


async def test_embeddings(px, sims):
    async with sdk(px) as client:
        raw = await client.embeddings.with_raw_response.create(model="mini", input=["one", "two"])
        resp = raw.parse()
        assert len(resp.data) == 2 and len(resp.data[0].embedding) == 8
        assert raw.headers["x-router-provider"] == "oa" and raw.headers["x-router-model"] == "mini"
        assert sims["oa"].requests[-1].body["model"] == "gpt-4.1-mini"
        info = px.meter.records[-1]
        assert info.task == "embedding" and info.status == "ok" and info.prompt_tokens > 0
        with pytest.raises(openai.NotFoundError):
            await client.embeddings.create(model="auto", input="x")
        sims["oa"].inject("status:503", times=1)  # retried like chat, then served
        raw = await client.embeddings.with_raw_response.create(model="mini", input="again")
        assert raw.headers["x-router-attempts"] == "2"
        assert [a.outcome for a in px.meter.records[-1].attempts] == ["http_503", "ok"]
        sims["oa"].set_fault("status:500")
        with pytest.raises(openai.InternalServerError) as ei:
            await client.embeddings.create(model="mini", input="x")
        assert ei.value.status_code == 502 and px.meter.records[-1].status == "error"


async def test_health_ready_metrics(px, http):
    async with http.get(px.url + "/healthz") as r:
        assert r.status == 200 and (await r.json())["status"] == "ok"
    async with http.get(px.url + "/readyz") as r:
        body = await r.json()
        assert r.status == 200 and set(body["providers"]) == {"gpu-eu", "ds", "oa"}
    async with http.get(px.url + "/metrics") as r:
        assert r.status == 200 and "router_up 1" in await r.text()
    px.proxy.draining = True
    async with http.get(px.url + "/readyz") as r:
        assert r.status == 503 and (await r.json())["status"] == "draining"


async def test_readyz_without_a_usable_provider(sims, http):
    text = POLICY.format(tenants="", **{k: s.base_url for k, s in sims.items()})
    text = text.replace('kind: vllm, base_url', 'kind: openai, base_url').replace('api_key: "sk-ds-secret", ', '')
    text = text.replace('api_key: "sk-oa-secret", ', '')
    engine = Engine(parse_policy(text, env={}), AiohttpTransport())
    proxy = Proxy(engine)
    runner = web.ServerRunner(proxy.server(), handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with http.get(f"http://127.0.0.1:{runner.addresses[0][1]}/readyz") as r:
            assert r.status == 503 and (await r.json())["providers"] == []
    finally:
        await runner.cleanup()


async def test_hot_swap_policy_serves_new_routes(px, sims):
    new = parse_policy(POLICY.format(tenants="", **{k: s.base_url for k, s in sims.items()}).replace(
        "general: {targets: [ds-chat, mini]}", "general: {targets: [mini]}"), env={})
    px.engine.policy = new
    async with sdk(px) as client:
        raw = await client.chat.completions.with_raw_response.create(model="general", messages=msgs())
    assert raw.headers["x-router-model"] == "mini"


# ---------------------------------------------------------------------------- litellm as a client

async def test_litellm_as_a_client(px, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: no cost-map download
    import litellm

    resp = await litellm.acompletion(model="openai/auto", api_base=px.url + "/v1", api_key="x",
                                     messages=msgs(), extra_headers=CODING)
    assert resp.choices[0].message.content
    assert px.meter.records[-1].model == "coder"
    stream = await litellm.acompletion(model="openai/mini", api_base=px.url + "/v1", api_key="x",
                                       messages=msgs(), stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text
    with pytest.raises(litellm.NotFoundError):
        await litellm.acompletion(model="openai/nope", api_base=px.url + "/v1", api_key="x", messages=msgs(),
                                  max_retries=0)
