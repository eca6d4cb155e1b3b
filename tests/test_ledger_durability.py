"""The ledger's promises under stress: its own unguessable keys, safe migrations, every lost record
logged and counted, no retry storm, no hang on a stuck writer, and the loss window of each mode
measured by SIGKILLing a real `router serve` under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import aiohttp
import pytest

from router.core.policy import hash_key
from router.core.response import RouterInfo
from router.engine.engine import new_request_id
from router.metering.ledger import LedgerMeter, PostgresLedger, open_ledger
from router.metering.prometheus import PrometheusMeter
from tests.metering_support import make_policy, msgs, policy_text, service_url
from tests.reliability_support import dead_port, post, start_proxy

ACME, GLOBEX = "sk-acme-1", "sk-globex-2"
TENANTS = f"""
tenants:
  acme:   {{keys: ["{hash_key(ACME)}"]}}
  globex: {{keys: ["{hash_key(GLOBEX)}"]}}
"""
RID = re.compile(r"req_[0-9a-f]{32}")


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


def info(i: int, *, cid: bool = True) -> RouterInfo:
    r = RouterInfo(f"req_{uuid.uuid4().hex[:24]}", "general", "hint", 1.0, None, "general", None, status="ok",
                   created=time.time())
    if cid:
        r.client_request_id = f"c{i}"
    return r


# ---------------------------------------------------------------------------- keys


async def test_twenty_requests_sharing_one_client_id_leave_twenty_rows(sims, tmp_path):
    ledger = LedgerMeter(open_ledger(str(tmp_path / "l.db")), flush_interval_s=0.05)
    p = await start_proxy(make_policy(sims, TENANTS), meters=[ledger])
    try:
        ids = []
        for _ in range(20):
            status, headers, data = await post(p.url + "/v1/chat/completions", {"model": "mini", "messages": msgs()},
                                               {"Authorization": f"Bearer {ACME}", "X-Request-Id": "same-id"})
            assert status == 200, data
            assert headers["x-client-request-id"] == "same-id"
            ids.append(headers["x-request-id"])
    finally:
        await p.stop()
    assert len(set(ids)) == 20 and all(RID.fullmatch(i) for i in ids)
    db = open_ledger(str(tmp_path / "l.db"))
    rows = db.find("same-id")
    db.close()
    assert sorted(r.id for r in rows) == sorted(ids) and {r.client_request_id for r in rows} == {"same-id"}


async def test_a_tenant_cannot_claim_another_tenants_ids(sims, tmp_path):
    ledger = LedgerMeter(open_ledger(str(tmp_path / "l.db")), flush_interval_s=0.05)
    p = await start_proxy(make_policy(sims, TENANTS), meters=[ledger])
    try:
        body = {"model": "mini", "messages": msgs()}
        _, h1, _ = await post(p.url + "/v1/chat/completions", body, {"Authorization": f"Bearer {GLOBEX}"})
        victim = h1["x-request-id"]
        # acme replays globex's id, and guesses its "next" ones, as client ids
        guesses = [victim] + [victim[:-1] + c for c in "0123456789abcdef"]
        for g in guesses:
            status, _, _ = await post(p.url + "/v1/chat/completions", body,
                                      {"Authorization": f"Bearer {ACME}", "X-Request-Id": g})
            assert status == 200
        _, h2, _ = await post(p.url + "/v1/chat/completions", body, {"Authorization": f"Bearer {GLOBEX}"})
    finally:
        await p.stop()
    db = open_ledger(str(tmp_path / "l.db"))
    rows = db.records()
    db.close()
    assert len(rows) == 2 + len(guesses)
    by_id = {r.id: r for r in rows}
    assert by_id[victim].tenant == "globex" and by_id[h2["x-request-id"]].tenant == "globex"
    assert sum(r.tenant == "acme" for r in rows) == len(guesses)


def test_request_ids_drawn_ahead_are_not_shared_with_a_forked_child():
    new_request_id()   # the random parts of the next few hundred ids are drawn now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: its next ids, to the parent
        os.write(write, " ".join(new_request_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 4096).decode().split()
    os.close(read)
    parent = [new_request_id() for _ in range(3)]
    assert len(child) == 3 and not {c[16:] for c in child} & {p[16:] for p in parent}


def test_generated_ids_are_unguessable_and_in_time_order():
    ids = [new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == 10_000 and all(RID.fullmatch(i) for i in ids)
    # after the time (12 hex digits, milliseconds), 80 random bits: no two ids share any of them, where
    # the old scheme (a per-process prefix plus a counter) let one tenant claim another's next id
    assert len({i[16:24] for i in ids}) > 9_900 and len({i[-8:] for i in ids}) > 9_900
    # time-ordered, so the ledger's primary-key index is appended to, not written all over
    assert [i[4:16] for i in ids] == sorted(i[4:16] for i in ids)
    assert abs(int(ids[-1][4:16], 16) / 1000 - time.time()) < 5


# ---------------------------------------------------------------------------- migration

OLD_SCHEMA = """CREATE TABLE router_requests (
    id TEXT PRIMARY KEY, ts {f} NOT NULL, tenant TEXT, task TEXT NOT NULL, task_source TEXT NOT NULL,
    route TEXT NOT NULL, provider TEXT, model TEXT, upstream_model TEXT, region TEXT,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, reasoning_tokens INTEGER NOT NULL,
    usage_estimated {b} NOT NULL, cost_usd {f} NOT NULL, reference_cost_usd {f}, latency_s {f} NOT NULL,
    ttft_s {f}, status TEXT NOT NULL, error TEXT, attempts {j} NOT NULL)"""
OLD_ROW = ("client-chosen-42", 1_700_000_000.0, "acme", "coding", "hint", "coding", "gpu", "coder", "Qwen", "eu",
           10, 20, 0, False, 0.25, 1.5, 0.1, 0.05, "ok", None, "[]")


def check_migrated(ledger) -> None:
    [old] = ledger.records()
    assert (old.id, old.client_request_id, old.cost_usd, old.tenant) == ("client-chosen-42", None, 0.25, "acme")
    [row] = ledger.summary(by="tenant")
    assert (row.key, row.requests, row.cost_usd) == ("acme", 1, 0.25)
    meter = LedgerMeter(ledger, flush_interval_s=0.01)
    new = info(1)
    meter.record(new)
    assert meter.flush(5)
    assert ledger.get(new.request_id).client_request_id == "c1" and len(ledger.records()) == 2
    meter.close()


def test_an_old_sqlite_ledger_is_migrated_and_its_rows_stay_readable(tmp_path):
    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path)
    conn.execute(OLD_SCHEMA.format(f="REAL", b="INTEGER", j="TEXT"))
    conn.execute(f"INSERT INTO router_requests VALUES ({', '.join('?' * len(OLD_ROW))})", OLD_ROW)
    conn.commit()
    conn.close()
    check_migrated(open_ledger(path))
    again = open_ledger(path)  # a second open (another worker, a restart) migrates nothing twice
    assert len(again.records()) == 2
    again.close()
    out = subprocess.run([sys.executable, "-m", "router.cli", "report", "--ledger", path, "--by", "tenant",
                          "--format", "csv"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "acme" in out.stdout


def test_an_old_postgres_ledger_is_migrated_and_its_rows_stay_readable(pg_url, pg_schema):
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{pg_schema}"')
        conn.execute(f'SET search_path TO "{pg_schema}"')
        conn.execute(OLD_SCHEMA.format(f="DOUBLE PRECISION", b="BOOLEAN", j="JSONB"))
        conn.execute(f"INSERT INTO router_requests VALUES ({', '.join(['%s'] * len(OLD_ROW))})", OLD_ROW)
    check_migrated(open_ledger(f"{pg_url}?schema={pg_schema}"))
    out = subprocess.run([sys.executable, "-m", "router.cli", "report", "--ledger", f"{pg_url}?schema={pg_schema}",
                          "--format", "csv"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


# ---------------------------------------------------------------------------- PostgreSQL down or stuck


def dead_postgres() -> PostgresLedger:
    return PostgresLedger(f"postgresql://postgres@127.0.0.1:{dead_port()}/test", connect_timeout_s=1)


def test_shutdown_with_postgres_down_logs_and_counts_every_lost_record(caplog):
    prom = PrometheusMeter()
    meter = LedgerMeter(dead_postgres(), flush_interval_s=0.01, close_timeout_s=1, metrics=prom)
    for i in range(300):
        meter.record(info(i, cid=False))
    deadline = time.monotonic() + 10
    while meter.errors < 5 and time.monotonic() < deadline:  # backing off by now (>= 1.6 s between tries)
        time.sleep(0.05)
    t0 = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="router.metering.ledger"):
        meter.close()
    assert time.monotonic() - t0 < 4
    assert meter.dropped == 300
    assert prom.registry.get_sample_value("router_ledger_dropped_records_total") == 300
    assert any("300 record(s) lost" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_no_retry_storm_while_the_ledger_is_down(caplog):
    meter = LedgerMeter(dead_postgres(), flush_interval_s=0.01, batch_size=500, close_timeout_s=0.5)
    with caplog.at_level(logging.WARNING, logger="router.metering.ledger"):
        for i in range(600):   # more than a batch pending: every new record used to wake the writer
            meter.record(info(i, cid=False))
        t0 = time.monotonic()
        i = 600
        while time.monotonic() - t0 < 2.0:
            meter.record(info(i, cid=False))
            i += 1
            time.sleep(0.002)
        attempts = meter.errors
        meter.close()
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    # backoff 0.1, 0.2, 0.4, 0.8 s...: a handful of tries in 2 s, not one per record
    assert attempts <= 8 and len(retries) <= 8, (attempts, len(retries))


def test_a_stuck_postgres_writer_cannot_hang_shutdown(pg_url, pg_schema, caplog):
    import psycopg

    ledger = PostgresLedger(f"{pg_url}?schema={pg_schema}", lock_timeout_s=120, statement_timeout_s=120)
    meter = LedgerMeter(ledger, flush_interval_s=0.01, close_timeout_s=1)
    meter.record(info(0))
    assert meter.flush(10)
    blocker = psycopg.connect(pg_url)
    blocker.execute(f'LOCK TABLE "{pg_schema}".router_requests IN ACCESS EXCLUSIVE MODE')  # held: txn stays open
    try:
        for i in range(1, 51):
            meter.record(info(i))
        time.sleep(0.3)  # the writer is now blocked on the lock
        done = threading.Event()
        t0 = time.monotonic()

        def close():
            meter.close()
            done.set()

        threading.Thread(target=close, daemon=True).start()
        with caplog.at_level(logging.ERROR, logger="router.metering.ledger"):
            assert done.wait(10), "LedgerMeter.close() hung on a stuck writer"
        assert time.monotonic() - t0 < 6
        assert meter.dropped == 50
    finally:
        blocker.rollback()
        blocker.close()


def test_a_postgres_lock_wait_is_bounded_by_lock_timeout(pg_url, pg_schema):
    import psycopg

    ledger = PostgresLedger(f"{pg_url}?schema={pg_schema}", lock_timeout_s=0.5)
    meter = LedgerMeter(ledger, flush_interval_s=0.01, close_timeout_s=5)
    meter.record(info(0))
    assert meter.flush(10)
    blocker = psycopg.connect(pg_url)
    blocker.execute(f'LOCK TABLE "{pg_schema}".router_requests IN ACCESS EXCLUSIVE MODE')
    try:
        meter.record(info(1))
        deadline = time.monotonic() + 5
        while meter.errors == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert meter.errors >= 1  # the write gave up after lock_timeout and will retry; never stuck
    finally:
        blocker.rollback()
        blocker.close()
    assert meter.flush(10) and meter.written == 2
    meter.close()


# ---------------------------------------------------------------------------- the spool (durable mode)


def test_the_spool_is_replayed_by_the_next_meter_and_emptied(tmp_path):
    spool = str(tmp_path / "spool")
    down = LedgerMeter(dead_postgres(), spool=spool, close_timeout_s=0.3)
    infos = [info(i) for i in range(40)]
    for i in infos:
        down.record(i)
    down.close()       # the ledger never answered: kept in the spool, not lost
    assert down.dropped == 0 and os.listdir(spool)
    path = str(tmp_path / "l.db")
    up = LedgerMeter(open_ledger(path), spool=spool, flush_interval_s=0.01)
    assert up.replayed == 40 and up.flush(10)
    up.close()
    db = open_ledger(path)
    assert {r.id for r in db.records()} == {i.request_id for i in infos}
    db.close()
    assert [n for n in os.listdir(spool) if n.endswith(".spool")] == []


def test_a_live_meters_spool_is_not_claimed_by_another(tmp_path):
    spool = str(tmp_path / "spool")
    a = LedgerMeter(dead_postgres(), spool=spool, close_timeout_s=0.3)
    a.record(info(0))
    b = LedgerMeter(open_ledger(str(tmp_path / "l.db")), spool=spool)
    assert b.replayed == 0   # a is alive and holds its segment
    b.close()
    a.close()


# ---------------------------------------------------------------------------- SIGKILL under load


async def serve(policy_path: str, ledger: str, tmp_path, *, env: dict[str, str] | None = None):
    port = dead_port()
    err = open(tmp_path / f"serve-{port}.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "router.cli", "serve", "--policy", policy_path, "--port",
                             str(port), "--ledger", ledger], stdout=subprocess.DEVNULL, stderr=err,
                            env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url + "/readyz") as r:
                    if r.status == 200:
                        return proc, url
            assert proc.poll() is None, (tmp_path / f"serve-{port}.log").read_text()
            await asyncio.sleep(0.05)
    raise AssertionError("router serve did not become ready")


async def load_then_kill(url: str, proc: subprocess.Popen, seconds: float) -> list[tuple[str, float]]:
    """16 clients send requests for `seconds`, then the server is SIGKILLed mid-load. Returns each 2xx's
    request id and the time its answer arrived."""
    served: list[tuple[str, float]] = []
    body = {"model": "auto", "messages": msgs(), "max_tokens": 4}

    async def client(http: aiohttp.ClientSession) -> None:
        while True:
            try:
                async with http.post(url + "/v1/chat/completions", json=body,
                                     headers={"X-Router-Task": "general"}) as r:
                    await r.read()
                    if r.status == 200:
                        served.append((r.headers["x-request-id"], time.monotonic()))
            except aiohttp.ClientError:
                return

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as http:
        tasks = [asyncio.create_task(client(http)) for _ in range(16)]
        await asyncio.sleep(seconds)
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await asyncio.to_thread(proc.wait, 10)
        await asyncio.wait(tasks, timeout=5)
        for t in tasks:
            t.cancel()
    return [(rid, t) for rid, t in served if t <= killed]


def ledger_target(kind: str, tmp_path, request) -> str:
    if kind == "sqlite":
        return str(tmp_path / "kill.db")
    url = request.getfixturevalue("pg_url")
    return f"{url}?schema={request.getfixturevalue('pg_schema')}"


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
@pytest.mark.parametrize("mode", ["batched", "durable"])
async def test_sigkill_under_load_loses_at_most_the_stated_window(sims, tmp_path, request, kind, mode):
    target = ledger_target(kind, tmp_path, request)
    spool = str(tmp_path / "spool")
    extra = f"metering: {{spool: '{spool}'}}" if mode == "durable" else ""
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(policy_text(sims, extra))
    proc, url = await serve(str(policy_path), target, tmp_path)
    served = await load_then_kill(url, proc, 2.0)
    killed_at = max(t for _, t in served)
    if mode == "durable":  # the next start replays the spool into the ledger
        proc, url = await serve(str(policy_path), target, tmp_path)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
    db = open_ledger(target)
    stored = {r.id for r in db.records()}
    db.close()
    lost = [rid for rid, _ in served if rid not in stored]
    window = sum(1 for _, t in served if t >= killed_at - 0.5)  # answers of the last 0.5 s before the kill
    print(f"\nSIGKILL {kind}/{mode}: {len(served)} answered 200, {len(lost)} missing from the ledger "
          f"({len(lost) / len(served):.1%}); answers in the last 0.5 s: {window}")
    assert len(served) > 50
    if mode == "durable":
        assert lost == []
    else:  # flush_interval_s (0.2 s) of traffic plus the batch in flight, at most
        assert len(lost) <= window
