"""The one async loop shared by the library and the proxy: decide -> translate -> send -> meter.

For each candidate in the decision's order: up to `retry.attempts` tries with backoff, then the
next candidate; one deadline (`timeouts.total_s`) bounds the whole request. A streamed request
fails over only until its first chunk has been handed to the caller. Every request, whatever
its end, is handed to the meters exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from router.core.decision import EMPTY_STATE, Decision, LiveState, decide, decide_embedding
from router.core.errors import InvalidRequest, RequestError, UpstreamFailed, redact_cut
from router.core.meter import Meter, record_all
from router.core.policy import Model, Policy, Provider
from router.core.pricing import price_source, usage_cost
from router.core.replay import Recorder, replay_chunks
from router.core.response import Attempt, ChatCompletion, Embeddings, RouterInfo
from router.core.retry import FATAL, NEXT, RetryPolicy, parse_retry_after, verdict
from router.core.translate import UpstreamCall, Usage, build_call, read_usage
from router.core.validate import validate_chat, validate_embeddings
from router.engine import sync
from router.engine.admission import Admission
from router.engine.attempt import AttemptFailed as _Failure
from router.engine.attempt import Leg, Opened
from router.engine.hedge import HedgeGovernor, hedge_delay, race
from router.engine.recovery import add_carried, resume
from router.engine.replicas import Fleet, ReplicaPicker, affinity_key
from router.transport.base import Transport, TransportError, UpstreamResponse

if TYPE_CHECKING:
    from router.core.tracecontext import RequestTrace, Tracer
    from router.engine.hooks import MonitorHooks
    from router.metering.budget import BudgetBackend, Reservation

__all__ = ["ChunkStream", "Engine", "new_request_id"]

log = logging.getLogger("router.engine")

_ERROR_BODY_LIMIT = 65536   # bytes of an upstream error body read for its message (then redacted, then cut)


def new_request_id() -> str:
    """``req_`` + the time in milliseconds (12 hex digits) + 80 bits from the OS's CSPRNG (20 hex
    digits), as UUIDv7 lays them out: unguessable, so no caller can predict, claim or collide with
    another request's ledger row, and in time order, so the ledger's primary-key index grows at its
    end (fully random ids made each SQLite insert 6x dearer at 300,000 rows, and worse as it grows).
    The random parts are drawn 400 at a time (a syscall per request cost more than the rest of this),
    and a forked child draws its own.

    >>> a, b = new_request_id(), new_request_id()
    >>> len(a), a != b, a[:10] <= b[:10]
    (36, True, True)
    """
    try:
        tail = _entropy.pop()
    except IndexError:   # one getrandom(2) per 400 ids, not one per request
        block = os.urandom(4000).hex()
        _entropy.extend([block[i:i + 20] for i in range(20, 8000, 20)])
        tail = block[:20]
    return f"req_{time.time_ns() // 1_000_000:012x}{tail}"


_entropy: list[str] = []   # ids' random parts, drawn ahead (list.pop and extend are atomic: thread-safe)
if hasattr(os, "register_at_fork"):   # a forked child must not hand out its parent's
    os.register_at_fork(after_in_child=_entropy.clear)


def _internal(exc: BaseException) -> str:
    """The ledger's message for an exception that is not a RequestError (a bug, or a broken edge)."""
    return redact_cut(f"internal error: {type(exc).__name__}: {exc}", 1000)


def _error_text(err: Any) -> str | None:
    """The message of an OpenAI-style error value (``{"message": ...}`` or a string)."""
    msg = err.get("message") if isinstance(err, dict) else (err if isinstance(err, str) else None)
    return str(msg) if msg else None


def _upstream_message(raw: bytes, secrets: Sequence[str] = ()) -> str:
    """An upstream error body's message, redacted first and cut after (500 characters from JSON,
    200 of raw text), so a key straddling the cut is masked whole, never leaked in part."""
    try:
        data = orjson.loads(raw)
        msg = _error_text(data.get("error")) if isinstance(data, dict) else None
        if msg is None and isinstance(data, dict):
            msg = data.get("message") or data.get("detail")
        if msg:
            return redact_cut(str(msg), 500, secrets)
    except orjson.JSONDecodeError:
        pass
    return redact_cut(raw.decode("utf-8", "replace"), 200, secrets)


def _idle(key: str) -> float:
    """Replica load without a monitor: every replica looks idle and usable."""
    return 0.0


def _fleet(req: _Request) -> Fleet:
    """The request's replica and hedge state, made on first need (requests without replicas never need it)."""
    fleet = req.fleet
    if fleet is None:
        fleet = req.fleet = Fleet()
    return fleet


def _outside_residency(req: _Request, model: Model) -> frozenset[str]:
    """The replicas of `model` the request's residency rules out (`decide` marked them), as deployment
    keys: the picker never sees them, for a first attempt, a retry, a hedge or a resumed stream alike."""
    for cand in req.candidates:
        if cand.model == model.alias:
            return frozenset(model.key(name) for name, why in cand.replicas if why == "residency")
    return frozenset(model.key(name) for name in model.replicas)   # not a candidate: never picked


