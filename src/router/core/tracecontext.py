"""W3C trace context and what one request's trace holds, as plain data (no tracing library).

The engine keeps a `RequestTrace` per request only when a `Tracer` is set (tracing is opt-in:
docs/observability.md). It names the request's span and each upstream attempt's span up front,
so the attempt's ``traceparent`` header can carry its span id to the upstream; the tracer turns
the finished trace into spans (router.metering.tracing, the one module that imports OpenTelemetry).

>>> ctx = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
>>> hex(ctx.trace_id), hex(ctx.span_id), ctx.sampled
('0x4bf92f3577b34da6a3ce929d0e0e4736', '0xf067aa0ba902b7', True)
>>> parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01") is None
True
>>> format_traceparent(1, 2, True)
'00-00000000000000000000000000000001-0000000000000002-01'
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from router.core.translate import UpstreamCall

if TYPE_CHECKING:
    from router.core.decision import Decision
    from router.core.policy import Model, Policy, Provider
    from router.core.response import RouterInfo

__all__ = ["AttemptTrace", "RequestTrace", "SpanContext", "Tracer", "format_traceparent", "parse_traceparent"]

_rand = random.Random()   # ids need to be unique, not secret (as OpenTelemetry's own RandomIdGenerator)


class SpanContext(NamedTuple):
    """A span's identity as W3C trace context carries it: ids, the sampled flag, ``tracestate``."""

    trace_id: int
    span_id: int
    sampled: bool = True
    tracestate: str | None = None


def parse_traceparent(value: str | None, tracestate: str | None = None) -> SpanContext | None:
    """A ``traceparent`` header's context; None when absent or invalid (W3C: then start a new trace).

    >>> parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra") is None
    True
    >>> parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra").sampled
    False
    """
    if not value:
        return None
    if len(value) != 55:
        value = value.strip()
    if len(value) < 55 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    version, tid, sid, flags = value[:2], value[3:35], value[36:52], value[53:55]
    if version == "ff" or (version == "00" and len(value) != 55) or (len(value) > 55 and value[55] != "-"):
        return None
    # lowercase hex only (int() alone would take "+", "_", spaces and capitals)
    if not (tid.isalnum() and sid.isalnum() and flags.isalnum() and version.isalnum()) or not value[:55].islower():
        return None
    try:
        trace_id, span_id, bits = int(tid, 16), int(sid, 16), int(flags, 16)
        int(version, 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, bool(bits & 1), tracestate or None)


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


class AttemptTrace(NamedTuple):
    """One upstream attempt's span: named when the attempt is sent."""

    span_id: int
    start_ns: int
    provider: Provider
    model: Model


class RequestTrace:
    """One request's trace: its span's identity, its parent (a client's ``traceparent``, or the
    caller's current span), the attempts' spans, and what the answer said (finish reasons, id).
    A plain class with slots: made on every traced request, so kept cheap to build."""

    __slots__ = ("attempts", "body", "finish_reasons", "operation", "output", "parent", "remote",
                 "request_model", "request_params", "response_id", "sampled", "span_id", "start_ns", "streamed",
                 "trace_id", "tracestate")

    def __init__(self, trace_id: int, span_id: int, parent: SpanContext | None, sampled: bool, start_ns: int,
                 remote: bool = False, tracestate: str | None = None):
        self.trace_id, self.span_id, self.parent, self.sampled = trace_id, span_id, parent, sampled
        self.start_ns, self.tracestate = start_ns, tracestate
        self.remote = remote                          # the parent came over the wire (the proxy): a SERVER span
        self.attempts: list[AttemptTrace] = []
        self.finish_reasons: list[str] = []
        self.response_id: str | None = None
        self.operation = "chat"                       # gen_ai.operation.name: chat | embeddings
        self.request_model: str | None = None         # the `model` the caller asked for (auto, a route, an alias)
        self.request_params: tuple[tuple[str, Any], ...] = ()   # gen_ai.request.* attributes
        self.streamed = False
        self.body: Mapping[str, Any] | None = None    # kept only when the policy captures content
        self.output: list[str] | None = None          # the answer's text, only when the policy captures content

    @classmethod
    def begin(cls, parent: SpanContext | None, *, remote: bool = False) -> RequestTrace:
        """A request span under `parent` (a new trace when None)."""
        span_id = _rand.getrandbits(64) or 1
        if parent is None:
            return cls(_rand.getrandbits(128) or 1, span_id, None, True, time.time_ns(), remote)
        return cls(parent.trace_id, span_id, parent, parent.sampled, time.time_ns(), remote, parent.tracestate)

    def attempt(self, call: UpstreamCall, provider: Provider, model: Model, stream: bool) -> UpstreamCall:
        """Name the span of an attempt about to be sent; `call` with its ``traceparent`` header."""
        self.streamed = stream
        span_id = _rand.getrandbits(64) or 1
        self.attempts.append(AttemptTrace(span_id, time.time_ns(), provider, model))
        headers = dict(call.headers)
        headers["traceparent"] = f"00-{self.trace_id:032x}-{span_id:016x}-{'01' if self.sampled else '00'}"
        if self.tracestate:
            headers["tracestate"] = self.tracestate
        return UpstreamCall(call.url, headers, call.payload, call.dropped, call.kind, call.base_url)

    def finish(self, data: Mapping[str, Any]) -> None:
        """Read a whole (non-streamed) answer: its id, its choices' finish reasons, its text if kept."""
        rid = data.get("id")
        self.response_id = rid if isinstance(rid, str) else None
        for choice in data.get("choices") or ():
            if isinstance(choice, dict):
                self.chunk_choice(choice, choice.get("message"))

    def chunk_choice(self, choice: Mapping[str, Any], delta: Any) -> None:
        """One choice of an answer or of a streamed chunk (`delta`: its message or delta)."""
        reason = choice.get("finish_reason")
        if isinstance(reason, str):
            self.finish_reasons.append(reason)
        if self.output is not None and isinstance(delta, dict) and not choice.get("index"):
            text = delta.get("content")
            if isinstance(text, str):
                self.output.append(text)


class Tracer(Protocol):
    """What the engine calls when tracing is on (router.metering.tracing.OtelTracer implements it)."""

    def begin(self, policy: Policy, body: Mapping[str, Any], carrier: Mapping[str, str] | None) -> RequestTrace:
        """Open a request's trace: under the W3C headers in `carrier` (the proxy's client), else
        under the caller's current span."""
        ...

    def end(self, trace: RequestTrace, info: RouterInfo, policy: Policy, decision: Decision | None,
            error: BaseException | None) -> None:
        """The request ended (`info` is final; `error`: how it failed): hand its spans to the
        exporter. Never blocks."""
        ...

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        """Export what is queued (blocks: call it off the event loop)."""
        ...

    def shutdown(self) -> None:
        """Flush, then stop exporting (blocks: call it off the event loop)."""
        ...
