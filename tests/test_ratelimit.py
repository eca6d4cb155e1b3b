"""Rate limits: requests, tokens and requests in flight per tenant, key, route and model; the same
behaviour in memory and in Redis (a clock both take, so windows slide without waiting); 429s in
each API's shape with the headers OpenAI's SDK reads; and a store that does not answer."""

from __future__ import annotations

import asyncio
import datetime
import socket
import time
import uuid

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.core.errors import RateLimited
from router.core.policy import hash_key
from router.core.policy_parser import parse_policy
from router.dev.simulator import ModelConfig, Simulator
from router.metering.prometheus import PrometheusMeter
from router.metering.ratelimit import InProcessRateLimiter, RedisRateLimiter, open_rate_limiter

from .metering_support import service_url
from .money_support import start_proxy

KEY_A, KEY_B = "sk-acme-a", "sk-acme-b"

LIMITS = f"""
providers: {{gpu: {{kind: vllm, base_url: "http://127.0.0.1:9/v1"}}}}
models:
  m: {{provider: gpu, model: m, price: {{input_per_mtok: 1, output_per_mtok: 1}}}}
  n: {{provider: gpu, model: n, price: {{input_per_mtok: 1, output_per_mtok: 1}}}}
routes: {{general: {{targets: [m]}}, reasoning: {{targets: [n]}}}}
rules: [{{route: general}}]
tenants:
  rpm:   {{rate_limits: {{requests_per_minute: 3}}}}
  tpm:   {{rate_limits: {{tokens_per_minute: 1000}}}}
  conc:  {{rate_limits: {{concurrent: 2}}}}
  keyed: {{keys: ["{hash_key(KEY_A)}", "{hash_key(KEY_B)}"],
           rate_limits: {{per_key: {{requests_per_minute: 1}}, routes: {{reasoning: {{requests_per_minute: 1}},
                                                                     n: {{tokens_per_minute: 50}}}}}}}}
  free:  {{}}
"""
POLICY = parse_policy(LIMITS, env={})


class Clock:
    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "redis"])
async def limiter(request, clock):
    if request.param == "memory":
        yield InProcessRateLimiter(wall=clock)
        return
    import redis

    url = service_url("ROUTER_TEST_REDIS_URL")
    prefix = "router-test:rl:" + uuid.uuid4().hex[:10]
    backend = RedisRateLimiter(url, prefix=prefix, wall=clock)
    yield backend
    await backend.aclose()
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=prefix + ":*"))
    if keys:
        client.delete(*keys)
    client.close()


async def admit(limiter, tenant, tokens=0, *, key=None, targets=("general",), hit=False):
    return await limiter.admit(POLICY, tenant, key, targets, tokens, count_request=not hit, timeout_s=2)


async def settle(limiter, lease, tokens):
    limiter.settle(lease, tokens)
    if isinstance(limiter, RedisRateLimiter):   # settles are sent in the background: wait for them
        assert await limiter.store.drain(5)


async def test_requests_per_minute_slide_with_the_clock(limiter, clock):
    for _ in range(3):
        lease = await admit(limiter, "rpm")
        clock.now += 10
    assert lease.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(RateLimited) as e:
        await admit(limiter, "rpm")                       # t=30: three in the last minute
    err = e.value
    assert (err.status, err.kind, err.type, err.code) == (429, "requests", "requests", "rate_limit_exceeded")
    assert err.headers["x-ratelimit-limit-requests"] == "3"
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.headers["retry-after"] == "30" and err.headers["x-ratelimit-reset-requests"] == "30s"
    assert err.headers["x-should-retry"] == "true"
    clock.now += 30.001                                   # the first one left the window
    lease = await admit(limiter, "rpm")
    assert lease.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(RateLimited):
        await admit(limiter, "rpm")
    assert await admit(limiter, "free") is None           # a tenant without limits is never counted


