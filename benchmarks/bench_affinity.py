"""Replica picking with and without prefix affinity: time to first token and prefix-cache hits.

    python benchmarks/bench_affinity.py [--sessions 32] [--turns 8] [--seed 7]

Four simulated vLLM replicas (each: 4 requests at once, the rest queue; a prefix cache of 2,048
blocks of 16 tokens = 32k tokens; prefill at 8,000 tokens/s; 20 ms base time to first token)
serve one model. Multi-turn, agent-shaped traffic goes through the engine (`Router.acomplete`,
streamed): `--sessions` agents run at once, each for `--turns` turns; every session shares one
system prompt and tool list (~2,200 tokens), opens with its own task (~500 tokens) and appends a
reply and a tool result (~400 tokens) per turn, so its prompt grows to ~5,500 tokens: the whole
working set (~150k tokens) is about five replicas' caches, a quarter of it one replica's.

Three pickers run on identical traffic, each against freshly started replicas (cold caches):
round-robin, least-loaded (power of two choices, no affinity) and least-loaded + affinity
(bounded-load rendezvous hashing of the conversation's stable prefix). It prints time to first
token p50/p90 (client side: request sent to first content chunk) and the prefix-hit rate (prompt
tokens served from the replicas' caches / prompt tokens), in one table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from router import Router  # noqa: E402
from router.core.policy_parser import parse_policy  # noqa: E402
from router.dev.simulator import ModelConfig, Simulator  # noqa: E402

VARIANTS = (("round-robin", "{strategy: round_robin, affinity: none}"),
            ("least-loaded", "{strategy: least_loaded, affinity: none}"),
            ("least-loaded + affinity", "{strategy: least_loaded, affinity: prefix}"))
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
         "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango")


def text(rng: random.Random, tokens: int) -> str:
    """About `tokens` tokens (4 characters each) of unique filler."""
    out, size = [], 0
    while size < tokens * 4:
        w = rng.choice(WORDS) + str(rng.randrange(1000))
        out.append(w)
        size += len(w) + 1
    return " ".join(out)


def sessions(n: int, turns: int, seed: int) -> list[list[str]]:
    """Per session: its opening task, then one tool result per later turn (the same for every variant)."""
    rng = random.Random(seed)
    return [[text(rng, 500)] + [text(rng, 380) for _ in range(turns - 1)] for _ in range(n)]


SYSTEM = "You are a coding agent working in a repository. Follow the rules. " + text(random.Random(1), 2000)
TOOLS = [{"type": "function", "function": {"name": n, "description": text(random.Random(i), 40),
                                           "parameters": {"type": "object"}}}
         for i, n in enumerate(("bash", "read", "edit", "grep"))]


async def run_variant(name: str, balance: str, plan: list[list[str]]) -> dict[str, float]:
    sims = [Simulator(models=[ModelConfig("q", ttft_s=0.02, prefill_tokens_per_s=8000, tokens_per_s=400)],
                      capacity=4, prefix_cache_blocks=2048) for _ in range(4)]
    for s in sims:
        await s.start()
    providers = "\n".join(f'  g{i}: {{kind: vllm, base_url: "{s.base_url}", metrics_url: "{s.metrics_url}", '
                          'saturation: {max_waiting: 1000, scrape_interval_s: 0.2}}' for i, s in enumerate(sims))
    policy = parse_policy(f"""
providers:
{providers}
models:
  q: {{replicas: [g0, g1, g2, g3], model: q, price: {{input_per_mtok: 0.1, output_per_mtok: 0.1}}, capabilities: [tools],
     balance: {balance}}}
routes:
  general: {{targets: [q]}}
rules:
  - {{route: general}}
timeouts: {{first_token_s: 120, total_s: 600}}
""", env={})
    router = Router(policy)
    ttfts: list[float] = []

    async def agent(turns: list[str]) -> None:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": turns[0]}]
        for i, result in enumerate(turns):
            if i:
                messages.append({"role": "tool", "tool_call_id": f"call_{i}", "content": result})
            t0 = time.perf_counter()
            stream = await router.acomplete(messages, task="general", stream=True, tools=TOOLS)
            first, reply = None, []
            async for chunk in stream:
                for choice in chunk.choices or ():
                    if choice.delta.content:
                        if first is None:
                            first = time.perf_counter() - t0
                        reply.append(choice.delta.content)
            ttfts.append(first if first is not None else float("nan"))
            messages.append({"role": "assistant", "content": "".join(reply),
                             "tool_calls": [{"id": f"call_{i + 1}", "type": "function",
                                             "function": {"name": "bash", "arguments": "{}"}}]})

    started = time.perf_counter()
    try:
        await asyncio.gather(*(agent(t) for t in plan))
    finally:
        await router.aclose()
        for s in sims:
            await s.stop()
    wall = time.perf_counter() - started
    queries = sum(s.prefix_cache.queries for s in sims)
    hits = sum(s.prefix_cache.hits for s in sims)
    ordered = sorted(ttfts)
    return {"p50": ordered[len(ordered) // 2], "p90": ordered[int(0.9 * len(ordered))], "hit": hits / queries,
            "requests": len(ttfts), "wall": wall, "spread": max(s.request_count for s in sims)
            / max(1, min(s.request_count for s in sims))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=32)
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    plan = sessions(args.sessions, args.turns, args.seed)

    async def all_variants() -> list[tuple[str, dict[str, float]]]:
        return [(name, await run_variant(name, balance, plan)) for name, balance in VARIANTS]

    results = asyncio.run(all_variants())
    print(f"\n4 simulated vLLM replicas, {args.sessions} agent sessions x {args.turns} turns "
          f"(streamed, {os.cpu_count()} cores, seed {args.seed})\n")
    print(f"{'picker':<26} {'TTFT p50 ms':>11} {'TTFT p90 ms':>11} {'prefix hits':>11} {'requests':>9} "
          f"{'max/min per replica':>19} {'wall s':>7}")
    for name, r in results:
        print(f"{name:<26} {r['p50'] * 1e3:>11.0f} {r['p90'] * 1e3:>11.0f} {r['hit'] * 100:>10.1f}% "
              f"{r['requests']:>9.0f} {r['spread']:>19.2f} {r['wall']:>7.1f}")


if __name__ == "__main__":
    main()
