"""OpenTelemetry traces: the one module that imports the OpenTelemetry SDK (docs/observability.md).

Opt-in: `tracer_for(policy)` returns None (and `router.engine.client` never imports this module)
unless the policy's ``telemetry:`` block or the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` variables name a collector. When on, each request gives one
span (``chat auto``: the router's work) and one child span per upstream attempt (``chat
gpt-4o-mini``, kind CLIENT), named and attributed by the OpenTelemetry GenAI semantic conventions
plus ``router.*`` attributes. Prompt and completion text are recorded only with
``telemetry.capture_content: true``.

The work per request is kept small. On the request path the engine names the spans as plain data
(`router.core.tracecontext`); when the request ends, `OtelTracer.end` writes its spans as OTLP
protobuf at once (`_SpanWriter.spans`: the bytes of the attributes many requests share are cached,
the rest written by the C encoder `router.metering._otlp`, which `setup.py` builds, or by the
same-bytes Python path without it) and queues those bytes. The export thread only joins a batch
into an ``ExportTraceServiceRequest`` and POSTs it over OTLP/HTTP on a kept-alive connection.
Encoding on the export thread instead, as this module first did, kept every queued request's
objects alive and made that thread fight the event loop for the GIL: under load the SDK's
``BatchSpanProcessor`` queue overflowed and logged a warning per dropped span, a large part of the
cost (docs/observability.md#overhead).

The queue and thread: for a plain ``http://`` endpoint without compression, `_otlp.Sender`, in C:
`add` copies the bytes under a mutex and the thread waits, builds the request and does its socket
I/O without ever taking the GIL (`_native_sender`). A Python thread that POSTs needs the GIL many
times per batch, and each of its waits for it costs a saturated event loop a wake-up and a context
switch at every GIL release. Otherwise (an ``https://`` endpoint, gzip, no C compiler, or
``ROUTER_OTLP_SENDER=python``) `_Batcher` and `OtlpHttpExporter`: the same settings, body and
retries. tests/test_tracing.py decodes what is written with opentelemetry-proto, runs its
end-to-end tests with both queues, and checks the C and Python encoders write the same bytes.
"""

from __future__ import annotations

import collections
import gzip
import http.client
import importlib.metadata
import logging
import os
import random
import re
import struct
import threading
import time
import urllib.parse
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from opentelemetry import trace as otel
from opentelemetry.sdk.resources import Resource

from router.core.tracecontext import AttemptTrace, RequestTrace, SpanContext, parse_traceparent
from router.core.translate import UpstreamCall

if TYPE_CHECKING:
    from router.core.decision import Decision
    from router.core.policy import Model, Policy, Provider
    from router.core.response import Attempt, RouterInfo

__all__ = ["OtelTracer", "OtlpHttpExporter", "encode_request", "tracer_for"]

log = logging.getLogger("router.tracing")

_KIND_NAMES = {"openai": "openai", "deepseek": "deepseek", "mistral": "mistral_ai", "vllm": "vllm",
               "litellm": "litellm"}
# well-known gen_ai.provider.name values, by the upstream's host (an OpenAI-compatible `kind: openai`)
_HOST_NAMES = (("anthropic.com", "anthropic"), ("openai.azure.com", "azure.ai.openai"), ("mistral.ai", "mistral_ai"),
               ("deepseek.com", "deepseek"), ("groq.com", "groq"), ("x.ai", "x_ai"), ("perplexity.ai", "perplexity"),
               ("cohere", "cohere"), ("googleapis.com", "gcp.gemini"), ("amazonaws.com", "aws.bedrock"),
               ("openai.com", "openai"))
_DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"
SPAN_INTERNAL, SPAN_SERVER, SPAN_CLIENT = 1, 2, 3      # opentelemetry.proto.trace.v1.Span.SpanKind
STATUS_UNSET, STATUS_ERROR = 0, 2                        # opentelemetry.proto.trace.v1.Status.StatusCode


def tracer_for(policy: Policy, env: Mapping[str, str] | None = None) -> OtelTracer | None:
    """The tracer `policy` and the ``OTEL_*`` environment ask for, or None (tracing off).

    On when ``telemetry.endpoint`` is set, or ``telemetry.enabled: true``, or the environment names
    an OTLP endpoint; off with ``telemetry.enabled: false``, ``OTEL_SDK_DISABLED=true`` or
    ``OTEL_TRACES_EXPORTER=none``."""
    env = os.environ if env is None else env
    t = policy.telemetry
    if t.enabled is False or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    named = bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    if t.endpoint is None and (env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none"
                               or not (named or t.enabled)):
        return None
    return OtelTracer(OtlpHttpExporter.from_env(t.endpoint, env), service_name=t.service_name, env=env)


