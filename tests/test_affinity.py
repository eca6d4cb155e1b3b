"""Session and prefix affinity: bounded-load rendezvous hashing over a model's replicas.

Pure checks of the key and the hashing, then over real sockets through the proxy: sessions stick to
their replica, a replica's loss moves only its own sessions, and the simulator's prefix cache makes
the effect measurable (cached tokens, a shorter time to first token).
"""

from __future__ import annotations

import collections
import random
import time

import pytest

from router.core.policy import Balance, Model, Price
from router.dev.simulator import ModelConfig, Simulator
from router.engine.replicas import ReplicaPicker, affinity_key, rendezvous, session_from_headers
from tests.fleet_support import PRICE, fleet_policy, msgs, provider_lines, simulators
from tests.reliability_support import post, start_proxy

SYSTEM = {"role": "system", "content": "You are a coding agent. " * 40}
TOOLS = [{"type": "function", "function": {"name": "bash", "parameters": {"type": "object"}}}]


def test_the_key_comes_from_the_session_then_the_user_then_the_stable_prefix():
    turn1 = {"messages": [SYSTEM, {"role": "user", "content": "fix the build"}], "tools": TOOLS}
    turn2 = {"messages": [*turn1["messages"], {"role": "assistant", "content": "ok"},
                          {"role": "user", "content": "and the tests"}], "tools": TOOLS}
    other = {"messages": [SYSTEM, {"role": "user", "content": "write docs"}], "tools": TOOLS}
    assert affinity_key(turn1, "abc", "prefix") == b"s:abc"
    assert affinity_key({**turn1, "user": "u1"}, None, "prefix") == b"u:u1"
    assert affinity_key(turn1, None, "prefix") == affinity_key(turn2, None, "prefix")   # a conversation keeps its key
    assert affinity_key(turn1, None, "prefix") != affinity_key(other, None, "prefix")   # another one has its own
    assert affinity_key(turn1, None, "session") is None and affinity_key(turn1, "abc", "none") is None
    assert session_from_headers({"x-router-session": "s1", "session-id": "codex"}) == "s1"
    assert session_from_headers({"x-claude-code-session-id": "cc"}) == "cc"     # Claude Code's own header
    assert session_from_headers({"session-id": "thread-1"}) == "thread-1"        # Codex's
    assert session_from_headers({}) is None


def test_losing_a_replica_moves_only_its_keys_and_the_load_bound_spills_a_hot_key():
    names = ["a", "b", "c", "d"]
    keys = [f"s:{i}".encode() for i in range(2000)]
    before = {k: rendezvous(k, names)[0] for k in keys}
    shares = collections.Counter(before.values())
    assert all(400 < n < 600 for n in shares.values()), shares
    after = {k: rendezvous(k, ["a", "b", "d"])[0] for k in keys}     # c is gone
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == "c"}
    model = Model("q", "a", "q", Price(1, 1), replicas=tuple(names), balance=Balance(load_cap=1.25))
    picker = ReplicaPicker(random.Random(1))
    hot = keys[0]
    first = rendezvous(hot, names)[0]
    assert picker.pick(model, lambda k: 0.0, hot) == (first, "affinity")
    loads = {model.key(n): (6.0 if n == first else 1.0) for n in names}
    # bound = ceil(1.25 x (9 + 1) / 4) = 4: the hot key's replica holds 6, its next choice takes it
    assert picker.pick(model, loads.get, hot) == (rendezvous(hot, names)[1], "spill")


async def test_sessions_stick_to_a_replica_and_a_lost_replica_moves_only_its_sessions():
    async with simulators(4) as sims:
        policy = fleet_policy(provider_lines(sims),
                              f"  q: {{replicas: [g0, g1, g2, g3], model: q, price: {PRICE}}}",
                              "  general: {targets: [q]}")
        p = await start_proxy(policy)
        try:
            async def where(session: str) -> str:
                status, headers, _ = await post(p.url + "/v1/chat/completions",
                                                {"model": "auto", "messages": msgs(f"hi from {session}")},
                                                {"X-Router-Task": "general", "x-router-session": session})
                assert status == 200
                return headers["x-router-provider"]

            sessions = [f"agent-{i}" for i in range(40)]
            home = {s: await where(s) for s in sessions}
            assert len(set(home.values())) == 4                                # spread over every replica
            assert {s: await where(s) for s in sessions} == home               # and each stays where it was
            lost = collections.Counter(home.values()).most_common(1)[0][0]
            await sims[int(lost[1])].stop()                                    # a replica is lost
            moved = {s: await where(s) for s in sessions}
            assert {s for s in sessions if moved[s] != home[s]} == {s for s in sessions if home[s] == lost}
            assert lost not in moved.values()
            assert {s: await where(s) for s in sessions} == moved              # the moved ones stay put too
        finally:
            await p.stop()


async def test_the_simulated_prefix_cache_serves_a_returning_prefix_sooner():
    sim = Simulator(models=[ModelConfig("q", ttft_s=0.01, prefill_tokens_per_s=10_000)], prefix_cache_blocks=4096)
    async with sim:
        policy = fleet_policy(provider_lines([sim]), f"  q: {{provider: g0, model: q, price: {PRICE}}}",
                              "  general: {targets: [q]}")
        p = await start_proxy(policy)
        try:
            history = [{"role": "system", "content": "x" * 12_000}, {"role": "user", "content": "first"}]

            async def turn(messages):
                t0 = time.perf_counter()
                status, _, data = await post(p.url + "/v1/chat/completions", {"model": "q", "messages": messages},
                                             {"X-Router-Task": "general"})
                assert status == 200, data
                return time.perf_counter() - t0, data

            cold, first = await turn(history)
            reply = {"role": "assistant", "content": first["choices"][0]["message"]["content"]}
            warm, second = await turn([*history, reply, {"role": "user", "content": "second"}])
            usage1, usage2 = first["usage"], second["usage"]
            assert usage1["prompt_tokens_details"]["cached_tokens"] == 0
            # the first turn and its reply were cached (full 16-token blocks): only the new turn is prefilled
            assert usage2["prompt_tokens_details"]["cached_tokens"] >= usage2["prompt_tokens"] - 2 * 16
            assert cold > 0.25 and warm < cold / 2, (cold, warm)       # ~0.3 s of prefill became ~0
            assert sim.prefix_cache.hits == usage2["prompt_tokens_details"]["cached_tokens"]
            [info] = [i for i in p.mem.records if i.prompt_tokens == usage2["prompt_tokens"]]
            assert info.cached_tokens == usage2["prompt_tokens_details"]["cached_tokens"]   # metered as cached
        finally:
            await p.stop()


@pytest.mark.parametrize("header", ["x-router-session", "x-claude-code-session-id", "session-id"])
async def test_agent_session_headers_pin_requests_of_every_api(header):
    async with simulators(3) as sims:
        policy = fleet_policy(provider_lines(sims), f"  q: {{replicas: [g0, g1, g2], model: q, price: {PRICE}}}",
                              "  general: {targets: [q]}")
        p = await start_proxy(policy)
        try:
            seen = set()
            for i in range(5):   # different prompts, one session: one replica
                status, headers, _ = await post(p.url + "/v1/messages",
                                                {"model": "auto", "max_tokens": 16,
                                                 "messages": [{"role": "user", "content": f"question {i}"}]},
                                                {header: "session-7", "X-Router-Task": "general"})
                assert status == 200
                seen.add(headers["x-router-provider"])
            assert len(seen) == 1
        finally:
            await p.stop()
