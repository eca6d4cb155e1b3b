"""Shared pieces of the chaos suite: its mode, the figures it prints, a policy with two EU providers
and one US provider, a proxy on a thread of its own (for hypothesis' synchronous tests), and a TCP
link that can cut PostgreSQL off.

``ROUTER_CHAOS=long`` (local runs) scales every figure up: more fuzzed bodies, more requests per
fault, longer loads. The default fits CI: the whole suite in about a minute on 2 cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, TypeVar

from router.core.policy import hash_key
from router.core.policy_parser import parse_policy

LONG = os.environ.get("ROUTER_CHAOS", "").lower() == "long"
T = TypeVar("T")

# one line per figure, printed in pytest's terminal summary (tests/chaos/conftest.py)
FIGURES: list[str] = []


def scale(short: T, long: T) -> T:
    return long if LONG else short


def figure(suite: str, **values: object) -> None:
    """Record one line of figures, e.g. ``figure("fuzz /v1/messages", requests=80, status_5xx=0)``."""
    line = f"{suite:<34} " + "  ".join(f"{k}={v}" for k, v in values.items())
    FIGURES.append(line)
    print("\n" + line)


# ---------------------------------------------------------------------------- the policy

KEYS = {"eu": "sk-chaos-eu-tenant", "open": "sk-chaos-open-tenant", "budget": "sk-chaos-budget-tenant"}
PROVIDER_REGION = {"eu-a": "eu", "eu-b": "eu", "us": "us"}

CHAOS_POLICY = """
version: 1
providers:
  eu-a: {{kind: vllm, base_url: "{eu_a}", region: eu, health: {{failure_threshold: 3, open_s: 0.5}}}}
  eu-b: {{kind: vllm, base_url: "{eu_b}", region: eu, health: {{failure_threshold: 3, open_s: 0.5}}}}
  us:   {{kind: openai, base_url: "{us}", api_key: "sk-us", region: us, health: {{failure_threshold: 3, open_s: 0.5}}}}
models:
  a: {{provider: eu-a, model: m, price: {{input_per_mtok: 0.1, output_per_mtok: 0.2}}}}
  u: {{provider: us, model: m, price: {{input_per_mtok: 0.4, output_per_mtok: 1.6}}}}
  b: {{provider: eu-b, model: m, price: {{input_per_mtok: 0.9, output_per_mtok: 1.8}}}}
routes:
  general: {{targets: [a, u, b]}}
rules:
  - {{route: general}}
residency:
  eu: [eu]
tenants:
  eu:     {{keys: ["{eu_key}"], residency: eu}}
  open:   {{keys: ["{open_key}"]}}
  budget: {{keys: ["{budget_key}"], budget: {{daily_usd: 1000}}}}
retry: {{attempts: 2, backoff_s: 0.01, max_backoff_s: 0.02}}
timeouts: {{connect_s: 0.5, first_token_s: 0.5, total_s: 4, attempt_s: 0.5}}
{extra}
"""


def chaos_policy_text(eu_a: str, eu_b: str, us: str, extra: str = "") -> str:
    return CHAOS_POLICY.format(eu_a=eu_a, eu_b=eu_b, us=us, extra=extra, eu_key=hash_key(KEYS["eu"]),
                               open_key=hash_key(KEYS["open"]), budget_key=hash_key(KEYS["budget"]))


def chaos_policy(eu_a: str, eu_b: str, us: str, extra: str = "") -> Any:
    return parse_policy(chaos_policy_text(eu_a, eu_b, us, extra), env={})


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


# ---------------------------------------------------------------------------- a proxy on its own loop


class ThreadedLoop:
    """An event loop on a daemon thread; `call(coro)` runs a coroutine there and returns its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="chaos-loop", daemon=True)
        self.thread.start()

    def call(self, coro: Awaitable[T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.call(drain(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# ---------------------------------------------------------------------------- a link that can be cut


class CutLink:
    """A TCP forwarder to 127.0.0.1:`target`. `cut()` resets every connection through it and refuses
    new ones (the service looks down); `restore()` accepts again. Runs on its own thread, so it works
    for clients on any loop or thread."""

    def __init__(self, target: int):
        self.target = target
        self._loop = ThreadedLoop()
        self.port = self._loop.call(self._listen())
        self._writers: set[asyncio.StreamWriter] = set()

    async def _listen(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        return self._server.sockets[0].getsockname()[1]

    async def _accept(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            cw.close()
            return
        self._writers.update((cw, uw))

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pipe(cr, uw), pipe(ur, cw))
        self._writers.difference_update((cw, uw))

    async def _cut(self) -> None:
        self._server.close()
        for w in list(self._writers):
            transport = w.transport
            if transport is not None:
                transport.abort()
        self._writers.clear()

    def cut(self) -> None:
        self._loop.call(self._cut())

    def restore(self) -> None:
        self._loop.call(self._listen(self.port))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.call(self._cut())
        self._loop.close()


async def gather_limited(n: int, jobs: list[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run `jobs` with at most `n` at a time; results in order."""
    sem = asyncio.Semaphore(n)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with sem:
            return await job()

    return await asyncio.gather(*(one(j) for j in jobs))


def ns(**kw: Any) -> SimpleNamespace:
    return SimpleNamespace(**kw)
