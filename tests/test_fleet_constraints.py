"""Residency and capabilities hold for every attempt a fleet makes, over real sockets: the replica
picked, the replica retried after a failure, a hedge and a resumed stream never go to a replica in
another region or to a model the request's tools rule out.

The fleet: model `q` on replicas `eu0` (EU) and `us1` (US); model `nt` (EU, no tools capability);
model `r` (EU). An EU request with tools may use `eu0` and `r` only.
"""

from __future__ import annotations

import contextlib

from router import Router
from router.core.meter import MemoryMeter
from router.dev.simulator import ModelConfig, Simulator
from router.monitor.monitor import Monitor
from tests.fleet_support import PRICE, CountingMeter, collect, fleet_policy, msgs, settle

TOOLS = [{"type": "function", "function": {"name": "run", "parameters": {"type": "object"}}}]


@contextlib.asynccontextmanager
async def fleet(eu0_ttft: float = 0.0):
    sims = {name: Simulator(models=[ModelConfig("q", reply_tokens=16, ttft_s=eu0_ttft if name == "eu0" else 0.0)])
            for name in ("eu0", "us1", "nt", "r")}
    for s in sims.values():
        await s.start()
    try:
        yield sims
    finally:
        for s in sims.values():
            await s.stop()


def policy_for(sims: dict[str, Simulator], route_extra: str = ""):
    region = {"eu0": "eu", "us1": "us", "nt": "eu", "r": "eu"}
    providers = "\n".join(f'  {n}: {{kind: vllm, base_url: "{s.base_url}", region: {region[n]}}}'
                          for n, s in sims.items())
    models = (f"  q: {{replicas: [eu0, us1], model: q, price: {PRICE}, capabilities: [tools],"
              f" balance: {{strategy: round_robin, affinity: none}}}}\n"
              f"  nt: {{provider: nt, model: q, price: {PRICE}}}\n"
              f"  r: {{provider: r, model: q, price: {PRICE}, capabilities: [tools]}}")
    return fleet_policy(providers, models, f"  general: {{targets: [q, nt, r]{route_extra}}}",
                        extra="residency:\n  eu: [eu]")


def rig(policy):
    counting, mem = CountingMeter(), MemoryMeter()
    monitor = Monitor(policy, background=False)
    return Router(policy, meters=[mem, counting], monitor=monitor), mem, counting, monitor


def check_invariants(mem, counting, monitor, n: int) -> None:
    assert len(mem.records) == n and all(v == 0 for v in counting.inflight.values())
    assert all(v == 0 for v in monitor.health.inflight.values()) and not monitor._active


async def test_an_eu_request_is_never_picked_or_retried_on_a_replica_outside_the_eu():
    async with fleet() as sims:
        r, mem, counting, monitor = rig(policy_for(sims))
        try:
            for i in range(4):     # round-robin, unconstrained: both replicas serve
                await r.acomplete(msgs(f"free {i}"), task="general")
            assert sims["eu0"].request_count == 2 and sims["us1"].request_count == 2
            sims["eu0"].inject("status:503", times=2)     # the EU replica fails: retried, never moved to us1
            for i in range(4):
                resp = await r.acomplete(msgs(f"eu {i}"), task="general", residency="eu", tools=TOOLS)
                assert resp.router.region == "eu"
            assert sims["us1"].request_count == 2 and sims["nt"].request_count == 0
            # the first EU request: eu0 failed twice (its retries), then the next candidate, r; then eu0 again
            assert sims["eu0"].request_count == 2 + 2 + 3 and sims["r"].request_count == 1
            await settle()
            check_invariants(mem, counting, monitor, 8)
        finally:
            await r.aclose()


async def test_a_hedge_skips_the_other_regions_replica_and_the_model_without_tools():
    async with fleet(eu0_ttft=1.0) as sims:
        r, mem, counting, monitor = rig(policy_for(sims, ", hedge: {delay_s: 0.1, max_share: 1}"))
        try:
            s = await r.acomplete(msgs(), task="general", residency="eu", tools=TOOLS, stream=True)
            text = await collect(s)
            info = s.router
            assert text and info.hedge == "won" and info.provider == "r"
            assert [(a.provider, a.outcome) for a in info.attempts] == [("eu0", "hedge_lost"), ("r", "ok")]
            assert sims["us1"].request_count == 0 and sims["nt"].request_count == 0
            await settle()
            check_invariants(mem, counting, monitor, 1)
        finally:
            await r.aclose()


async def test_a_resumed_stream_skips_the_other_regions_replica_and_the_model_without_tools():
    async with fleet() as sims:
        r, mem, counting, monitor = rig(policy_for(sims, ", resume: {attempts: 1}"))
        try:
            sims["eu0"].inject("drop-mid-stream:4")
            s = await r.acomplete(msgs(), task="general", residency="eu", tools=TOOLS, stream=True)
            text = await collect(s)
            info = s.router
            assert text.startswith("The quick brown") and info.resumed == 1 and info.provider == "r"
            assert [(a.provider, a.outcome) for a in info.attempts] == [("eu0", "protocol_error"), ("r", "ok")]
            assert sims["us1"].request_count == 0 and sims["nt"].request_count == 0
            assert sims["r"].requests[-1].body["continue_final_message"] is True
            await settle()
            check_invariants(mem, counting, monitor, 1)
        finally:
            await r.aclose()