def _secrets(provider: Provider) -> tuple[str, ...]:
    return (provider.api_key.reveal(),) if provider.api_key is not None else ()


class _Request:
    """Per-request state: the policy snapshot, the decision, the clock and what happened.

    Everything a request holds that must be given back (its budget reservation, its in-flight
    counts, its health slot) is recorded here, so `Engine._close` can give all of it back, once,
    whichever way the request ends.
    """

    __slots__ = ("budget", "candidates", "closed", "deadline", "decision", "engine", "entry", "fleet", "info",
                 "policy", "reservation", "retry", "session", "started", "trace", "upstream")

    def __init__(self, engine: Engine, policy: Policy, info: RouterInfo, started: float):
        self.engine, self.policy, self.info, self.started = engine, policy, info, started
        self.decision: Decision = None  # type: ignore[assignment]  # set by _start before anything reads it
        self.candidates: list[Any] = []
        self.deadline = started + policy.timeouts.total_s
        self.retry = engine._retry_policy(policy)
        self.budget: BudgetBackend | None = None    # the backend holding `reservation`
        self.reservation: Reservation | None = None  # settled (or released) by _close
        self.upstream: str | None = None    # provider of the attempt in flight, for in-flight gauges
        self.closed = False                 # _close ran: metered, settled, counts restored
        self.entry: Any = None              # response cache and rate limits (engine.admission.Entry)
        self.session: str | None = None     # the conversation, for replica affinity (engine.replicas)
        self.fleet: Fleet | None = None     # replicas tried, affinity key, hedge (made on first need)
        self.trace: RequestTrace | None = None  # its spans, when tracing is on (engine.tracer)

    def remaining(self) -> float:
        return self.deadline - self.engine.clock()