async def test_tokens_are_reserved_up_front_and_counted_when_the_request_ends(limiter, clock):
    first = await admit(limiter, "tpm", 600)
    assert first.headers["x-ratelimit-remaining-tokens"] == "400"
    with pytest.raises(RateLimited) as e:
        await admit(limiter, "tpm", 500)                  # 600 reserved + 500 > 1000
    assert e.value.kind == "tokens" and e.value.headers["x-ratelimit-limit-tokens"] == "1000"
    clock.now += 5
    await settle(limiter, first, 200)                     # it used 200: counted now, at t=5
    second = await admit(limiter, "tpm", 500)
    assert second.headers["x-ratelimit-remaining-tokens"] == "300"
    with pytest.raises(RateLimited) as e:
        await admit(limiter, "tpm", 400)
    assert e.value.headers["retry-after"] == "60"         # the 200 counted at t=5 leave at t=65: 60 s from t=5
    clock.now += 60.5                                     # t=65.5: the 200 left, the 500 (t=5) too
    assert (await admit(limiter, "tpm", 900)).headers["x-ratelimit-remaining-tokens"] == "100"
    with pytest.raises(RateLimited) as e:
        await admit(limiter, "tpm", 1001)                 # larger than the whole limit: waiting cannot help
    assert e.value.headers["x-should-retry"] == "false" and "retry-after" not in e.value.headers
    assert "lower max_tokens" in e.value.message


async def test_admissions_without_tokens_are_kept_and_purged_like_any_other(limiter, clock):
    lease = await admit(limiter, "tpm", 0)              # a cache hit: a request, no tokens
    await settle(limiter, lease, 0)
    clock.now += 61                                       # its entries leave the window: purged
    assert (await admit(limiter, "tpm", 1000)).headers["x-ratelimit-remaining-tokens"] == "0"


async def test_requests_in_flight_are_limited_until_they_settle(limiter):
    a = await admit(limiter, "conc")
    await admit(limiter, "conc")
    with pytest.raises(RateLimited) as e:
        await admit(limiter, "conc")
    assert e.value.kind == "concurrent" and e.value.headers["retry-after"] == "1"
    await settle(limiter, a, 0)
    assert await admit(limiter, "conc") is not None


async def test_per_key_route_and_model_limits_count_separately(limiter):
    a, b = hash_key(KEY_A)[7:23], hash_key(KEY_B)[7:23]
    await admit(limiter, "keyed", key=a)
    with pytest.raises(RateLimited) as e:
        await admit(limiter, "keyed", key=a)
    assert "this API key" in e.value.message
    await admit(limiter, "keyed", key=b)                  # the other key has its own minute
    await admit(limiter, "keyed", 40, key="c", targets=("reasoning", "n"))
    with pytest.raises(RateLimited) as e:                 # the route's one request a minute
        await admit(limiter, "keyed", 5, key="d", targets=("reasoning", "n"))
    assert "'reasoning'" in e.value.message
    with pytest.raises(RateLimited) as e:                 # the model's 50 tokens (40 reserved) on another route
        await admit(limiter, "keyed", 20, key="e", targets=("general", "n"))
    assert "'n'" in e.value.message and e.value.kind == "tokens"


async def test_a_cache_hit_the_policy_does_not_count_is_neither_checked_nor_counted(limiter):
    for _ in range(3):
        await admit(limiter, "rpm")
    assert await admit(limiter, "rpm", hit=True) is None
    with pytest.raises(RateLimited):
        await admit(limiter, "rpm")


async def test_scripts_run_by_sha_and_load_themselves_where_redis_does_not_know_them():
    import redis

    from router.metering.redis_store import RedisStore

    url = service_url("ROUTER_TEST_REDIS_URL")
    source = f"-- {uuid.uuid4().hex}\nreturn tonumber(ARGV[1]) + 1"   # a script this Redis has never seen
    sha = __import__("hashlib").sha1(source.encode()).hexdigest()
    client = redis.Redis.from_url(url)
    assert client.script_exists(sha) == [False]
    store = RedisStore(url, name="test store")
    try:
        assert await store.call("t", lambda: store.script(source, ["k"], [41]), 2) == 42   # loaded by EVAL
        assert client.script_exists(sha) == [True]
        assert await store.call("t", lambda: store.script(source, ["k"], [1]), 2) == 2     # then run by its SHA
    finally:
        await store.aclose()
        client.close()


