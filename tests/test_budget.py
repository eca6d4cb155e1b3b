"""Budgets: reserve before the call, settle after; in-process and Redis (atomic Lua), one and many replicas."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from router import Router
from router.core.errors import BudgetExceeded
from router.metering.budget import InProcessBudget, RedisBudget, scopes_for

from .metering_support import make_policy, msgs, policy_text, service_url


@pytest.fixture
def redis_url():
    return service_url("ROUTER_TEST_REDIS_URL")


@pytest.fixture
async def redis_prefix(redis_url):
    import redis.asyncio as aioredis

    prefix = "router-test:" + uuid.uuid4().hex[:10]
    yield prefix
    client = aioredis.Redis.from_url(redis_url)
    keys = [k async for k in client.scan_iter(match=prefix + ":*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def tenants(daily: float, action: str = "reject", extra: str = "") -> str:
    return f"tenants:\n  acme: {{budget: {{daily_usd: {daily}, on_exhausted: {action}{extra}}}}}\n  free: {{}}\n"


async def hammer(r: Router, n: int, concurrency: int, **kw) -> tuple[list[float], int]:
    """Send n requests, `concurrency` at a time; return the costs of those served and the count rejected."""
    costs: list[float] = []
    rejected = 0
    sem = asyncio.Semaphore(concurrency)

    async def one():
        nonlocal rejected
        async with sem:
            try:
                resp = await r.acomplete(msgs(), **kw)
                costs.append(resp.router.cost_usd)
            except BudgetExceeded:
                rejected += 1

    await asyncio.gather(*(one() for _ in range(n)))
    return costs, rejected


async def settled(r: Router) -> None:
    """Wait for the budget's settles in flight (RedisBudget sends them in the background)."""
    if isinstance(r.engine.budget, RedisBudget):
        assert await r.engine.budget.drain(5)


@pytest.fixture(params=["memory", "redis"])
def budget_factory(request):
    if request.param == "memory":
        return lambda: InProcessBudget()
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    return lambda: RedisBudget(url, prefix=prefix, refresh_s=0.05)


async def test_concurrent_requests_cannot_overspend(sims, budget_factory):
    limit = 0.0002
    r = Router(make_policy(sims, tenants(limit)), budget=budget_factory())
    costs, rejected = await hammer(r, 60, 16, model="ds-chat", tenant="acme", max_tokens=20)
    assert rejected > 0 and costs
    assert sum(costs) <= limit + 1e-12
    await settled(r)   # the last settles may still be in flight: their holds would refuse what fits
    more: list[float] = []
    for _ in range(30):   # use up what is left, one at a time, each settled before the next
        served, rejected = await hammer(r, 1, 1, model="ds-chat", tenant="acme", max_tokens=20)
        more += served
        await settled(r)   # (a Redis settle still in flight frees the difference to its estimate)
        if rejected:
            break
    assert limit * 0.8 < sum(costs) + sum(more) <= limit + 1e-12
    with pytest.raises(BudgetExceeded) as e:
        await r.acomplete(msgs(), model="ds-chat", tenant="acme", max_tokens=20)
    assert e.value.status == 429
    resp = await r.acomplete(msgs(), model="ds-chat", tenant="free")   # a tenant without a budget is untouched
    assert resp.router.status == "ok"
    await r.aclose()


async def test_streams_reserve_and_settle_too(sims, budget_factory):
    budget = budget_factory()
    r = Router(make_policy(sims, tenants(1.0)), budget=budget)
    s = await r.acomplete(msgs(), model="ds-chat", tenant="acme", stream=True, max_tokens=11)
    async for _ in s:
        pass
    await asyncio.sleep(0.05)
    await r.engine.budget.aclose() if isinstance(budget, RedisBudget) else None
    pol = r.policy
    assert budget.remaining(pol, "acme") == pytest.approx(1.0 - s.router.cost_usd, abs=1e-12) or isinstance(
        budget, RedisBudget)
    if isinstance(budget, RedisBudget):
        day = scopes_for("acme", pol.tenants["acme"].budget, None, time.time())[0].key[len("acme"):]
        assert await budget.spent(day, "acme") == pytest.approx(s.router.cost_usd, abs=1e-15)
    await r.aclose()


async def test_downgrade_sends_an_exhausted_tenant_to_the_cheapest(sims, budget_factory):
    # general: ds-chat then mini; with almost nothing left the budget downgrades instead of rejecting
    r = Router(make_policy(sims, tenants(0.00001, "downgrade")), budget=budget_factory())
    first = await r.acomplete(msgs(), task="general", tenant="acme", max_tokens=200)
    assert first.router.model == "ds-chat"
    for _ in range(3):
        resp = await r.acomplete(msgs(), task="general", tenant="acme", max_tokens=200)
        assert resp.router.model == "ds-chat" and resp.router.status == "ok"
    await r.aclose()


async def test_decide_sees_the_remaining_budget(sims):
    budget = InProcessBudget()
    r = Router(make_policy(sims, tenants(0.00005)), budget=budget)
    await hammer(r, 20, 1, model="ds-chat", tenant="acme", max_tokens=20)
    d = r.explain(msgs(), task="general", tenant="acme", max_tokens=20)
    assert {c.excluded for c in d.candidates} == {"over_budget"}
    await r.aclose()


