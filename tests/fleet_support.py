"""Shared pieces of the fleet suites (replicas, affinity, hedging, recovery): simulated replicas and
a policy over them, a meter that checks the exactly-once invariants, and a streaming helper."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from router.core.meter import Meter
from router.core.policy_parser import parse_policy
from router.dev.simulator import ModelConfig, Simulator

PRICE = "{input_per_mtok: 1.0, output_per_mtok: 2.0}"


class CountingMeter(Meter):
    """Counts records and in-flight deltas per provider (the engine's gauges must come back to 0)."""

    tracks_inflight = True

    def __init__(self) -> None:
        self.records: list[Any] = []
        self.inflight: collections.Counter[str] = collections.Counter()

    def record(self, info: Any) -> None:
        self.records.append(info)

    def track_inflight(self, provider: str, delta: int) -> None:
        self.inflight[provider] += delta


@contextlib.asynccontextmanager
async def simulators(n: int, **options: Any) -> AsyncIterator[list[Simulator]]:
    """`n` simulated vLLM servers serving model ``q`` (options: `Simulator` knobs)."""
    sims = [Simulator(models=[ModelConfig("q")], **options) for _ in range(n)]
    for s in sims:
        await s.start()
    try:
        yield sims
    finally:
        for s in sims:
            await s.stop()


def provider_lines(sims: Sequence[Simulator], prefix: str = "g", kind: str = "vllm", extra: str = "") -> str:
    """``providers:`` entries named prefix0, prefix1, ... for `sims`."""
    return "\n".join(f'  {prefix}{i}: {{kind: {kind}, base_url: "{s.base_url}", api_key: "k-{prefix}{i}"{extra}}}'
                     for i, s in enumerate(sims))


def fleet_policy(providers: str, models: str, routes: str, extra: str = "") -> Any:
    return parse_policy(f"""
version: 1
providers:
{providers}
models:
{models}
routes:
{routes}
rules:
  - {{route: general}}
retry: {{attempts: 2, backoff_s: 0.01, max_backoff_s: 0.02}}
timeouts: {{connect_s: 1, first_token_s: 5, total_s: 20, attempt_s: 5}}
{extra}
""", env={})


def msgs(text: str = "hello there") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def collect(stream: Any) -> str:
    """Every content delta of a stream, joined."""
    out = []
    async for chunk in stream:
        for choice in chunk.choices or ():
            if choice.delta.content:
                out.append(choice.delta.content)
    return "".join(out)


async def settle() -> None:
    """Let callbacks scheduled by closes and cancellations run."""
    for _ in range(5):
        await asyncio.sleep(0)
