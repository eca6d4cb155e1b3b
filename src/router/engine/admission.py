"""What a request passes between deciding and sending: the response cache, then rate limits.

`Admission.open` (from `Engine._start`) says whether a request takes part at all: its tenant has
``rate_limits``, or its route a ``cache``. For the rest it returns None, and nothing else here
runs: a policy without either feature pays one identity check per request.

For a request that takes part, `enter` (before the budget reservation) looks the answer up when
the request may be cached, then admits it through the rate limiter: a miss reserves its estimated
tokens, a hit reserves none and counts as a request unless the tenant's ``cache_hits: false``
says otherwise. A hit is then the answer: metered once like any request, with no provider, no
tokens, a cost of 0 and `cache_saved_usd` set to what its upstream call cost at today's price.
`close` (from `Engine._close`, whatever ended the request) settles the rate-limit lease with the
tokens used and stores a successful answer.

>>> engine = Engine(policy, transport, admission=Admission(limiter=InProcessRateLimiter()))   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import orjson

from router.core.policy import Policy, RouteCache
from router.core.pricing import usage_cost
from router.core.replay import Recorder, cache_control, cache_key, effective_temperature
from router.core.translate import Usage
from router.metering.ratelimit import RateLimiter, RateLimitMetrics, open_rate_limiter
from router.metering.response_cache import CacheMetrics, ResponseCache, open_response_cache

__all__ = ["Admission", "Entry"]

log = logging.getLogger("router.engine.admission")


class Entry:
    """One request's part in the cache and the rate limits."""

    __slots__ = ("answer", "body", "cache", "key", "key_id", "lease", "limited", "model", "read", "route", "write")

    def __init__(self, body: Mapping[str, Any], key_id: str | None, route: str, limited: bool):
        self.body, self.key_id, self.route, self.limited = body, key_id, route, limited
        self.cache: RouteCache | None = None   # the route's cache settings, when this request may be cached
        self.key: str | None = None            # the lookup key, for `model`: the decision's first
        self.model: str | None = None
        self.read = self.write = False         # look up / store (the client's Cache-Control may say no)
        self.lease: Any = None                 # the rate limiter's lease, settled by close
        self.answer: Any = None                # a ChatCompletion or a stream's Recorder, stored by close

    @property
    def stores(self) -> bool:
        """Whether the answer is to be stored (so a stream is assembled as it goes)."""
        return self.cache is not None and self.write


