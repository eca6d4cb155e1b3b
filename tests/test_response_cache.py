"""The exact-match response cache: bounded stores (memory, Redis), keys over the normalised body,
answers that replay as JSON or as a stream in every API shape, Cache-Control, temperature, tenant
isolation, rate limits, and hits metered once with their savings (over real sockets)."""

from __future__ import annotations

import uuid

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.core.policy import RouteCache, hash_key
from router.core.replay import Recorder, cache_key, replay_chunks
from router.dev.simulator import ModelConfig, Simulator
from router.metering.ledger import LedgerMeter, SQLiteLedger, open_ledger
from router.metering.prometheus import PrometheusMeter
from router.metering.response_cache import InProcessCache, RedisCache, open_response_cache
from router.tools.report import summarize

from .metering_support import service_url
from .money_support import sse_events, start_proxy

# ----------------------------------------------------------------------------- keys and replays


def test_keys_ignore_how_an_answer_is_delivered_and_separate_everything_else():
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "tools": [{"type": "function"}]}
    base = cache_key("acme", "m", body)
    assert base == cache_key("acme", "m", {**body, "stream": True, "stream_options": {"include_usage": True},
                                           "user": "u-1", "model": "auto", "metadata": {"a": 1}})
    assert base == cache_key("acme", "m", dict(reversed(list(body.items()))))   # key order does not matter
    for other in (cache_key("globex", "m", body), cache_key(None, "m", body), cache_key("acme", "n", body),
                  cache_key("acme", "m", {**body, "temperature": 0.1}), cache_key("acme", "m", {**body, "seed": 1}),
                  cache_key("acme", "m", {**body, "tools": []}), cache_key("acme", "m", {**body, "max_tokens": 5})):
        assert other != base


def test_a_stream_assembles_into_the_completion_that_replays_as_the_same_stream():
    chunks = [
        {"id": "c", "created": 7, "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": "Let me "}}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": "think."}}]},
        {"choices": [{"index": 0, "delta": {"content": "Calling."}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                             "function": {"name": "get", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}},
    ]
    rec = Recorder()
    for c in chunks:
        rec.feed(c)
    done = rec.completion()
    message = done["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Calling.", "reasoning_content": "Let me think.",
                       "tool_calls": [{"id": "call_1", "type": "function",
                                       "function": {"name": "get", "arguments": '{"city":"Paris"}'}}]}
    assert done["choices"][0]["finish_reason"] == "tool_calls" and done["usage"]["completion_tokens"] == 4
    again = Recorder()
    for c in replay_chunks(done, include_usage=True):
        again.feed(c)
    assert again.completion() == done
    assert all(c["choices"] for c in replay_chunks(done, include_usage=False))   # no usage chunk unless asked


# ----------------------------------------------------------------------------- stores


class Tick:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_the_in_process_store_is_bounded_by_entries_bytes_and_time():
    tick = Tick()
    cache = InProcessCache(clock=tick)
    entries = RouteCache(ttl_s=10, max_entries=2)
    cache.put("r", "a", b"1" * 10, entries)
    cache.put("r", "b", b"2" * 10, entries)
    assert await cache.get("r", "a") == b"1" * 10       # a is now the most recently used
    cache.put("r", "c", b"3" * 10, entries)
    assert await cache.get("r", "b") is None and await cache.get("r", "a") is not None
    assert await cache.get("other", "a") is None        # each route has its own space
    tick.now += 10
    assert await cache.get("r", "a") is None            # expired
    sized = RouteCache(ttl_s=10, max_bytes=25)
    cache.put("s", "x", b"x" * 10, sized)
    cache.put("s", "y", b"y" * 10, sized)
    cache.put("s", "z", b"z" * 10, sized)               # 30 bytes > 25: the oldest goes
    assert cache.size("s") == (2, 20) and await cache.get("s", "x") is None
    cache.put("s", "big", b"b" * 26, sized)             # larger than the whole space: not stored
    assert await cache.get("s", "big") is None


@pytest.fixture
async def redis_cache():
    import redis

    url = service_url("ROUTER_TEST_REDIS_URL")
    prefix = "router-test:cache:" + uuid.uuid4().hex[:10]
    cache = RedisCache(url, prefix=prefix)
    yield cache, url, prefix
    await cache.aclose()
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=prefix + ":*"))
    if keys:
        client.delete(*keys)
    client.close()


