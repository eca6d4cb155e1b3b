"""The one async loop shared by the library and the proxy: decide -> translate -> send -> meter.

For each candidate in the decision's order: up to `retry.attempts` tries with backoff, then the
next candidate; one deadline (`timeouts.total_s`) bounds the whole request. A streamed request
fails over only until its first chunk has been handed to the caller. Every request, whatever
its end, is handed to the meters exactly once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from router.core.decision import EMPTY_STATE, Decision, LiveState, decide, decide_embedding
from router.core.errors import InvalidRequest, RequestError, UpstreamFailed, redact
from router.core.meter import Meter, record_all
from router.core.policy import Model, Policy, Provider
from router.core.response import Attempt, ChatCompletion, Embeddings, RouterInfo
from router.core.retry import FATAL, NEXT, RetryPolicy, parse_retry_after, verdict
from router.core.translate import UpstreamCall, Usage, build_call, read_usage
from router.transport.base import Transport, TransportError, UpstreamResponse

if TYPE_CHECKING:
    from router.engine.hooks import MonitorHooks
    from router.metering.budget import BudgetBackend

__all__ = ["ChunkStream", "Engine", "new_request_id"]

_ERROR_BODY_LIMIT = 4096


_rid_prefix = ""
_rid_counter = itertools.count()


def _seed_request_ids() -> None:
    """A fresh random prefix per process (and per forked worker) and a counter from zero."""
    global _rid_prefix, _rid_counter
    _rid_prefix = "req_" + os.urandom(8).hex()
    _rid_counter = itertools.count()


_seed_request_ids()
os.register_at_fork(after_in_child=_seed_request_ids)


def new_request_id() -> str:
    """``req_`` + a random per-process prefix (16 hex digits) + a per-process counter (8 or more).

    One ``os.urandom`` per process instead of per request; unique across processes, forked
    workers and restarts because every process draws its own prefix.
    """
    return f"{_rid_prefix}{next(_rid_counter):08x}"


class _Failure(Exception):
    """An attempt failed; carries the verdict and what the engine tells the caller."""

    def __init__(self, outcome: str, status: int | None, message: str, retry_after: float | None = None):
        self.outcome, self.status, self.message, self.retry_after = outcome, status, message, retry_after


def _upstream_message(raw: bytes) -> str:
    try:
        data = orjson.loads(raw)
        err = data.get("error") if isinstance(data, dict) else None
        msg = err.get("message") if isinstance(err, dict) else (err if isinstance(err, str) else None)
        if msg is None and isinstance(data, dict):
            msg = data.get("message") or data.get("detail")
        if msg:
            return str(msg)[:500]
    except orjson.JSONDecodeError:
        pass
    return raw[:200].decode("utf-8", "replace")


class _Request:
    """Per-request state: the policy snapshot, the decision, the clock and what happened."""

    __slots__ = ("deadline", "decision", "engine", "info", "policy", "reservation", "retry", "started",
                 "upstream")

    def __init__(self, engine: Engine, policy: Policy, decision: Decision, info: RouterInfo, started: float):
        self.engine, self.policy, self.decision, self.info, self.started = engine, policy, decision, info, started
        self.deadline = started + policy.timeouts.total_s
        self.retry = engine._retry_policy(policy)
        self.reservation: Any = None        # the budget reservation, settled in _finish
        self.upstream: str | None = None    # provider of the attempt in flight, for in-flight gauges

    def remaining(self) -> float:
        return self.deadline - self.engine.clock()


class Engine:
    """Executes decisions. Holds the policy (swappable atomically), the transport and the meters."""

    def __init__(self, policy: Policy, transport: Transport, meters: Sequence[Meter] = (), *,
                 state: Callable[[], LiveState] | None = None, clock: Callable[[], float] = time.perf_counter,
                 wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], Any] = asyncio.sleep, budget: BudgetBackend | None = None):
        self.policy = policy
        self.transport = transport
        self.meters = list(meters)
        self.state = state
        self.clock, self.wall, self.sleep = clock, wall, sleep
        self._retry_cache: tuple[Policy, RetryPolicy] | None = None
        self.budget = budget
        self.monitor: MonitorHooks | None = None  # health + load (router.monitor.Monitor); set by Router
        self._inflight = tuple(m for m in self.meters if m.tracks_inflight)
        for meter in self.meters:
            meter.bind(self)

    def _retry_policy(self, policy: Policy) -> RetryPolicy:
        cached = self._retry_cache
        if cached is None or cached[0] is not policy:
            cached = (policy, RetryPolicy.from_policy(policy.retry))
            self._retry_cache = cached
        return cached[1]

    def decide(self, body: Mapping[str, Any], *, task: str | None = None, residency: str | None = None,
               tenant: str | None = None, policy: Policy | None = None, language: bool = True) -> Decision:
        """The decision for a request (`explain`). `language=False`: detect the language only when
        a policy rule reads it."""
        policy = policy or self.policy
        return decide(policy, body, task=task, residency=residency, tenant=tenant,
                      state=self.live_state(policy, tenant), language=language)

    def live_state(self, policy: Policy, tenant: str | None = None) -> LiveState:
        """The world as the decision sees it now, as plain data: health and load from the monitor,
        and what `tenant` has left of its budget (read here, so `decide` itself never touches a backend)."""
        state = self.state() if self.state is not None else EMPTY_STATE
        if self.monitor is not None:
            state = self.monitor.overlay(state, policy)
        if self.budget is not None and tenant is not None:
            left = self.budget.remaining(policy, tenant)
            if left is not None:
                state = dataclasses.replace(state, budget_remaining={**state.budget_remaining, tenant: left})
        return state

    def provider_states(self) -> dict[tuple[str, str], int]:
        """`LiveView` for meters: each deployment's health (0 healthy, 1 degraded, 2 down)."""
        return self.monitor.states() if self.monitor is not None else {}

    # ------------------------------------------------------------------ shared pieces

    def _start(self, body: Mapping[str, Any], task: str | None, residency: str | None, tenant: str | None,
               request_id: str | None, *, embedding: bool = False) -> tuple[_Request, list[Any]]:
        policy = self.policy  # one snapshot for the whole request: a reload never splits one
        started = self.clock()
        rid = request_id or new_request_id()
        try:
            if embedding:
                decision = decide_embedding(policy, body, residency=residency, tenant=tenant,
                                            state=self.live_state(policy, tenant))
            else:  # the language is only detected when a rule reads it: nothing records it otherwise
                decision = self.decide(body, task=task, residency=residency, tenant=tenant, policy=policy,
                                       language=False)
        except RequestError as e:
            self.record_rejected(rid, e, task=task, tenant=tenant)
            raise
        info = RouterInfo(rid, decision.task, decision.task_source, decision.confidence, decision.language,
                          decision.route, decision.rule, tenant=decision.tenant, created=self.wall())
        req = _Request(self, policy, decision, info, started)
        try:
            candidates = decision.require_candidates()
        except RequestError as e:
            self._finish(req, "error", error=e.message)
            raise
        return req, candidates

    def record_rejected(self, request_id: str, error: RequestError, *, task: str | None = None,
                        tenant: str | None = None) -> None:
        """Meter a request refused before routing (bad input, auth, unknown model): it too leaves a record."""
        info = RouterInfo(request_id, task or "", "hint" if task else "", 0.0, None, "", None, tenant=tenant,
                          status="error", error=error.message, created=self.wall())
        record_all(self.meters, info)

    def _finish(self, req: _Request, status: str, *, error: str | None = None) -> None:
        info = req.info
        info.status = status
        info.latency_s = self.clock() - req.started
        if error is not None:
            info.error = error
        self._track_upstream(req, None)
        if self.monitor is not None:
            self.monitor.end(req)
            self.monitor.record(info.attempts)
        if req.reservation is not None and self.budget is not None:
            self.budget.settle(req.reservation, info.cost_usd)
            req.reservation = None
        record_all(self.meters, info)

    def _track_upstream(self, req: _Request, provider: str | None) -> None:
        if req.upstream is not None:
            for meter in self._inflight:
                meter.track_inflight(req.upstream, -1)
        req.upstream = provider
        if provider is not None:
            for meter in self._inflight:
                meter.track_inflight(provider, 1)

    async def _reserve(self, req: _Request, candidates: list[Any]) -> list[Any]:
        """Reserve the request's estimated cost against its tenant's budget; may narrow the candidates."""
        if self.budget is None or req.info.tenant is None:
            return candidates
        try:
            req.reservation, candidates = await self.budget.reserve(req.policy, req.decision, candidates)
        except RequestError as e:
            self._finish(req, "error", error=e.message)
            raise
        except asyncio.CancelledError:
            self._finish(req, "cancelled")
            raise
        return candidates

    def _cost(self, req: _Request, model: Model, usage: Usage) -> None:
        info = req.info
        info.prompt_tokens, info.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        info.reasoning_tokens, info.usage_estimated = usage.reasoning_tokens, usage.estimated
        info.cost_usd = model.price.cost(usage.prompt_tokens, usage.completion_tokens)
        ref = req.policy.reference_model
        if ref is not None:
            info.reference_cost_usd = ref.price.cost(usage.prompt_tokens, usage.completion_tokens)

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
        message = redact(_upstream_message(raw[:_ERROR_BODY_LIMIT]),
                         (provider.api_key.reveal(),) if provider.api_key is not None else ())
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

    async def _drive(self, req: _Request, candidates: list[Any], body: Mapping[str, Any],
                     once: Callable[..., Any], path: str = "/chat/completions") -> Any:
        """Run the attempts of a non-streaming request and meter how it ended."""
        try:
            result = await self._run_attempts(req, candidates, False, body, once, path)
        except asyncio.CancelledError:
            self._finish(req, "cancelled")
            raise
        except RequestError as e:
            self._finish(req, "error", error=e.message)
            raise
        req.info.ttft_s = self.clock() - req.started
        self._finish(req, "ok")
        return result

    async def _run_attempts(self, req: _Request, candidates: list[Any], stream: bool,
                            body: Mapping[str, Any], once: Callable[..., Any],
                            path: str = "/chat/completions") -> Any:
        """Try candidates in order with retries; `once(model, provider, call, t0)` makes one attempt."""
        info, policy, retry = req.info, req.policy, req.retry
        for cand in candidates:
            model = policy.models[cand.model]
            provider = policy.providers[model.provider]
            call = build_call(provider, model, body, stream=stream, path=path)
            attempt_number = 0
            while True:
                attempt_number += 1
                if req.remaining() <= 0:
                    raise self._failed(req, "deadline")
                t0 = self.clock()
                self._track_upstream(req, provider.name)
                if self.monitor is not None:
                    self.monitor.begin(req, model.alias)
                try:
                    return await once(model, provider, call, t0)
                except _Failure as f:
                    self._track_upstream(req, None)
                    if self.monitor is not None:
                        self.monitor.end(req)
                    info.attempts.append(Attempt(provider.name, model.alias, f.outcome, self.clock() - t0,
                                                 f.status, f.message if f.status else None))
                    v = verdict(f.status) if f.outcome.startswith("http_") else "retry"
                    if v == FATAL:
                        err = InvalidRequest(f"{provider.name} rejected the request: {f.message}",
                                             status=f.status or 400, code="upstream_rejected")
                        raise err from None
                    if v == NEXT:
                        break
                    wait = retry.wait(attempt_number, f.retry_after)
                    if wait is None:
                        break
                    wait = min(wait, max(0.0, req.remaining()))
                    if wait > 0:
                        await self.sleep(wait)
        raise self._failed(req, None)

    # ------------------------------------------------------------------ JSON

    async def complete(self, body: Mapping[str, Any], *, task: str | None = None, residency: str | None = None,
                       tenant: str | None = None, request_id: str | None = None) -> ChatCompletion:
        req, candidates = self._start(body, task, residency, tenant, request_id)
        candidates = await self._reserve(req, candidates)

        async def once(model: Model, provider: Provider, call: UpstreamCall, t0: float) -> ChatCompletion:
            data = await self._json_attempt(req, model, provider, call, t0, "choices", "a chat completion")
            self._cost(req, model, read_usage(data) or self._estimate(req, data))
            return ChatCompletion(data, req.info)

        return await self._drive(req, candidates, body, once)

    # ------------------------------------------------------------------ embeddings

    async def embed(self, body: Mapping[str, Any], *, residency: str | None = None, tenant: str | None = None,
                    request_id: str | None = None) -> Embeddings:
        """An embeddings request to the alias `body["model"]`: retries, residency, budget and metering
        as for chat, no classification and no fallback (an alias names one model)."""
        req, candidates = self._start(body, None, residency, tenant, request_id, embedding=True)
        candidates = await self._reserve(req, candidates)

        async def once(model: Model, provider: Provider, call: UpstreamCall, t0: float) -> Embeddings:
            data = await self._json_attempt(req, model, provider, call, t0, "data", "an embeddings list")
            usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
            prompt = usage.get("prompt_tokens")
            estimated = not isinstance(prompt, int)
            self._cost(req, model, Usage(req.decision.prompt_tokens if estimated else prompt, 0, 0, estimated))
            return Embeddings(data, req.info)

        return await self._drive(req, candidates, body, once, "/embeddings")

    def _estimate(self, req: _Request, data: Mapping[str, Any]) -> Usage:
        chars = 0
        for choice in data.get("choices") or ():
            msg = choice.get("message") or {} if isinstance(choice, dict) else {}
            for key in ("content", "reasoning_content"):
                v = msg.get(key)
                chars += len(v) if isinstance(v, str) else 0
        return Usage(req.decision.prompt_tokens, (chars + 3) // 4, 0, True)

    # ------------------------------------------------------------------ streaming

    def stream(self, body: Mapping[str, Any], *, task: str | None = None, residency: str | None = None,
               tenant: str | None = None, request_id: str | None = None) -> ChunkStream:
        """Decide now (so routing errors raise here); connect when iteration starts."""
        req, candidates = self._start(body, task, residency, tenant, request_id)
        return ChunkStream(self, req, candidates, body)


class ChunkStream:
    """An async iterator of chat.completion.chunk dicts; `.router` fills in as the stream goes.

    Closing it early (``aclose()``, or breaking out of ``async for`` and letting it be collected)
    aborts the upstream request and still meters the usage so far.
    """

    def __init__(self, engine: Engine, req: _Request, candidates: list[Any], body: Mapping[str, Any]):
        self._engine, self._req, self._candidates, self._body = engine, req, candidates, body
        opts = body.get("stream_options")
        self.include_usage = bool(isinstance(opts, Mapping) and opts.get("include_usage"))
        self.router = req.info
        self._gen: AsyncIterator[dict[str, Any]] | None = None
        self._finished = False

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
        """Meter a stream that was never iterated as cancelled; nothing to do once it started."""
        if self._gen is None and not self._finished:
            self._finished = True
            self._engine._finish(self._req, "cancelled")

    async def aclose(self) -> None:
        if self._gen is None:  # never started: still a request to account for
            self.abandon()
            return
        await self._gen.aclose()  # type: ignore[attr-defined]

    async def _run(self) -> AsyncIterator[dict[str, Any]]:
        engine, req = self._engine, self._req
        info = req.info
        if self._finished:
            return
        self._candidates = await engine._reserve(req, self._candidates)
        state: dict[str, Any] = {}

        async def once(model: Model, provider: Provider, call: UpstreamCall, t0: float) -> Any:
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
            info.attempts.append(Attempt(provider.name, model.alias, "ok", engine.clock() - t0, 200))
            info.provider, info.model, info.upstream_model = provider.name, model.alias, model.model
            info.region = provider.region
            state["model"] = model
            return resp, it, first

        resp: UpstreamResponse | None = None
        usage: Usage | None = None
        chars = 0
        status, error = "ok", None
        try:
            resp, it, first = await engine._run_attempts(req, self._candidates, True, self._body, once)
            info.ttft_s = engine.clock() - req.started
            include_usage = self.include_usage
            chunk = first
            while chunk is not None:
                u = chunk.get("usage")
                if u:
                    usage = read_usage(chunk) or usage
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") if isinstance(choice, dict) else None
                    if delta:
                        for key in ("content", "reasoning_content"):
                            v = delta.get(key)
                            if isinstance(v, str):
                                chars += len(v)
                if include_usage:
                    yield chunk
                elif chunk.get("choices"):
                    if "usage" in chunk:
                        del chunk["usage"]
                    yield chunk
                try:
                    data = await it.__anext__()
                except StopAsyncIteration:
                    break
                if data == b"[DONE]":
                    break
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise UpstreamFailed(f"{info.provider} sent a malformed chunk mid-stream",
                                         attempts=info.attempts) from None
            if resp is not None:
                resp.release()
                resp = None
        except TransportError as e:
            status, error = "error", f"stream interrupted: {e}"
            raise UpstreamFailed(f"{info.provider} {error}", attempts=info.attempts) from None
        except (asyncio.CancelledError, GeneratorExit):
            status = "cancelled"
            raise
        except RequestError as e:
            status, error = "error", e.message
            raise
        finally:
            if resp is not None:
                resp.close()
            model = state.get("model")
            if model is not None:
                if usage is None:
                    usage = Usage(req.decision.prompt_tokens, (chars + 3) // 4, 0, True)
                engine._cost(req, model, usage)
            engine._finish(req, status, error=error)