def _version() -> str | None:
    try:
        return importlib.metadata.version("router")
    except importlib.metadata.PackageNotFoundError:
        return None


def provider_name(provider: Provider) -> str:
    """``gen_ai.provider.name``: a well-known value for the upstream's host, else the provider's kind."""
    host = urlsplit(provider.base_url).hostname or ""
    for suffix, name in _HOST_NAMES:
        if host.endswith(suffix):
            return name
    return _KIND_NAMES.get(provider.kind, provider.kind)


# ---------------------------------------------------------------------------------------------- the wire format
# opentelemetry/proto/collector/trace/v1/trace_service.proto and trace/v1/trace.proto, common/v1/common.proto:
# only the fields router writes. A field's key is (number << 3) | wire type (0 varint, 1 fixed64,
# 2 length-delimited, 5 fixed32).

_pack_q, _pack_d, _pack_i = struct.Struct("<Q").pack, struct.Struct("<d").pack, struct.Struct("<I").pack


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(key: bytes, payload: bytes) -> bytes:
    """A length-delimited field."""
    return key + _varint(len(payload)) + payload


def _any(value: Any) -> bytes:
    """An ``AnyValue``."""
    if isinstance(value, str):
        return _ld(b"\x0a", value.encode())
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _pack_d(value)
    if isinstance(value, (list, tuple)):
        return _ld(b"\x2a", b"".join(_ld(b"\x0a", _any(v)) for v in value))
    return _ld(b"\x0a", str(value).encode())


_kv_cache: dict[tuple[str, Any], bytes] = {}
_keys: dict[str, bytes] = {}


def _kv_py(key: str, value: Any) -> bytes:
    """A ``KeyValue`` as a span's attribute (``Span.attributes``, field 9). The reference for
    ``_otlp.kv``, which writes the same bytes (and calls this for what it does not handle)."""
    k = _keys.get(key)
    if k is None:
        k = _keys[key] = _ld(b"\x0a", key.encode())
    if type(value) is str:   # the common case, with every length below 128: one-byte lengths
        b = value.encode()
        n = len(b)
        if n + len(k) < 124:
            return b"".join((b"\x4a", bytes((n + len(k) + 4,)), k, b"\x12", bytes((n + 2,)), b"\x0a",
                             bytes((n,)), b))
    elif type(value) is float:
        if len(k) < 117:   # a one-byte length
            return b"".join((b"\x4a", bytes((len(k) + 11,)), k, b"\x12\x09\x21", _pack_d(value)))
    elif type(value) is int and 0 <= value < 128 and len(k) < 124:
        return b"".join((b"\x4a", bytes((len(k) + 4,)), k, b"\x12\x02\x18", bytes((value,))))
    v = _any(value)
    payload = k + b"\x12" + _varint(len(v)) + v
    return b"\x4a" + _varint(len(payload)) + payload


def _kv_cached(key: str, value: str | bool | int) -> bytes:
    """`_kv` for low-cardinality values (routes, tasks, providers, outcomes): encoded once."""
    k = (key, value)
    out = _kv_cache.get(k)
    if out is None:
        if len(_kv_cache) > 20_000:   # bounded, whatever the values turn out to be
            _kv_cache.clear()
        out = _kv_cache[k] = _kv(key, value)
    return out


def _span_py(trace_id: bytes, span_id: int, parent: int | None, trace_state: str | None, name: str, kind: int,
             start_ns: int, end_ns: int, attributes: bytes, status: int, message: str | None, flags: int) -> bytes:
    """A ``Span`` (``ScopeSpans.spans``, field 2). The reference for ``_otlp.span``: the same bytes."""
    out = [b"\x0a\x10", trace_id, b"\x12\x08", span_id.to_bytes(8, "big")]
    if trace_state:
        out.append(_ld(b"\x1a", trace_state.encode()))
    if parent is not None:
        out += (b"\x22\x08", parent.to_bytes(8, "big"))
    out += (_ld(b"\x2a", name.encode()), b"\x30", bytes((kind,)), b"\x39", _pack_q(start_ns), b"\x41",
            _pack_q(max(end_ns, start_ns)), attributes)
    if status:
        st = (_ld(b"\x12", message.encode()) if message else b"") + b"\x18" + bytes((status,))
        out.append(_ld(b"\x7a", st))
    out += (b"\x85\x01", _pack_i(flags))
    return _ld(b"\x12", b"".join(out))   # ScopeSpans.spans (field 2)


try:   # the C encoder (setup.py builds it when a compiler is there): the same bytes, a few times faster
    from router.metering import _otlp
except ImportError:   # pragma: no cover - an install without a C compiler
    _otlp = None  # type: ignore[assignment]
