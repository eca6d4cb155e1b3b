"""SIGTERM and SIGKILL of a real `router serve` under load, in each ledger mode: what the ledger loses.

16 clients send requests until the signal. Then every answered request's id is looked up in the
ledger (after a restart, which replays the durable mode's spool). The loss windows are those
docs/metering.md states:

| signal  | batched (default)                                  | durable (`metering.spool`) |
| SIGTERM | nothing (drained, flushed)                         | nothing                    |
| SIGKILL | at most the last `flush_interval_s` of answers     | nothing                    |

SQLite always; PostgreSQL too with ``ROUTER_CHAOS=long`` (tests/test_ledger_durability.py kills a
PostgreSQL-backed server in every run).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import aiohttp
import pytest

from router.metering.ledger import open_ledger
from tests.chaos.support import LONG, figure, scale
from tests.metering_support import msgs, policy_text
from tests.serve_support import ServeProcesses

LOAD_S = scale(1.5, 5.0)
KINDS = ["sqlite", "postgres"] if LONG else ["sqlite"]


@pytest.fixture
def serve(tmp_path):
    with ServeProcesses(tmp_path) as procs:
        yield procs.start


@pytest.fixture
def ledger_target(tmp_path, request):
    made: list[str] = []

    def target(kind: str) -> str:
        if kind == "sqlite":
            return str(tmp_path / "ledger.db")
        url = os.environ.get("ROUTER_TEST_POSTGRES_URL")
        if not url:
            pytest.skip("ROUTER_TEST_POSTGRES_URL is not set")
        schema = "chaos_" + uuid.uuid4().hex[:10]
        made.append(schema)
        return f"{url}?schema={schema}"

    yield target
    if made:
        import psycopg

        with psycopg.connect(os.environ["ROUTER_TEST_POSTGRES_URL"], autocommit=True) as conn:
            for schema in made:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def load_until(url: str, proc, sig: int, seconds: float) -> tuple[list[tuple[str, float]], float]:
    """16 clients until `sig` is sent after `seconds`; the ids of the 200s and when each arrived."""
    served: list[tuple[str, float]] = []
    body = {"model": "auto", "messages": msgs(), "max_tokens": 4}
    stop = asyncio.Event()

    async def client(http: aiohttp.ClientSession) -> None:
        while not stop.is_set():
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
        if sig == signal.SIGTERM:
            stop.set()  # the clients stop sending; what is in flight is drained
        proc.send_signal(sig)
        at = time.monotonic()
        await asyncio.to_thread(proc.wait, 30)
        await asyncio.wait(tasks, timeout=5)
        for t in tasks:
            t.cancel()
    return served, at


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["batched", "durable"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
async def test_signals_under_load_lose_at_most_the_stated_window(sims, serve, tmp_path, ledger_target, kind, mode,
                                                                  sig):
    target = ledger_target(kind)
    extra = f"metering: {{spool: '{tmp_path / 'spool'}'}}" if mode == "durable" else ""
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(sims, extra))
    s = await serve(path, "--ledger", target, "--grace-s", "5")
    served, at = await load_until(s.url, s.proc, sig, LOAD_S)
    code = s.proc.returncode
    if mode == "durable" and sig == signal.SIGKILL:  # the next start replays the spool
        s = await serve(path, "--ledger", target)
        assert await s.stop() == 0
    db = open_ledger(target)
    stored = {r.id for r in db.records()}
    db.close()
    answered = [rid for rid, _ in served]
    lost = [rid for rid in answered if rid not in stored]
    window = sum(1 for _, t in served if t >= at - 0.5)
    name = signal.Signals(sig).name
    figure(f"durability {name} {kind}/{mode}", answered=len(answered), lost=len(lost),
           loss=f"{len(lost) / max(1, len(answered)):.1%}", answers_in_last_0_5s=window,
           exit=code, stated="none" if mode == "durable" or sig == signal.SIGTERM else "<= last flush_interval_s")
    assert len(answered) > 20
    if sig == signal.SIGTERM:
        assert code == 0 and lost == []
    elif mode == "durable":
        assert lost == []
    else:
        assert len(lost) <= window