async def test_many_calls_at_once_share_one_pipelined_connection():
    """150 admissions at once, each settled in the background: redis-py's default pool refused calls
    past 100 connections (MaxConnectionsError), which `fail_open` would turn into unlimited requests;
    the store pipelines them all on one connection instead, none refused, none waiting for a turn."""
    url = service_url("ROUTER_TEST_REDIS_URL")
    prefix = "router-test:rl-pool:" + uuid.uuid4().hex[:10]
    limiter = RedisRateLimiter(url, prefix=prefix)
    try:
        leases = await asyncio.gather(*(limiter.admit(POLICY, "tpm", None, ("general",), 1, timeout_s=5)
                                        for _ in range(150)))
        for lease in leases:
            limiter.settle(lease, 1)
        assert await limiter.store.drain(5)
        assert all(lease is not None for lease in leases) and limiter.store.errors == 0
        conn = limiter.store.connection()
        assert conn is not None and conn.pending == 0 and len(limiter.store._conns) == 1
    finally:
        await limiter.aclose()
        import redis

        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=prefix + ":*"))
        if keys:
            client.delete(*keys)
        client.close()


async def test_a_requests_only_lease_settles_without_a_round_trip(limiter):
    lease = await admit(limiter, "rpm")
    assert not lease.settles
    limiter.settle(lease, 10)
    if isinstance(limiter, RedisRateLimiter):
        assert not limiter.store._tasks and not limiter.store._sending   # nothing sent
    assert (await admit(limiter, "tpm", 5)).settles and (await admit(limiter, "conc")).settles


def test_open_rate_limiter_reads_the_url():
    assert isinstance(open_rate_limiter(None), InProcessRateLimiter)
    backend = open_rate_limiter("redis://127.0.0.1:6379/0?prefix=staging:rl")
    assert isinstance(backend, RedisRateLimiter) and backend.prefix == "staging:rl"
    assert backend.url == "redis://127.0.0.1:6379/0"
    with pytest.raises(ValueError):
        open_rate_limiter("memcached://x")


# ----------------------------------------------------------------------------- over real sockets

PROXY_POLICY = """
providers: {{gpu: {{kind: vllm, base_url: "{url}"}}}}
models: {{m: {{provider: gpu, model: model-m, price: {{input_per_mtok: 1, output_per_mtok: 1}}}}}}
routes: {{general: {{targets: [m]}}}}
rules: [{{route: general}}]
timeouts: {{total_s: {total}}}
tenants:
  acme: {{keys: ["{key}"], rate_limits: {limits}}}
metering: {{tenant_label: true{metering}}}
"""


def proxy_policy(url: str, limits: str, metering: str = "", total: float = 10) -> str:
    return PROXY_POLICY.format(url=url, key=hash_key(KEY_A), limits=limits, metering=metering, total=total)


def samples(prom: PrometheusMeter) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(prom.render()[0].decode()):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


AUTH = {"Authorization": f"Bearer {KEY_A}"}


