"""The upstream fault matrix under concurrency: no residency leak, no 500, every request metered once.

Three simulated providers: `eu-a` (first choice, where the fault goes), `eu-b` (the EU fallback) and
`us`. For each fault the simulator can inject (429, 500, 503, delay past the attempt timeout, a
stream cut after two events, a garbage body, a connection dropped before answering), an upstream
error event in the middle of a stream, and a refused connection, concurrent clients of three
tenants (one bound to the EU) send JSON and streamed requests over the chat, Messages and
Responses APIs. Then a phase where both EU providers fail. After each phase:

- no request of the EU tenant reached the US provider, on any attempt (residency leaks: 0);
- no 500; failures are 502/503/504 (529 on Messages) listing the attempts;
- every request left exactly one record, and the SQLite ledger has one row per request; its `ok`
  rows are exactly the answers the clients got whole (a stream cut mid-way is `error`);
- nothing is left held: in-flight counts, budget reservations, simulator requests in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import orjson
import pytest
from aiohttp import web

from router import Router
from router.core.meter import MemoryMeter
from router.dev.simulator import Simulator
from router.metering.budget import InProcessBudget
from router.metering.ledger import LedgerMeter, open_ledger
from router.monitor.monitor import Monitor
from router.server.proxy import Proxy, ProxyOptions
from tests.chaos.support import PROVIDER_REGION, auth, chaos_policy, figure, gather_limited, scale
from tests.reliability_support import dead_port

REQUESTS = scale(36, 360)   # per phase
CONCURRENCY = 12
SIM_FAULTS = {"429": "status:429:retry-after=0", "500": "status:500", "503": "status:503",
              "delay": "delay:1.0", "cut": "drop-mid-stream:2", "garbage": "malformed", "drop": "drop"}
PHASES = [*SIM_FAULTS, "error-event", "refused", "all-eu-503", "all-eu-drop"]
APIS = {"chat": "/v1/chat/completions", "messages": "/v1/messages", "responses": "/v1/responses"}


def chunk(content: str | None = None, finish: str | None = None) -> bytes:
    body = {"id": "c", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def error_event_upstream() -> tuple[web.AppRunner, str]:
    """Streams two chunks, then an upstream error event; answers JSON requests normally."""
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.json_response({"id": "c", "object": "chat.completion", "model": "m", "created": 0,
                                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                                   "finish_reason": "stop"}],
                                      "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for e in (chunk("Hel"), chunk("lo"), b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'):
            await resp.write(e)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/v1"


def whole(api: str, stream: bool, status: int, raw: bytes) -> bool:
    """Did the client get a complete answer (a stream that ended properly, without an error event)?"""
    if status != 200:
        return False
    if not stream:
        return True
    if api == "chat":
        return raw.rstrip().endswith(b"data: [DONE]") and b'data: {"error"' not in raw
    if api == "messages":
        return b"event: message_stop" in raw and b"event: error" not in raw
    return b"event: response.completed" in raw and b"event: response.failed" not in raw


@pytest.fixture
async def upstreams():
    s = {name: Simulator(models=["m"]) for name in ("eu-a", "eu-b", "us")}
    for sim in s.values():
        await sim.start()
    yield s
    for sim in s.values():
        await sim.stop()


@pytest.mark.parametrize("phase", PHASES)
async def test_fault_matrix_under_concurrency(upstreams, tmp_path, phase):
    sims = upstreams
    for sim in sims.values():
        sim.reset()
    scripted = None
    eu_a = sims["eu-a"].base_url
    if phase == "error-event":
        scripted, eu_a = await error_event_upstream()
    elif phase == "refused":
        eu_a = f"http://127.0.0.1:{dead_port()}/v1"
    elif phase.startswith("all-eu"):
        for name in ("eu-a", "eu-b"):
            sims[name].set_fault("status:503" if phase.endswith("503") else "drop")
    else:
        sims["eu-a"].set_fault(SIM_FAULTS[phase])
    policy = chaos_policy(eu_a, sims["eu-b"].base_url, sims["us"].base_url)
    mem, budget = MemoryMeter(), InProcessBudget()
    ledger_path = str(tmp_path / "ledger.db")
    ledger = LedgerMeter(open_ledger(ledger_path), flush_interval_s=0.05)
    monitor = Monitor(policy, background=False)
    router = Router(policy, meters=[mem, ledger], budget=budget, monitor=monitor)
    runner = web.ServerRunner(Proxy(router.engine, ProxyOptions(keepalive_s=0.3)).server(), handle_signals=False,
                              shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"

    plan = [(("eu", "open", "budget")[i % 3], list(APIS)[(i // 3) % 3], bool((i // 9) % 2))
            for i in range(REQUESTS)]
    seen: list[tuple[str, str, bool, int, str, bool]] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async def one(tenant: str, api: str, stream: bool) -> None:
                body: dict = {"model": "auto", "stream": stream, "max_tokens": 8}
                if api == "responses":
                    body = {"model": "auto", "stream": stream, "input": "hello there", "max_output_tokens": 16}
                else:
                    body["messages"] = [{"role": "user", "content": "hello there"}]
                async with http.post(url + APIS[api], json=body, headers={**auth(tenant), "X-Router-Task": "general"}) as r:
                    raw = await r.read()
                    seen.append((tenant, api, stream, r.status, r.headers["x-request-id"], whole(api, stream, r.status, raw)))

            t0 = time.monotonic()
            await gather_limited(CONCURRENCY, [lambda a=p: one(*a) for p in plan])
            elapsed = time.monotonic() - t0
        assert ledger.flush(10)
        await asyncio.sleep(0.2)  # upstream connections aborted by the proxy are noticed by the simulators
        # ---- residency: the EU tenant never reached the US provider, on any attempt
        by_id = {i.request_id: i for i in mem.records}
        leaks = 0
        for tenant, _, _, _, rid, _ in seen:
            info = by_id[rid]
            regions = {PROVIDER_REGION[a.provider] for a in info.attempts}
            if tenant == "eu" and (regions - {"eu"} or (info.provider and PROVIDER_REGION[info.provider] != "eu")):
                leaks += 1
        # ---- statuses
        statuses = Counter(s for *_, s, _, _ in seen)
        # ---- metering: once per request, in memory and in the ledger; ok rows = whole answers
        counts = Counter(i.request_id for i in mem.records)
        db = open_ledger(ledger_path)
        rows = {r.id: r for r in db.records()}
        db.close()
        whole_answers = sum(1 for *_, ok in seen if ok)
        ok_rows = sum(1 for _, _, _, _, rid, _ in seen if rows[rid].status == "ok")
        held = (sum(monitor.health.inflight.values()), round(budget.reserved(), 12),
                sum(sim.in_flight()[0] + sim.in_flight()[1] for sim in sims.values()))
        figure(f"faults {phase}", requests=len(seen), **{"2xx": statuses[200]},
               **{"5xx": sum(n for s, n in statuses.items() if s >= 500)}, **{"500": statuses[500]}, leaks=leaks,
               ledger_rows=len(rows), whole_2xx=whole_answers, ok_rows=ok_rows, held=held, s=round(elapsed, 2))
        assert len(seen) == REQUESTS
        assert leaks == 0
        assert statuses[500] == 0, statuses
        assert set(statuses) <= {200, 502, 503, 504, 529}, statuses
        assert all(n == 1 for n in counts.values()) and set(counts) == {rid for *_, rid, _ in seen}
        assert len(rows) == REQUESTS and set(rows) == set(counts)
        assert ok_rows == whole_answers
        assert held == (0, 0, 0)
        if phase.startswith("all-eu"):  # the EU tenant had nowhere to go, and went nowhere else
            # no answer for the EU tenant: an error status, or (when failing every candidate took longer
            # than keepalive_s, as it can under load, and keep-alives had sent the 200 head) an error event
            assert not any(ok for t, *_, ok in seen if t == "eu")
            assert sum(s != 200 for t, _, _, s, _, _ in seen if t == "eu") >= 1
            assert all(s == 200 for t, _, _, s, _, _ in seen if t != "eu")
        elif phase != "cut" and phase != "error-event":  # a failover before the first byte is invisible
            assert statuses == Counter({200: REQUESTS}), statuses
    finally:
        await runner.cleanup()
        await router.aclose()
        if scripted is not None:
            await scripted.cleanup()
