"""`Router`: the library API over the async core, sync and async alike.

>>> import router
>>> r = router.Router("policies/default.yaml")                               # doctest: +SKIP
>>> resp = r.complete(messages=[{"role": "user", "content": "Write a Rust ISO date parser"}])  # doctest: +SKIP
>>> resp.choices[0].message.content, resp.router.model, resp.router.cost_usd  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from typing import Any

from router.core.decision import Decision
from router.core.meter import Meter
from router.core.policy import Policy
from router.core.policy_parser import load_policy
from router.core.response import ChatCompletion, ChatCompletionChunk, Embeddings, RouterInfo
from router.core.tracecontext import Tracer
from router.engine import sync
from router.engine.admission import Admission
from router.engine.engine import ChunkStream, Engine
from router.metering.budget import BudgetBackend, BudgetMetrics, open_budget
from router.metering.ratelimit import RateLimiter
from router.metering.response_cache import ResponseCache
from router.monitor.monitor import Monitor
from router.transport.base import Transport
from router.transport.chooser import ProviderTransport

__all__ = ["Router", "Stream", "SyncStream", "bundled_policy_path", "default_meters", "default_policy_path"]

log = logging.getLogger("router")
_OTEL_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def policy_tracer(policy: Policy) -> Tracer | None:
    """The tracer the policy's ``telemetry:`` block and the ``OTEL_*`` variables ask for; None (and
    OpenTelemetry never imported) when neither does (docs/observability.md)."""
    t = policy.telemetry
    if t.endpoint is None and not t.enabled and not any(os.environ.get(k) for k in _OTEL_ENDPOINTS):
        return None
    try:
        from router.metering.tracing import tracer_for
    except ImportError as e:
        log.warning("tracing is configured but OpenTelemetry is not installed (%s): pip install 'router[otel]'", e)
        return None
    return tracer_for(policy)


def bundled_policy_path() -> str:
    """The default policy shipped inside the package."""
    return str(resources.files("router") / "policies" / "default.yaml")


def default_policy_path() -> str:
    """`ROUTER_POLICY` if set, else the bundled default policy."""
    return os.environ.get("ROUTER_POLICY") or bundled_policy_path()


def default_meters(policy: Policy) -> list[Meter]:
    """The library's meters when none are given: the ledger at `$ROUTER_LEDGER`, else at the policy's
    `metering.ledger`, else none (the proxy always keeps one; see docs/metering.md)."""
    target = os.environ.get("ROUTER_LEDGER") or policy.metering.ledger
    if not target or target == "none":
        return []
    from router.metering.ledger import LedgerMeter, open_ledger

    return [LedgerMeter(open_ledger(target))]


def _body(messages: Sequence[Any] | None, model: str, params: dict[str, Any]) -> dict[str, Any]:
    body = dict(params)
    if messages is not None:
        body["messages"] = messages if isinstance(messages, list) else list(messages)
    body["model"] = model
    return body


class Stream:
    """Async iterator of `ChatCompletionChunk`; `.router` is complete once iteration ends."""

    def __init__(self, inner: ChunkStream):
        self._inner = inner
        self.router: RouterInfo = inner.router
        self.decision: Decision = inner.decision
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        return self._chunks()

    def __del__(self) -> None:
        # Dropped without being read: meter it as cancelled, on its loop (never from inside the GC).
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._inner.abandon)

    async def _chunks(self) -> AsyncIterator[ChatCompletionChunk]:
        try:
            async for chunk in self._inner:
                yield ChatCompletionChunk(chunk)
        finally:
            await self._inner.aclose()

    async def __anext__(self) -> ChatCompletionChunk:
        return ChatCompletionChunk(await self._inner.__anext__())

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class SyncStream(sync.SyncIterator[ChatCompletionChunk]):
    """Blocking iterator of `ChatCompletionChunk`; `close()` stops early and aborts upstream."""

    def __init__(self, inner: ChunkStream):
        super().__init__(Stream(inner).__aiter__())
        self._inner = inner
        self.router: RouterInfo = inner.router
        self.decision: Decision = inner.decision

    def close(self) -> None:
        super().close()
        sync.run(_abandon(self._inner))

    def __del__(self) -> None:
        super().__del__()
        sync.call_soon(self._inner.abandon)


async def _abandon(inner: ChunkStream) -> None:
    inner.abandon()


class Router:
    """Routes requests by a policy. Thread-safe; share one per process.

    `policy` is a path, a loaded `Policy`, or None for `ROUTER_POLICY` / the bundled default.
    `rate_limiter` and `response_cache` default to the backends `$ROUTER_RATE_LIMITS` and
    `$ROUTER_RESPONSE_CACHE` name (``memory``, or ``redis://...``), built when a policy first uses them.
    """

    def __init__(self, policy: str | os.PathLike[str] | Policy | None = None, *,
                 transport: Transport | None = None, meters: Sequence[Meter] | None = None,
                 budget: BudgetBackend | None = None,
                 monitor: Monitor | bool = True, rate_limiter: RateLimiter | None = None,
                 response_cache: ResponseCache | None = None, tracer: Tracer | None = None):
        if not isinstance(policy, Policy):
            policy = load_policy(policy if policy is not None else default_policy_path())
        if meters is None:
            meters = default_meters(policy)
        metrics = next((m for m in meters if isinstance(m, BudgetMetrics)), None)

        def budgets() -> BudgetBackend:
            # a budget in the policy is enforced, whoever routes; built when a (re)loaded policy first has one
            return open_budget(os.environ.get("ROUTER_BUDGETS"), metrics=metrics)

        factory = budgets if budget is None else None
        if budget is None and any(t.budget is not None for t in policy.tenants.values()):
            budget = budgets()
        self.engine = Engine(policy, transport or ProviderTransport(), meters, budget=budget,
                             budget_factory=factory,
                             admission=Admission(limiter=rate_limiter, cache=response_cache))
        # health + load: circuit breakers, in-flight counts, vLLM scrapes, probes (False: none)
        self.engine.monitor = Monitor(policy) if monitor is True else (monitor or None)
        # OpenTelemetry traces: `tracer`, else what the policy and OTEL_* variables ask for (off by default)
        self.loaded_at = time.time()   # when the serving policy was loaded (the status page shows it)
        self._own_tracer = tracer is None
        self.engine.tracer = tracer if tracer is not None else policy_tracer(policy)

    @property
    def policy(self) -> Policy:
        return self.engine.policy

    def reload(self, policy: str | os.PathLike[str] | Policy) -> Policy:
        """Validate `policy` and swap it in atomically; requests in flight finish on the old one."""
        if not isinstance(policy, Policy):
            policy = load_policy(policy)
        old, self.engine.policy = self.engine.policy, policy
        self.loaded_at = time.time()
        if self._own_tracer and policy.telemetry != old.telemetry:   # a new collector, or tracing on or off
            previous, self.engine.tracer = self.engine.tracer, policy_tracer(policy)
            if previous is not None:   # flushed off the caller's thread (a reload may run on the loop)
                threading.Thread(target=previous.shutdown, name="router-tracer-shutdown", daemon=True).start()
        return policy

    # -- async
    async def acomplete(self, messages: Sequence[Any] | None = None, *, model: str = "auto", stream: bool = False,
                        task: str | None = None, residency: str | None = None, tenant: str | None = None,
                        request_id: str | None = None, session: str | None = None,
                        **params: Any) -> ChatCompletion | Stream:
        """Route and send a chat completion. `stream=True` returns an async iterator of chunks.

        `request_id` is your own id for the request, kept in the ledger as `client_request_id`;
        router's own (the ledger's key, `resp.router.request_id`) is always generated. `session`
        names the conversation, to keep it on one replica of a model (docs/routing.md)."""
        body = _body(messages, model, params)
        if stream:
            return Stream(self.engine.stream(body, task=task, residency=residency, tenant=tenant,
                                             client_request_id=request_id, session=session))
        return await self.engine.complete(body, task=task, residency=residency, tenant=tenant,
                                          client_request_id=request_id, session=session)

    async def aembed(self, input: str | Sequence[Any], *, model: str, residency: str | None = None,
                     tenant: str | None = None, request_id: str | None = None, **params: Any) -> Embeddings:
        """Embeddings from the model alias `model` (no classification; residency and budgets apply)."""
        body = {**params, "model": model, "input": input if isinstance(input, str) else list(input)}
        return await self.engine.embed(body, residency=residency, tenant=tenant, client_request_id=request_id)

    # -- sync
    def embed(self, input: str | Sequence[Any], *, model: str, residency: str | None = None,
              tenant: str | None = None, request_id: str | None = None, **params: Any) -> Embeddings:
        """`aembed`, blocking."""
        return sync.run(self.aembed(input, model=model, residency=residency, tenant=tenant,
                                    request_id=request_id, **params))

    def complete(self, messages: Sequence[Any] | None = None, *, model: str = "auto", stream: bool = False,
                 task: str | None = None, residency: str | None = None, tenant: str | None = None,
                 request_id: str | None = None, session: str | None = None,
                 **params: Any) -> ChatCompletion | SyncStream:
        """`acomplete`, blocking. `stream=True` returns an iterator of chunks."""
        body = _body(messages, model, params)
        if stream:
            inner = self.engine.stream(body, task=task, residency=residency, tenant=tenant,
                                       client_request_id=request_id, session=session)
            return SyncStream(inner)
        return sync.run(self.engine.complete(body, task=task, residency=residency, tenant=tenant,
                                             client_request_id=request_id, session=session))

    def explain(self, messages: Sequence[Any] | None = None, *, model: str = "auto", task: str | None = None,
                residency: str | None = None, tenant: str | None = None, **params: Any) -> Decision:
        """The decision for this request, without calling anyone."""
        return self.engine.decide(_body(messages, model, params), task=task, residency=residency, tenant=tenant)

    # -- lifecycle
    async def aclose(self) -> None:
        """Close the connection pool of the running loop and flush the meters."""
        await self.engine.transport.aclose()
        for meter in self.engine.meters:
            await meter.aclose()
        if self.engine.budget is not None:
            await self.engine.budget.aclose()
        await self.engine.admission.aclose()
        if self.engine.monitor is not None:
            await self.engine.monitor.aclose()
        tracer = self.engine.tracer
        if tracer is not None and self._own_tracer:
            await asyncio.to_thread(tracer.force_flush, 5.0)

    def close(self) -> None:
        """Close the sync API's connection pool and flush the meters."""
        sync.run(self.aclose())

    async def __aenter__(self) -> Router:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