async def test_the_redis_store_is_bounded_by_entries_and_bytes(redis_cache):
    cache, _, _ = redis_cache
    entries = RouteCache(ttl_s=30, max_entries=2)
    for key in ("a", "b", "c"):
        cache.put("r", key, key.encode() * 10, entries)
        await cache.store.aclose()                       # wait for the write
    assert [await cache.get("r", k, timeout_s=1) for k in ("a", "b", "c")] == [None, b"b" * 10, b"c" * 10]
    sized = RouteCache(ttl_s=30, max_bytes=25)
    for key in ("x", "y", "z"):
        cache.put("s", key, key.encode() * 10, sized)
        await cache.store.aclose()
    assert [await cache.get("s", k, timeout_s=1) for k in ("x", "y", "z")] == [None, b"y" * 10, b"z" * 10]
    assert await cache.get("r", "b", timeout_s=1) == b"b" * 10   # routes do not evict each other


def test_open_response_cache_reads_the_url():
    assert isinstance(open_response_cache("memory"), InProcessCache)
    cache = open_response_cache("redis://127.0.0.1:6379/2?prefix=staging:cache")
    assert isinstance(cache, RedisCache) and (cache.url, cache.prefix) == ("redis://127.0.0.1:6379/2", "staging:cache")


# ----------------------------------------------------------------------------- over real sockets

ACME, GLOBEX = "sk-acme-cache", "sk-globex-cache"

POLICY = f"""
providers: {{{{gpu: {{{{kind: vllm, base_url: "{{url}}"}}}}}}}}
models: {{{{m: {{{{provider: gpu, model: model-m, price: {{{{input_per_mtok: 2, output_per_mtok: 4}}}}}}}}}}}}
routes:
  general: {{{{targets: [m], cache: {{{{ttl_s: 60, max_entries: 100{{extra}}}}}}}}}}
rules: [{{{{route: general}}}}]
tenants:
  acme:   {{{{keys: ["{hash_key(ACME)}"]{{limits}}}}}}
  globex: {{{{keys: ["{hash_key(GLOBEX)}"]}}}}
metering: {{{{tenant_label: true}}}}
"""


def policy(url: str, extra: str = "", limits: str = "") -> str:
    return POLICY.format(url=url, extra=extra, limits=limits)


def chat(text: str = "What is the capital of France?", **fields):
    return {"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": text}], **fields}


def metric(prom: PrometheusMeter, name: str, **labels: str) -> float:
    text = prom.render()[0].decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture
async def sim():
    async with Simulator(models=[ModelConfig("model-m", reply_tokens=12, reasoning=True, reasoning_tokens=4)]) as s:
        yield s


def upstream_calls(sim: Simulator) -> int:
    return sum(1 for r in sim.requests if r.path.endswith("/chat/completions"))


async def test_a_hit_answers_without_the_upstream_costs_nothing_and_records_its_savings(sim, tmp_path):
    prom = PrometheusMeter(tenant_label=True)
    ledger = LedgerMeter(SQLiteLedger(tmp_path / "l.db"), metrics=prom)
    px = await start_proxy(policy(sim.base_url), meters=[prom, ledger])
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ACME}"}) as http:
            async with http.post(px.url + "/v1/chat/completions", json=chat()) as r:
                first, miss = await r.json(), r.headers
            async with http.post(px.url + "/v1/chat/completions", json=chat(user="someone", stream=False)) as r:
                second, hit = await r.json(), r.headers
    finally:
        await px.stop()
    assert miss["x-router-cache"] == "miss" and hit["x-router-cache"] == "hit"
    assert upstream_calls(sim) == 1
    assert second["choices"] == first["choices"]
    cost = float(miss["x-router-cost-usd"])
    assert cost > 0 and hit["x-router-cost-usd"] == "0.0000000000" and second["usage"]["cost"] == 0
    assert "x-router-provider" not in hit and hit["x-router-model"] == "m" and hit["x-router-attempts"] == "0"
    rows = open_ledger(tmp_path / "l.db").records()
    assert [(r.response_cache, r.status) for r in rows] == [("miss", "ok"), ("hit", "ok")]   # metered once each
    assert rows[1].cost_usd == 0 and rows[1].provider is None and rows[1].cache_saved_usd == pytest.approx(cost, abs=1e-10)
    [row] = summarize(open_ledger(tmp_path / "l.db"))
    assert (row["requests"], row["cache_hits"]) == (2, 1) and row["cache_saved_usd"] == round(rows[1].cache_saved_usd, 6)
    assert metric(prom, "router_cache_hits_total", route="general", tenant="acme") == 1
    assert metric(prom, "router_cache_misses_total", route="general", tenant="acme") == 1
    assert metric(prom, "router_cache_savings_usd_total", route="general") == pytest.approx(cost, abs=1e-10)