async def test_a_limited_request_gets_429_with_retry_headers_in_each_apis_shape():
    async with Simulator(models=["model-m"]) as sim:
        prom = PrometheusMeter()
        px = await start_proxy(proxy_policy(sim.base_url, "{requests_per_minute: 1}"), meters=[prom])
        try:
            async with aiohttp.ClientSession(headers=AUTH) as http:
                chat = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
                async with http.post(px.url + "/v1/chat/completions", json=chat) as r:
                    assert r.status == 200
                async with http.post(px.url + "/v1/chat/completions", json=chat) as r:
                    body = await r.json()
                    assert r.status == 429
                    assert body["error"]["code"] == "rate_limit_exceeded" and body["error"]["type"] == "requests"
                    assert 50 <= int(r.headers["retry-after"]) <= 60 and r.headers["x-should-retry"] == "true"
                    assert r.headers["x-ratelimit-limit-requests"] == "1"
                    assert r.headers["x-ratelimit-remaining-requests"] == "0"
                    assert r.headers["x-ratelimit-reset-requests"].endswith("s")
                    assert r.headers["x-router-route"] == "general"
                async with http.post(px.url + "/v1/chat/completions", json={**chat, "stream": True}) as r:
                    assert r.status == 429 and "retry-after" in r.headers   # a stream is refused before it starts
                async with http.post(px.url + "/v1/messages", json={
                        "model": "auto", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}) as r:
                    body = await r.json()
                    assert r.status == 429 and body["error"]["type"] == "rate_limit_error"
                    assert "retry-after" in r.headers and r.headers["x-should-retry"] == "true"
                async with http.post(px.url + "/v1/responses", json={"model": "auto", "input": "hi"}) as r:
                    body = await r.json()
                    assert r.status == 429 and body["error"]["code"] == "rate_limit_exceeded"   # not insufficient_quota
                    assert "x-ratelimit-limit-requests" in r.headers
        finally:
            await px.stop()
    s = samples(prom)
    assert s["router_rate_limited_total", (("kind", "requests"), ("tenant", "acme"))] == 4
    # every refusal is metered once, as an error
    errors = sum(v for (name, labels), v in s.items() if name == "router_requests_total"
                 and ("status", "error") in labels and ("provider", "none") in labels)
    assert errors == 4


async def test_admitted_requests_say_what_is_left_in_each_apis_headers():
    # OpenAI's x-ratelimit-* on every answer (JSON and streams), Anthropic's anthropic-ratelimit-* too on
    # /v1/messages: the tightest scope of each kind, counting down; none for a tenant without limits
    async with Simulator(models=["model-m"]) as sim:
        px = await start_proxy(proxy_policy(sim.base_url, "{requests_per_minute: 10, tokens_per_minute: 100000}"))
        try:
            async with aiohttp.ClientSession(headers=AUTH) as http:
                chat = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
                remaining = []
                async with http.post(px.url + "/v1/chat/completions", json=chat) as r:
                    assert r.status == 200
                    assert r.headers["x-ratelimit-limit-requests"] == "10"
                    assert r.headers["x-ratelimit-limit-tokens"] == "100000"
                    assert int(r.headers["x-ratelimit-remaining-tokens"]) < 100000
                    assert r.headers["x-ratelimit-reset-requests"].endswith("s")
                    remaining.append(int(r.headers["x-ratelimit-remaining-requests"]))
                async with http.post(px.url + "/v1/chat/completions", json={**chat, "stream": True}) as r:
                    await r.read()
                    assert r.status == 200
                    remaining.append(int(r.headers["x-ratelimit-remaining-requests"]))
                async with http.post(px.url + "/v1/responses", json={"model": "auto", "input": "hi"}) as r:
                    assert r.status == 200
                    remaining.append(int(r.headers["x-ratelimit-remaining-requests"]))
                    assert "anthropic-ratelimit-requests-limit" not in r.headers
                before = time.time()
                async with http.post(px.url + "/v1/messages", json={
                        "model": "auto", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}) as r:
                    assert r.status == 200
                    remaining.append(int(r.headers["anthropic-ratelimit-requests-remaining"]))
                    assert r.headers["x-ratelimit-remaining-requests"] == str(remaining[-1])
                    assert r.headers["anthropic-ratelimit-tokens-limit"] == "100000"
                    reset = datetime.datetime.strptime(r.headers["anthropic-ratelimit-requests-reset"],
                                                       "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
                    assert before < reset.timestamp() <= before + 62
                assert remaining == [9, 8, 7, 6]
        finally:
            await px.stop()
        free = await start_proxy(proxy_policy(sim.base_url, "{}").replace(", rate_limits: {}", ""))
        try:
            async with aiohttp.ClientSession(headers=AUTH) as http, http.post(free.url + "/v1/chat/completions", json={
                    "model": "auto", "messages": [{"role": "user", "content": "hi"}]}) as r:
                assert r.status == 200 and not [h for h in r.headers if "ratelimit" in h.lower()]
        finally:
            await free.stop()


async def test_the_openai_sdk_waits_for_retry_after_and_then_succeeds():
    async with Simulator(models=[ModelConfig("model-m", latency_s=0.4)]) as sim:
        prom = PrometheusMeter()
        px = await start_proxy(proxy_policy(sim.base_url, "{concurrent: 1}"), meters=[prom])
        client = openai.AsyncOpenAI(base_url=px.url + "/v1", api_key=KEY_A, max_retries=3)
        try:
            t0 = time.perf_counter()
            calls = [client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
                     for _ in range(2)]
            answers = await asyncio.gather(*calls)
            elapsed = time.perf_counter() - t0
        finally:
            await client.close()
            await px.stop()
    assert all(a.choices[0].message.content for a in answers)
    assert samples(prom)["router_rate_limited_total", (("kind", "concurrent"), ("tenant", "acme"))] >= 1
    assert elapsed >= 1.0   # the refused call waited the 1 s retry-after before it was sent again


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]   # nothing listens once the socket is closed