if _otlp is not None:
    _otlp.set_fallback(_kv_py)
    _kv, _span, _request = _otlp.kv, _otlp.span, _otlp.request
else:   # pragma: no cover
    _kv, _span, _request = _kv_py, _span_py, None


def _envelope(resource: Mapping[str, Any], scope: tuple[str, str | None]) -> tuple[bytes, bytes]:
    """What every export request repeats around its spans: ``ResourceSpans.resource`` (field 1) and
    ``ScopeSpans.scope`` (field 1), each with its key and length. The lengths around them depend on the
    spans: `encode_request` writes them, and so does `_otlp.Sender` (the same bytes)."""
    res = b"".join(_ld(b"\x0a", _ld(b"\x0a", k.encode()) + _ld(b"\x12", _any(v))) for k, v in resource.items())
    sc = _ld(b"\x0a", scope[0].encode()) + (_ld(b"\x12", scope[1].encode()) if scope[1] else b"")
    return _ld(b"\x0a", res), _ld(b"\x0a", sc)


def encode_request(resource: Mapping[str, Any], scope: tuple[str, str | None], spans: Sequence[bytes]) -> bytes:
    """An ``ExportTraceServiceRequest``: one resource, one scope, the encoded spans.

    The spans are copied once, into the result (a batch is hundreds of kilobytes: each extra copy
    of it costs more than the headers around it)."""
    resource_field, scope_head = _envelope(resource, scope)
    scope_len = len(scope_head) + sum(map(len, spans))                       # ScopeSpans
    resource_head = resource_field + b"\x12" + _varint(scope_len)
    resource_len = len(resource_head) + scope_len                           # ResourceSpans
    return b"".join((b"\x0a", _varint(resource_len), resource_head, scope_head, *spans))


class OtlpHttpExporter:
    """POSTs encoded batches to an OTLP/HTTP endpoint (``application/x-protobuf``), with the standard
    headers and compression variables, over one kept-alive connection (the export thread's);
    retries 429, 502, 503, 504 and connection errors twice."""

    def __init__(self, endpoint: str, headers: Mapping[str, str] | None = None, *, gzip_body: bool = False,
                 timeout_s: float = 10.0):
        self.endpoint, self.gzip, self.timeout_s = endpoint, gzip_body, timeout_s
        self.headers = {"Content-Type": "application/x-protobuf", "User-Agent": f"router/{_version() or '0'}",
                        **(headers or {})}
        for name, value in self.headers.items():   # never sendable: refused now (the value may be a secret: not shown)
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"OTLP header {name!r}: not a valid header name")
            if _CONTROL.search(str(value)):
                raise ValueError(f"OTLP header {name!r}: its value holds CR, LF or another control character")
        if gzip_body:
            self.headers["Content-Encoding"] = "gzip"
        url = urlsplit(endpoint)
        self._url = url if url.scheme in ("http", "https") and url.hostname else None
        self._path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self._conn: http.client.HTTPConnection | None = None

    @classmethod
    def from_env(cls, base: str | None, env: Mapping[str, str]) -> OtlpHttpExporter:
        """``telemetry.endpoint`` (a base URL), else ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (as is), else
        ``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/traces``; headers and compression from ``OTEL_*``."""
        if base:
            endpoint = base.rstrip("/") + "/v1/traces"
        elif env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            endpoint = env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        elif env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            endpoint = env["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
        else:
            endpoint = _DEFAULT_ENDPOINT
        headers: dict[str, str] = {}
        for var in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"):
            for item in env.get(var, "").split(","):
                name, eq, value = item.partition("=")
                if eq and name.strip():
                    headers[urllib.parse.unquote(name.strip())] = urllib.parse.unquote(value.strip())
        compression = (env.get("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")
                       or env.get("OTEL_EXPORTER_OTLP_COMPRESSION", "")).strip().lower()
        return cls(endpoint, headers, gzip_body=compression == "gzip")

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            url = self._url
            if url is None:
                raise http.client.InvalidURL(f"not an http:// or https:// URL: {self.endpoint}")
            if url.scheme == "https":
                self._conn = http.client.HTTPSConnection(url.hostname or "", url.port, timeout=self.timeout_s)
            else:
                self._conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=self.timeout_s)
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def post(self, body: bytes) -> bool:
        """POST one encoded ``ExportTraceServiceRequest``; True when the endpoint took it. Called from
        one thread at a time (the export thread, or a flush under the batcher's lock)."""
        data = gzip.compress(body, 6) if self.gzip else body
        for attempt in range(3):
            reused = self._conn is not None
            try:
                conn = self._connection()
                conn.request("POST", self._path, body=data, headers=self.headers)
                resp = conn.getresponse()
                resp.read()
                if resp.will_close:
                    self.close()
                if 200 <= resp.status < 300:
                    return True
                if resp.status not in (429, 502, 503, 504):
                    log.warning("the OTLP endpoint refused a batch of %d bytes: HTTP %d", len(body), resp.status)
                    return False
            except (OSError, http.client.HTTPException) as e:
                self.close()
                if reused and attempt == 0:   # the endpoint closed the idle kept-alive connection: again, at once
                    continue
                if attempt == 2:
                    log.warning("could not export traces to %s: %s", self.endpoint, e)
            if attempt < 2:
                time.sleep(0.5 * 2 ** attempt)
        return False


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")      # an HTTP header name (RFC 9110 token)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")           # not in a header value (a tab is)


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    try:
        value = int(env.get(name, "") or default)
    except ValueError:
        log.warning("%s is not an integer: using %d", name, default)
        return default
    return value if value > 0 else default