async def test_streams_replay_as_streams_in_every_api_shape(sim):
    px = await start_proxy(policy(sim.base_url))
    auth = {"Authorization": f"Bearer {ACME}"}

    async def twice(http, path, body):
        out = []
        for _ in range(2):
            async with http.post(px.url + path, json=body) as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
                out.append((r.headers["x-router-cache"], sse_events(await r.read())))
        return out

    try:
        async with aiohttp.ClientSession(headers=auth) as http:
            # chat: filled by a stream, replayed as one
            (m, miss), (h, hit) = await twice(http, "/v1/chat/completions",
                                              chat("stream me", stream=True, stream_options={"include_usage": True}))
            text = lambda evs: "".join(d["choices"][0]["delta"].get("content") or "" for _, d in evs  # noqa: E731
                                       if isinstance(d, dict) and d.get("choices"))
            assert (m, h) == ("miss", "hit") and text(hit) == text(miss) and text(hit)
            assert hit[-1] == (None, "[DONE]") and hit[-2][1]["usage"]["cost"] == 0
            assert hit[-2][1]["usage"]["completion_tokens"] == miss[-2][1]["usage"]["completion_tokens"]
            # a JSON answer replays as a stream too: one entry serves both
            async with http.post(px.url + "/v1/chat/completions", json=chat("json first")) as r:
                answer = (await r.json())["choices"][0]["message"]["content"]
            async with http.post(px.url + "/v1/chat/completions", json=chat("json first", stream=True)) as r:
                assert r.headers["x-router-cache"] == "hit" and text(sse_events(await r.read())) == answer
            # Anthropic Messages
            body = {"model": "auto", "max_tokens": 64, "temperature": 0, "stream": True,
                    "messages": [{"role": "user", "content": "anthropic, please"}]}
            (m, miss), (h, hit) = await twice(http, "/v1/messages", body)
            names = [n for n, _ in hit]
            assert (m, h) == ("miss", "hit") and names[0] == "message_start" and names[-1] == "message_stop"
            said = lambda evs: "".join(d["delta"].get("text", "") for n, d in evs  # noqa: E731
                                       if n == "content_block_delta")
            assert said(hit) == said(miss) and said(hit)
            assert next(d for n, d in hit if n == "message_delta")["usage"]["cost"] == 0
            # OpenAI Responses
            body = {"model": "auto", "input": "responses, please", "temperature": 0, "stream": True}
            (m, miss), (h, hit) = await twice(http, "/v1/responses", body)
            final = lambda evs: next(d for n, d in evs if n == "response.completed")["response"]  # noqa: E731
            assert (m, h) == ("miss", "hit") and final(hit)["output_text"] == final(miss)["output_text"]
            assert final(hit)["usage"]["cost"] == 0 and final(miss)["usage"]["cost"] > 0
    finally:
        await px.stop()
    assert upstream_calls(sim) == 4


