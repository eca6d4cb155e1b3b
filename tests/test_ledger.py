"""The ledger over real SQLite and PostgreSQL: one row per request, batched, durable, idempotent."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
import uuid

import orjson
import pytest

from router import Router
from router.core.errors import UpstreamFailed
from router.metering.ledger import LedgerMeter, LedgerRecord, PostgresLedger, SQLiteLedger, open_ledger
from router.metering.prometheus import PrometheusMeter

from .metering_support import make_policy, msgs, service_url


@pytest.fixture
def pg_url():
    return service_url("ROUTER_TEST_POSTGRES_URL")


@pytest.fixture
def pg_schema(pg_url):
    import psycopg

    schema = "t_" + uuid.uuid4().hex[:12]
    yield schema
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_factory(request, tmp_path):
    """A function that opens (again) the same ledger: SQLite in tmp_path, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        path = str(tmp_path / "ledger.db")
        return lambda: open_ledger(path)
    url = request.getfixturevalue("pg_url")
    schema = request.getfixturevalue("pg_schema")
    return lambda: open_ledger(f"{url}?schema={schema}")


def _rec(i: int, **kw) -> LedgerRecord:
    base = dict(id=f"req_{i}", ts=1_700_000_000.0 + i, tenant="acme", task="coding", task_source="hint",
                route="coding", provider="gpu", model="coder", upstream_model="Qwen", region="eu",
                prompt_tokens=10, completion_tokens=20, reasoning_tokens=0, usage_estimated=False,
                cost_usd=0.001, reference_cost_usd=0.003, latency_s=0.1, ttft_s=0.05, status="ok", error=None,
                attempts="[]")
    base.update(kw)
    return LedgerRecord(**base)


async def test_every_request_is_one_row_with_every_field(sims, ledger_factory):
    prom = PrometheusMeter()
    meter = LedgerMeter(ledger_factory(), flush_interval_s=0.05, metrics=prom)
    r = Router(make_policy(sims), meters=[prom, meter])
    sims["gpu"].inject("status:500", times=2)                       # coder fails twice, ds-chat serves
    ok = await r.acomplete(msgs("write code"), task="coding", max_tokens=12, tenant="acme")
    stream = await r.acomplete(msgs(), task="general", stream=True, max_tokens=9,
                               stream_options={"include_usage": True})
    async for _ in stream:
        pass
    sims["ds"].set_fault("status:500")
    sims["oa"].set_fault("status:500")
    with pytest.raises(UpstreamFailed):
        await r.acomplete(msgs(), task="general")
    sims["ds"].clear_faults()
    sims["oa"].clear_faults()
    cut = await r.acomplete(msgs(), task="reasoning", stream=True, max_tokens=50)
    async for _ in cut:
        break
    await cut.aclose()
    await r.aclose()

    ledger = ledger_factory()
    rows = {rec.id: rec for rec in ledger.records()}
    assert len(rows) == 4
    row = rows[ok.router.request_id]
    assert (row.tenant, row.task, row.task_source, row.route, row.provider, row.model, row.upstream_model,
            row.region, row.status) == ("acme", "coding", "hint", "coding", "ds", "ds-chat", "deepseek-chat",
                                        "cn", "ok")
    assert (row.prompt_tokens, row.completion_tokens, row.usage_estimated) == (
        ok.usage.prompt_tokens, 12, False)
    assert row.cost_usd == ok.router.cost_usd and row.reference_cost_usd == ok.router.reference_cost_usd
    assert row.reference_cost_usd == pytest.approx((row.prompt_tokens * 3 + 12 * 15) / 1e6)
    assert [a["outcome"] for a in orjson.loads(row.attempts)] == ["http_500", "http_500", "ok"]
    assert row.latency_s > 0 and row.ttft_s is not None and abs(row.ts - ok.router.created) < 1e-6
    srow = rows[stream.router.request_id]
    assert (srow.status, srow.completion_tokens, srow.cost_usd) == ("ok", 9, stream.router.cost_usd)
    erow = [x for x in rows.values() if x.status == "error"][0]
    assert erow.provider is None and erow.cost_usd == 0 and "every candidate failed" in erow.error
    assert len(orjson.loads(erow.attempts)) == 4
    crow = rows[cut.router.request_id]
    assert crow.status == "cancelled" and crow.usage_estimated and crow.cost_usd == cut.router.cost_usd > 0

    # the ledger, /metrics and RouterInfo agree to the cent (here: exactly)
    body = prom.render()[0].decode()
    metric_cost = sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                      if line.startswith("router_cost_usd_total{"))
    ledger_cost = sum(x.cost_usd for x in rows.values())
    info_cost = ok.router.cost_usd + stream.router.cost_usd + cut.router.cost_usd
    assert round(metric_cost, 2) == round(ledger_cost, 2) == round(info_cost, 2)
    assert metric_cost == pytest.approx(ledger_cost, rel=1e-9) == pytest.approx(info_cost, rel=1e-9)
    by_status = {s.key: s.requests for s in ledger.summary(by="route")}
    assert by_status == {"coding": 1, "general": 2, "reasoning": 1}
    ledger.close()