class _Batcher:
    """The batch queue between the requests and the export thread, as the OpenTelemetry SDK's
    ``BatchSpanProcessor`` behaves (``OTEL_BSP_SCHEDULE_DELAY``, ``OTEL_BSP_MAX_QUEUE_SIZE``,
    ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``: the same variables and defaults), for encoded requests.

    Unlike the SDK's, it is built for an event loop that keeps the GIL busy: `add` is a deque append
    (the export thread is woken once per batch), and a full queue drops requests with one warning a
    minute and a count (`dropped`), where the SDK logs a warning per span dropped: under load, when
    the export thread waits for the GIL, that logging cost about half as much as encoding the spans."""

    def __init__(self, post: Any, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        self.post = post
        self.delay_s = _env_int(env, "OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self.max_queue = _env_int(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self.batch = min(_env_int(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512), self.max_queue)
        self.queue: collections.deque[bytes] = collections.deque()
        self.dropped = 0
        self._warned = -1e9
        self._stop = False
        self._start()
        if hasattr(os, "register_at_fork"):   # a forked child has the queue but not the thread
            ref = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: (b := ref()) is not None and b._start())

    def _start(self) -> None:
        self.queue.clear()
        self._export_lock = threading.Lock()   # new in a forked child too: the parent's may be held
        self._wake = threading.Event()
        self._woken = False
        self._thread = threading.Thread(target=self._run, name="router-otlp-export", daemon=True)
        self._thread.start()

    def add(self, spans: bytes) -> None:
        """Queue one request's spans (never blocks; drops them when the queue is full)."""
        queue = self.queue
        if len(queue) >= self.max_queue or self._stop:
            if self._stop:   # a request that ended after its tracer was shut down (a reload swapped it)
                self.dropped += 1
            else:
                self._drop()
            return
        queue.append(spans)
        if len(queue) >= self.batch and not self._woken:
            self._woken = True
            self._wake.set()

    def _drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._warned >= 60:
            self._warned = now
            log.warning("the trace export queue is full (%d requests): dropping spans (%d so far); raise "
                        "OTEL_BSP_MAX_QUEUE_SIZE or check the collector", self.max_queue, self.dropped)

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self.delay_s)
            self._wake.clear()
            self._woken = False
            if self._stop:
                break
            self._export(everything=False)

    def _export(self, *, everything: bool) -> bool:
        """POST full batches (and, on a timer or a flush, what is left); False when a POST failed."""
        ok = True
        with self._export_lock:
            first = True
            while self.queue and (everything or first or len(self.queue) >= self.batch):
                first = False
                queue, n = self.queue, min(self.batch, len(self.queue))
                batch = [queue.popleft() for _ in range(n)]
                try:
                    ok = self.post(batch) and ok
                except Exception:
                    log.exception("could not export %d requests' spans", n)
                    ok = False
        return ok

    def flush(self) -> bool:
        """Export everything queued now (blocks)."""
        return self._export(everything=True)

    def shutdown(self) -> None:
        """Stop the export thread, then export what is left (blocks)."""
        if self._stop:
            return
        self._stop = True
        self._wake.set()
        self._thread.join(30)
        self._export(everything=True)


def _sender_warning(message: str) -> None:
    log.warning("%s", message)