async def test_what_is_not_cached_and_what_bypasses_the_cache(sim):
    px = await start_proxy(policy(sim.base_url))
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ACME}"}) as http:
            async def send(body, **headers):
                async with http.post(px.url + "/v1/chat/completions", json=body, headers=headers) as r:
                    assert r.status == 200
                    return r.headers.get("x-router-cache")

            sampled = {"model": "auto", "messages": [{"role": "user", "content": "no temperature: 1, sampled"}]}
            assert [await send(sampled) for _ in range(2)] == [None, None]           # temperature > 0: skipped
            assert [await send(chat(temperature=0.7)) for _ in range(2)] == [None, None]
            assert await send(chat("fresh")) == "miss"
            assert await send(chat("fresh"), **{"Cache-Control": "no-cache"}) == "miss"   # bypassed, and stored again
            assert await send(chat("fresh")) == "hit"
            assert await send(chat("never"), **{"Cache-Control": "no-store"}) == "miss"
            assert await send(chat("never")) == "miss"                               # no-store stored nothing
        async with (aiohttp.ClientSession(headers={"Authorization": f"Bearer {GLOBEX}"}) as http,
                    http.post(px.url + "/v1/chat/completions", json=chat("fresh")) as r):
            assert r.headers["x-router-cache"] == "miss"                              # tenants never share entries
    finally:
        await px.stop()
    assert upstream_calls(sim) == 2 + 2 + 2 + 2 + 1


async def test_a_route_may_cache_sampled_requests(sim):
    px = await start_proxy(policy(sim.base_url, extra=", max_temperature: 1"))
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ACME}"}) as http:
            seen = []
            for _ in range(2):
                async with http.post(px.url + "/v1/chat/completions", json={
                        "model": "auto", "messages": [{"role": "user", "content": "default temperature"}]}) as r:
                    seen.append(r.headers["x-router-cache"])
    finally:
        await px.stop()
    assert seen == ["miss", "hit"]


@pytest.mark.parametrize("count_hits", [True, False])
async def test_hits_count_against_rate_limits_as_the_policy_says(sim, count_hits):
    limits = f", rate_limits: {{requests_per_minute: 2, cache_hits: {'true' if count_hits else 'false'}}}"
    px = await start_proxy(policy(sim.base_url, limits=limits))
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ACME}"}) as http:
            seen = []
            for _ in range(4):
                async with http.post(px.url + "/v1/chat/completions", json=chat()) as r:
                    seen.append((r.status, r.headers.get("x-router-cache")))
    finally:
        await px.stop()
    if count_hits:
        assert seen == [(200, "miss"), (200, "hit"), (429, None), (429, None)]
    else:
        assert seen == [(200, "miss"), (200, "hit"), (200, "hit"), (200, "hit")]


async def test_replicas_share_answers_through_redis_and_a_dead_redis_is_a_miss(sim, redis_cache):
    _, url, prefix = redis_cache
    proms = [PrometheusMeter(), PrometheusMeter()]
    a = await start_proxy(policy(sim.base_url), meters=[proms[0]],
                          response_cache=RedisCache(url, prefix=prefix, metrics=proms[0]))
    b = await start_proxy(policy(sim.base_url), meters=[proms[1]],
                          response_cache=RedisCache(url, prefix=prefix, metrics=proms[1]))
    dead = await start_proxy(policy(sim.base_url), meters=[PrometheusMeter()],
                             response_cache=RedisCache("redis://127.0.0.1:1/0", prefix=prefix))
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ACME}"}) as http:
            async with http.post(a.url + "/v1/chat/completions", json=chat("shared")) as r:
                assert r.headers["x-router-cache"] == "miss"
            await a.engine.admission.cache.store.aclose()   # the write is sent in the background: wait for it
            async with http.post(b.url + "/v1/chat/completions", json=chat("shared")) as r:
                assert r.headers["x-router-cache"] == "hit"
            async with http.post(dead.url + "/v1/chat/completions", json=chat("shared")) as r:
                assert r.status == 200 and r.headers["x-router-cache"] == "miss"
            errors = dead.engine.admission.cache.store.errors
    finally:
        for p in (a, b, dead):
            await p.stop()
    assert upstream_calls(sim) == 2 and errors >= 1
    assert metric(proms[1], "router_cache_hits_total") == 1