async def test_writes_are_idempotent_and_summaries_group(ledger_factory):
    ledger = ledger_factory()
    batch = [_rec(1), _rec(2, tenant="beta", status="error", cost_usd=0.0, reference_cost_usd=None),
             _rec(3, ts=1_700_000_000.0 + 86400)]
    ledger.write(batch)
    ledger.write(batch)                                   # a replayed batch changes nothing
    assert len(ledger.records()) == 3
    rows = {r.key: r for r in ledger.summary(by="tenant")}
    assert rows["acme"].requests == 2 and rows["acme"].cost_usd == pytest.approx(0.002)
    assert rows["acme"].savings_usd == pytest.approx(0.004)
    assert rows["beta"].error_rate == 1.0 and rows["beta"].savings_usd == 0
    days = ledger.summary(by="tenant", bucket_s=86400)
    assert sorted((r.bucket, r.key) for r in days) == [(1699920000.0, "acme"), (1699920000.0, "beta"),
                                                        (1700006400.0, "acme")]
    assert len(ledger.records(since=1_700_000_002.5)) == 1 and len(ledger.records(until=1_700_000_002.0)) == 1
    assert ledger.get("req_2").reference_cost_usd is None
    ledger.close()


@pytest.mark.parametrize("limit", [None, 999])   # 999: SQLite's parameter limit before 3.32
def test_sqlite_writes_large_batches_in_multi_row_statements(tmp_path, limit):
    ledger = SQLiteLedger(tmp_path / "l.db")
    if limit:   # statements are sized by the connection's limit
        ledger._conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)
    batch = [_rec(i, tenant=f"t{i % 7}", cost_usd=i / 1000) for i in range(777)]
    ledger.write(batch)
    ledger.write(batch[100:400] + [_rec(777), _rec(778)])   # overlapping rows are ignored, new ones kept
    got = {r.id: r for r in ledger.records()}
    assert len(got) == 779 and got["req_555"] == batch[555] and got["req_778"].tenant == "acme"
    ledger.close()


