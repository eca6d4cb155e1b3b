"""Redis (budgets) and PostgreSQL (ledger) outages: down at start, mid-run, at shutdown.

The documented behaviour (docs/metering.md#failure-modes), checked through a real proxy:

- Redis down: tenants with a budget get 503 `budget_unavailable` (`fail_closed`) or are served
  without a reservation (`fail_open`); tenants without a budget never notice; when Redis is back,
  budgets apply again; the spend of requests served during an outage is settled when Redis
  answers, or logged and counted as lost (at shutdown). Never a 500; every request metered once.
- PostgreSQL down: requests are served; records wait and are written when it is back (once each);
  down at shutdown, the batched mode logs and counts every record it loses, the durable mode
  keeps them in its spool and the next start writes them.

Redis is a private redis-server (killed and restarted); PostgreSQL is the test server behind a TCP
link that the test cuts (every connection reset, new ones refused) and restores.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import Counter

import pytest

from router.metering.budget import open_budget
from router.metering.ledger import LedgerMeter, PostgresLedger
from router.metering.prometheus import PrometheusMeter
from tests.chaos.support import CutLink, auth, chaos_policy, figure, gather_limited, scale
from tests.reliability_support import OwnRedis, post, start_proxy

N = scale(12, 120)   # requests per step
BODY = {"model": "auto", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5}


@pytest.fixture
async def upstreams():
    from router.dev.simulator import Simulator

    s = [Simulator(models=["m"]) for _ in range(3)]
    for sim in s:
        await sim.start()
    yield s
    for sim in s:
        await sim.stop()


@pytest.fixture
def own_redis():
    try:
        r = OwnRedis()
    except FileNotFoundError:
        pytest.skip("redis-server is not installed")
    yield r
    r.kill()


async def burst(url: str, tenant: str, n: int) -> list[tuple[int, dict]]:
    async def one() -> tuple[int, dict]:
        status, headers, data = await post(url + "/v1/chat/completions", BODY, {**auth(tenant), "X-Router-Task": "general"})
        return status, {"rid": headers.get("x-request-id"), "code": (data.get("error") or {}).get("code")}
    return await gather_limited(8, [one] * n)


def count(prom: PrometheusMeter, op: str) -> float:
    return prom.registry.get_sample_value("router_budget_errors_total", {"op": op}) or 0.0


@pytest.mark.parametrize("mode", ["fail_closed", "fail_open"])
async def test_redis_down_at_start_mid_run_and_at_shutdown(upstreams, own_redis, mode, caplog):
    prom = PrometheusMeter()
    policy = chaos_policy(*(s.base_url for s in upstreams),
                          extra=f"metering: {{budget_unavailable: {mode}, budget_timeout_s: 0.3}}")
    budget = open_budget(f"{own_redis.url}?prefix=chaos-{uuid.uuid4().hex[:8]}", metrics=prom)
    p = await start_proxy(policy, budget=budget, meters=[prom])
    steps: dict[str, Counter[int]] = {}
    sent = 0
    try:
        # 1. down at start: nothing listens there yet
        for tenant in ("budget", "open"):
            results = await burst(p.url, tenant, N)
            sent += N
            steps[f"down at start, {tenant}"] = Counter(s for s, _ in results)
            if tenant == "budget" and mode == "fail_closed":
                assert all(s == 503 and d["code"] == "budget_unavailable" for s, d in results), results
            else:
                assert all(s == 200 for s, _ in results), results
        # 2. Redis comes up: budgets apply again (after the 1 s fail-fast window at most)
        own_redis.start()
        deadline = time.monotonic() + 5
        while (await burst(p.url, "budget", 1))[0][0] != 200:
            sent += 1
            assert time.monotonic() < deadline, "budgets did not recover after Redis came back"
            await asyncio.sleep(0.2)
        sent += 1
        results = await burst(p.url, "budget", N)
        sent += N
        steps["redis back, budget"] = Counter(s for s, _ in results)
        assert all(s == 200 for s, _ in results)
        # 3. killed in the middle of a burst
        task = asyncio.create_task(burst(p.url, "budget", 3 * N))
        await asyncio.sleep(0.05)
        own_redis.kill()
        results = await task
        sent += 3 * N
        steps["killed mid-run, budget"] = Counter(s for s, _ in results)
        assert {s for s, _ in results} <= ({200, 503} if mode == "fail_closed" else {200}), results
        # 4. still down at shutdown: fail_open spend that could not be settled is counted, never silent
        results = await burst(p.url, "budget", N)
        sent += N
        steps["down at shutdown, budget"] = Counter(s for s, _ in results)
    finally:
        with caplog.at_level(logging.WARNING):
            await p.stop()
    metered = Counter(i.request_id for i in p.mem.records)
    assert len(metered) == sent and set(metered.values()) == {1}
    assert all(s != 500 for c in steps.values() for s in c)
    if mode == "fail_open":
        assert count(prom, "settle_lost") >= 1 and any("settle" in r.getMessage() for r in caplog.records)
    figure(f"redis outage {mode}", requests=sent, metered_once=len(metered),
           **{k.replace(" ", "_").replace(",", ""): dict(v) for k, v in steps.items()},
           reserve_errors=int(count(prom, "reserve")), settle_lost=int(count(prom, "settle_lost")))


@pytest.fixture
def pg_link():
    url = os.environ.get("ROUTER_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("ROUTER_TEST_POSTGRES_URL is not set")
    import psycopg

    hostport = url.split("@", 1)[-1].split("/", 1)[0]          # e.g. 127.0.0.1:5432
    link = CutLink(int(hostport.rpartition(":")[2] or 5432))
    schema = "chaos_" + uuid.uuid4().hex[:10]
    via = url.replace(hostport, f"127.0.0.1:{link.port}", 1)
    yield link, f"{via}?schema={schema}"
    link.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.mark.parametrize("mode", ["batched", "durable"])
async def test_postgres_down_at_start_mid_run_and_at_shutdown(upstreams, pg_link, tmp_path, mode, caplog):
    link, url = pg_link
    spool = str(tmp_path / "spool") if mode == "durable" else None

    def meter() -> LedgerMeter:
        return LedgerMeter(PostgresLedger(url, connect_timeout_s=1), flush_interval_s=0.05, retry_max_s=0.4,
                           close_timeout_s=1.0, spool=spool, metrics=prom)

    prom = PrometheusMeter()
    policy = chaos_policy(*(s.base_url for s in upstreams))
    link.cut()  # 1. down at start
    ledger = meter()
    p = await start_proxy(policy, meters=[ledger], monitor=False)
    served: list[str] = []
    try:
        results = await burst(p.url, "open", N)
        assert all(s == 200 for s, _ in results)
        served += [d["rid"] for _, d in results]
        await asyncio.sleep(0.3)
        pending_at_start = ledger.pending
        assert pending_at_start == N and ledger.errors >= 1
        link.restore()
        assert await asyncio.to_thread(ledger.flush, 10) and ledger.written == N
        # 2. cut in the middle of a burst, then back
        task = asyncio.create_task(burst(p.url, "open", 3 * N))
        await asyncio.sleep(0.02)
        link.cut()
        results = await task
        assert all(s == 200 for s, _ in results)
        served += [d["rid"] for _, d in results]
        link.restore()
        assert await asyncio.to_thread(ledger.flush, 10) and ledger.written == 4 * N
        # 3. down at shutdown
        link.cut()
        results = await burst(p.url, "open", N)
        served += [d["rid"] for _, d in results]
    finally:
        with caplog.at_level(logging.ERROR, logger="router.metering.ledger"):
            await p.stop()  # closes the ledger meter: gives up after close_timeout_s
    lost_at_shutdown = ledger.dropped
    link.restore()
    replayed = 0
    if mode == "durable":  # the next start writes what the spool kept
        again = meter()
        replayed = again.replayed
        assert await asyncio.to_thread(again.flush, 10)
        again.close()
    db = PostgresLedger(url)
    rows = Counter(r.id for r in db.records())
    db.close()
    figure(f"postgres outage {mode}", requests=len(served), pending_while_down_at_start=pending_at_start,
           lost_at_shutdown=lost_at_shutdown, replayed_next_start=replayed, ledger_rows=sum(rows.values()),
           dropped_metric=int(prom.registry.get_sample_value("router_ledger_dropped_records_total") or 0))
    assert set(rows.values()) == {1}  # never twice
    if mode == "batched":
        assert lost_at_shutdown == N and len(rows) == 4 * N
        assert any(f"{N} record(s) lost" in r.getMessage() for r in caplog.records)
    else:
        # the segments left behind are re-sent whole (those committed before too: one row each all the same)
        assert lost_at_shutdown == 0 and replayed >= N and set(rows) == set(served)
