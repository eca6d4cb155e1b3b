"""Prometheus metrics: `PrometheusMeter`, a `Meter` that turns every finished request into counters.

Labels are bounded: route, task, provider and model names come from the policy; status and
outcome from small fixed sets. No keys, IPs, request ids or free text ever become labels.
`tenant` is added to the request and cost metrics only when the policy opts in
(``metering: {tenant_label: true}``); budgets are per tenant by nature.

With ``PROMETHEUS_MULTIPROC_DIR`` set (several worker processes), values go to that directory
and `render()` aggregates every process's files. In one process with ``lock_free=True`` (what
`router serve` uses: one event loop records every request), `record()` adds to plain running
totals instead of taking prometheus_client's lock per increment, and a collector registered
ahead of the metrics copies them into the series whenever the registry is collected
(`render()`, a scrape, ``get_sample_value``): the same values, summed in the same order.

>>> meter = PrometheusMeter()                                   # doctest: +SKIP
>>> body, content_type = meter.render()                         # doctest: +SKIP
"""

from __future__ import annotations

import os
from bisect import bisect_left
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

try:  # the text format generate_latest writes; Prometheus 2.x reads it whatever its version
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as CONTENT_TYPE
except ImportError:  # pragma: no cover - prometheus_client < 0.21
    from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE

from router.core.meter import LiveView, Meter
from router.core.response import RouterInfo

__all__ = ["BUCKETS", "CONFIDENCE_BUCKETS", "PrometheusMeter"]

#: latency buckets, 50 ms to 10 minutes
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

NONE = "none"   # the label value for "not set" (e.g. the provider of a request no provider served)
# router_tokens_total{kind}: cached and cache_write are the parts of prompt read from and written to
# the provider's prompt cache (already counted in prompt); reasoning is part of completion
_TOKEN_KINDS = ("prompt", "completion", "reasoning", "cached", "cache_write")
_BOUNDS = (*BUCKETS, float("inf"))
#: router_classifier_confidence buckets: the classifier's probability of the task it chose (a hint, or a
#: route or model named after a task, is 1.0)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
_CONFIDENCE_BOUNDS = (*CONFIDENCE_BUCKETS, float("inf"))


class _Flush:
    """Registered first in the meter's registry: collecting it folds the running totals in."""

    def __init__(self, meter: PrometheusMeter):
        self.meter = meter

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        self.meter.flush()
        return []


def _v(value: str | None) -> str:
    return value if value else NONE


