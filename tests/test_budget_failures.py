"""Budgets when the store misbehaves, and budgets a reload adds.

Against real Redis servers: one nothing listens on, a private redis-server paused with SIGSTOP (a
blackhole: connections open, nothing answers), killed and restarted, and the shared test Redis
behind a link that delays its replies. Each documented choice (`metering.budget_unavailable:
fail_closed | fail_open`) is checked through the proxy, with the metric and the deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid

import pytest
import redis.asyncio as aioredis

from router import Router
from router.core.errors import BudgetExceeded, BudgetUnavailable
from router.core.meter import MemoryMeter
from router.core.policy import Timeouts, hash_key
from router.metering.budget import InProcessBudget, RedisBudget, open_budget
from router.metering.prometheus import PrometheusMeter
from tests.metering_support import make_policy, msgs, service_url
from tests.reliability_support import DelayLink, OwnRedis, dead_port, post, start_proxy

KEY = "sk-tenant-acme"


def tenants(budget: str = "budget: {daily_usd: 100}", metering: str = "") -> str:
    return f"""
tenants:
  acme: {{keys: ["{hash_key(KEY)}"], {budget}}}
{metering}
"""


AUTH = {"Authorization": f"Bearer {KEY}", "X-Router-Task": "general"}
BODY = {"model": "auto", "messages": msgs(), "max_tokens": 5}


def errors(prom: PrometheusMeter, op: str) -> float:
    return prom.registry.get_sample_value("router_budget_errors_total", {"op": op}) or 0.0


@pytest.fixture
def own_redis():
    try:
        r = OwnRedis()
    except FileNotFoundError:
        pytest.skip("redis-server is not installed")
    r.start()
    yield r
    r.kill()


def day_key(prefix: str, tenant: str = "acme") -> str:
    return f"{prefix}:{{{tenant}}}:d:{time.strftime('%Y%m%d', time.gmtime())}"


# ---------------------------------------------------------------------------- unreachable: both choices


@pytest.mark.parametrize("mode", ["fail_closed", "fail_open"])
async def test_unreachable_redis_follows_the_policy_choice_with_a_metric(sims, mode):
    prom = PrometheusMeter()
    policy = make_policy(sims, tenants(metering=f"metering: {{budget_unavailable: {mode}}}"))
    p = await start_proxy(policy, budget=open_budget(f"redis://127.0.0.1:{dead_port()}/0", metrics=prom),
                          meters=[prom])
    try:
        t0 = time.monotonic()
        results = [await post(p.url + "/v1/chat/completions", BODY, AUTH) for _ in range(3)]
        elapsed = time.monotonic() - t0
        for status, _headers, data in results:
            if mode == "fail_closed":
                assert status == 503, data
                assert data["error"]["code"] == "budget_unavailable" and data["error"]["type"] == "service_unavailable"
                assert "budget store did not answer" in data["error"]["message"]
                assert "Traceback" not in data["error"]["message"]
            else:
                assert status == 200, data
        assert elapsed < 3.0
        assert errors(prom, "reserve") >= 1
        assert len(p.mem.records) == 3  # every request metered, refused or served
        assert {i.status for i in p.mem.records} == ({"error"} if mode == "fail_closed" else {"ok"})
    finally:
        await p.stop()


async def test_blackholed_redis_does_not_hold_a_1s_request_for_5s(sims, own_redis):
    """A paused redis-server accepts connections and never answers: the reservation times out inside
    the request's own deadline (`total_s: 1`), never the client library's default 5 s."""
    policy = make_policy(sims, tenants(metering="metering: {budget_timeout_s: 5}"))
    policy = dataclasses.replace(policy, timeouts=Timeouts(connect_s=1, first_token_s=2, total_s=1.0, attempt_s=1))
    own_redis.pause()
    p = await start_proxy(policy, budget=open_budget(own_redis.url))
    try:
        t0 = time.monotonic()
        status, _, data = await post(p.url + "/v1/chat/completions", BODY, AUTH)
        elapsed = time.monotonic() - t0
        assert status == 503 and data["error"]["code"] == "budget_unavailable", data
        assert elapsed < 1.6, elapsed
    finally:
        own_redis.resume()
        await p.stop()


async def test_fail_open_serves_during_an_outage_and_settles_the_spend_when_redis_is_back(sims, own_redis):
    prom = PrometheusMeter()
    policy = make_policy(sims, tenants(metering="metering: {budget_unavailable: fail_open, budget_timeout_s: 0.3}"))
    budget = RedisBudget(own_redis.url, prefix="t", metrics=prom)
    r = Router(policy, meters=[prom], budget=budget, monitor=False)
    own_redis.pause()
    t0 = time.monotonic()
    resp = await r.acomplete(msgs(), task="general", tenant="acme", max_tokens=5)
    assert time.monotonic() - t0 < 1.5
    await asyncio.sleep(0.5)
    own_redis.resume()  # inside the settle's retry window: the spend lands
    await r.aclose()
    client = aioredis.Redis.from_url(own_redis.url)
    spent = float(await client.hget(day_key("t"), "spent"))
    await client.aclose()
    assert spent == pytest.approx(resp.router.cost_usd) and spent > 0
    assert budget.lost_settles == 0 and errors(prom, "reserve") >= 1


# ---------------------------------------------------------------------------- cancelled or cut reservations


@pytest.fixture
async def shared_redis():
    url = service_url("ROUTER_TEST_REDIS_URL")
    prefix = f"test-bf-{uuid.uuid4().hex[:8]}"
    client = aioredis.Redis.from_url(url)
    yield url, prefix, client
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def reserved(client, prefix: str) -> float:
    return float(await client.hget(day_key(prefix), "reserved") or 0)


async def test_cancelled_reservation_whose_script_ran_is_released(sims, shared_redis):
    url, prefix, client = shared_redis
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    # 0.3 s per reply: a new connection's handshake and command fit in the 1 s a store call may take
    link = await DelayLink(port, delay=0.3).start()
    budget = RedisBudget(f"redis://127.0.0.1:{link.port}/0", prefix=prefix)
    r = Router(make_policy(sims, tenants()), meters=[MemoryMeter()], budget=budget, monitor=False)
    await budget._redis.command("PING")  # connect first: the EVALSHA then goes straight through
    task = asyncio.create_task(r.acomplete(msgs(), task="general", tenant="acme", max_tokens=5))
    await asyncio.sleep(0.15)   # the reserve script has run in Redis; its reply is still on the link
    assert await reserved(client, prefix) > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 5
    while await reserved(client, prefix) > 1e-12 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert await reserved(client, prefix) == pytest.approx(0, abs=1e-12)
    await r.aclose()
    await link.stop()


async def test_reservation_cut_by_its_timeout_is_released_and_refused(sims, shared_redis):
    url, prefix, client = shared_redis
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    link = await DelayLink(port, delay=0.3).start()
    budget = RedisBudget(f"redis://127.0.0.1:{link.port}/0", prefix=prefix)
    r = Router(make_policy(sims, tenants(metering="metering: {budget_timeout_s: 0.1}")), meters=[MemoryMeter()],
               budget=budget, monitor=False)
    await budget._redis.command("PING")
    with pytest.raises(BudgetUnavailable):
        await r.acomplete(msgs(), task="general", tenant="acme", max_tokens=5)
    deadline = time.monotonic() + 5
    await asyncio.sleep(0.3)
    while await reserved(client, prefix) > 1e-12 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert await reserved(client, prefix) == pytest.approx(0, abs=1e-12)
    await r.aclose()
    await link.stop()


# ---------------------------------------------------------------------------- settles


async def test_settle_outlives_a_short_outage(sims, own_redis):
    """Redis dies while a request runs and is back 1.5 s later: the settle is retried until it lands."""
    sims["ds"].set_fault("delay:0.5")
    budget = RedisBudget(own_redis.url, prefix="s")
    r = Router(make_policy(sims, tenants()), meters=[MemoryMeter()], budget=budget, monitor=False)
    task = asyncio.create_task(r.acomplete(msgs(), task="general", tenant="acme", max_tokens=5))
    await asyncio.sleep(0.25)
    own_redis.kill()             # the reservation is made; the settle will find the port closed
    resp = await task
    await asyncio.sleep(1.5)
    own_redis.start()            # same port, empty: the settle's spend lands there
    await r.aclose()
    client = aioredis.Redis.from_url(own_redis.url)
    spent = float(await client.hget(day_key("s"), "spent") or 0)
    await client.aclose()
    assert spent == pytest.approx(resp.router.cost_usd) and spent > 0
    assert budget.lost_settles == 0


async def test_settle_given_up_is_counted_and_logged(sims, own_redis, caplog):
    prom = PrometheusMeter()
    sims["ds"].set_fault("delay:0.3")
    budget = RedisBudget(own_redis.url, prefix="s", metrics=prom, settle_attempts=3)
    r = Router(make_policy(sims, tenants()), meters=[prom], budget=budget, monitor=False)
    task = asyncio.create_task(r.acomplete(msgs(), task="general", tenant="acme", max_tokens=5))
    await asyncio.sleep(0.15)
    own_redis.kill()
    resp = await task
    with caplog.at_level(logging.ERROR, logger="router.metering.budget"):
        await r.aclose()
    assert budget.lost_settles == 1 and errors(prom, "settle_lost") == 1
    lost = [rec.getMessage() for rec in caplog.records if "settle lost" in rec.getMessage()]
    assert len(lost) == 1 and f"{resp.router.cost_usd:.8f}" in lost[0]


# ---------------------------------------------------------------------------- budgets a reload adds


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_budgets_added_by_a_reload_are_enforced(sims, backend, monkeypatch):
    if backend == "redis":
        url = service_url("ROUTER_TEST_REDIS_URL")
        monkeypatch.setenv("ROUTER_BUDGETS", f"{url}?prefix=test-reload-{uuid.uuid4().hex[:8]}")
    else:
        monkeypatch.delenv("ROUTER_BUDGETS", raising=False)
    r = Router(make_policy(sims, tenants(budget="residency: null")), meters=[MemoryMeter()], monitor=False)
    assert r.engine.budget is None  # nothing to enforce at start-up
    await r.acomplete(msgs(), task="general", tenant="acme", max_tokens=5)
    r.reload(make_policy(sims, tenants(budget="budget: {daily_usd: 0.0000001}")))
    with pytest.raises(BudgetExceeded):
        await r.acomplete(msgs(), task="general", tenant="acme", max_tokens=5)
    assert isinstance(r.engine.budget, InProcessBudget if backend == "memory" else RedisBudget)
    await r.aclose()


async def test_many_requests_at_once_share_the_store_connection_instead_of_failing(sims, shared_redis):
    """redis-py's pool refused a call past its connection limit at once: 150 requests of a tenant
    with a budget at the same moment got 503 budget_unavailable (fail_closed). One pipelined
    connection carries them all."""
    url, prefix, client = shared_redis
    budget = RedisBudget(url, prefix=prefix)
    meter = MemoryMeter()
    r = Router(make_policy(sims, tenants()), meters=[meter], budget=budget, monitor=False)
    results = await asyncio.gather(*(r.acomplete(msgs(), task="general", tenant="acme", max_tokens=5)
                                     for _ in range(150)), return_exceptions=True)
    failures = [repr(x) for x in results if isinstance(x, BaseException)]
    assert failures == [], failures[:3]
    assert len(meter.records) == 150 and all(rec.status == "ok" for rec in meter.records)
    assert budget._redis.connection() is not None and len(budget._redis._conns) == 1 and budget.errors == 0
    await r.aclose()