async def test_route_budgets_limit_one_route(sims, budget_factory):
    extra = ", routes: {general: {daily_usd: 0.00003}}"
    r = Router(make_policy(sims, tenants(1.0, extra=extra)), budget=budget_factory())
    costs, rejected = await hammer(r, 10, 1, task="general", tenant="acme", max_tokens=20)
    assert rejected and sum(costs) <= 0.00003
    resp = await r.acomplete(msgs(), task="coding", tenant="acme", max_tokens=20)   # another route still runs
    assert resp.router.route == "coding"
    await r.aclose()


async def test_redis_reservation_of_a_crashed_replica_expires(redis_url, redis_prefix, sims):
    policy = make_policy(sims, tenants(0.0001))
    now = [time.time()]   # a clock of the test's own: a slow machine cannot expire the reservation early
    ghost = RedisBudget(redis_url, prefix=redis_prefix, reservation_ttl_s=0.3, wall=lambda: now[0])
    d = Router(policy).explain(msgs(), model="ds-chat", tenant="acme", max_tokens=20)
    # a replica reserves the whole budget and dies before settling
    big = d.candidates[0].__class__(**{**d.candidates[0].to_dict(), "estimated_cost_usd": 0.0001})
    res, _ = await ghost.reserve(policy, d, [big])
    assert res is not None
    r = Router(policy, budget=RedisBudget(redis_url, prefix=redis_prefix, refresh_s=0.1, wall=lambda: now[0]))
    with pytest.raises(BudgetExceeded):
        await r.acomplete(msgs(), model="ds-chat", tenant="acme", max_tokens=20)
    now[0] += 0.4          # past the reservation's expiry
    await asyncio.sleep(0.15)   # and past the cached "nothing left" (refresh_s)
    resp = await r.acomplete(msgs(), model="ds-chat", tenant="acme", max_tokens=20)
    assert resp.router.status == "ok"
    await r.aclose()
    await ghost.aclose()


WORKER = textwrap.dedent("""
    import asyncio, json, sys
    from router import Router
    from router.metering.budget import RedisBudget
    from router.core.errors import BudgetExceeded
    from router.core.policy_parser import parse_policy

    async def main():
        text, url, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
        r = Router(parse_policy(text, env={}), budget=RedisBudget(url, prefix=prefix, refresh_s=0.02))
        await r.acomplete([{"role": "user", "content": "warm up"}], model="ds-chat", tenant="free")
        await r.engine.budget._redis.command("PING")   # connected and warm: the race starts at "go"
        print("ready", flush=True)
        sys.stdin.readline()   # start together: else the first process up may spend the whole budget
        costs, rejected = [], 0
        async def one():
            nonlocal rejected
            try:
                resp = await r.acomplete([{"role": "user", "content": "hello there"}], model="ds-chat",
                                         tenant="acme", max_tokens=20)
                costs.append(resp.router.cost_usd)
            except BudgetExceeded:
                rejected += 1
        while rejected < 40:
            await asyncio.gather(*(one() for _ in range(8)))
        await r.aclose()
        print(json.dumps({"costs": costs, "rejected": rejected}))

    asyncio.run(main())
""")


async def test_two_processes_against_one_redis_overspend_at_most_one_request_each(
        sims, redis_url, redis_prefix):
    # Two OS processes, each a Router over the library API, one Redis, one set of simulators.
    limit = 0.001
    sims["ds"].configure_model("deepseek-chat", latency_s=0.01)   # requests overlap across the processes
    text = policy_text(sims, tenants(limit))
    env = dict(os.environ, PYTHONWARNINGS="error")
    procs = [await asyncio.create_subprocess_exec(sys.executable, "-c", WORKER, text, redis_url, redis_prefix,
                                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                  stderr=subprocess.PIPE, env=env)
             for _ in range(2)]
    for p in procs:
        assert await asyncio.wait_for(p.stdout.readline(), 30) == b"ready\n"
    for p in procs:
        p.stdin.write(b"go\n")
        await p.stdin.drain()
    outs = [await asyncio.wait_for(p.communicate(), 60) for p in procs]
    results = []
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()[-2000:]
        results.append(json.loads(out))
    costs = [c for res in results for c in res["costs"]]
    assert all(res["costs"] for res in results)            # both replicas really competed
    assert sum(costs) <= limit + 2 * max(costs)           # at most one request's cost per replica over
    assert sum(costs) > limit * 0.9
    budget = RedisBudget(redis_url, prefix=redis_prefix)
    policy = make_policy(sims, tenants(limit))
    day = scopes_for("acme", policy.tenants["acme"].budget, None, time.time())[0].key[len("acme"):]
    assert await budget.spent(day, "acme") == pytest.approx(sum(costs), abs=1e-12)   # settled, to the cent
    await budget.aclose()


def test_open_budget_takes_the_redis_key_prefix_from_the_url():
    from router.metering.budget import open_budget

    b = open_budget("redis://127.0.0.1:6379/0?socket_timeout=1&prefix=staging:budget")
    assert isinstance(b, RedisBudget)
    assert (b.url, b.prefix) == ("redis://127.0.0.1:6379/0?socket_timeout=1", "staging:budget")
    b = open_budget("redis://127.0.0.1:6379/0")
    assert (b.url, b.prefix) == ("redis://127.0.0.1:6379/0", "router:budget")
    assert open_budget("redis://h/0?prefix=x", prefix="explicit").prefix == "explicit"
    assert isinstance(open_budget("memory"), InProcessBudget)
    with pytest.raises(ValueError, match="unknown budget backend"):
        open_budget("mysql://x")
