"""Hedged streams over real sockets: a late first chunk sends the request to the next target too, the
first to stream wins and the other is cancelled; caps bound the extra spend; both attempts are
metered, the request exactly once, with every in-flight count given back and the budget settled once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from router import Router
from router.core.meter import MemoryMeter
from router.core.policy import HedgeSettings
from router.core.response import Attempt
from router.dev.simulator import ModelConfig, Simulator
from router.engine.hedge import HedgeGovernor, hedge_delay
from router.metering.budget import InProcessBudget
from router.metering.ledger import LedgerMeter, open_ledger
from router.metering.prometheus import PrometheusMeter
from router.monitor.monitor import Monitor
from tests.fleet_support import PRICE, CountingMeter, collect, fleet_policy, msgs, settle

BUDGET = "tenants:\n  acme: {budget: {daily_usd: 100}}"


@contextlib.asynccontextmanager
async def pair(slow_ttft: float = 1.0, fast_ttft: float = 0.01, **fast: object):
    """Two simulated servers: `slow` (the first target) and `fast` (the hedge's)."""
    slow = Simulator(models=[ModelConfig("q", ttft_s=slow_ttft)])
    quick = Simulator(models=[ModelConfig("q", ttft_s=fast_ttft)], **fast)
    async with slow, quick:
        yield slow, quick


def policy_for(slow: Simulator, fast: Simulator, hedge: str = "{delay_s: 0.1, max_share: 1}", extra: str = BUDGET):
    return fleet_policy(f'  slow: {{kind: vllm, base_url: "{slow.base_url}"}}\n'
                        f'  fast: {{kind: vllm, base_url: "{fast.base_url}"}}',
                        f"  a: {{provider: slow, model: q, price: {PRICE}}}\n"
                        f"  b: {{provider: fast, model: q, price: {PRICE}}}",
                        f"  general: {{targets: [a, b], hedge: {hedge}}}", extra=extra)


class Rig:
    def __init__(self, policy, tmp_path=None):
        self.mem, self.counting, self.budget = MemoryMeter(), CountingMeter(), InProcessBudget()
        self.prom = PrometheusMeter()
        meters = [self.mem, self.counting, self.prom]
        self.ledger_path = None
        if tmp_path is not None:
            self.ledger_path = str(tmp_path / "ledger.db")
            meters.append(LedgerMeter(open_ledger(self.ledger_path)))
        self.monitor = Monitor(policy, background=False)
        self.router = Router(policy, meters=meters, budget=self.budget, monitor=self.monitor)

    async def stream(self, text: str = "hello there", **kw):
        s = await self.router.acomplete(msgs(text), task="general", tenant="acme", stream=True, **kw)
        return await collect(s), s.router

    def check_invariants(self, n: int = 1) -> None:
        assert len(self.mem.records) == n and len(self.counting.records) == n        # metered once each
        assert self.budget._holds == {}                                              # settled or released
        assert all(v == 0 for v in self.counting.inflight.values()), self.counting.inflight
        assert all(v == 0 for v in self.monitor.health.inflight.values()), self.monitor.health.inflight
        assert all(v == 0 for v in self.monitor.health.provider_inflight.values())
        assert not self.monitor._active

    def metric(self, name: str, **labels: str) -> float:
        return self.prom.registry.get_sample_value(name, labels) or 0.0


async def wait_idle(*sims: Simulator, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while any(s.in_flight() != (0, 0) for s in sims):
        assert time.monotonic() < deadline, [s.in_flight() for s in sims]
        await asyncio.sleep(0.01)


async def test_a_late_first_chunk_hedges_the_hedge_wins_and_the_loser_is_cancelled(tmp_path):
    async with pair() as (slow, fast):
        rig = Rig(policy_for(slow, fast), tmp_path)
        try:
            t0 = time.perf_counter()
            text, info = await rig.stream()
            assert time.perf_counter() - t0 < 0.6                       # not the slow server's 1 s
            assert text.startswith("The quick brown fox")
            assert info.hedge == "won" and info.provider == "fast"
            assert [(a.provider, a.outcome) for a in info.attempts] == [("slow", "hedge_lost"), ("fast", "ok")]
            await wait_idle(slow)
            assert slow.disconnects == 1                                # the loser's connection was closed
            assert info.hedge_cost_usd == pytest.approx(rig.router.engine.decide(
                {"messages": msgs()}, task="general").prompt_tokens * 1.0 / 1e6)
            winner = info.prompt_tokens * 1.0 / 1e6 + info.completion_tokens * 2.0 / 1e6
            assert info.cost_usd == pytest.approx(winner + info.hedge_cost_usd)   # both attempts are spent
            await settle()
            rig.check_invariants()
            assert rig.budget.spent(f"acme:d:{time.strftime('%Y%m%d', time.gmtime())}") == pytest.approx(info.cost_usd)
            assert rig.metric("router_hedges_total", route="general", result="won") == 1
            assert rig.metric("router_hedge_cost_usd_total", route="general") == pytest.approx(info.hedge_cost_usd)
            assert rig.metric("router_upstream_attempts_total", provider="slow", model="a", outcome="hedge_lost") == 1
        finally:
            await rig.router.aclose()
        row = open_ledger(rig.ledger_path).get(info.request_id)
        assert (row.hedge, row.hedge_cost_usd, row.cost_usd) == ("won", pytest.approx(info.hedge_cost_usd),
                                                                 pytest.approx(info.cost_usd))


async def test_the_first_attempt_can_still_win_after_the_hedge_fired():
    async with pair(slow_ttft=0.3, fast_ttft=2.0) as (primary, late):
        rig = Rig(policy_for(primary, late))
        try:
            text, info = await rig.stream()
            assert text and info.hedge == "lost" and info.provider == "slow"
            assert [(a.provider, a.outcome) for a in info.attempts] == [("fast", "hedge_lost"), ("slow", "ok")]
            await wait_idle(late)
            assert late.disconnects == 1 and info.hedge_cost_usd > 0
            await settle()
            rig.check_invariants()
        finally:
            await rig.router.aclose()


async def test_a_fast_first_chunk_never_hedges():
    async with pair(slow_ttft=0.0) as (primary, other):
        rig = Rig(policy_for(primary, other))
        try:
            for _ in range(3):
                _, info = await rig.stream()
                assert info.hedge is None and info.hedge_cost_usd == 0 and info.provider == "slow"
            assert other.request_count == 0
            await settle()
            rig.check_invariants(3)
        finally:
            await rig.router.aclose()


async def test_the_share_cap_bounds_hedges_and_says_capped():
    async with pair(slow_ttft=0.3) as (slow, fast):
        rig = Rig(policy_for(slow, fast, hedge="{delay_s: 0.05, max_share: 0.25}"))
        try:
            results = [(await rig.stream(f"request {i}"))[1].hedge for i in range(8)]
            assert results.count("won") == 2 and results.count("capped") == 6, results   # 25% of 8
            assert fast.request_count == 2
            assert rig.metric("router_hedges_total", route="general", result="capped") == 6
            await settle()
            rig.check_invariants(8)
        finally:
            await rig.router.aclose()


async def test_the_share_is_of_all_requests_so_requests_in_time_earn_the_next_hedge():
    async with pair(slow_ttft=0.0) as (slow, fast):
        rig = Rig(policy_for(slow, fast, hedge="{delay_s: 0.1, max_share: 0.25}"))
        try:
            for i in range(3):                                  # in time: no hedge, but each earns a quarter
                assert (await rig.stream(f"request {i}"))[1].hedge is None
            slow.set_fault("delay:0.4")                          # the fourth is late: 4 x 25% = one hedge
            _, info = await rig.stream("request 3")
            assert info.hedge == "won" and info.provider == "fast" and fast.request_count == 1
            assert (await rig.stream("request 4"))[1].hedge == "capped"    # and not a second one
            assert fast.request_count == 1
            await settle()
            rig.check_invariants(5)
        finally:
            await rig.router.aclose()


async def test_the_daily_dollar_cap_refuses_hedges_once_spent():
    async with pair(slow_ttft=0.2) as (slow, fast):
        rig = Rig(policy_for(slow, fast, hedge="{delay_s: 0.05, max_share: 1, max_usd_per_day: 0.00001}"))
        try:
            _, info = await rig.stream()
            assert info.hedge == "capped" and fast.request_count == 0   # its estimate alone is over the cap
            assert rig.router.engine.hedges.spent_today("general") == 0
        finally:
            await rig.router.aclose()
        rig = Rig(policy_for(slow, fast, hedge="{delay_s: 0.05, max_share: 1, max_usd_per_day: 1}"))
        try:
            _, info = await rig.stream()
            assert info.hedge == "won"
            assert rig.router.engine.hedges.spent_today("general") == pytest.approx(info.hedge_cost_usd)
        finally:
            await rig.router.aclose()


def test_percentile_delay_follows_the_measured_first_token_latency():
    governor = HedgeGovernor(wall=lambda: 0.0)
    settings = HedgeSettings(percentile=0.95, min_delay_s=0.05)
    policy = fleet_policy('  g: {kind: vllm, base_url: "http://g:1/v1"}', f"  a: {{provider: g, model: q, price: {PRICE}}}",
                          "  general: {targets: [a], hedge: {delay_s: p95}}")
    monitor = Monitor(policy, background=False)
    assert hedge_delay(settings, monitor, "a") == 0.05               # nothing measured yet: the floor
    monitor.record([Attempt("g", "a", "ok", (i + 1) / 100) for i in range(100)])   # 0.01 .. 1.00 s
    assert hedge_delay(settings, monitor, "a") == pytest.approx(0.96)
    assert hedge_delay(HedgeSettings(percentile=0.5, min_delay_s=0.7), monitor, "a") == 0.7
    assert policy.routes["general"].hedge.percentile == 0.95
    share = HedgeSettings(delay_s=1, max_share=0.1)
    assert [(governor.count("r", share), governor.allow("r", share, 0))[1] for _ in range(20)].count(True) == 2
    for _ in range(200):                     # requests in time save credit, up to 10 x max_share hedges
        governor.count("r", share)
    assert [governor.allow("r", share, 0) for _ in range(3)] == [True, False, False]


async def test_a_replicated_model_hedges_on_another_replica():
    slow = Simulator(models=[ModelConfig("q", ttft_s=1.0)])
    fast = Simulator(models=[ModelConfig("q", ttft_s=0.01)])
    async with slow, fast:
        policy = fleet_policy(f'  g0: {{kind: vllm, base_url: "{slow.base_url}"}}\n'
                              f'  g1: {{kind: vllm, base_url: "{fast.base_url}"}}',
                              f"  q: {{replicas: [g0, g1], model: q, price: {PRICE}}}",
                              "  general: {targets: [q], hedge: {delay_s: 0.1, max_share: 1}}", extra=BUDGET)
        rig = Rig(policy)
        try:
            for i in range(6):   # sessions spread over both replicas: the slow one's are hedged to the fast one
                _, info = await rig.stream(f"session {i}", session=f"s{i}")
                assert info.provider == "g1" and info.model == "q"
                assert info.hedge in (None, "won")
                if info.hedge == "won":
                    assert [(a.provider, a.outcome) for a in info.attempts] == [("g0", "hedge_lost"), ("g1", "ok")]
            assert slow.request_count > 0 and slow.disconnects == slow.request_count
            await wait_idle(slow)
            await settle()
            rig.check_invariants(6)
        finally:
            await rig.router.aclose()


# ------------------------------------------------------------------ exactly once, whatever ends the race


async def test_cancelling_a_request_mid_race_gives_back_both_attempts():
    async with pair(slow_ttft=2.0, fast_ttft=2.0) as (slow, fast):
        rig = Rig(policy_for(slow, fast))
        try:
            task = asyncio.create_task(rig.stream())
            deadline = time.monotonic() + 3
            while fast.in_flight() == (0, 0):        # both attempts are in flight
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            assert sum(rig.counting.inflight.values()) == 2 and len(rig.monitor._active) == 2
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await wait_idle(slow, fast)
            await settle()
            rig.check_invariants()
            assert rig.mem.records[0].status == "cancelled"
            assert slow.disconnects == 1 and fast.disconnects == 1
        finally:
            await rig.router.aclose()


async def test_both_attempts_failing_is_metered_once_and_falls_back_as_usual():
    async with pair(slow_ttft=0.0, fast_ttft=0.0) as (slow, fast):
        slow.set_fault("delay:0.2,status:503")
        fast.set_fault("status:502")
        rig = Rig(policy_for(slow, fast))
        try:
            with pytest.raises(Exception, match="every candidate failed"):
                await rig.stream()
            info = rig.mem.records[0]
            assert info.hedge == "failed" and info.hedge_cost_usd == 0
            assert [(a.provider, a.outcome) for a in info.attempts][:2] == [("fast", "http_502"), ("slow", "http_503")]
            await settle()
            rig.check_invariants()
        finally:
            await rig.router.aclose()


@pytest.mark.parametrize("how", ["aclose_after_first_chunk", "hedge_raises"])
async def test_a_hedged_stream_closed_early_or_broken_keeps_the_invariants(how, monkeypatch):
    async with pair() as (slow, fast):
        rig = Rig(policy_for(slow, fast))
        try:
            if how == "hedge_raises":
                import router.engine.engine as engine_mod

                real = engine_mod.build_call

                def boom_on_fast(provider, *a, **k):
                    if provider.name == "fast":
                        raise RuntimeError("boom")
                    return real(provider, *a, **k)

                monkeypatch.setattr(engine_mod, "build_call", boom_on_fast)
                with pytest.raises(RuntimeError):
                    await rig.stream()
            else:
                s = await rig.router.acomplete(msgs(), task="general", tenant="acme", stream=True)
                await s.__anext__()
                await s.aclose()
                assert rig.mem.records[0].hedge == "won"
            await wait_idle(slow, fast)
            await settle()
            rig.check_invariants()
        finally:
            await rig.router.aclose()


class Boom(RuntimeError):
    """The injected fault: not a RequestError."""


class StepFaults:
    """The real transport, raising `Boom` at `step` for calls to `target` (a base URL)."""

    def __init__(self, inner, target: str, step: str):
        self.inner, self.target, self.step = inner, target, step

    async def send(self, call, **kw):
        hit = call.base_url == self.target
        if hit and self.step == "send":
            raise Boom("send")
        resp = await self.inner.send(call, **kw)
        if not hit or self.step not in ("first_chunk", "mid_chunk"):
            return resp
        step, real = self.step, resp.sse_data

        async def sse_data():
            n = 0
            async for data in real():
                if (step == "first_chunk" and n == 0) or (step == "mid_chunk" and n == 3):
                    raise Boom(step)
                n += 1
                yield data

        resp.sse_data = sse_data
        return resp

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("step", ["hedge_send", "hedge_first_chunk", "primary_first_chunk", "winner_mid_chunk",
                                  "cost", "meter_record", "settle"])
async def test_a_fault_at_every_step_of_a_hedged_request_keeps_the_invariants(step, monkeypatch):
    from router.engine.engine import Engine
    from router.transport.chooser import ProviderTransport

    async with pair(slow_ttft=0.3) as (slow, fast):
        rig = Rig(policy_for(slow, fast))
        engine = rig.router.engine
        target, where = {"hedge_send": (fast, "send"), "hedge_first_chunk": (fast, "first_chunk"),
                         "primary_first_chunk": (slow, "first_chunk"),
                         "winner_mid_chunk": (fast, "mid_chunk")}.get(step, (None, None))
        if target is not None:
            engine.transport = StepFaults(ProviderTransport(), target.base_url, where)

        def boom(*a, **k):
            raise Boom(step)

        if step == "cost":
            monkeypatch.setattr(Engine, "_cost", boom)
        elif step == "meter_record":
            monkeypatch.setattr(rig.counting, "record", lambda info: (rig.counting.records.append(info), boom()))
        elif step == "settle":
            monkeypatch.setattr(rig.budget, "settle", boom)
        try:
            with contextlib.suppress(Exception):
                await rig.stream()
            await wait_idle(slow, fast)
            await settle()
            rig.check_invariants()
            info = rig.mem.records[0]
            assert info.hedge is not None, info    # the hedge fired in every case
        finally:
            await rig.router.aclose()
