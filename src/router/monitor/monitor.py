"""`Monitor`: the one object the engine consults and feeds about live upstream state.

It joins the health tracker (circuit breakers, in-flight counts, TTFT), the load monitor (vLLM
saturation) and their I/O (probes and scrapes, started as background tasks on the running loop).
The engine calls `overlay` before deciding, `begin`/`end` around each attempt and `record` when
a request ends (`router.engine.hooks.MonitorHooks`).

>>> monitor = Monitor(policy)                     # doctest: +SKIP
>>> state = monitor.overlay(EMPTY_STATE, policy)   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from router.core.decision import EMPTY_STATE, LiveState
from router.core.policy import Policy
from router.monitor.health import HealthTracker
from router.monitor.load import LoadMonitor
from router.monitor.probes import Prober, Scraper

if TYPE_CHECKING:
    import httpx

__all__ = ["Monitor"]


class Monitor:
    """What the engine consults and feeds: health, load and probes for one process.

    `overlay(state, policy)` adds the open circuits, the saturated deployments and the TTFT
    estimates to a LiveState (returning a cached object when nothing changed); `begin`/`end` count
    in-flight requests per attempt; `record(info)` feeds every attempt of a finished request to the
    breakers. Background tasks (scrapes, probes) start on the first request made inside an event
    loop and stop with `aclose()`.
    """

    def __init__(self, policy: Policy, *, clock: Callable[[], float] = time.monotonic,
                 client: httpx.AsyncClient | None = None, background: bool = True):
        self.health = HealthTracker(policy, clock=clock)
        self.load = LoadMonitor(policy, clock=clock)
        inflight = self.health.inflight
        self.load.local = lambda key: inflight.get(key, 0)
        self.prober = Prober(self.health, client)
        self.scraper = Scraper(self.load, client)
        self.policy = policy
        self.background = background
        self._tasks: list[asyncio.Task[Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._key: tuple[frozenset[str], frozenset[str], frozenset[str]] | None = None
        self._state = EMPTY_STATE
        self._active: dict[object, str] = {}   # request -> alias of its attempt in flight

    def use(self, policy: Policy) -> None:
        """Follow a policy reload; background tasks restart on the next request."""
        self.policy = policy
        self.health.use(policy)
        self.load.use(policy)
        self._cancel()

    # -- the hot path
    def overlay(self, state: LiveState, policy: Policy) -> LiveState:
        if policy is not self.policy:
            self.use(policy)
        if self.background and self._loop is None:
            self._start()
        h = self.health
        circuit, full, sat = h.circuit_open(), h.over_capacity(), self.load.saturated()
        key = (circuit, full, sat)
        if key != self._key:
            self._key = key
            self._state = LiveState({}, circuit, full | sat, h.ttft)
        mine = self._state
        if state is EMPTY_STATE:
            return mine
        return LiveState(state.budget_remaining, state.circuit_open | mine.circuit_open,
                         state.saturated | mine.saturated, {**mine.ttft, **state.ttft} if state.ttft else mine.ttft)

    def begin(self, request: object, alias: str) -> None:
        """An attempt of `request` starts on deployment `alias` (a `Model.key`)."""
        self.end(request)
        self._active[request] = alias
        self.health.begin(alias)

    def end(self, request: object) -> None:
        """Idempotent: the request's attempt in flight (if any) is over."""
        alias = self._active.pop(request, None)
        if alias is not None:
            self.health.end(alias)

    def record(self, attempts: Any) -> None:
        self.health.record_attempts(attempts)

    def replica_load(self, key: str) -> float | None:
        """The outstanding work on deployment `key` now, or None when it is out (open circuit, failed
        probe, saturated, at `max_concurrency`). Work is this process's requests in flight, plus the
        other clients' requests waiting and running in vLLM's last fresh scrape (the scrape minus
        what was ours when it was taken), plus its KV-cache usage (0..1, a tie-break).

        >>> Monitor(policy, background=False).replica_load("qwen@gpu-a")    # doctest: +SKIP
        0.0
        """
        h = self.health
        if key in h.circuit_open() or key in h.over_capacity():
            return None
        load = self.load
        if key in load.saturated():
            return None
        mine = h.inflight.get(key, 0)
        sample = load.fresh(key) if key in load.samples else None
        if sample is None:
            return float(mine)
        others = max(0.0, sample.waiting + sample.running - load.local_at_scrape.get(key, 0))
        return mine + others + (sample.kv_cache or 0.0)

    def ttft_quantile(self, key: str, q: float) -> float | None:
        """The measured `q` quantile of time to first token of deployment or model `key` (None: too few)."""
        return self.health.ttft_quantile(key, q)

    def states(self) -> dict[tuple[str, str], int]:
        """``{(provider, alias): 0 healthy | 1 degraded | 2 down}`` for router_provider_state.

        Degraded: a half-open circuit, or a deployment skipped as saturated.
        """
        out = self.health.states()
        saturated = self.load.saturated() | self.health.over_capacity()
        key_of = self.health.key_of
        for key, v in out.items():
            if v == 0 and key_of.get((key[1], key[0]), key[1]) in saturated:
                out[key] = 1
        return out

    # -- background tasks
    def start(self) -> None:
        """Start scrapes and probes on the running loop now (a server at start-up, after a reload),
        so a provider that is down is known before the first request; else they start with it."""
        if self.background and self._loop is None:
            self._start()

    def _start(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._loop = loop
        for p in self.load.watched.values():
            self._tasks.append(loop.create_task(self.scraper.run(p), name=f"router-scrape-{p.name}"))
        for p in self.policy.providers.values():
            if p.health.probe is not None:
                self._tasks.append(loop.create_task(self.prober.run(p), name=f"router-probe-{p.name}"))

    def _cancel(self) -> list[asyncio.Task[Any]]:
        tasks, self._tasks, self._loop = self._tasks, [], None
        for t in tasks:
            t.cancel()
        return tasks

    async def aclose(self) -> None:
        tasks = [t for t in self._cancel() if t.get_loop() is asyncio.get_running_loop()]
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.scraper.aclose()
        await self.prober.aclose()