@pytest.mark.parametrize("choice", ["fail_open", "fail_closed"])
async def test_an_unreachable_store_follows_the_policy_choice_with_a_metric(choice):
    async with Simulator(models=["model-m"]) as sim:
        prom = PrometheusMeter()
        limiter = RedisRateLimiter(f"redis://127.0.0.1:{_closed_port()}/0", metrics=prom)
        px = await start_proxy(proxy_policy(sim.base_url, "{requests_per_minute: 1}",
                                            f", rate_limit_unavailable: {choice}"),
                               meters=[prom], rate_limiter=limiter)
        try:
            async with aiohttp.ClientSession(headers=AUTH) as http:
                statuses = []
                for _ in range(3):   # the limit is 1: served three times only while the store is not asked
                    async with http.post(px.url + "/v1/chat/completions", json={
                            "model": "auto", "messages": [{"role": "user", "content": "hi"}]}) as r:
                        statuses.append((r.status, (await r.json()).get("error", {}).get("code")))
        finally:
            await px.stop()
    if choice == "fail_open":
        assert statuses == [(200, None)] * 3
    else:
        assert statuses == [(503, "rate_limit_unavailable")] * 3
    assert samples(prom)["router_rate_limit_errors_total", (("op", "admit"),)] >= 1


async def test_a_blackholed_store_costs_at_most_the_timeout_within_the_deadline():
    """A Redis that accepts the connection and never answers: each request waits at most
    `metering.rate_limit_timeout_s` (0.3 s), never its 1 s deadline, and then fails closed."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)   # accept, read nothing back

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with Simulator(models=["model-m"]) as sim:
        limiter = RedisRateLimiter(f"redis://127.0.0.1:{port}/0", op_timeout_s=5, retry_s=0)
        px = await start_proxy(proxy_policy(sim.base_url, "{requests_per_minute: 100}",
                                            ", rate_limit_unavailable: fail_closed, rate_limit_timeout_s: 0.3",
                                            total=1),
                               meters=[], rate_limiter=limiter)
        try:
            async with aiohttp.ClientSession(headers=AUTH) as http:
                t0 = time.perf_counter()
                async with http.post(px.url + "/v1/chat/completions", json={
                        "model": "auto", "messages": [{"role": "user", "content": "hi"}]}) as r:
                    assert r.status == 503
                elapsed = time.perf_counter() - t0
        finally:
            await px.stop()
            for w in held:
                w.close()
            server.close()
            await server.wait_closed()
    assert 0.25 <= elapsed < 0.9, elapsed
