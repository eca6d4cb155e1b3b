"""Replicas of a model: one candidate to the decision, a replica picked by the engine with live load.

Over real sockets against simulated vLLM servers: skewed scraped load and local in-flight counts
steer picks, unhealthy and saturated replicas are skipped, a failed replica is replaced at once by
another, and the next candidate comes only when every replica is out. `router explain` shows each
replica and why it is out.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random

import pytest

from router import Router
from router.cli import main as cli_main
from router.core.decision import LiveState, decide
from router.core.errors import PolicyError
from router.core.meter import MemoryMeter
from router.core.policy import Balance, Model, Price
from router.core.policy_parser import parse_policy
from router.engine.replicas import ReplicaPicker, rendezvous
from router.monitor.monitor import Monitor
from tests.fleet_support import PRICE, fleet_policy, msgs, provider_lines, simulators

SCRAPE = ", metrics_url: \"{m}\", saturation: {{max_waiting: {w}, scrape_interval_s: 0.05, stale_after_s: 5}}"


def _providers(sims, max_waiting=50, probe=False) -> str:
    lines = []
    for i, s in enumerate(sims):
        extra = SCRAPE.format(m=s.metrics_url, w=max_waiting)
        if probe:
            extra += f', health: {{probe: {{path: "{s.url}/health", interval_s: 0.05, timeout_s: 1}}}}'
        lines.append(f'  g{i}: {{kind: vllm, base_url: "{s.base_url}"{extra}}}')
    return "\n".join(lines)


async def _wait_scraped(monitor: Monitor, n: int, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while any(monitor.load.scrapes.get(p, 0) < 2 for p in list(monitor.load.watched)[:n]):
        assert asyncio.get_running_loop().time() < deadline, monitor.load.scrapes
        await asyncio.sleep(0.02)


def test_policy_syntax_and_errors():
    policy = parse_policy(f"""
providers:
  a: {{kind: vllm, base_url: "http://a:1/v1", region: eu}}
  b: {{kind: vllm, base_url: "http://b:1/v1", region: eu}}
models:
  q: {{replicas: [a, b], model: q, price: {PRICE}, balance: {{strategy: round_robin, affinity: session, load_cap: 2}}}}
routes:
  general: {{targets: [q]}}
rules:
  - {{route: general}}
""", env={})
    q = policy.models["q"]
    assert q.replicas == ("a", "b") and q.provider == "a"
    assert q.balance == Balance("round_robin", "session", 2.0)
    assert dict(policy.deployments) == {"q@a": ("q", "a"), "q@b": ("q", "b")}
    with pytest.raises(PolicyError) as e:
        parse_policy(f"""
providers:
  a: {{kind: vllm, base_url: "http://a:1/v1"}}
  o: {{kind: openai, base_url: "https://o/v1", api_key: k}}
models:
  both: {{replicas: [a], provider: a, model: q, price: {PRICE}}}
  mixed: {{replicas: [a, o], model: q, price: {PRICE}}}
  twice: {{replicas: [a, a], model: q, price: {PRICE}}}
  none: {{model: q, price: {PRICE}}}
  lonely: {{provider: a, model: q, price: {PRICE}, balance: {{load_cap: 0.5}}}}
routes:
  general: {{targets: [lonely]}}
rules:
  - {{route: general}}
""", env={})
    text = str(e.value)
    assert "models.both.replicas: a model has either `provider` or `replicas`" in text
    assert "models.mixed.replicas: replicas of one model must be of one kind" in text
    assert "models.twice.replicas[1]: 'a' is listed twice" in text
    assert "models.none.provider: missing required key 'provider'" in text
    assert "models.lonely.balance: `balance` picks among replicas" in text
    assert "models.lonely.balance.load_cap: must be at least 1" in text


def test_decide_treats_the_model_as_one_candidate_until_every_replica_is_out():
    policy = parse_policy(f"""
providers:
  a: {{kind: vllm, base_url: "http://a:1/v1", region: eu}}
  b: {{kind: vllm, base_url: "http://b:1/v1", region: eu}}
  c: {{kind: vllm, base_url: "http://c:1/v1", region: us}}
  o: {{kind: openai, base_url: "https://o/v1", api_key: k, region: eu}}
models:
  q: {{replicas: [a, b, c], model: q, price: {PRICE}}}
  m: {{provider: o, model: gpt-4.1-mini, price: {PRICE}}}