class Engine:
    """Executes decisions. Holds the policy (swappable atomically), the transport and the meters.

    Every request follows one shape: `_start` opens it (validate, decide), the caller runs it
    inside ``try``, and `_close` ends it from a ``finally``: it meters the request exactly once,
    settles (or releases) its budget reservation and gives back its in-flight counts and health
    slot, whether it succeeded, failed, raised anything else, was cancelled, or was a stream
    closed early or never read. `_close` is idempotent and each of its steps is guarded, so one
    failing step never skips the others.
    """

    def __init__(self, policy: Policy, transport: Transport, meters: Sequence[Meter] = (), *,
                 state: Callable[[], LiveState] | None = None, clock: Callable[[], float] = time.perf_counter,
                 wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], Any] = asyncio.sleep, budget: BudgetBackend | None = None,
                 budget_factory: Callable[[], BudgetBackend] | None = None, admission: Admission | None = None):
        self.policy = policy
        self.transport = transport
        self.meters = list(meters)
        self.state = state
        self.clock, self.wall, self.sleep = clock, wall, sleep
        self._retry_cache: tuple[Policy, RetryPolicy] | None = None
        self.budget = budget
        # Builds the budget backend the first time a (re)loaded policy has budgets, so budgets a
        # reload adds are enforced like those present at start-up.
        self.budget_factory = budget_factory
        self._budget_checked: Policy | None = None
        self.monitor: MonitorHooks | None = None  # health + load (router.monitor.Monitor); set by Router
        self._inflight = tuple(m for m in self.meters if m.tracks_inflight)
        for meter in self.meters:
            meter.bind(self)
        # the response cache and rate limits (backends built when a policy first uses them)
        self.admission = admission if admission is not None else Admission()
        self.admission.bind_metrics(self.meters)
        self.picker = ReplicaPicker()           # replicas of a model (engine.replicas)
        self.hedges = HedgeGovernor(wall)       # hedging caps, per route (engine.hedge)
        self.tracer: Tracer | None = None       # OpenTelemetry traces, opt-in (router.metering.tracing)
        # the last requests with their decisions, for the status page (router.server.status); None: not kept
        self.recent: collections.deque[tuple[RouterInfo, Decision | None, str | None]] | None = None

    def _retry_policy(self, policy: Policy) -> RetryPolicy:
        cached = self._retry_cache
        if cached is None or cached[0] is not policy:
            cached = (policy, RetryPolicy.from_policy(policy.retry))
            self._retry_cache = cached
        return cached[1]

    def _budget_for(self, policy: Policy) -> BudgetBackend | None:
        """The budget backend, built on first need when the policy (maybe a reloaded one) has budgets."""
        budget = self.budget
        if budget is None and self.budget_factory is not None and policy is not self._budget_checked:
            self._budget_checked = policy
            if any(t.budget is not None for t in policy.tenants.values()):
                budget = self.budget = self.budget_factory()
        return budget

    def decide(self, body: Mapping[str, Any], *, task: str | None = None, residency: str | None = None,
               tenant: str | None = None, policy: Policy | None = None, language: bool = True,
               api: str = "chat") -> Decision:
        """The decision for a request (`explain`). `language=False`: detect the language only when
        a policy rule reads it."""
        policy = policy or self.policy
        return decide(policy, body, task=task, residency=residency, tenant=tenant,
                      state=self.live_state(policy, tenant), language=language, api=api, now=self.wall())

    def live_state(self, policy: Policy, tenant: str | None = None) -> LiveState:
        """The world as the decision sees it now, as plain data: health and load from the monitor,
        and what `tenant` has left of its budget (read here, so `decide` itself never touches a backend)."""
        state = self.state() if self.state is not None else EMPTY_STATE
        if self.monitor is not None:
            state = self.monitor.overlay(state, policy)
        if tenant is not None:
            budget = self._budget_for(policy)
            if budget is not None:
                left = budget.remaining(policy, tenant)
                if left is not None:
                    state = dataclasses.replace(state, budget_remaining={**state.budget_remaining, tenant: left})
        return state

    def provider_states(self) -> dict[tuple[str, str], int]:
        """`LiveView` for meters: each deployment's health (0 healthy, 1 degraded, 2 down)."""
        return self.monitor.states() if self.monitor is not None else {}

    # ------------------------------------------------------------------ a request's life: open, close

    def _start(self, body: Mapping[str, Any], task: str | None, residency: str | None, tenant: str | None,
               request_id: str | None, client_request_id: str | None, *, embedding: bool = False,
               api: str = "chat", key_id: str | None = None, cache_control: str | None = None,
               trace_context: Mapping[str, str] | None = None) -> _Request:
        """Open a request: validate its body and decide. A refusal here is metered (and closed) too.
        `key_id` (per-key rate limits) and `cache_control` (the client's header) go to the admission;
        `trace_context` (a client's W3C headers) to the tracer, when tracing is on."""
        policy = self.policy  # one snapshot for the whole request: a reload never splits one
        started = self.clock()
        info = RouterInfo(request_id or new_request_id(), task or "", "hint" if task else "", 0.0, None, "", None,
                          tenant=tenant, created=self.wall(), client_request_id=client_request_id, api=api)
        req = _Request(self, policy, info, started)
        if self.tracer is not None:
            try:
                req.trace = self.tracer.begin(policy, body, trace_context)
            except Exception:
                log.exception("tracer failed to begin request %s", info.request_id)
        try:
            if embedding:
                validate_embeddings(body)
                decision = decide_embedding(policy, body, residency=residency, tenant=tenant,
                                            state=self.live_state(policy, tenant))
            else:  # the language is only detected when a rule reads it: nothing records it otherwise
                validate_chat(body)
                decision = self.decide(body, task=task, residency=residency, tenant=tenant, policy=policy,
                                       language=False, api=api)
            req.decision = decision
            info.task, info.task_source, info.confidence = decision.task, decision.task_source, decision.confidence
            info.language, info.route, info.rule, info.tenant = (decision.language, decision.route, decision.rule,
                                                                  decision.tenant)
            req.candidates = decision.require_candidates()
            req.entry = self.admission.open(req, body, key_id=key_id, cache_control_header=cache_control,
                                            embedding=embedding)
        except BaseException as e:
            self._close(req, e)
            raise
        return req

    def record_rejected(self, request_id: str, error: RequestError, *, task: str | None = None,
                        tenant: str | None = None, client_request_id: str | None = None,
                        api: str = "chat") -> None:
        """Meter a request refused before routing (bad input, auth, unknown model): it too leaves a record."""
        info = RouterInfo(request_id, task or "", "hint" if task else "", 0.0, None, "", None, tenant=tenant,
                          status="error", error=error.message, created=self.wall(),
                          client_request_id=client_request_id, api=api)
        record_all(self.meters, info)

    def _close(self, req: _Request, exc: BaseException | None = None) -> None:
        """End `req` once: status from `exc`, in-flight counts and health slot given back, the budget
        reservation settled, every meter told. Idempotent; never raises."""
        if req.closed:
            return
        req.closed = True
        info = req.info
        if exc is None:
            info.status = "ok"
        elif isinstance(exc, RequestError):
            info.status, info.error = "error", exc.message
            exc.router = info  # what the caller may report about it (the proxy's x-router-* headers)
        elif isinstance(exc, Exception):
            info.status, info.error = "error", _internal(exc)
        else:  # CancelledError, GeneratorExit (a stream closed early), KeyboardInterrupt
            info.status = "cancelled"
        info.latency_s = self.clock() - req.started
        self._track_upstream(req, None)
        monitor = self.monitor
        if monitor is not None:
            try:
                monitor.end(req)
            except Exception:
                log.exception("monitor failed to end request %s", info.request_id)
            try:
                monitor.record(info.attempts)
            except Exception:
                log.exception("monitor failed to record request %s", info.request_id)
        if req.reservation is not None:
            self._settle(req)
        if req.entry is not None:  # rate-limit lease settled, answer stored in the response cache
            try:
                self.admission.close(req)
            except Exception:
                log.exception("admission failed to close request %s", info.request_id)
        if req.trace is not None and self.tracer is not None:
            try:
                self.tracer.end(req.trace, info, req.policy, req.decision, exc)
            except Exception:
                log.exception("tracer failed to end request %s", info.request_id)
        if self.recent is not None:
            self.recent.append((info, req.decision, None if exc is None else type(exc).__name__))
        record_all(self.meters, info)

    def _settle(self, req: _Request) -> None:
        reservation, budget = req.reservation, req.budget
        req.reservation = None
        if reservation is None or budget is None:
            return
        try:
            budget.settle(reservation, req.info.cost_usd)
        except Exception:
            log.exception("budget settle failed for request %s: releasing its reservation", req.info.request_id)
            try:
                budget.release(reservation)
            except Exception:
                log.exception("budget release failed for request %s", req.info.request_id)

    def _track_upstream(self, req: _Request, provider: str | None) -> None:
        old, req.upstream = req.upstream, provider
        if old is not None:
            for meter in self._inflight:
                try:
                    meter.track_inflight(old, -1)
                except Exception:
                    log.exception("meter %s failed to track in-flight calls", type(meter).__name__)
        if provider is not None:
            for meter in self._inflight:
                try:
                    meter.track_inflight(provider, 1)
                except Exception:
                    log.exception("meter %s failed to track in-flight calls", type(meter).__name__)

    async def _reserve(self, req: _Request, candidates: list[Any]) -> list[Any]:
        """Reserve the request's estimated cost against its tenant's budget; may narrow the candidates.

        Bounded by the policy's `metering.budget_timeout_s` and by the request's own deadline."""
        if req.info.tenant is None:
            return candidates
        budget = self._budget_for(req.policy)
        if budget is None:
            return candidates
        remaining = req.remaining()
        if remaining <= 0:
            raise self._failed(req, "deadline")
        req.budget = budget
        req.reservation, candidates = await budget.reserve(
            req.policy, req.decision, candidates, timeout_s=min(req.policy.metering.budget_timeout_s, remaining))
        return candidates

    def _cost(self, req: _Request, model: Model, usage: Usage) -> None:
        """Tokens and cost of the answer: each token kind at its price (router.core.pricing), in the
        time-of-day window the request arrived in; the same tokens at the reference price."""
        info = req.info
        info.prompt_tokens, info.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        info.reasoning_tokens, info.usage_estimated = usage.reasoning_tokens, usage.estimated
        info.cached_tokens, info.cache_write_tokens = usage.cached_tokens, usage.cache_write_tokens
        price = model.price
        info.price_source = price.source
        if usage.cached_tokens or usage.cache_write_tokens or price.windows or price.reasoning_per_mtok is not None:
            info.cost_usd = usage_cost(price, usage, info.created)
            if price.windows:
                info.price_source = price_source(price, info.created)
        else:  # input and output only: the common case, kept cheap
            info.cost_usd = max(0.0, price.cost(usage.prompt_tokens, usage.completion_tokens))
        ref = req.policy.reference_model
        if ref is not None:
            info.reference_cost_usd = usage_cost(ref.price, usage, info.created)

    def _failed(self, req: _Request, last: str | None) -> UpstreamFailed:
        attempts = req.info.attempts
        tried = "; ".join(f"{a.provider}/{a.model}: {a.outcome}" + (f" ({a.error})" if a.error else "")
                          for a in attempts) or "none"
        if last == "deadline" or (attempts and attempts[-1].outcome == "timeout"):
            status = 504
        elif attempts and all(a.outcome in ("http_429", "http_503") for a in attempts):
            status = 503
        else:
            status = 502
        why = "the request deadline passed" if last == "deadline" else "every candidate failed"
        return UpstreamFailed(f"{why}; attempts: {tried}", attempts=attempts, status=status)

    async def _send(self, req: _Request, model: Model, provider: Provider, call: UpstreamCall,
                    stream: bool) -> UpstreamResponse:
        """One attempt up to the response headers; raises _Failure on anything but 200."""
        remaining = req.remaining()
        t = req.policy.timeouts
        if req.trace is not None:   # the attempt's span, named now: its traceparent goes upstream
            call = req.trace.attempt(call, provider, model, stream)
        try:
            total = remaining if stream or t.attempt_s is None else min(remaining, t.attempt_s)
            resp = await self.transport.send(call, connect_s=min(t.connect_s, remaining),
                                             read_s=t.first_token_s if stream else None, total_s=total)
        except TransportError as e:
            raise _Failure(e.outcome, None, str(e)) from None
        if resp.status == 200:
            return resp
        try:
            raw = await resp.read()
        except TransportError:
            raw = b""
        finally:
            resp.release()
        retry_after = parse_retry_after(resp.headers) if resp.status in (429, 503) else None
        message = _upstream_message(raw[:_ERROR_BODY_LIMIT], _secrets(provider))
        raise _Failure(f"http_{resp.status}", resp.status, message, retry_after)

    async def _json_attempt(self, req: _Request, model: Model, provider: Provider, call: UpstreamCall,
                            t0: float, key: str, what: str) -> dict[str, Any]:
        """One non-streaming attempt: the upstream's JSON object, which must hold a list under `key`."""
        resp = await self._send(req, model, provider, call, stream=False)
        try:
            raw = await resp.read()
        except TransportError as e:
            resp.close()
            raise _Failure(e.outcome, None, str(e)) from None
        resp.release()
        try:
            data = orjson.loads(raw)
            if not isinstance(data, dict) or not isinstance(data.get(key), list):
                raise ValueError
        except (orjson.JSONDecodeError, ValueError):
            raise _Failure("malformed", None, f"upstream sent a body that is not {what}") from None
        info = req.info
        info.attempts.append(Attempt(provider.name, model.alias, "ok", self.clock() - t0, 200))
        info.provider, info.model, info.upstream_model = provider.name, model.alias, model.model
        info.region = provider.region
        return data

    async def _drive(self, req: _Request, body: Mapping[str, Any], once: Callable[..., Any],
                     path: str = "/chat/completions") -> Any:
        """Run a non-streaming request to its end, which `_close` meters whatever it is."""
        outcome: BaseException | None = None
        try:
            if req.entry is not None:  # response cache, then rate limits
                hit = await self.admission.enter(req)
                if hit is not None:
                    req.info.ttft_s = self.clock() - req.started
                    return ChatCompletion(hit, req.info)
            candidates = await self._reserve(req, req.candidates)
            result = await self._run_attempts(req, candidates, False, body, once, path)
            req.info.ttft_s = self.clock() - req.started
            if req.entry is not None:
                req.entry.answer = result   # stored in the response cache by _close, once metered ok
            return result
        except BaseException as e:
            outcome = e
            raise
        finally:
            self._close(req, outcome)

    async def _run_attempts(self, req: _Request, candidates: list[Any], stream: bool,
                            body: Mapping[str, Any], once: Callable[..., Any],
                            path: str = "/chat/completions", opened: Callable[..., Any] | None = None,
                            commit: Callable[[Opened], Any] | None = None) -> Any:
        """Try candidates in order with retries; `once(model, provider, call, t0)` makes one attempt.

        A model with replicas is tried on the replica `_leg` picks, then at once on another usable
        replica after a failure (engine.replicas); the next candidate comes only when every replica
        is out or failed. A stream (`opened` opens one without committing, `commit` commits it) on a
        route with `hedge` may race a second attempt (engine.hedge).

        An attempt in flight stays counted (meters' in-flight gauges, the monitor's slot) until it
        fails here or the request is closed."""
        info, policy, retry = req.info, req.policy, req.retry
        hedge = None
        if opened is not None:
            route = policy.routes.get(req.decision.route)
            hedge = route.hedge if route is not None else None
        for index, cand in enumerate(candidates):
            model = policy.models[cand.model]
            leg = self._leg(req, model, body, stream, path)
            if leg is None:
                continue   # every replica is out right now: the next candidate
            attempt_number = 0
            while True:
                attempt_number += 1
                if req.remaining() <= 0:
                    raise self._failed(req, "deadline")
                provider = leg.provider
                t0 = self.clock()
                self._track_upstream(req, provider.name)
                if self.monitor is not None:
                    self.monitor.begin(req, leg.key)
                try:
                    if hedge is not None and commit is not None and not _fleet(req).hedged:
                        req.fleet.hedged = True  # type: ignore[union-attr]  # _fleet made it
                        delay = hedge_delay(hedge, self.monitor, model.alias)
                        won, won_leg = await race(self, req, opened, leg, t0, delay,
                                                  functools.partial(self._alternate, req, candidates, index, leg,
                                                                    body, path),
                                                  self.hedges, hedge)
                        info.pick = won_leg.how
                        return commit(won)
                    result = await once(model, provider, leg.call, t0)
                    info.pick = leg.how
                    return result
                except _Failure as f:
                    if not f.recorded:
                        self._track_upstream(req, None)
                        if self.monitor is not None:
                            self.monitor.end(req)
                        info.attempts.append(Attempt(provider.name, model.alias, f.outcome, self.clock() - t0,
                                                     f.status, f.message if f.status or f.outcome == "error_event"
                                                     else None))
                    v = verdict(f.status) if f.outcome.startswith("http_") else "retry"
                    if v == FATAL:
                        err = InvalidRequest(f"{provider.name} rejected the request: {f.message}",
                                             status=f.status or 400, code="upstream_rejected")
                        raise err from None
                    if model.replicas:   # another replica of the model, at once: a different server
                        _fleet(req).tried.add(leg.key)
                        other = self._leg(req, model, body, stream, path)
                        if other is not None:
                            leg = other
                            continue
                    if v == NEXT:
                        break
                    wait = retry.wait(attempt_number, f.retry_after)
                    if wait is None:
                        break
                    wait = min(wait, max(0.0, req.remaining()))
                    if wait > 0:
                        await self.sleep(wait)
        raise self._failed(req, None)

    def _build_call(self, provider: Provider, model: Model, body: Mapping[str, Any], stream: bool = True,
                    path: str = "/chat/completions") -> UpstreamCall:
        return build_call(provider, model, body, stream=stream, path=path)

    def _leg(self, req: _Request, model: Model, body: Mapping[str, Any], stream: bool, path: str,
             exclude: frozenset[str] = frozenset()) -> Leg | None:
        """Where the next attempt on `model` goes: its provider, or the replica picked now with live
        load and the request's affinity key (None when every replica is out or already failed)."""
        if not model.replicas:
            provider = req.policy.providers[model.provider]
            return Leg(model, provider, build_call(provider, model, body, stream=stream, path=path), model.alias)
        fleet = _fleet(req)
        mode = model.balance.affinity
        if fleet.keyed != mode:
            fleet.key, fleet.keyed = affinity_key(body, req.session, mode), mode
        barred = _outside_residency(req, model)
        if barred:
            exclude = exclude | barred
        monitor = self.monitor
        picked = self.picker.pick(model, monitor.replica_load if monitor is not None else _idle,
                                  fleet.key, fleet.tried | exclude if exclude else fleet.tried)
        if picked is None:
            return None
        provider = req.policy.providers[picked[0]]
        return Leg(model, provider, build_call(provider, model, body, stream=stream, path=path),
                   model.key(provider.name), picked[1])

    def _alternate(self, req: _Request, candidates: list[Any], index: int, leg: Leg, body: Mapping[str, Any],
                   path: str) -> Leg | None:
        """A hedge's target: another replica of the model, else the decision's next usable candidate."""
        if leg.model.replicas:
            other = self._leg(req, leg.model, body, True, path, frozenset((leg.key,)))
            if other is not None:
                return other
        for cand in candidates[index + 1:]:
            other = self._leg(req, req.policy.models[cand.model], body, True, path)
            if other is not None:
                return other
        return None

    def _continuations(self, req: _Request, cut: Opened, body: Mapping[str, Any]) -> list[Leg]:
        """Where a stream cut mid-way may continue, in order: the model's other replicas, then the
        decision's candidates after the one that was cut (engine.recovery skips those without prefill)."""
        out: list[Leg] = []
        model = cut.model
        seen = {model.key(cut.provider.name)}
        while model.replicas:
            other = self._leg(req, model, body, True, "/chat/completions", frozenset(seen))
            if other is None:
                break
            seen.add(other.key)
            out.append(other)
        names = [c.model for c in req.candidates]
        after = names.index(model.alias) + 1 if model.alias in names else 0
        for alias in names[after:]:
            other = self._leg(req, req.policy.models[alias], body, True, "/chat/completions")
            if other is not None:
                out.append(other)
        return out

    # ------------------------------------------------------------------ JSON

    async def complete(self, body: Mapping[str, Any], *, task: str | None = None, residency: str | None = None,
                       tenant: str | None = None, request_id: str | None = None,
                       client_request_id: str | None = None, api: str = "chat", key_id: str | None = None,
                       cache_control: str | None = None, session: str | None = None,
                       trace_context: Mapping[str, str] | None = None) -> ChatCompletion:
        """Route and send one chat completion. `request_id`: the ledger key to use (router generates
        an unguessable one when None: never pass a client's value); `client_request_id`: the caller's
        own id, kept beside it for correlation; `api`: the API the request came in on (for rules and
        the ledger); `key_id`: which of the tenant's keys sent it (per-key rate limits);
        `cache_control`: the client's ``Cache-Control`` (``no-cache``, ``no-store``); `trace_context`:
        the client's W3C ``traceparent``/``tracestate`` headers (else the caller's current span)."""
        req = self._start(body, task, residency, tenant, request_id, client_request_id, api=api, key_id=key_id,
                          cache_control=cache_control, trace_context=trace_context)
        req.session = session   # keeps a conversation on one replica (engine.replicas)

        async def once(model: Model, provider: Provider, call: UpstreamCall, t0: float) -> ChatCompletion:
            data = await self._json_attempt(req, model, provider, call, t0, "choices", "a chat completion")
            self._cost(req, model, read_usage(data) or self._estimate(req, data))
            if req.trace is not None:
                req.trace.finish(data)
            return ChatCompletion(data, req.info)

        return await self._drive(req, body, once)

    # ------------------------------------------------------------------ embeddings

    async def embed(self, body: Mapping[str, Any], *, residency: str | None = None, tenant: str | None = None,
                    request_id: str | None = None, client_request_id: str | None = None,
                    key_id: str | None = None, trace_context: Mapping[str, str] | None = None) -> Embeddings:
        """An embeddings request to the alias `body["model"]`: retries, residency, budget, rate limits and
        metering as for chat, no classification and no fallback (an alias names one model)."""
        req = self._start(body, None, residency, tenant, request_id, client_request_id, embedding=True,
                          key_id=key_id, trace_context=trace_context)

        async def once(model: Model, provider: Provider, call: UpstreamCall, t0: float) -> Embeddings:
            data = await self._json_attempt(req, model, provider, call, t0, "data", "an embeddings list")
            usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
            prompt = usage.get("prompt_tokens")
            estimated = type(prompt) is not int
            self._cost(req, model, Usage(req.decision.prompt_tokens if estimated else max(prompt, 0), 0, 0,
                                         estimated))
            return Embeddings(data, req.info)

        return await self._drive(req, body, once, "/embeddings")

    def _estimate(self, req: _Request, data: Mapping[str, Any]) -> Usage:
        chars = 0
        choices = data.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            msg = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(msg, dict):
                for key in ("content", "reasoning_content"):
                    v = msg.get(key)
                    chars += len(v) if isinstance(v, str) else 0
        return Usage(req.decision.prompt_tokens, (chars + 3) // 4, 0, True)

    # ------------------------------------------------------------------ streaming

    def stream(self, body: Mapping[str, Any], *, task: str | None = None, residency: str | None = None,
               tenant: str | None = None, request_id: str | None = None,
               client_request_id: str | None = None, api: str = "chat", key_id: str | None = None,
               cache_control: str | None = None, session: str | None = None,
               trace_context: Mapping[str, str] | None = None) -> ChunkStream:
        """Decide now (so routing errors raise here); connect when iteration starts (the response cache
        and rate limits answer then too). `key_id`, `cache_control`, `trace_context`: as for `complete`."""
        req = self._start(body, task, residency, tenant, request_id, client_request_id, api=api, key_id=key_id,
                          cache_control=cache_control, trace_context=trace_context)
        req.session = session
        return ChunkStream(self, req, body)


class ChunkStream:
    """An async iterator of chat.completion.chunk dicts; `.router` fills in as the stream goes.

    Closing it early (``aclose()``, or breaking out of ``async for`` and letting it be collected)
    aborts the upstream request and still meters the usage so far. A stream that is never read is
    metered as cancelled when it is closed, abandoned or collected.
    """

    def __init__(self, engine: Engine, req: _Request, body: Mapping[str, Any]):
        self._engine, self._req, self._body = engine, req, body
        opts = body.get("stream_options")
        self.include_usage = bool(isinstance(opts, Mapping) and opts.get("include_usage"))
        self.router = req.info
        self._gen: AsyncIterator[dict[str, Any]] | None = None
        self._started = False   # _run began: from then on its own finally closes the request
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    @property
    def decision(self) -> Decision:
        return self._req.decision

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        if self._gen is None:
            self._gen = self._run()
        return self._gen

    async def __anext__(self) -> dict[str, Any]:
        return await self.__aiter__().__anext__()

    def abandon(self) -> None:
        """Meter a stream that was never read as cancelled; nothing to do once it started."""
        if not self._started:
            self._engine._close(self._req, asyncio.CancelledError())

    async def aclose(self) -> None:
        if not self._started:  # never read: still a request to account for
            self.abandon()
        if self._gen is not None:
            await self._gen.aclose()  # type: ignore[attr-defined]

    def __del__(self) -> None:
        # Collected without being read (or closed): close it on its loop, never inside the GC.
        if self._started or self._req.closed:
            return
        close = functools.partial(self._engine._close, self._req, asyncio.CancelledError())
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(close)
                return
        sync.call_soon(close)

    async def _run(self) -> AsyncIterator[dict[str, Any]]:
        engine, req = self._engine, self._req
        if req.closed:
            return
        self._started = True
        info = req.info
        state: dict[str, Any] = {}

        async def opened(model: Model, provider: Provider, call: UpstreamCall, t0: float) -> Opened:
            """One attempt up to its first chunk, committing nothing (a hedge race may discard it)."""
            resp = await engine._send(req, model, provider, call, stream=True)
            it = resp.sse_data().__aiter__()
            try:
                data = await it.__anext__()
                first = None if data == b"[DONE]" else orjson.loads(data)
                if first is not None and not isinstance(first, dict):
                    raise ValueError
            except StopAsyncIteration:
                resp.close()
                raise _Failure("protocol_error", None, "stream ended before its first chunk") from None
            except TransportError as e:
                resp.close()
                raise _Failure(e.outcome, None, str(e)) from None
            except (orjson.JSONDecodeError, ValueError):
                resp.close()
                raise _Failure("malformed", None, "upstream sent a chunk that is not JSON") from None
            except BaseException:  # cancelled (a hedge that lost, a caller that left): never leave it open
                resp.close()
                raise
            if first is not None and first.get("error") is not None and not first.get("choices"):
                resp.close()
                message = redact_cut(_error_text(first["error"]) or "no message", 500, _secrets(provider))
                raise _Failure("error_event", None, message)
            return Opened(resp, it, first, _secrets(provider), model, provider, engine.clock() - t0)

        def commit(o: Opened) -> Opened:
            """The stream the request goes on with: its attempt, provider and model are the request's."""
            o.attempt = Attempt(o.provider.name, o.model.alias, "ok", o.latency_s, 200)
            info.attempts.append(o.attempt)
            info.provider, info.model, info.upstream_model = o.provider.name, o.model.alias, o.model.model
            info.region = o.provider.region
            state["model"] = o.model
            return o

        async def once(model: Model, provider: Provider, call: UpstreamCall, t0: float) -> Opened:
            return commit(await opened(model, provider, call, t0))

        stream: Opened | None = None
        usage: Usage | None = None
        chars = 0                                     # this attempt's answer, for an estimate
        carried: list[tuple[Model, Usage]] = []       # earlier attempts of a stream that was resumed
        outcome: BaseException | None = None
        recorder: Recorder | None = None   # the answer, assembled for the response cache
        try:
            if req.entry is not None:  # response cache, then rate limits
                hit = await engine.admission.enter(req)
                if hit is not None:
                    info.ttft_s = engine.clock() - req.started
                    for cached in replay_chunks(hit, self.include_usage):
                        yield cached
                    return
                if req.entry.stores:
                    recorder = Recorder()
            candidates = await engine._reserve(req, req.candidates)
            stream = await engine._run_attempts(req, candidates, True, self._body, once, opened=opened,
                                                commit=commit)
            info.ttft_s = engine.clock() - req.started
            include_usage = self.include_usage
            route = req.policy.routes.get(req.decision.route)
            resumes = route.resume.attempts if route is not None and route.resume is not None else 0
            text: list[str] | None = [] if resumes and _resumable(self._body) else None  # choice 0's text so far
            tools = spliced = False
            stream_id = stream.first.get("id") if stream.first is not None else None
            trace = req.trace
            if trace is not None:
                trace.response_id = stream_id if isinstance(stream_id, str) else None
            chunk = stream.first
            done = finished = False
            while True:
                it, cut = stream.it, None
                try:
                    while chunk is not None:
                        if spliced:   # a continuation: one stream to the caller, one id, one role
                            chunk["id"] = stream_id
                        if recorder is not None:
                            recorder.feed(chunk)
                        if chunk.get("usage"):
                            usage = read_usage(chunk) or usage
                        choices = chunk.get("choices")
                        if isinstance(choices, list):
                            for choice in choices:
                                if not isinstance(choice, dict):
                                    continue
                                if choice.get("finish_reason"):
                                    finished = True
                                delta = choice.get("delta")
                                if trace is not None:
                                    trace.chunk_choice(choice, delta)
                                if isinstance(delta, dict):
                                    for key in ("content", "reasoning_content"):
                                        v = delta.get(key)
                                        if isinstance(v, str):
                                            chars += len(v)
                                    if text is not None:
                                        if spliced:
                                            delta.pop("role", None)
                                        v = delta.get("content")
                                        if isinstance(v, str) and not choice.get("index"):
                                            text.append(v)
                                        if delta.get("tool_calls"):
                                            tools = True
                        if include_usage:
                            yield chunk
                        elif choices:
                            if "usage" in chunk:
                                del chunk["usage"]
                            yield chunk
                        try:
                            data = await it.__anext__()
                        except StopAsyncIteration:
                            break
                        if data == b"[DONE]":
                            done = True
                            break
                        try:
                            chunk = orjson.loads(data)
                            if not isinstance(chunk, dict):
                                raise ValueError
                        except (orjson.JSONDecodeError, ValueError):
                            cut = ("malformed", f"{info.provider} sent a malformed chunk mid-stream")
                            break
                        if chunk.get("error") is not None and not chunk.get("choices"):
                            message = redact_cut(_error_text(chunk["error"]) or "no message", 500, stream.secrets)
                            cut = ("error_event", f"{info.provider} sent an error mid-stream: {message}")
                            break
                    if cut is None and stream.first is not None and not done and not finished:
                        cut = ("protocol_error", f"{info.provider} stream ended before it finished (no "
                                                 "finish_reason, no [DONE])")
                except TransportError as e:
                    cut = (e.outcome, f"{info.provider} stream interrupted: {e}")
                if cut is None:
                    break
                if not resumes or text is None or tools:
                    raise UpstreamFailed(cut[1], attempts=info.attempts)
                # Recovery after the first byte (engine.recovery): continue on another deployment.
                resumes -= 1
                cut_usage = usage or Usage(req.decision.prompt_tokens, (chars + 3) // 4, 0, True)
                produced = cut_usage.completion_tokens + sum(u.completion_tokens for _, u in carried)
                stream.close()
                if stream.attempt is not None:   # the cut attempt failed after all
                    stream.attempt.outcome, stream.attempt.error = cut[0], cut[1]
                _fleet(req).tried.add(stream.model.key(stream.provider.name))
                nxt = await resume(engine, req, engine._continuations(req, stream, self._body), self._body,
                                   "".join(text), produced, opened)
                if nxt is None:
                    raise UpstreamFailed(f"{cut[1]}; no other candidate could continue it",
                                         attempts=info.attempts)
                carried.append((stream.model, cut_usage))
                stream, usage, chars = commit(nxt), None, 0
                info.resumed += 1
                spliced, done, finished = True, False, False
                chunk = stream.first
            if recorder is not None:
                req.entry.answer = recorder   # stored in the response cache by _close, once metered ok
            stream.resp.release()
            stream = None
        except BaseException as e:
            outcome = e
            raise
        finally:
            if stream is not None:
                try:
                    stream.close()
                except Exception:
                    log.exception("closing the upstream stream of request %s failed", info.request_id)
            model = state.get("model")
            if model is not None:
                try:
                    if usage is None:
                        usage = Usage(req.decision.prompt_tokens, (chars + 3) // 4, 0, True)
                    engine._cost(req, model, usage)
                    if carried:
                        add_carried(req.info, req.policy, carried)
                except Exception as e:
                    log.exception("costing request %s failed", info.request_id)
                    outcome = outcome or e
            if info.hedge_cost_usd:   # a hedge's losing attempt was spent too (engine.hedge)
                info.cost_usd += info.hedge_cost_usd
            engine._close(req, outcome)


def _resumable(body: Mapping[str, Any]) -> bool:
    """A stream that recovery may continue: one choice (``n`` > 1 streams are not resumed)."""
    n = body.get("n")
    return not (type(n) is int and n > 1)