class Admission:
    """The response cache and the rate limiter of one engine.

    Backends are built on first need (a policy, maybe a reloaded one, that uses them): from
    ``$ROUTER_RATE_LIMITS`` and ``$ROUTER_RESPONSE_CACHE`` (``memory``, the default, or
    ``redis://...?prefix=``), unless given. `metrics` (a `PrometheusMeter`) is told of refusals
    and store failures.
    """

    def __init__(self, *, limiter: RateLimiter | None = None, cache: ResponseCache | None = None,
                 metrics: Any = None, cache_timeout_s: float = 0.25):
        self._limiter, self._cache = limiter, cache
        self.metrics = metrics
        self.cache_timeout_s = cache_timeout_s   # longest wait for a lookup (also bounded by the deadline)
        self._policy: Policy | None = None
        self._active = False
        self._limited: frozenset[str] = frozenset()
        self._cached: dict[str, RouteCache] = {}

    def bind_metrics(self, meters: Any) -> None:
        """Report to the first of `meters` that takes rate-limit and cache metrics, unless told already."""
        if self.metrics is None:
            self.metrics = next((m for m in meters if isinstance(m, RateLimitMetrics)), None)

    @property
    def limiter(self) -> RateLimiter:
        if self._limiter is None:
            metrics = self.metrics if isinstance(self.metrics, RateLimitMetrics) else None
            self._limiter = open_rate_limiter(os.environ.get("ROUTER_RATE_LIMITS"), metrics=metrics)
        return self._limiter

    @property
    def cache(self) -> ResponseCache:
        if self._cache is None:
            metrics = self.metrics if isinstance(self.metrics, CacheMetrics) else None
            self._cache = open_response_cache(os.environ.get("ROUTER_RESPONSE_CACHE"), metrics=metrics)
        return self._cache

    def _analyse(self, policy: Policy) -> None:
        self._limited = frozenset(t.name for t in policy.tenants.values() if t.rate_limits is not None)
        self._cached = {r.name: r.cache for r in policy.routes.values() if r.cache is not None}
        self._active = bool(self._limited or self._cached)
        self._policy = policy

    def open(self, req: Any, body: Mapping[str, Any], *, key_id: str | None = None,
             cache_control_header: str | None = None, embedding: bool = False) -> Entry | None:
        """The request's entry, or None when neither rate limits nor the cache apply to it."""
        policy = req.policy
        if policy is not self._policy:
            self._analyse(policy)
        if not self._active:
            return None
        info, decision = req.info, req.decision
        limited = info.tenant is not None and info.tenant in self._limited
        settings = None if embedding else self._cached.get(decision.route)
        if settings is None and not limited:
            return None
        entry = Entry(body, key_id, decision.route, limited)
        if settings is not None and req.candidates:
            model = policy.models[req.candidates[0].model]
            if effective_temperature(body, model.params) <= settings.max_temperature:
                entry.cache = settings
                entry.read, entry.write = cache_control(cache_control_header)
                entry.model = model.alias
                if entry.read:
                    entry.key = cache_key(info.tenant, model.alias, body)
        return entry

    async def enter(self, req: Any) -> dict[str, Any] | None:
        """Look the answer up, then admit the request; a hit's chat completion, else None.

        Raises `RateLimited` or `RateLimitUnavailable` (then the request is refused and metered)."""
        entry: Entry = req.entry
        info, decision, policy = req.info, req.decision, req.policy
        found = None
        if entry.key is not None:
            value = await self.cache.get(entry.route, entry.key, timeout_s=min(self.cache_timeout_s,
                                                                                 max(req.remaining(), 0.0)))
            if value is not None:
                try:
                    found = orjson.loads(value)
                except orjson.JSONDecodeError:
                    log.warning("response cache: an unreadable entry on route %s was ignored", entry.route)
        if entry.limited:
            ten = policy.tenants[info.tenant]
            tokens = 0 if found is not None else decision.prompt_tokens + decision.output_tokens
            targets = (decision.route, req.candidates[0].model) if req.candidates else (decision.route,)
            entry.lease = await self.limiter.admit(
                policy, info.tenant, entry.key_id, targets, tokens,
                count_request=found is None or ten.rate_limits.cache_hits,
                timeout_s=min(policy.metering.rate_limit_timeout_s, max(req.remaining(), 0.0)))
            if entry.lease is not None:   # what is left, for the response's x-ratelimit-* headers
                info.rate_limit = entry.lease.state or None
        if entry.cache is not None:
            info.response_cache = "miss" if found is None else "hit"
        if found is None:
            return None
        alias, usage = found.get("model"), found.get("usage") or {}
        info.model = alias
        used = Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)),
                     int(usage.get("reasoning_tokens", 0)), False, int(usage.get("cached_tokens", 0)),
                     int(usage.get("cache_write_tokens", 0)))
        model = policy.models.get(alias)
        info.cache_saved_usd = (usage_cost(model.price, used, info.created) if model is not None
                                else float(found.get("cost_usd") or 0.0))
        return found["completion"]

    def close(self, req: Any) -> None:
        """Settle the lease with the tokens used; store a successful answer. Each step guarded."""
        entry: Entry = req.entry
        info = req.info
        lease, entry.lease = entry.lease, None
        if lease is not None:
            try:
                self.limiter.settle(lease, info.prompt_tokens + info.completion_tokens)
            except Exception:
                log.exception("rate-limit settle failed for request %s", info.request_id)
        answer, entry.answer = entry.answer, None
        if (answer is None or not entry.write or entry.cache is None or info.status != "ok" or info.model is None
                or info.response_cache == "hit"):
            return
        try:
            completion = answer.completion() if isinstance(answer, Recorder) else answer.to_dict()
            value = orjson.dumps({"model": info.model, "completion": completion, "cost_usd": info.cost_usd, "usage": {
                "prompt_tokens": info.prompt_tokens, "completion_tokens": info.completion_tokens,
                "reasoning_tokens": info.reasoning_tokens, "cached_tokens": info.cached_tokens,
                "cache_write_tokens": info.cache_write_tokens}})
            key = entry.key if entry.key is not None and info.model == entry.model else (
                cache_key(info.tenant, info.model, entry.body))   # stored under the model that answered
            self.cache.put(entry.route, key, value, entry.cache)
        except Exception:
            log.exception("response cache: storing the answer of request %s failed", info.request_id)

    async def aclose(self) -> None:
        """Wait for pending rate-limit settles and cache writes."""
        for backend in (self._limiter, self._cache):
            if backend is not None:
                await backend.aclose()