routes:
  general: {{targets: [q, m]}}
rules:
  - {{route: general}}
residency: {{eu: [eu]}}
""", env={})
    body = {"messages": msgs()}
    d = decide(policy, body, task="general", state=LiveState(circuit_open=frozenset({"q@a"})))
    assert [c.model for c in d.allowed] == ["q", "m"]
    assert d.candidates[0].provider == "b" and d.candidates[0].replicas == (("a", "circuit_open"), ("b", None),
                                                                           ("c", None))
    d = decide(policy, body, task="general", residency="eu",
               state=LiveState(circuit_open=frozenset({"q@a"}), saturated=frozenset({"q@b"})))
    assert [c.model for c in d.allowed] == ["m"]
    q = d.candidates[-1]
    assert q.excluded == "saturated"   # a replica that may recover: the request may be retried later (503)
    assert q.to_dict()["replicas"] == [{"provider": "a", "excluded": "circuit_open"},
                                       {"provider": "b", "excluded": "saturated"},
                                       {"provider": "c", "excluded": "residency"}]


def test_router_explain_shows_replicas_and_why_each_is_out(tmp_path, capsys):
    path = tmp_path / "fleet.yaml"
    path.write_text(f"""
providers:
  gpu-a: {{kind: vllm, base_url: "http://a:1/v1", region: eu}}
  gpu-b: {{kind: vllm, base_url: "http://b:1/v1", region: eu}}
  gpu-c: {{kind: vllm, base_url: "http://c:1/v1", region: eu}}
models:
  qwen: {{replicas: [gpu-a, gpu-b, gpu-c], model: q, price: {PRICE}}}
routes:
  general: {{targets: [qwen]}}
rules:
  - {{route: general}}
