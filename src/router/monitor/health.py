"""Deployment health: circuit breakers, in-flight counts and TTFT estimates, as plain state.

A *deployment* is one model alias of the policy on one provider, keyed by `Model.key`: the alias
itself, or ``alias@provider`` for each replica of a model served by several. This module is sans-IO:
outcomes and the time come in as arguments (the clock is injected), so the state machine is
tested without sockets or sleeps. The active probes that feed `set_probe` live in
`router.monitor.probes`.

The breaker of one deployment::

    closed --(failure_threshold failures in a row, or failure_rate over >= min_requests in window_s)--> open
    open --(open_s elapsed, or an active probe of its provider started after it opened succeeds)--> half_open
    half_open --(half_open_probes successes)--> closed
    half_open --(any failure)--> open            (for another open_s)

Invariants: an open circuit lets no request through; a half-open one lets at most
`half_open_probes` through at once; outcomes of requests that started before the circuit opened
are ignored while it is open. An active probe that fails marks every deployment of its provider
*down* (excluded like an open circuit) until a probe succeeds; it does not touch the breakers.

Which outcomes count: ``ok`` is a success; ``connect_error``, ``timeout``, ``protocol_error``,
``malformed`` and ``http_5xx`` are failures; anything else (``http_4xx`` including 429,
``cancelled``) is the caller's or the rate limiter's business and is ignored.

>>> t = HealthTracker(policy, clock=lambda: now)                   # doctest: +SKIP
>>> for _ in range(5): t.record("qwen", "http_503", 0.1)            # doctest: +SKIP
>>> t.circuit_open()                                               # doctest: +SKIP
frozenset({'qwen'})
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from router.core.policy import HealthSettings, Policy

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "CircuitBreaker", "HealthTracker", "is_failure"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
HEALTHY, DEGRADED, DOWN = 0, 1, 2          # router_provider_state values

_FAILURES = frozenset({"connect_error", "timeout", "protocol_error", "malformed"})
_TTFT_WINDOW = 256        # first-token latencies kept per deployment, for `ttft_quantile`
_TTFT_MIN_SAMPLES = 20    # fewer than this: no percentile yet


def is_failure(outcome: str) -> bool | None:
    """True for a failure, False for a success, None for an outcome the breaker ignores.

    >>> is_failure("ok"), is_failure("http_503"), is_failure("http_429")
    (False, True, None)
    """
    if outcome == "ok":
        return False
    if outcome in _FAILURES:
        return True
    if outcome.startswith("http_"):
        try:
            return True if int(outcome[5:]) >= 500 else None
        except ValueError:
            return None
    return None


class CircuitBreaker:
    """The breaker of one deployment. Pure: every method takes `now`."""

    __slots__ = ("_consecutive", "_events", "_failures", "_successes", "opened_at", "opens", "settings", "state")

    def __init__(self, settings: HealthSettings):
        self.settings = settings
        self.state = CLOSED
        self.opened_at = -math.inf
        self.opens = 0                                  # times it has opened, for tests and logs
        self._events: deque[tuple[float, bool]] = deque()  # (time, failed) within the window
        self._failures = 0
        self._consecutive = 0
        self._successes = 0                             # in half-open

    @property
    def reopens_at(self) -> float:
        """When an open circuit turns half-open (inf when not open)."""
        return self.opened_at + self.settings.open_s if self.state == OPEN else math.inf

    def poll(self, now: float) -> bool:
        """Apply the passage of time; True when the state changed."""
        if self.state == OPEN and now >= self.opened_at + self.settings.open_s:
            self.state, self._successes = HALF_OPEN, 0
            return True
        return False

    def allows(self, inflight: int) -> bool:
        """May one more request go to this deployment, with `inflight` already there?"""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            return False
        return inflight < self.settings.half_open_probes

    def record(self, failed: bool, now: float) -> bool:
        """One outcome; True when the state changed."""
        changed = self.poll(now)
        s = self.settings
        if self.state == OPEN:
            return changed
        if self.state == HALF_OPEN:
            if failed:
                self._open(now)
                return True
            self._successes += 1
            if self._successes >= s.half_open_probes:
                self.state = CLOSED
                self._events.clear()
                self._failures = self._consecutive = 0
                return True
            return changed
        events = self._events
        events.append((now, failed))
        self._failures += failed
        self._consecutive = self._consecutive + 1 if failed else 0
        horizon = now - s.window_s
        while events and events[0][0] < horizon:
            self._failures -= events.popleft()[1]
        if failed and (self._consecutive >= s.failure_threshold or
                       (len(events) >= s.min_requests and self._failures >= s.failure_rate * len(events))):
            self._open(now)
            return True
        return changed

    def _open(self, now: float) -> None:
        self.state, self.opened_at, self._successes = OPEN, now, 0
        self.opens += 1
        self._events.clear()
        self._failures = self._consecutive = 0


class HealthTracker:
    """Breakers, in-flight counts and TTFT estimates for every deployment of a policy.

    Cheap on the hot path: `circuit_open()` and `over_capacity()` return cached frozensets that are
    rebuilt only when a state changes (or an open circuit's timer expires); no locks, no I/O. Runs
    on one event loop; counts are per process (see docs/routing.md, "Several replicas").
    """

    def __init__(self, policy: Policy, *, clock: Callable[[], float] = time.monotonic, ttft_alpha: float = 0.3):
        self.clock = clock
        self.alpha = ttft_alpha
        self.breakers: dict[str, CircuitBreaker] = {}
        self.inflight: dict[str, int] = {}              # alias -> requests in flight
        self.provider_inflight: dict[str, int] = {}     # provider -> requests in flight
        self.probe_down: set[str] = set()               # providers whose active probe failed
        self._ttft: dict[str, float] = {}
        self.ttft: Mapping[str, float] = MappingProxyType(self._ttft)
        self._recent: dict[str, deque[float]] = {}          # key -> the last TTFTs, for percentiles
        self._quantiles: dict[str, tuple[float, float]] = {}  # key -> (q, value), until the next TTFT
        self._open: frozenset[str] = frozenset()
        self._full: frozenset[str] = frozenset()
        self._dirty = True
        self._next_poll = math.inf
        self.use(policy)

    def use(self, policy: Policy) -> None:
        """Follow a (re)loaded policy: keep the breakers of deployments whose settings did not change.

        Deployments are keyed by `Model.key`: the alias for a model with one provider, ``alias@provider``
        for each replica of a model served by several."""
        self.policy = policy
        deployments = policy.deployments
        self.provider_of = {key: provider for key, (_, provider) in deployments.items()}
        self.alias_of = {key: alias for key, (alias, _) in deployments.items()}
        self.key_of = {(alias, provider): key for key, (alias, provider) in deployments.items()}
        self.aliases_of: dict[str, tuple[str, ...]] = {}   # provider -> its deployment keys
        for key, provider in self.provider_of.items():
            self.aliases_of[provider] = (*self.aliases_of.get(provider, ()), key)
        old = self.breakers
        self.breakers = {}
        for key, provider in self.provider_of.items():
            settings = policy.providers[provider].health
            b = old.get(key)
            self.breakers[key] = b if b is not None and b.settings == settings else CircuitBreaker(settings)
        self._dirty = True

    # -- passive: what requests tell us
    def begin(self, alias: str) -> None:
        """A request is being sent to deployment `alias` (a `Model.key`)."""
        n = self.inflight.get(alias, 0) + 1
        self.inflight[alias] = n
        provider = self.provider_of.get(alias)
        if provider is not None:
            pn = self.provider_inflight.get(provider, 0) + 1
            self.provider_inflight[provider] = pn
            cap = self.policy.providers[provider].max_concurrency
            if cap is not None and pn == cap:
                self._dirty = True
        b = self.breakers.get(alias)
        if b is not None and b.state == HALF_OPEN:
            self._dirty = True

    def end(self, alias: str) -> None:
        """The request to `alias` is over (whatever its outcome)."""
        self.inflight[alias] = max(0, self.inflight.get(alias, 0) - 1)
        provider = self.provider_of.get(alias)
        if provider is not None:
            pn = max(0, self.provider_inflight.get(provider, 0) - 1)
            self.provider_inflight[provider] = pn
            cap = self.policy.providers[provider].max_concurrency
            if cap is not None and pn == cap - 1:
                self._dirty = True
        b = self.breakers.get(alias)
        if b is not None and b.state == HALF_OPEN:
            self._dirty = True

    def record(self, alias: str, outcome: str, latency_s: float | None = None) -> None:
        """One attempt's outcome (as in `Attempt.outcome`); an ok one also feeds the TTFT estimate."""
        failed = is_failure(outcome)
        b = self.breakers.get(alias)
        if failed is None or b is None:
            return
        if b.record(failed, self.clock()):
            self._dirty = True
        if not failed:
            self._observe_ttft(alias, latency_s)

    def _observe_ttft(self, key: str, latency_s: float | None) -> None:
        if latency_s is None:
            return
        prev = self._ttft.get(key)
        self._ttft[key] = latency_s if prev is None else prev + self.alpha * (latency_s - prev)
        window = self._recent.get(key)
        if window is None:
            window = self._recent[key] = deque(maxlen=_TTFT_WINDOW)
        window.append(latency_s)
        self._quantiles.pop(key, None)

    def ttft_quantile(self, key: str, q: float) -> float | None:
        """The `q` quantile (0.95: p95) of the last 256 first-token latencies of a deployment or model
        alias; None until 20 have been measured. Cached until the next measurement."""
        cached = self._quantiles.get(key)
        if cached is not None and cached[0] == q:
            return cached[1]
        window = self._recent.get(key)
        if window is None or len(window) < _TTFT_MIN_SAMPLES:
            return None
        ordered = sorted(window)
        value = ordered[min(len(ordered) - 1, int(q * len(ordered)))]
        self._quantiles[key] = (q, value)
        return value

    def record_attempts(self, attempts: Iterable[Any]) -> None:
        """Every attempt of a finished request (`RouterInfo.attempts`)."""
        key_of = self.key_of
        for a in attempts:
            key = key_of.get((a.model, a.provider), a.model)
            self.record(key, a.outcome, a.latency_s)
            if key != a.model and a.outcome == "ok":  # a replica: the model's own estimate too
                self._observe_ttft(a.model, a.latency_s)

    # -- active: what probes tell us
    def set_probe(self, provider: str, ok: bool, started: float | None = None) -> None:
        """A probe of `provider` passed or failed. A pass of a probe sent at `started` (the tracker's
        clock) also half-opens the provider's circuits opened before it, so the next request tests
        the deployment at once instead of waiting out `open_s`: recovery follows the probes."""
        if ok and provider in self.probe_down:
            self.probe_down.discard(provider)
            self._dirty = True
        elif not ok and provider not in self.probe_down:
            self.probe_down.add(provider)
            self._dirty = True
        if ok and started is not None:
            for alias in self.aliases_of.get(provider, ()):
                b = self.breakers.get(alias)
                if b is not None and b.state == OPEN and started >= b.opened_at:
                    b.state, b._successes = HALF_OPEN, 0
                    self._dirty = True

    # -- snapshots
    def circuit_open(self) -> frozenset[str]:
        """Aliases the decision must skip: open, half-open with every probe slot taken, or probe-down."""
        self._refresh()
        return self._open

    def over_capacity(self) -> frozenset[str]:
        """Aliases whose provider has `max_concurrency` requests in flight from this process."""
        self._refresh()
        return self._full

    def _refresh(self) -> None:
        if self._next_poll != math.inf:
            now = self.clock()
            if now >= self._next_poll:
                for b in self.breakers.values():
                    b.poll(now)
                self._dirty = True
        if not self._dirty:
            return
        self._dirty = False
        closed_off = set()
        next_poll = math.inf
        now = self.clock()
        for alias, b in self.breakers.items():
            b.poll(now)
            if not b.allows(self.inflight.get(alias, 0)) or self.provider_of[alias] in self.probe_down:
                closed_off.add(alias)
            next_poll = min(next_poll, b.reopens_at)
        self._next_poll = next_poll
        full = set()
        for pname, p in self.policy.providers.items():
            if p.max_concurrency is not None and self.provider_inflight.get(pname, 0) >= p.max_concurrency:
                full.update(self.aliases_of.get(pname, ()))
        if closed_off != self._open:
            self._open = frozenset(closed_off)
        if full != self._full:
            self._full = frozenset(full)

    def states(self) -> dict[tuple[str, str], int]:
        """``{(provider, alias): 0 healthy | 1 degraded (half-open) | 2 down (open or probe failed)}``."""
        self._refresh()
        out = {}
        alias_of = self.alias_of
        for key, b in self.breakers.items():
            provider = self.provider_of[key]
            if b.state == OPEN or provider in self.probe_down:
                out[provider, alias_of[key]] = DOWN
            elif b.state == HALF_OPEN:
                out[provider, alias_of[key]] = DEGRADED
            else:
                out[provider, alias_of[key]] = HEALTHY
        return out