class PrometheusMeter(Meter):
    """Request, token, cost, attempt, budget, rate-limit, response-cache and ledger metrics for one process (or, in multiprocess
    mode, all of them).

    `registry`: where to register (a fresh `CollectorRegistry` when None, so several meters can
    live in one process). The engine calls `bind(view)` and `track_inflight(provider, delta)`;
    budgets call `budget_remaining`; a `LedgerMeter` calls `ledger_pending`, `ledger_error` and
    `ledger_dropped`.

    `lock_free`: keep the per-request series (`record`, `track_inflight`) as plain running totals
    folded in at collection time; only for a meter those two are called on from one thread at a
    time (an event loop). Ignored in multiprocess mode.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, tenant_label: bool = False,
                 lock_free: bool = False):
        self._view: LiveView | None = None  # set by bind(); /metrics reads router_provider_state from it
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.tenant_label = tenant_label
        if self.multiprocess:
            # values live in the directory; this registry only aggregates them at render time
            self.registry = registry if registry is not None else CollectorRegistry()
            MultiProcessCollector(self.registry)
            reg: CollectorRegistry | None = None
        else:
            self.registry = registry if registry is not None else CollectorRegistry()
            reg = self.registry
            if lock_free:  # registered before the metrics: a collection flushes, then reads
                self.registry.register(_Flush(self))
        self.lock_free = lock_free and not self.multiprocess
        t = ("tenant",) if tenant_label else ()

        def gauge(name: str, doc: str, labels: tuple[str, ...], mode: str) -> Gauge:
            return Gauge(name, doc, labels, registry=reg, multiprocess_mode=mode)

        self.requests = Counter("router_requests_total", "Requests finished, by how they ended.",
                                ("route", "task", "provider", "model", "status", *t), registry=reg)
        self.duration = Histogram("router_request_duration_seconds",
                                  "Request latency, arrival to last byte, every retry included.",
                                  ("route", "provider"), buckets=BUCKETS, registry=reg)
        self.ttft = Histogram("router_time_to_first_token_seconds",
                              "Time from arrival to the first chunk (streams) or the whole body (JSON).",
                              ("route", "provider"), buckets=BUCKETS, registry=reg)
        self.tokens = Counter("router_tokens_total", "Tokens metered (estimated when the upstream sent no usage).",
                              ("provider", "model", "kind"), registry=reg)
        self.cost = Counter("router_cost_usd_total", "Cost in USD at the policy's prices.",
                            ("route", "provider", "model", *t), registry=reg)
        self.savings = Counter("router_savings_usd_total",
                               "USD saved against the policy's reference_model (never negative).",
                               ("route", *t), registry=reg)
        self.reference_cost = Counter("router_reference_cost_usd_total",
                                      "What the same tokens would have cost on the reference_model.",
                                      ("route", *t), registry=reg)
        self.attempts = Counter("router_upstream_attempts_total", "Upstream attempts, by outcome.",
                                ("provider", "model", "outcome"), registry=reg)
        self.fallbacks = Counter("router_fallbacks_total",
                                 "Moves to the next candidate, by the outcome that caused them.",
                                 ("route", "reason"), registry=reg)
        self.budget = gauge("router_budget_remaining_usd", "USD left in the tenant's tightest budget period.",
                            ("tenant",), "mostrecent")
        self.inflight = gauge("router_inflight_requests", "Upstream calls in flight.", ("provider",), "livesum")
        self.provider_state = gauge("router_provider_state",
                                    "0 healthy, 1 degraded (half-open or saturated), 2 down (circuit open or probe failed).",
                                    ("provider", "model"), "max")
        self.classifier = Counter("router_classifier_decisions_total", "How each request's task was chosen.",
                                  ("task", "source"), registry=reg)
        self.confidence = Histogram("router_classifier_confidence",
                                    "Confidence in each request's task (source: classifier, fallback: the "
                                    "classifier's probability of its pick; hint, alias: 1).",
                                    ("task", "source"), buckets=CONFIDENCE_BUCKETS, registry=reg)
        self.ledger_pending_records = gauge("router_ledger_pending_records",
                                            "Records accepted but not yet committed to the ledger.", (), "livesum")
        self.ledger_errors = Counter("router_ledger_errors_total", "Failed ledger writes (each is retried).",
                                     registry=reg)
        self.ledger_dropped_records = Counter("router_ledger_dropped_records_total",
                                              "Records dropped because the ledger buffer was full.", registry=reg)
        self.budget_errors = Counter("router_budget_errors_total",
                                     "Budget store calls that failed or timed out (op: reserve, settle, refresh), "
                                     "and settles given up (op: settle_lost).", ("op",), registry=reg)
        self.rate_limited_requests = Counter("router_rate_limited_total",
                                             "Requests refused by a rate limit (kind: requests, tokens, concurrent).",
                                             ("tenant", "kind"), registry=reg)
        self.rate_limit_errors = Counter("router_rate_limit_errors_total",
                                         "Rate-limit store calls that failed or timed out (op: admit, settle).",
                                         ("op",), registry=reg)
        self.cache_hits = Counter("router_cache_hits_total", "Requests answered from the response cache.",
                                  ("route", *t), registry=reg)
        self.cache_misses = Counter("router_cache_misses_total",
                                    "Cacheable requests the response cache could not answer.", ("route", *t),
                                    registry=reg)
        self.cache_savings = Counter("router_cache_savings_usd_total",
                                     "What the upstream calls that cache hits replaced cost, in USD.", ("route", *t),
                                     registry=reg)
        self.cache_errors = Counter("router_cache_errors_total",
                                    "Response cache store calls that failed or timed out (op: get, put).", ("op",),
                                    registry=reg)
        self.api_requests = Counter("router_api_requests_total",
                                    "Requests finished, by the API they came in on (chat, messages, responses).",
                                    ("api", "status"), registry=reg)
        # fleets (docs/routing.md): replica picks, hedges, streams resumed after a cut
        self.replica_picks = Counter("router_replica_picks_total",
                                     "Attempts that committed to a replica of a model, by how it was picked "
                                     "(affinity, spill, least_loaded, round_robin, only).",
                                     ("model", "provider", "how"), registry=reg)
        self.hedges = Counter("router_hedges_total",
                              "Hedged requests by result: won (the hedge streamed first), lost (the first attempt "
                              "did), failed (neither), capped (a cap refused the hedge).", ("route", "result"),
                              registry=reg)
        self.hedge_cost = Counter("router_hedge_cost_usd_total",
                                  "What losing hedge attempts cost, in USD (also in router_cost_usd_total).",
                                  ("route",), registry=reg)
        self.resumes = Counter("router_stream_resumes_total",
                               "Streams cut after their first chunk and continued on another deployment.",
                               ("route",), registry=reg)
        self.ledger_pending_records.set(0)
        self._cache: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._api_cache: dict[tuple[str, str], Any] = {}
        self._attempt_cache: dict[tuple[str, str, str], Any] = {}
        self._inflight_cache: dict[str, Any] = {}
        self._cache_children: dict[tuple[Any, ...], tuple[Any, Any]] = {}   # response cache series
        # lock_free: running totals per child, copied into the children by flush()
        self._counter_totals: dict[Any, list[float]] = {}
        self._histogram_totals: dict[Any, list[float]] = {}
        if not self.lock_free:
            self.record = self._record_direct  # type: ignore[method-assign]

    # -- running totals (one process)
    def _counter(self, child: Any) -> list[float]:
        """The running total behind a counter (or gauge) child, starting at its current value."""
        total = self._counter_totals.get(child)
        if total is None:
            total = self._counter_totals[child] = [child._value.get()]
        return total

    def _histogram(self, child: Any) -> list[float]:
        """[sum, count in bucket 0, bucket 1, ...] behind a histogram child (counts not cumulative)."""
        total = self._histogram_totals.get(child)
        if total is None:
            total = [child._sum.get(), *(b.get() for b in child._buckets)]
            self._histogram_totals[child] = total
        return total

    def flush(self) -> None:
        """Copy the running totals into the prometheus_client children (called on every collection)."""
        for child, total in list(self._counter_totals.items()):
            child._value.set(total[0])
        for child, total in list(self._histogram_totals.items()):
            child._sum.set(total[0])
            for bucket, n in zip(child._buckets, total[1:], strict=True):
                bucket.set(n)

    # -- Meter
    def _children(self, key: tuple[Any, ...]) -> tuple[Any, ...]:
        """The label children one request touches, looked up once per label combination.

        prometheus_client's ``labels()`` returns the same child for the same values, so caching
        it changes nothing but the cost (a lock, a tuple and a dict lookup per metric per request).
        Children are created exactly when the uncached code would create them (a child is a
        visible series, even at 0).
        """
        route, task, task_source, provider, model, status, tenant, has_provider = key
        t = (tenant,) if self.tenant_label else ()
        p, m = provider or NONE, model or NONE
        children = (
            self.requests.labels(route, task or NONE, p, m, status, *t),
            self.duration.labels(route, p),
            self.classifier.labels(task, task_source or NONE) if task else None,
            tuple(self.tokens.labels(p, m, kind) for kind in _TOKEN_KINDS)
            if has_provider else None,
            self.cost.labels(route, p, m, *t) if has_provider else None,
            [None, None, None],  # ttft, reference cost, savings: created on first use
            self.confidence.labels(task, task_source or NONE) if task else None,
        )
        if self.lock_free:
            counter, histogram = self._counter, self._histogram
            requests, duration, classifier, tokens, cost, lazy, confidence = children
            children = (counter(requests), histogram(duration),
                        counter(classifier) if classifier is not None else None,
                        tuple(counter(c) for c in tokens) if tokens is not None else None,
                        counter(cost) if cost is not None else None, lazy,
                        histogram(confidence) if confidence is not None else None)
        if len(self._cache) > 10_000:  # labels are bounded by the policy; this only guards against surprises
            self._cache.clear()
        self._cache[key] = children
        return children

    def _key(self, info: RouterInfo) -> tuple[Any, ...]:
        return (info.route or NONE, info.task, info.task_source, info.provider, info.model, info.status,
                (info.tenant or NONE) if self.tenant_label else None, info.provider is not None)

    def record(self, info: RouterInfo) -> None:
        key = self._key(info)
        route, provider = key[0], info.provider
        totals = self._cache.get(key)
        if totals is None:
            totals = self._children(key)
        requests, duration, classifier, tokens, cost, lazy, confidence = totals
        requests[0] += 1
        by_api = self._api_cache.get((info.api, info.status))
        if by_api is None:
            by_api = self._api_cache[info.api, info.status] = self._counter(
                self.api_requests.labels(info.api, info.status))
        by_api[0] += 1
        v = info.latency_s
        duration[0] += v
        duration[bisect_left(_BOUNDS, v) + 1] += 1
        v = info.ttft_s
        if v is not None:
            ttft = lazy[0]
            if ttft is None:
                ttft = lazy[0] = self._histogram(self.ttft.labels(route, provider or NONE))
            ttft[0] += v
            ttft[bisect_left(_BOUNDS, v) + 1] += 1
        if classifier is not None:
            classifier[0] += 1
            v = info.confidence
            confidence[0] += v
            confidence[bisect_left(_CONFIDENCE_BOUNDS, v) + 1] += 1
        if tokens is not None:
            for total, n in zip(tokens, (info.prompt_tokens, info.completion_tokens, info.reasoning_tokens),
                                strict=False):
                if n < 0:
                    raise ValueError("Counters can only be incremented by non-negative amounts.")
                total[0] += n
            if info.cached_tokens or info.cache_write_tokens:   # parts of prompt; 0 unless the provider cached
                if info.cached_tokens < 0 or info.cache_write_tokens < 0:
                    raise ValueError("Counters can only be incremented by non-negative amounts.")
                tokens[3][0] += info.cached_tokens
                tokens[4][0] += info.cache_write_tokens
            if info.cost_usd < 0:
                raise ValueError("Counters can only be incremented by non-negative amounts.")
            cost[0] += info.cost_usd
        ref = info.reference_cost_usd
        if ref is not None:
            if lazy[1] is None:
                t = (info.tenant or NONE,) if self.tenant_label else ()
                lazy[1] = self._counter(self.reference_cost.labels(route, *t))
                lazy[2] = self._counter(self.savings.labels(route, *t))
            if ref < 0:
                raise ValueError("Counters can only be incremented by non-negative amounts.")
            lazy[1][0] += ref
            lazy[2][0] += max(0.0, ref - info.cost_usd)
        if info.response_cache is not None:
            self._record_cache(info, route)
        if info.pick is not None or info.hedge is not None or info.resumed:
            self._record_fleet(info, route)
        prev = None
        attempts = self._attempt_cache
        for a in info.attempts:
            akey = (a.provider, a.model, a.outcome)
            total = attempts.get(akey)
            if total is None:
                if len(attempts) > 10_000:
                    attempts.clear()
                total = attempts[akey] = self._counter(self.attempts.labels(*akey))
            total[0] += 1
            if prev is not None and (prev.provider, prev.model) != (a.provider, a.model):
                self.fallbacks.labels(route, prev.outcome).inc()
            prev = a

    def _record_direct(self, info: RouterInfo) -> None:
        key = self._key(info)
        route, provider = key[0], info.provider
        children = self._cache.get(key)
        if children is None:
            children = self._children(key)
        requests, duration, classifier, tokens, cost, lazy, confidence = children
        requests.inc()
        by_api = self._api_cache.get((info.api, info.status))
        if by_api is None:
            by_api = self._api_cache[info.api, info.status] = self.api_requests.labels(info.api, info.status)
        by_api.inc()
        duration.observe(info.latency_s)
        if info.ttft_s is not None:
            ttft = lazy[0]
            if ttft is None:
                ttft = lazy[0] = self.ttft.labels(route, provider or NONE)
            ttft.observe(info.ttft_s)
        if classifier is not None:
            classifier.inc()
            confidence.observe(info.confidence)
        if tokens is not None:
            tokens[0].inc(info.prompt_tokens)
            tokens[1].inc(info.completion_tokens)
            tokens[2].inc(info.reasoning_tokens)
            if info.cached_tokens or info.cache_write_tokens:
                tokens[3].inc(info.cached_tokens)
                tokens[4].inc(info.cache_write_tokens)
            cost.inc(info.cost_usd)
        if info.reference_cost_usd is not None:
            if lazy[1] is None:
                t = (info.tenant or NONE,) if self.tenant_label else ()
                lazy[1], lazy[2] = self.reference_cost.labels(route, *t), self.savings.labels(route, *t)
            lazy[1].inc(info.reference_cost_usd)
            lazy[2].inc(max(0.0, info.reference_cost_usd - info.cost_usd))
        if info.response_cache is not None:
            self._record_cache(info, route)
        if info.pick is not None or info.hedge is not None or info.resumed:
            self._record_fleet(info, route)
        prev = None
        attempts = self._attempt_cache
        for a in info.attempts:
            akey = (a.provider, a.model, a.outcome)
            child = attempts.get(akey)
            if child is None:
                if len(attempts) > 10_000:
                    attempts.clear()
                child = attempts[akey] = self.attempts.labels(*akey)
            child.inc()
            if prev is not None and (prev.provider, prev.model) != (a.provider, a.model):
                self.fallbacks.labels(route, prev.outcome).inc()
            prev = a

    def _record_cache(self, info: RouterInfo, route: str) -> None:
        """A cacheable request: its hit or miss, and what a hit saved."""
        t = (info.tenant or NONE,) if self.tenant_label else ()
        hit = info.response_cache == "hit"
        key = (route, *t, hit)
        children = self._cache_children.get(key)
        if children is None:
            if len(self._cache_children) > 10_000:
                self._cache_children.clear()
            counter = (self.cache_hits if hit else self.cache_misses).labels(route, *t)
            saved = self.cache_savings.labels(route, *t) if hit else None
            if self.lock_free:
                counter = self._counter(counter)
                saved = self._counter(saved) if saved is not None else None
            children = self._cache_children[key] = (counter, saved)
        counter, saved = children
        if self.lock_free:
            counter[0] += 1
            if saved is not None:
                saved[0] += info.cache_saved_usd
        else:
            counter.inc()
            if saved is not None:
                saved.inc(info.cache_saved_usd)

    def _record_fleet(self, info: RouterInfo, route: str) -> None:
        """A request that used a replicated model, a hedge or a resumed stream (docs/routing.md)."""
        adds: list[tuple[Any, float]] = []
        if info.pick is not None:
            adds.append((self.replica_picks.labels(_v(info.model), _v(info.provider), info.pick), 1.0))
        if info.hedge is not None:
            adds.append((self.hedges.labels(route, info.hedge), 1.0))
            if info.hedge_cost_usd > 0:
                adds.append((self.hedge_cost.labels(route), info.hedge_cost_usd))
        if info.resumed:
            adds.append((self.resumes.labels(route), float(info.resumed)))
        for child, n in adds:
            if self.lock_free:
                self._counter(child)[0] += n
            else:
                child.inc(n)

    # -- engine hooks
    tracks_inflight = True

    def bind(self, view: LiveView) -> None:
        """Called by the engine it meters: publish the provider state series for the policy's models."""
        self._view = view
        for model in view.policy.models.values():
            self.provider_state.labels(model.provider, model.alias).set(0)

    def track_inflight(self, provider: str, delta: int) -> None:
        child = self._inflight_cache.get(provider)
        if child is None:
            child = self.inflight.labels(provider)
            if self.lock_free:
                child = self._counter(child)
            self._inflight_cache[provider] = child
        if self.lock_free:
            child[0] += delta
        else:
            child.inc(delta)

    # -- budget and ledger hooks
    def budget_remaining(self, tenant: str, usd: float) -> None:
        self.budget.labels(tenant).set(usd)

    def budget_error(self, op: str) -> None:
        self.budget_errors.labels(op).inc()

    # -- rate-limit and response-cache hooks
    def rate_limited(self, tenant: str, kind: str) -> None:
        self.rate_limited_requests.labels(tenant or NONE, kind).inc()

    def rate_limit_error(self, op: str) -> None:
        self.rate_limit_errors.labels(op).inc()

    def cache_error(self, op: str) -> None:
        self.cache_errors.labels(op).inc()

    def ledger_pending(self, n: int) -> None:
        self.ledger_pending_records.set(n)

    def ledger_error(self) -> None:
        self.ledger_errors.inc()

    def ledger_dropped(self, n: int) -> None:
        self.ledger_dropped_records.inc(n)

    # -- exposition
    def render(self) -> tuple[bytes, str]:
        """The text exposition of every metric (all processes' in multiprocess mode) and its content type."""
        if self._view is not None:  # circuit and saturation state, read at scrape time
            for (provider, alias), state in self._view.provider_states().items():
                self.provider_state.labels(provider, alias).set(state)
        return generate_latest(self.registry), CONTENT_TYPE
