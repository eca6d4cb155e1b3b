"""`router demo`: real routing through simulated providers, no keys needed.

Starts one upstream simulator per provider of `policies/demo.yaml` on loopback ports, sends a
mix of coding, reasoning, general, non-English and EU-resident requests through the real
library path (classifier, decision, adapters, retries, metering), takes DeepSeek down halfway
to show a fallback, and prints what happened to each request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from importlib import resources
from typing import Any

__all__ = ["DEMO_REQUESTS", "run_demo", "simulated_providers"]

# (label, messages, kwargs)
DEMO_REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("coding", "Write a Rust function that parses ISO 8601 dates and returns a chrono::NaiveDate.", {}),
    ("coding", "why does this fail?\nTraceback (most recent call last):\n  File \"app.py\", line 12, in <module>\n"
               "    total = sum(prices) / len(prices)\nZeroDivisionError: division by zero", {}),
    ("reasoning", "A train leaves at 3pm going 80 km/h, another leaves the same station at 4pm going 100 km/h "
                  "on the same track. At what time does the second one catch up?", {}),
    ("general", "Give me three ideas for a team offsite in the spring, with a one-line pitch each.", {}),
    ("non-English", "Quels sont les meilleurs quartiers pour se loger à Lyon quand on a des enfants ?", {}),
    ("non-English", "请用三句话介绍一下长城的历史。", {}),
    ("EU residency", "Summarise our customer's complaint in two sentences: the parcel arrived late and damaged.",
     {"residency": "eu"}),
    ("task hint", "Let's plan the migration of the billing service.", {"task": "reasoning"}),
    ("streaming", "Write a haiku about connection pools.", {"stream": True}),
]
OUTAGE = ("general, DeepSeek down", "What's a good name for a bakery that also sells coffee?", {})


def _simulators() -> dict[str, Any]:
    """One simulator per provider of the demo policy, keyed by its ROUTER_DEMO_<NAME>_URL name."""
    from router.dev.simulator import MISTRAL_CHAT_FIELDS, ModelConfig, Simulator

    return {
        "VLLM_CODER": Simulator(models=[ModelConfig("Qwen/Qwen3-Coder-Next", latency_s=0.03, ttft_s=0.02,
                                                    tokens_per_s=400)]),
        "VLLM_QWEN": Simulator(models=[ModelConfig("Qwen/Qwen3.5", latency_s=0.03)]),
        "DEEPSEEK": Simulator(models=[ModelConfig("deepseek-chat", latency_s=0.05, ttft_s=0.03, tokens_per_s=400),
                                      ModelConfig("deepseek-reasoner", reasoning=True, latency_s=0.12,
                                                  reply_tokens=48, reasoning_tokens=64)]),
        "OPENAI": Simulator(models=[ModelConfig("gpt-4.1-mini", latency_s=0.06)]),
        "MISTRAL": Simulator(models=[ModelConfig("mistral-large-latest", latency_s=0.05)],
                             strict_fields=MISTRAL_CHAT_FIELDS),
    }


@contextlib.contextmanager
def simulated_providers() -> Iterator[dict[str, Any]]:
    """Fake vLLM, DeepSeek, OpenAI and Mistral upstreams on loopback, for the examples.

    Inside the block, `ROUTER_POLICY` points at the demo policy and its provider URLs at the
    simulators, so `router.complete(...)` works as it would in production. Yields the simulators
    (``handles["DEEPSEEK"].sim.set_fault("status:503")`` takes DeepSeek down).
    """
    import router

    handles = {name: sim.start_in_thread() for name, sim in _simulators().items()}
    saved = {k: os.environ.get(k) for k in ["ROUTER_POLICY", *(f"ROUTER_DEMO_{n}_URL" for n in handles)]}
    try:
        os.environ["ROUTER_POLICY"] = _bundled("demo.yaml")
        for name, h in handles.items():
            os.environ[f"ROUTER_DEMO_{name}_URL"] = h.base_url
        router._default = None
        yield handles
    finally:
        if router._default is not None:
            router._default.close()
            router._default = None
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for h in handles.values():
            h.stop()


def _bundled(name: str) -> str:
    local = os.path.join("policies", name)
    return local if os.path.exists(local) else str(resources.files("router") / "policies" / name)


async def _run(verbose: bool) -> int:
    from router.core.meter import MemoryMeter
    from router.core.policy_parser import load_policy
    from router.engine.client import Router

    sims = _simulators()
    env = dict(os.environ)
    for name, sim in sims.items():
        await sim.start()
        env[f"ROUTER_DEMO_{name}_URL"] = sim.base_url
        env[f"ROUTER_DEMO_{name}_METRICS_URL"] = sim.metrics_url
    meter = MemoryMeter()
    policy_path = _bundled("demo.yaml")
    router = Router(load_policy(policy_path, env=env), meters=[meter])
    rows: list[dict[str, Any]] = []
    try:
        print(f"router demo: {len(sims)} simulated providers on 127.0.0.1, policy {policy_path}\n")
        for label, text, kwargs in [*DEMO_REQUESTS, OUTAGE]:
            if label == OUTAGE[0]:
                sims["DEEPSEEK"].set_fault("status:503")
            t0 = time.perf_counter()
            messages = [{"role": "user", "content": text}]
            if kwargs.get("stream"):
                stream = await router.acomplete(messages, **kwargs)
                async for _ in stream:
                    pass
                info = stream.router
            else:
                info = (await router.acomplete(messages, **kwargs)).router
            rows.append({"request": label, "prompt": text, "info": info, "wall": time.perf_counter() - t0})
    finally:
        await router.aclose()
        for sim in sims.values():
            await sim.stop()

    _print_table(rows, verbose)
    total = sum(r["info"].cost_usd for r in rows)
    fallbacks = sum(1 for r in rows if len({a.provider for a in r["info"].attempts}) > 1)
    print(f"\n{len(rows)} requests, {fallbacks} with a fallback, total cost ${total:.6f}; "
          f"{len(meter.records)} metered.")
    print("Every request above went over real sockets through the same code `router serve` uses.")
    print("Next: `router explain \"your prompt\"` shows a decision; docs/policy.md explains the policy.")
    return 0 if len(meter.records) == len(rows) and all(r["info"].status == "ok" for r in rows) else 1


def _print_table(rows: list[dict[str, Any]], verbose: bool) -> None:
    headers = ["request", "task", "lang", "route", "provider", "model", "attempts", "latency", "cost $"]
    table = []
    for r in rows:
        info = r["info"]
        attempts = " > ".join(f"{a.provider}:{a.outcome}" for a in info.attempts)
        table.append([r["request"], f"{info.task} ({info.task_source})", info.language or "-", info.route,
                      info.provider or "-", info.model or "-", attempts, f"{info.latency_s * 1000:.0f} ms",
                      f"{info.cost_usd:.7f}"])
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("-" * len(line))
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    if verbose:
        print()
        for r in rows:
            print(f"{r['request']}: {r['prompt'][:100]!r}")


def run_demo(verbose: bool = False) -> int:
    try:
        return asyncio.run(_run(verbose))
    except KeyboardInterrupt:  # pragma: no cover
        print("interrupted", file=sys.stderr)
        return 130