def test_sqlite_uses_wal(tmp_path):
    SQLiteLedger(tmp_path / "l.db").close()
    with sqlite3.connect(tmp_path / "l.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


class FlakyLedger(SQLiteLedger):
    def __init__(self, path, failures: int):
        super().__init__(path)
        self.failures = failures
        self.calls = 0

    def write(self, records):
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise OSError("ledger unavailable")
        super().write(records)


def _sample(prom: PrometheusMeter, name: str) -> float:
    value = prom.registry.get_sample_value(name)
    return value if value is not None else 0.0


@pytest.mark.parametrize("lock_free", [False, True])
async def test_a_ledger_that_is_down_keeps_records_and_retries(sims, tmp_path, lock_free):
    prom = PrometheusMeter(lock_free=lock_free)
    ledger = FlakyLedger(tmp_path / "l.db", failures=3)
    meter = LedgerMeter(ledger, flush_interval_s=0.01, metrics=prom)
    r = Router(make_policy(sims), meters=[prom, meter])
    for _ in range(5):
        await r.acomplete(msgs(), task="coding")          # the gateway keeps serving
    await asyncio.sleep(0.05)
    assert _sample(prom, "router_ledger_errors_total") >= 1
    assert meter.flush(timeout=5)
    assert _sample(prom, "router_ledger_pending_records") == 0
    assert _sample(prom, "router_ledger_errors_total") == 3
    await r.aclose()
    assert len(SQLiteLedger(tmp_path / "l.db").records()) == 5


@pytest.mark.parametrize("lock_free", [False, True])
async def test_pending_gauge_shows_a_ledger_that_is_down(sims, tmp_path, lock_free):
    prom = PrometheusMeter(lock_free=lock_free)
    meter = LedgerMeter(FlakyLedger(tmp_path / "l.db", failures=10**6), flush_interval_s=0.01, metrics=prom,
                        close_timeout_s=0.2)
    r = Router(make_policy(sims), meters=[prom, meter])
    for _ in range(3):
        await r.acomplete(msgs(), task="coding")
    await asyncio.sleep(0.1)
    assert _sample(prom, "router_ledger_pending_records") == 3
    await r.aclose()


@pytest.mark.parametrize("lock_free", [False, True])
def test_full_buffer_drops_the_oldest(tmp_path, lock_free):
    from router.core.response import RouterInfo

    prom = PrometheusMeter(lock_free=lock_free)
    meter = LedgerMeter(FlakyLedger(tmp_path / "l.db", failures=10**6), flush_interval_s=0.01, max_pending=3,
                        metrics=prom, close_timeout_s=0.1)
    for i in range(5):
        meter.record(RouterInfo(f"req_{i}", "general", "hint", 1.0, None, "general", None, status="ok"))
    assert meter.pending == 3 and meter.dropped == 2
    assert _sample(prom, "router_ledger_dropped_records_total") == 2
    kept = [r.id for r in meter._buf]
    assert "req_4" in kept and "req_0" not in kept
    meter.close()


def test_close_flushes_before_the_interval(tmp_path):
    from router.core.response import RouterInfo

    meter = LedgerMeter(SQLiteLedger(tmp_path / "l.db"), flush_interval_s=30)
    for i in range(7):
        meter.record(RouterInfo(f"req_{i}", "general", "hint", 1.0, None, "general", None, status="ok"))
    meter.close()
    assert len(SQLiteLedger(tmp_path / "l.db").records()) == 7


def test_batches_by_size(tmp_path):
    from router.core.response import RouterInfo

    ledger = FlakyLedger(tmp_path / "l.db", failures=0)
    meter = LedgerMeter(ledger, flush_interval_s=30, batch_size=4)
    for i in range(8):
        meter.record(RouterInfo(f"req_{i}", "general", "hint", 1.0, None, "general", None, status="ok"))
    t0 = time.monotonic()
    while meter.pending and time.monotonic() - t0 < 5:
        time.sleep(0.01)
    assert meter.pending == 0 and ledger.calls == 2   # two full batches, no timer needed
    meter.close()


async def test_postgres_down_does_not_stop_the_gateway(sims):
    prom = PrometheusMeter()
    ledger = PostgresLedger("postgresql://postgres@127.0.0.1:1/none", connect_timeout_s=1)
    meter = LedgerMeter(ledger, flush_interval_s=0.01, metrics=prom, close_timeout_s=0.2)
    r = Router(make_policy(sims), meters=[prom, meter])
    resp = await r.acomplete(msgs(), task="coding")
    assert resp.router.status == "ok"
    await asyncio.sleep(0.2)
    assert _sample(prom, "router_ledger_errors_total") >= 1
    assert _sample(prom, "router_ledger_pending_records") == 1
    await r.aclose()


def test_open_ledger_targets(tmp_path):
    assert isinstance(open_ledger(f"sqlite:///{tmp_path}/a.db"), SQLiteLedger)
    assert os.path.exists(f"{tmp_path}/a.db")
    assert isinstance(open_ledger(tmp_path / "b.db"), SQLiteLedger)
    pg = open_ledger("postgresql://u@h/db?schema=abc")
    assert isinstance(pg, PostgresLedger) and pg.schema == "abc" and "schema" not in pg.url