""")
    assert cli_main(["explain", "--policy", str(path), "--down", "gpu-a", "--saturated", "gpu-c", "hello"]) == 0
    out = json.loads(capsys.readouterr().out)
    [cand] = out["candidates"]
    assert cand["excluded"] is None and cand["provider"] == "gpu-b"
    assert cand["replicas"] == [{"provider": "gpu-a", "excluded": "circuit_open"},
                                {"provider": "gpu-b", "excluded": None},
                                {"provider": "gpu-c", "excluded": "saturated"}]


def test_power_of_two_choices_spreads_equal_load_and_avoids_the_loaded_replica():
    model = Model("q", "a", "q", Price(1, 1), replicas=("a", "b", "c", "d"), balance=Balance(affinity="none"))
    picker = ReplicaPicker(random.Random(7))
    picks = collections.Counter(picker.pick(model, lambda k: 0.0, None)[0] for _ in range(4000))
    assert set(picks) == {"a", "b", "c", "d"}
    assert all(800 < n < 1200 for n in picks.values()), picks    # no herding onto one replica
    loads = {"q@a": 9.0, "q@b": 1.0, "q@c": 1.0, "q@d": 1.0}
    picks = collections.Counter(picker.pick(model, loads.get, None)[0] for _ in range(600))
    assert picks["a"] == 0                                       # the loaded one loses every pair it is in
    rr = Model("q", "a", "q", Price(1, 1), replicas=("a", "b", "c"), balance=Balance("round_robin", "none"))
    assert [picker.pick(rr, lambda k: 0.0, None)[0] for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]


async def test_skewed_scraped_load_steers_picks_away_from_the_busy_replica():
    async with simulators(3) as sims:
        policy = fleet_policy(_providers(sims),
                              f"  q: {{replicas: [g0, g1, g2], model: q, price: {PRICE}, balance: {{affinity: none}}}}",
                              "  general: {targets: [q]}")
        sims[0].set_load(waiting=6, running=12, kv_cache=0.9)   # other clients keep g0 busy
        r = Router(policy, meters=[mem := MemoryMeter()])
        try:
            await r.acomplete(msgs(), task="general")            # starts the scrapes
            await _wait_scraped(r.engine.monitor, 3)
            for _ in range(30):
                await r.acomplete(msgs(), task="general", max_tokens=4)
            served = collections.Counter(i.provider for i in list(mem.records)[1:])
            assert served["g0"] == 0 and served["g1"] + served["g2"] == 30, served
            assert {i.pick for i in list(mem.records)[1:]} == {"least_loaded"}
        finally:
            await r.aclose()


async def test_local_in_flight_counts_spread_concurrent_requests():
    async with simulators(2, latency_s=0.3) as sims:
        policy = fleet_policy(provider_lines(sims),
                              f"  q: {{replicas: [g0, g1], model: q, price: {PRICE}, balance: {{affinity: none}}}}",
                              "  general: {targets: [q]}")
        r = Router(policy, monitor=Monitor(policy, background=False))
        try:
            for _ in range(3):
                a, b = await asyncio.gather(r.acomplete(msgs(), task="general"), r.acomplete(msgs(), task="general"))
                assert {a.router.provider, b.router.provider} == {"g0", "g1"}   # the second saw the first in flight
            assert all(v == 0 for v in r.engine.monitor.health.inflight.values())
        finally:
            await r.aclose()


async def test_unhealthy_and_saturated_replicas_are_skipped_then_the_next_candidate():
    async with simulators(3) as sims, simulators(1) as (api,):
        providers = _providers(sims, max_waiting=4, probe=True) + f'\n  api: {{kind: openai, base_url: "{api.base_url}", api_key: k}}'
        policy = fleet_policy(providers,
                              f"  q: {{replicas: [g0, g1, g2], model: q, price: {PRICE}}}\n"
                              f"  m: {{provider: api, model: q, price: {PRICE}}}",
                              "  general: {targets: [q, m]}")
        r = Router(policy)
        try:
            await r.acomplete(msgs(), task="general")
            mon = r.engine.monitor
            sims[0].set_down()                        # its /health fails: probe-down
            sims[1].set_load(waiting=40)              # its queue is over max_waiting: saturated
            deadline = asyncio.get_running_loop().time() + 5
            while not ({"q@g0", "q@g1"} <= mon.health.circuit_open() | mon.load.saturated()):
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.02)
            d = r.explain(msgs("fix my SQL"), task="general")
            assert d.candidates[0].replicas == (("g0", "circuit_open"), ("g1", "saturated"), ("g2", None))
            for i in range(6):
                resp = await r.acomplete(msgs(f"turn {i}"), task="general", session=f"s{i}")
                assert resp.router.provider == "g2" and resp.router.pick == "only"
            sims[2].set_down()                        # the last replica goes: now the next candidate serves
            while "q@g2" not in mon.health.circuit_open():
                assert asyncio.get_running_loop().time() < deadline + 5
                await asyncio.sleep(0.02)
            resp = await r.acomplete(msgs(), task="general")
            assert resp.router.provider == "api" and resp.router.model == "m" and resp.router.pick is None
            assert r.explain(msgs(), task="general").candidates[-1].excluded == "saturated"
            assert [a.provider for a in resp.router.attempts] == ["api"]   # no attempt wasted on a replica that is out
        finally:
            await r.aclose()


async def test_a_failing_replica_is_replaced_at_once_by_another_replica():
    async with simulators(3) as sims, simulators(1) as (api,):
        providers = provider_lines(sims) + f'\n  api: {{kind: openai, base_url: "{api.base_url}", api_key: k}}'
        policy = fleet_policy(providers,
                              f"  q: {{replicas: [g0, g1, g2], model: q, price: {PRICE}}}\n"
                              f"  m: {{provider: api, model: q, price: {PRICE}}}",
                              "  general: {targets: [q, m]}",
                              extra="")
        r = Router(policy, monitor=Monitor(policy, background=False))
        try:
            order = rendezvous(b"s:one", ["g0", "g1", "g2"])     # where session "one" goes, in order
            for name in order[:2]:
                sims[int(name[1])].set_fault("status:503")
            resp = await r.acomplete(msgs(), task="general", session="one")
            outcomes = [(a.provider, a.outcome) for a in resp.router.attempts]
            assert outcomes == [(order[0], "http_503"), (order[1], "http_503"), (order[2], "ok")], outcomes
            assert resp.router.pick == "only"                     # the one replica left (its third choice)
            assert api.request_count == 0                         # the next candidate was never needed
            sims[int(order[2][1])].set_fault("status:503")
            resp = await r.acomplete(msgs(), task="general", session="two")
            assert resp.router.provider == "api"                  # every replica failed: the next candidate
            assert {a.provider for a in resp.router.attempts[:-1]} == {"g0", "g1", "g2"}
            assert all(v == 0 for v in r.engine.monitor.health.inflight.values())
        finally:
            await r.aclose()