def _native_sender(http: OtlpHttpExporter, writer: _SpanWriter, env: Mapping[str, str]) -> Any:
    """The C export queue and thread (`_otlp.Sender`: it POSTs without the GIL), or None for the Python
    `_Batcher`: without the extension, for an https:// endpoint or gzip, or with ROUTER_OTLP_SENDER=python."""
    url = http._url
    if (_otlp is None or not hasattr(_otlp, "Sender") or url is None or url.scheme != "http" or http.gzip
            or env.get("ROUTER_OTLP_SENDER", "").strip().lower() == "python"):
        return None
    try:
        port = url.port or 80
    except ValueError:   # not a port: the Python path reports it on each export, as it always did
        return None
    max_queue = _env_int(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)
    resource_field, scope_head = _envelope(writer.resource, writer.scope)
    try:
        sender = _otlp.Sender(url.hostname or "", port, http._path, [(k, str(v)) for k, v in http.headers.items()],
                              resource_field, scope_head, max_queue=max_queue,
                              batch=min(_env_int(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512), max_queue),
                              delay_s=_env_int(env, "OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000,
                              timeout_s=http.timeout_s, warn=_sender_warning)
    except ValueError:   # a host or path it will not send (a space, a control character): the Python path's
        return None
    if hasattr(os, "register_at_fork"):   # a forked child has the queue but not the thread: a new one
        ref = weakref.ref(sender)
        os.register_at_fork(after_in_child=lambda: (s := ref()) is not None and s.after_fork())
    return sender


class _Trace(RequestTrace):
    """`RequestTrace` as `OtelTracer` makes it, with a cheaper `attempt`: the attempt's ``traceparent`` goes
    into the call's own headers dict rather than into a copy of the call. That dict is the leg's own
    (`router.core.translate.build_call` makes one per call, and the engine sends a call's attempts one after
    another, never two at once), so each attempt overwrites the one before; any other ``headers`` mapping
    is copied as `RequestTrace.attempt` does."""

    __slots__ = ("_traceparent",)

    def attempt(self, call: UpstreamCall, provider: Provider, model: Model, stream: bool) -> UpstreamCall:
        self.streamed = stream
        span_id = _getrandbits(64) or 1
        self.attempts.append(_tuple_new(AttemptTrace, (span_id, _time_ns(), provider, model)))
        try:
            head, tail = self._traceparent
        except AttributeError:   # the first attempt
            head, tail = self._traceparent = f"00-{self.trace_id:032x}-", "-01" if self.sampled else "-00"
        headers = call.headers
        if type(headers) is not dict:
            headers = dict(headers)
            call = UpstreamCall(call.url, headers, call.payload, call.dropped, call.kind, call.base_url)
        headers["traceparent"] = head + format(span_id, "016x") + tail
        if self.tracestate:
            headers["tracestate"] = self.tracestate
        return call


# span ids: unique, not secret (as RequestTrace's and OpenTelemetry's RandomIdGenerator)
_getrandbits, _time_ns, _tuple_new = random.Random().getrandbits, time.time_ns, tuple.__new__


class _Finished:
    """A finished request, as `_SpanWriter.spans` reads it."""

    __slots__ = ("capture", "decision", "error", "info", "trace")

    def __init__(self, trace: RequestTrace, info: RouterInfo, decision: Decision | None, error: str | None,
                 capture: bool):
        self.trace, self.info, self.decision, self.error, self.capture = trace, info, decision, error, capture


class _SpanWriter:
    """Finished requests -> OTLP protobuf (`spans`, on the request's path); batches of them ->
    ``ExportTraceServiceRequest`` -> `OtlpHttpExporter` (`export`, on the export thread)."""

    def __init__(self, http: OtlpHttpExporter, resource: Mapping[str, Any], scope: tuple[str, str | None]):
        self.http, self.resource, self.scope = http, dict(resource), scope
        self._shared: dict[tuple[Any, ...], bytes] = {}
        # per deployment (keyed by identity: a reloaded policy's objects are new ones)
        self._attempt_attrs: dict[tuple[int, int, str], tuple[Provider, Model, bytes]] = {}
        self._attempt_cache: dict[tuple[Any, ...], tuple[Provider, Model, bytes, str]] = {}

    def export(self, batch: Sequence[bytes]) -> bool:
        """POST a batch of requests' encoded spans as one ``ExportTraceServiceRequest``."""
        if not batch:
            return True
        return self.http.post(encode_request(self.resource, self.scope, batch))

    def encode(self, trace: RequestTrace, info: RouterInfo, decision: Decision | None, error: str | None,
               capture: bool) -> bytes:
        """A finished request's spans, encoded and joined: by the C encoder in one call (`_otlp.request`,
        which reads the same fields and uses the same caches), else by `spans_py`; the same bytes."""
        if _request is not None:
            out = _request(trace, info, decision, error,
                           self._captured(trace) if capture else b"",
                           self._shared, self._shared_attributes, self._attempt_cache, self._attempt_attributes)
            if out is not None:
                return out   # else a value the C encoder leaves to Python (an int past 64 bits, another type)
        return b"".join(self.spans_py(_Finished(trace, info, decision, error, capture)))

    def spans_py(self, item: _Finished) -> list[bytes]:
        """The reference for `_otlp.request`: the request's span, then one per attempt."""
        trace, info, decision = item.trace, item.info, item.decision
        trace_id = trace.trace_id.to_bytes(16, "big")
        parent = trace.parent
        op, body_model = trace.operation, trace.request_model
        end_ns = trace.start_ns + int(info.latency_s * 1e9)
        reason = _fallback_reason(info.attempts, info.status == "ok") if len(info.attempts) > 1 else None
        # what many requests share (route, task, tenant, provider, ...): encoded once per combination
        key = (op, info.api, info.status, body_model, trace.request_params, info.task, info.task_source,
               info.route, info.rule, info.tenant, decision.residency if decision is not None else (),
               info.provider, info.model, info.upstream_model, info.region, info.usage_estimated,
               info.response_cache, info.hedge, info.pick, reason, item.error, len(info.attempts))
        shared = self._shared.get(key)
        if shared is None:
            shared = self._shared_attributes(key)
        usage = b""
        if info.status == "ok" or info.prompt_tokens or info.completion_tokens:
            usage = (_kv("gen_ai.usage.input_tokens", info.prompt_tokens)
                     + _kv("gen_ai.usage.output_tokens", info.completion_tokens))
        answer = b""
        if trace.finish_reasons:
            answer = _kv_cached("gen_ai.response.finish_reasons", tuple(trace.finish_reasons))
        if trace.response_id:
            answer += _kv("gen_ai.response.id", trace.response_id)
        a = [shared, _kv("router.request_id", info.request_id), usage, answer,
             _kv("router.cost_usd", float(info.cost_usd))]
        if info.task:
            a.append(_kv("router.confidence", round(float(info.confidence), 4)))
        if info.cache_saved_usd:
            a.append(_kv("router.cache_saved_usd", float(info.cache_saved_usd)))
        if info.resumed:
            a.append(_kv("router.resumed", info.resumed))
        if item.capture:
            a.append(self._captured(trace))
        status = STATUS_ERROR if item.error is not None else STATUS_UNSET
        name = f"{op} {body_model}" if body_model else op
        # flags: the W3C flags (sampled), and whether the parent is known to be remote (0x100) and is (0x200)
        flags = 0x101 | (0x200 if trace.remote and parent is not None else 0)
        out = [_span(trace_id, trace.span_id, parent.span_id if parent is not None else None, trace.tracestate,
                     name, SPAN_SERVER if trace.remote else SPAN_INTERNAL, trace.start_ns, end_ns, b"".join(a),
                     status, item.error, flags)]
        out.extend(self.attempt_spans(item, trace_id, end_ns, usage + answer))
        return out

    @staticmethod
    def _captured(trace: RequestTrace) -> bytes:
        """``gen_ai.input.messages`` and ``gen_ai.output.messages``: only with ``telemetry.capture_content``."""
        a = []
        if trace.body is not None:
            a.append(_kv("gen_ai.input.messages", _messages_json(trace.body.get("messages"))))
        if trace.output:
            a.append(_kv("gen_ai.output.messages", orjson.dumps(
                [{"role": "assistant", "parts": [{"type": "text", "content": "".join(trace.output)}],
                  "finish_reason": trace.finish_reasons[0] if trace.finish_reasons else None}]).decode()))
        return b"".join(a)

    def _shared_attributes(self, key: tuple[Any, ...]) -> bytes:
        (op, api, status, body_model, params, task, task_source, route, rule, tenant, residency, provider, model,
         upstream_model, region, estimated, cache, hedge, pick, reason, error, attempts) = key
        a = [_kv("gen_ai.operation.name", op), _kv("router.api", api), _kv("router.status", status),
             _kv("router.attempts", attempts)]
        if body_model:
            a.append(_kv("gen_ai.request.model", body_model))
        a += [_kv(k, v) for k, v in params]
        if task:
            a += (_kv("router.task", task), _kv("router.task_source", task_source))
        for name, value in (("router.route", route), ("router.tenant", tenant), ("router.provider", provider),
                            ("router.model", model), ("gen_ai.response.model", upstream_model),
                            ("router.region", region), ("router.cache", cache), ("router.hedge", hedge),
                            ("router.pick", pick), ("router.fallback_reason", reason), ("error.type", error)):
            if value:
                a.append(_kv(name, value))
        if rule is not None:
            a.append(_kv("router.rule", rule))
        if residency:
            a.append(_kv("router.residency", list(residency)))
        if status == "ok" or provider:
            a.append(_kv("router.usage_estimated", estimated))
        if len(self._shared) > 10_000:   # bounded, whatever the combinations turn out to be
            self._shared.clear()
        out = self._shared[key] = b"".join(a)
        return out

    def _constant(self, provider: Provider, model: Model, op: str) -> bytes:
        """An attempt's attributes that depend only on where it went: encoded once per deployment."""
        key = (id(provider), id(model), op)
        hit = self._attempt_attrs.get(key)
        if hit is not None and hit[0] is provider and hit[1] is model:
            return hit[2]
        parts = [_kv("gen_ai.operation.name", op), _kv("gen_ai.provider.name", provider_name(provider)),
                 _kv("gen_ai.request.model", model.model), _kv("router.provider", provider.name),
                 _kv("router.model", model.alias)]
        url = urlsplit(provider.base_url)
        if url.hostname:
            parts += (_kv("server.address", url.hostname),
                      _kv("server.port", url.port or (443 if url.scheme == "https" else 80)))
        if provider.region:
            parts.append(_kv("router.region", provider.region))
        if len(self._attempt_attrs) > 10_000:
            self._attempt_attrs.clear()
        out = b"".join(parts)
        self._attempt_attrs[key] = (provider, model, out)
        return out

    def attempt_spans(self, item: _Finished, trace_id: bytes, request_end_ns: int, answer: bytes) -> list[bytes]:
        """One CLIENT span per upstream attempt: each attempt the engine sent, matched in order
        (per deployment) to how it ended in `info.attempts`."""
        trace, info = item.trace, item.info
        sent = trace.attempts
        if not sent:
            return []
        ended_list = info.attempts
        if len(sent) == 1 and len(ended_list) == 1 and ended_list[0].provider == sent[0].provider.name \
                and ended_list[0].model == sent[0].model.alias:   # the common case: one attempt
            matched: list[Attempt | None] = [ended_list[0]]
        else:
            ended: dict[tuple[str, str], list[Attempt]] = {}
            for a in ended_list:
                ended.setdefault((a.provider, a.model), []).append(a)
            matched = []
            for at in sent:
                queue = ended.get((at.provider.name, at.model.alias))
                matched.append(queue.pop(0) if queue else None)
        out = []
        previous: str | None = None   # the outcome of the attempt before, when it failed
        first_model = sent[0].model.alias
        op, streamed = trace.operation, trace.streamed
        for number, (at, a) in enumerate(zip(sent, matched, strict=True), 1):
            provider, model = at.provider, at.model
            outcome = a.outcome if a is not None else ("cancelled" if info.status == "cancelled" else "unfinished")
            ok = outcome == "ok"
            answered = (info.upstream_model or model.model if ok and a is not None and info.provider == provider.name
                        and info.model == model.alias else None)
            attrs, name = self._attempt_attributes(
                provider, model, op, number, outcome,
                previous if previous is not None and model.alias != first_model else None,
                a.status if a is not None else None, answered)
            status = STATUS_UNSET
            if answered is not None:
                attrs += answer
            elif not ok:
                status = STATUS_ERROR
                previous = outcome
            # a committed stream lasts until the request ends; anything else until its outcome was known
            if ok and streamed or a is None:
                end = request_end_ns
            else:
                end = at.start_ns + int(a.latency_s * 1e9)
            out.append(_span(trace_id, at.span_id, trace.span_id, trace.tracestate, name, SPAN_CLIENT, at.start_ns,
                             end, attrs, status, outcome if status else None, 0x101))
        return out

    def _attempt_attributes(self, provider: Provider, model: Model, op: str, number: int, outcome: str,
                            reason: str | None, code: int | None, answered: str | None) -> tuple[bytes, str]:
        """An attempt span's attributes but the answer's (usage, finish reasons), and its name: encoded once
        per deployment, attempt number, outcome, fallback reason, HTTP status and answering model."""
        key = (id(provider), id(model), op, number, outcome, reason, code, answered)
        hit = self._attempt_cache.get(key)
        if hit is not None and hit[0] is provider and hit[1] is model:
            return hit[2], hit[3]
        c = _kv_cached
        attrs = [self._constant(provider, model, op), c("router.attempt", number), c("router.attempt.outcome", outcome)]
        if reason is not None:
            attrs.append(c("router.fallback_reason", reason))
        if code is not None:
            attrs.append(c("http.response.status_code", code))
        if answered is not None:
            attrs.append(c("gen_ai.response.model", answered))
        elif outcome != "ok":
            attrs.append(c("error.type", outcome))
        if len(self._attempt_cache) > 10_000:
            self._attempt_cache.clear()
        out = b"".join(attrs), f"{op} {model.model}"
        self._attempt_cache[key] = (provider, model, *out)
        return out


def _fallback_reason(attempts: Sequence[Attempt], ok: bool) -> str | None:
    """Why the answer came from another model than the first tried: the last failure before it."""
    if not attempts or not ok:
        return None
    winner = attempts[-1]
    if winner.model == attempts[0].model:
        return None
    failed = [a.outcome for a in attempts[:-1] if a.outcome != "ok"]
    return failed[-1] if failed else None


def _messages_json(messages: Any) -> str:
    """Chat messages as ``gen_ai.input.messages`` lays them out (role, parts), only with capture_content."""
    out = []
    for m in messages if isinstance(messages, list) else ():
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        if isinstance(content, str):
            parts = [{"type": "text", "content": content}]
        elif isinstance(content, list):
            parts = [{"type": "text", "content": p.get("text", "")} for p in content
                     if isinstance(p, dict) and p.get("type") == "text"]
        else:
            parts = []
        out.append({"role": m.get("role"), "parts": parts})
    return orjson.dumps(out).decode()


class OtelTracer:
    """`router.core.tracecontext.Tracer` over the OpenTelemetry SDK: batch export over OTLP/HTTP.

    The batch settings are the SDK's ``BatchSpanProcessor``'s (``OTEL_BSP_SCHEDULE_DELAY``,
    ``OTEL_BSP_MAX_QUEUE_SIZE``, ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``, with its defaults), in
    `batcher`: `_otlp.Sender` (C, off the GIL) or `_Batcher` (`_native_sender` says which);
    a full queue drops requests' spans, never blocks one. The resource is the SDK's (``OTEL_RESOURCE_ATTRIBUTES``,
    ``OTEL_SERVICE_NAME``), with ``service.name`` from the policy, else ``router``."""

    def __init__(self, http: OtlpHttpExporter, *, service_name: str | None = None,
                 env: Mapping[str, str] | None = None):
        attributes = {"service.name": service_name} if service_name else {}
        resource = Resource.create(attributes)
        if "service.name" not in attributes and str(resource.attributes.get("service.name", "")).startswith(
                "unknown_service"):
            resource = resource.merge(Resource({"service.name": "router"}))
        self.http = http
        self.writer = _SpanWriter(http, resource.attributes, ("router", _version()))
        env = os.environ if env is None else env
        # the export queue: in C when it can be (`_native_sender`), else `_Batcher` and `OtlpHttpExporter`
        self.batcher: Any = _native_sender(http, self.writer, env) or _Batcher(self.writer.export, env)

    def begin(self, policy: Policy, body: Mapping[str, Any], carrier: Mapping[str, str] | None) -> RequestTrace:
        if carrier is not None:
            tp = carrier.get("traceparent")
            trace = _Trace.begin(parse_traceparent(tp, carrier.get("tracestate")) if tp else None, remote=True)
        else:   # the library: under the caller's current span, if any
            current = otel.get_current_span().get_span_context()
            parent = None
            if current.is_valid:
                state = current.trace_state.to_header() if current.trace_state else None
                parent = SpanContext(current.trace_id, current.span_id, current.trace_flags.sampled, state or None)
            trace = _Trace.begin(parent)
        get = body.get
        model = get("model")
        if isinstance(model, str):
            trace.request_model = model
        if "messages" not in body:
            trace.operation = "embeddings"
        params = ()
        for key, name in _PARAMS:   # usually one or none: a tuple grown by one, no list
            v = get(key)
            if v is not None and type(v) in _NUMBERS:
                params += ((name, v),)
        if params:
            trace.request_params = params
        if policy.telemetry.capture_content:
            trace.body, trace.output = body, []
        return trace

    def end(self, trace: RequestTrace, info: RouterInfo, policy: Policy, decision: Decision | None,
            error: BaseException | None) -> None:
        """Encode the request's spans now (a few microseconds with `_otlp`) and queue the bytes: the
        export thread only POSTs, and the request's objects are freed when it ends."""
        if not trace.sampled:
            return
        try:
            spans = self.writer.encode(trace, info, decision, None if error is None else type(error).__name__,
                                       policy.telemetry.capture_content)
        except Exception:
            log.exception("could not encode the spans of request %s", info.request_id)
            return
        self.batcher.add(spans)

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        """Export what is queued (blocks). The C sender waits at most `timeout_s`; the Python queue
        POSTs on this thread, each POST bounded by the exporter's timeout."""
        if isinstance(self.batcher, _Batcher):
            return self.batcher.flush()
        return bool(self.batcher.flush(timeout_s))

    @property
    def dropped(self) -> int:
        """Requests whose spans were dropped: the export queue was full, or the tracer shut down."""
        return int(self.batcher.dropped)

    def shutdown(self) -> None:
        """Stop the export thread, then export what is queued (blocks: run it off the event loop)."""
        self.batcher.shutdown()
        self.http.close()


_NUMBERS = (int, float)
_PARAMS = (("max_tokens", "gen_ai.request.max_tokens"), ("max_completion_tokens", "gen_ai.request.max_tokens"),
           ("temperature", "gen_ai.request.temperature"), ("top_p", "gen_ai.request.top_p"))
