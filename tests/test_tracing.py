"""OpenTelemetry traces, end to end: the proxy and the library against simulated upstreams, the spans
exported over OTLP/HTTP to a real receiver on a socket and decoded with opentelemetry-proto."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import aiohttp
import pytest
from aiohttp import web
from opentelemetry import trace as otel
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from router import Router
from router.core.errors import PolicyError, UpstreamFailed
from router.core.meter import MemoryMeter
from router.core.policy_parser import parse_policy
from router.dev.simulator import ModelConfig, Simulator
from router.server.proxy import Proxy

POLICY = """
version: 1
providers:
  ds: {{kind: deepseek, base_url: "{ds}", api_key: "sk-ds-secret", region: cn}}
  oa: {{kind: openai, base_url: "{oa}", api_key: "sk-oa-secret", region: us}}
models:
  ds-chat: {{provider: ds, model: deepseek-chat, price: {{input_per_mtok: 0.28, output_per_mtok: 0.42}}}}
  mini:    {{provider: oa, model: gpt-4.1-mini, price: {{input_per_mtok: 0.4, output_per_mtok: 1.6}}}}
routes:
  general: {{targets: [ds-chat, mini]}}
rules:
  - {{route: general}}
retry: {{attempts: 2, backoff_s: 0.01, max_backoff_s: 0.02}}
timeouts: {{connect_s: 1, first_token_s: 2, total_s: 10}}
{telemetry}
"""

PROMPT = "Tell me about the migratory habits of the zyzzyva beetle"   # must never reach a span unasked
CLIENT_TRACE, CLIENT_SPAN = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331


class Receiver:
    """An OTLP/HTTP trace receiver: POST /v1/traces, protobuf bodies, every span kept."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.bodies: list[bytes] = []
        self.content_types: list[str] = []

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/v1/traces", self.traces)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            import gzip
            body = gzip.decompress(body)
        self.bodies.append(body)
        self.content_types.append(request.headers.get("Content-Type", ""))
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                assert ss.scope.name == "router"
                self.spans.extend(ss.spans)
        self.resource = {a.key: _value(a.value) for a in req.resource_spans[0].resource.attributes}
        return web.Response(body=b"", content_type="application/x-protobuf")

    def named(self, name: str) -> list[Span]:
        return [s for s in self.spans if s.name == name]


def _value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind)


def attrs(span: Span) -> dict:
    return {a.key: _value(a.value) for a in span.attributes}


def sid(span_id: bytes) -> int:
    return int.from_bytes(span_id, "big")


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.runner.cleanup()


@pytest.fixture
async def sims():
    ds = Simulator(models=[ModelConfig("deepseek-chat")], require_api_key="sk-ds-secret")
    oa = Simulator(models=["gpt-4.1-mini"], require_api_key="sk-oa-secret")
    await ds.start()
    await oa.start()
    yield {"ds": ds, "oa": oa}
    await ds.stop()
    await oa.stop()


def make_router(sims, telemetry: str = "", **kwargs) -> Router:
    policy = parse_policy(POLICY.format(telemetry=telemetry, **{k: s.base_url for k, s in sims.items()}), env={})
    r = Router(policy, meters=[MemoryMeter()], monitor=False, **kwargs)
    return r


async def flush(r: Router) -> None:
    assert r.engine.tracer is not None
    assert await asyncio.to_thread(r.engine.tracer.force_flush, 10.0)


async def test_proxy_continues_the_clients_trace_and_passes_it_upstream(sims, receiver):
    r = make_router(sims, f"telemetry: {{endpoint: '{receiver.url}'}}")
    proxy = Proxy(r.engine)
    runner = web.ServerRunner(proxy.server(), handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/chat/completions"
    try:
        traceparent = f"00-{CLIENT_TRACE:032x}-{CLIENT_SPAN:016x}-01"
        async with aiohttp.ClientSession() as http:
            resp = await http.post(url, json={"model": "auto", "max_tokens": 20, "temperature": 0.5,
                                              "messages": [{"role": "user", "content": PROMPT}]},
                                   headers={"traceparent": traceparent, "tracestate": "vendor=1"})
            assert resp.status == 200, await resp.text()
            answer = await resp.json()
        await flush(r)
    finally:
        await runner.cleanup()
        await r.aclose()

    [top] = receiver.named("chat auto")
    [attempt] = receiver.named("chat deepseek-chat")
    # the client's trace continues: same trace id, the request span is the client span's child
    assert sid(top.trace_id) == CLIENT_TRACE and sid(top.parent_span_id) == CLIENT_SPAN
    assert top.kind == Span.SPAN_KIND_SERVER
    assert attempt.trace_id == top.trace_id and attempt.parent_span_id == top.span_id
    assert attempt.kind == Span.SPAN_KIND_CLIENT
    assert top.trace_state == "vendor=1"
    # and goes on upstream: the attempt's own span id in the traceparent the provider saw
    [seen] = [q for q in sims["ds"].requests if q.path.endswith("/chat/completions")]
    assert seen.headers["traceparent"] == f"00-{CLIENT_TRACE:032x}-{sid(attempt.span_id):016x}-01"
    assert seen.headers["tracestate"] == "vendor=1"
    assert top.start_time_unix_nano <= attempt.start_time_unix_nano <= attempt.end_time_unix_nano \
        <= top.end_time_unix_nano

    a, t = attrs(attempt), attrs(top)
    usage = answer["usage"]
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "deepseek"
    assert a["gen_ai.request.model"] == "deepseek-chat" and a["gen_ai.response.model"] == "deepseek-chat"
    assert a["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert a["gen_ai.response.finish_reasons"] == [answer["choices"][0]["finish_reason"]]
    assert a["gen_ai.response.id"] == answer["id"]
    assert a["router.attempt.outcome"] == "ok" and a["router.provider"] == "ds" and a["router.model"] == "ds-chat"
    assert a["server.address"] == "127.0.0.1" and a["server.port"] == sims["ds"].port
    assert "error.type" not in a and attempt.status.code == Status.STATUS_CODE_UNSET
    assert t["gen_ai.operation.name"] == "chat" and t["gen_ai.request.model"] == "auto"
    assert t["gen_ai.request.max_tokens"] == 20 and t["gen_ai.request.temperature"] == 0.5
    assert t["gen_ai.response.model"] == "deepseek-chat"
    assert t["router.route"] == "general" and t["router.rule"] == 0 and t["router.task"]
    assert 0.0 <= t["router.confidence"] <= 1.0 and t["router.task_source"]
    assert t["router.cost_usd"] == pytest.approx(r.engine.meters[0].records[-1].cost_usd)
    assert t["router.cost_usd"] > 0 and t["router.attempts"] == 1 and t["router.status"] == "ok"
    assert "router.fallback_reason" not in t and "error.type" not in t
    assert receiver.resource["service.name"] == "router"
    assert receiver.content_types == ["application/x-protobuf"] * len(receiver.content_types)
    # never the prompt or the answer, anywhere in what was exported
    text = answer["choices"][0]["message"]["content"]
    assert not any(PROMPT.encode() in b or text.encode() in b for b in receiver.bodies)


async def test_library_fallback_under_the_callers_span_from_the_environment(sims, receiver, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)   # the standard variable turns it on
    monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout-api")
    r = make_router(sims)
    sims["ds"].set_down()      # 503 on every try: ds-chat fails twice, mini answers
    caller = otel.SpanContext(CLIENT_TRACE, CLIENT_SPAN, False, otel.TraceFlags(1))
    try:
        with otel.use_span(otel.NonRecordingSpan(caller)):
            resp = await r.acomplete([{"role": "user", "content": PROMPT}], tenant=None)
        await flush(r)
    finally:
        await r.aclose()
    assert resp.router.model == "mini"
    [top] = receiver.named("chat auto")
    assert sid(top.trace_id) == CLIENT_TRACE and sid(top.parent_span_id) == CLIENT_SPAN
    assert top.kind == Span.SPAN_KIND_INTERNAL
    failed = receiver.named("chat deepseek-chat")
    [ok] = receiver.named("chat gpt-4.1-mini")
    assert len(failed) == 2
    for span in [*failed, ok]:
        assert span.parent_span_id == top.span_id and span.trace_id == top.trace_id
    for f in failed:
        fa = attrs(f)
        assert fa["error.type"] == "http_503" and fa["router.attempt.outcome"] == "http_503"
        assert fa["http.response.status_code"] == 503 and f.status.code == Status.STATUS_CODE_ERROR
        assert "gen_ai.usage.input_tokens" not in fa
    oa = attrs(ok)
    assert oa["router.attempt"] == 3 and oa["router.fallback_reason"] == "http_503"
    assert oa["gen_ai.provider.name"] == "openai" and oa["gen_ai.response.model"] == "gpt-4.1-mini"
    assert oa["gen_ai.usage.output_tokens"] == resp.router.completion_tokens
    t = attrs(top)
    assert t["router.fallback_reason"] == "http_503" and t["router.attempts"] == 3
    assert t["router.cost_usd"] == pytest.approx(resp.router.cost_usd)
    assert receiver.resource["service.name"] == "checkout-api"
    # each attempt told its upstream its own span
    seen = [q.headers["traceparent"] for q in sims["ds"].requests if q.path.endswith("/chat/completions")]
    assert seen == [f"00-{CLIENT_TRACE:032x}-{sid(f.span_id):016x}-01" for f in failed]


async def test_sync_api_takes_the_calling_threads_span(sims, receiver):
    r = make_router(sims, f"telemetry: {{endpoint: '{receiver.url}'}}")
    caller = otel.SpanContext(CLIENT_TRACE, CLIENT_SPAN, False, otel.TraceFlags(1))

    def call() -> None:   # another thread, as a sync caller is: its current span still parents the request
        with otel.use_span(otel.NonRecordingSpan(caller)):
            r.complete([{"role": "user", "content": "hi"}])
            list(r.complete([{"role": "user", "content": "hi"}], stream=True))

    try:
        await asyncio.to_thread(call)
        await flush(r)
    finally:
        await r.aclose()
        await asyncio.to_thread(r.close)
    tops = receiver.named("chat auto")
    assert len(tops) == 2
    assert all(sid(t.trace_id) == CLIENT_TRACE and sid(t.parent_span_id) == CLIENT_SPAN for t in tops)


async def test_failure_and_a_stream_with_content_capture(sims, receiver):
    r = make_router(sims, f"telemetry: {{endpoint: '{receiver.url}/', capture_content: true, service_name: rt}}")
    try:
        chunks = [c async for c in await r.acomplete([{"role": "user", "content": PROMPT}], stream=True)]
        sims["ds"].set_down()
        sims["oa"].set_down()
        with pytest.raises(UpstreamFailed):
            await r.acomplete([{"role": "user", "content": "hello"}], model="general")
        await flush(r)
    finally:
        await r.aclose()
    streamed, failed = receiver.named("chat auto")[0], receiver.named("chat general")[0]
    assert streamed.trace_id != failed.trace_id and not streamed.parent_span_id   # new traces: no caller span
    s = attrs(streamed)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert s["gen_ai.response.finish_reasons"] == ["stop"]
    assert PROMPT in s["gen_ai.input.messages"] and text in s["gen_ai.output.messages"]
    [stream_attempt] = [x for x in receiver.spans if x.parent_span_id == streamed.span_id]
    assert stream_attempt.end_time_unix_nano == streamed.end_time_unix_nano   # a stream's attempt lasts to its end
    f = attrs(failed)
    assert f["error.type"] == "UpstreamFailed" and failed.status.code == Status.STATUS_CODE_ERROR
    assert f["router.status"] == "error" and f["router.attempts"] == 4 and "router.fallback_reason" not in f
    attempts = [x for x in receiver.spans if x.parent_span_id == failed.span_id]
    assert sorted(attrs(x)["router.attempt.outcome"] for x in attempts) == ["http_503"] * 4
    assert {attrs(x)["gen_ai.provider.name"] for x in attempts} == {"deepseek", "openai"}
    assert receiver.resource["service.name"] == "rt"


def test_off_by_default_imports_no_opentelemetry(tmp_path):
    """No telemetry block and no OTEL_* endpoint: no tracer, and the SDK is never imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(ds="http://127.0.0.1:9", oa="http://127.0.0.1:9", telemetry=""))
    code = textwrap.dedent(f"""
        import sys
        from router import Router
        from router.core.meter import MemoryMeter
        r = Router({str(path)!r}, meters=[MemoryMeter()], monitor=False)
        assert r.engine.tracer is None
        assert not [m for m in sys.modules if m.startswith('opentelemetry')], sorted(sys.modules)
        print('off')
    """)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "off", out.stderr


def test_telemetry_policy_block_is_checked():
    base = POLICY.format(ds="http://a", oa="http://b", telemetry="{}")
    with pytest.raises(PolicyError) as e:
        parse_policy(base.replace("{}", "telemetry: {endpoint: 'collector:4318'}"), env={})
    assert "telemetry.endpoint" in str(e.value)
    with pytest.raises(PolicyError) as e:
        parse_policy(base.replace("{}", "telemetry: {capture_contents: true}"), env={})
    assert "capture_content" in str(e.value)
    p = parse_policy(base.replace("{}", "telemetry: {enabled: false, endpoint: 'http://c:4318'}"), env={})
    from router.metering.tracing import tracer_for
    assert tracer_for(p, env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) is None
    p = parse_policy(base.replace("{}", ""), env={})
    assert tracer_for(p, env={}) is None
    assert tracer_for(p, env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}) is None
    on = tracer_for(p, env={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert on is not None
    on.shutdown()


async def test_an_unsampled_parent_is_honoured_and_a_bad_traceparent_starts_a_new_trace(sims, receiver):
    r = make_router(sims, f"telemetry: {{endpoint: '{receiver.url}'}}")
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    try:
        await r.engine.complete(body, trace_context={"traceparent": f"00-{CLIENT_TRACE:032x}-{CLIENT_SPAN:016x}-00"})
        await r.engine.complete(body, trace_context={"traceparent": f"00-{CLIENT_TRACE:032X}-{CLIENT_SPAN:016x}-01"})
        await flush(r)
    finally:
        await r.aclose()
    first, second = [q.headers["traceparent"] for q in sims["ds"].requests if q.path.endswith("/chat/completions")]
    assert first.startswith(f"00-{CLIENT_TRACE:032x}-") and first.endswith("-00")   # passed on, not sampled
    [top] = receiver.named("chat auto")                 # only the second request was exported
    assert sid(top.trace_id) != CLIENT_TRACE and not top.parent_span_id   # upper-case hex: invalid, a new trace
    assert second == f"00-{sid(top.trace_id):032x}-{sid(receiver.named('chat deepseek-chat')[0].span_id):016x}-01"


async def test_a_reload_turns_tracing_on_and_off(sims, receiver, monkeypatch):
    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    r = make_router(sims)
    try:
        assert r.engine.tracer is None
        on = parse_policy(POLICY.format(telemetry=f"telemetry: {{endpoint: '{receiver.url}'}}",
                                        **{k: s.base_url for k, s in sims.items()}), env={})
        r.reload(on)
        assert r.engine.tracer is not None
        await r.acomplete([{"role": "user", "content": "hi"}])
        await flush(r)
        assert len(receiver.named("chat auto")) == 1
        tracer = r.engine.tracer
        r.reload(on)                                      # the same block: the same tracer
        assert r.engine.tracer is tracer
        r.reload(parse_policy(POLICY.format(telemetry="telemetry: {enabled: false}",
                                            **{k: s.base_url for k, s in sims.items()}), env={}))
        assert r.engine.tracer is None and tracer is not None
    finally:
        await r.aclose()


# --- the C encoder (router.metering._otlp) -----------------------------------------------------------
# It must write exactly the bytes of the pure-Python reference (`_kv_py`, `_span_py`). The install
# command builds it (setup.py); these tests fail, rather than skip, when it did not build.


def _otlp():
    try:
        from router.metering import _otlp
    except ImportError as exc:  # pragma: no cover - a broken build
        pytest.fail(f"router.metering._otlp did not build ({exc}): install a C compiler and Python headers, "
                    "then `pip install -e .`")
    return _otlp


def _same(native, python, *args):
    """Both return the same bytes, or both raise the same kind of error."""
    try:
        want = python(*args)
    except Exception as e:
        with pytest.raises(type(e)):
            native(*args)
        return
    got = native(*args)
    assert type(got) is bytes and got == want, args


def test_the_c_encoder_writes_the_python_encoders_bytes_for_every_kind_of_value():
    import random

    from router.metering import tracing

    otlp = _otlp()
    assert tracing._kv is otlp.kv and tracing._span is otlp.span   # the C path is the one in use
    rng = random.Random(16)

    class Odd:
        def __str__(self) -> str:
            return "odd value"

    values = ["", "a", "chat gpt-4.1-mini", "x" * 120, "x" * 127, "y" * 128, "z" * 20000, "zyzzyva 🐞 ÉTÉ 中文",
              "\ud800", True, False, 0, 1, 127, 128, 300, 2**31, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**70, -1, -128,
              -(2**63), -(2**63) - 1, 0.0, -0.0, 0.1, 1e-300, 1e300, float("inf"), float("-inf"), float("nan"),
              [], (), ["stop"], ("stop", "length"), ["a", 1, 2.5, True, ["nested", ("deeper", -3)]],
              [None], [Odd()], None, Odd(), {"a": 1}, b"bytes"]
    values += [rng.choice([rng.random() * 10 ** rng.randint(-5, 5), rng.randint(-10**6, 10**12),
                           "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(0, 300)))])
               for _ in range(300)]
    for key in ("", "router.cost_usd", "k" * 200, "gen_ai.usage.input_tokens", "ключ"):
        for v in values:
            _same(otlp.kv, tracing._kv_py, key, v)
    for _ in range(2000):
        sid = rng.choice([0, 1, rng.getrandbits(64), 2**64 - 1])
        start = rng.getrandbits(62)
        args = (rng.getrandbits(128).to_bytes(16, "big"), sid, rng.choice([None, rng.getrandbits(64), 1]),
                rng.choice([None, "", "vendor=abc,other=1", "t" * 300]), rng.choice(["chat auto", "", "é" * 200]),
                rng.randint(0, 3), start, rng.choice([start, start + rng.getrandbits(40), start - 5, 0]),
                rng.randbytes(rng.choice([0, 10, 127, 128, 5000, 70000])), rng.choice([0, 0, 2]),
                rng.choice([None, "", "http_503", "m" * 300]), rng.choice([0x101, 0x301, 0, 2**32 - 1]))
        _same(otlp.span, tracing._span_py, *args)


async def test_whole_requests_encode_to_the_same_bytes_in_c_and_in_python(sims, receiver, monkeypatch):
    """Real requests (a fallback, a failure, a stream with content capture, a client's traceparent):
    every request's spans encoded by the C path, then again by the Python path, byte for byte."""
    from router.metering import tracing

    _otlp()
    r = make_router(sims, f"telemetry: {{endpoint: '{receiver.url}', capture_content: true}}")
    tracer = r.engine.tracer
    seen: list[tuple[object, bytes]] = []
    encode = tracer.writer.encode
    writer = tracer.writer

    def keep(trace, info, decision, error, capture):
        out = encode(trace, info, decision, error, capture)
        # written by the C encoder in one call, not left to the Python path
        assert tracing._otlp.request(trace, info, decision, error, writer._captured(trace) if capture else b"",
                                     writer._shared, writer._shared_attributes, writer._attempt_cache,
                                     writer._attempt_attributes) == out
        seen.append((tracing._Finished(trace, info, decision, error, capture), out))
        return out

    monkeypatch.setattr(tracer.writer, "encode", keep)
    try:
        await r.acomplete([{"role": "user", "content": "hello"}], max_tokens=20, temperature=0.3)
        [c async for c in await r.acomplete([{"role": "user", "content": PROMPT}], stream=True)]
        sims["ds"].set_down()
        await r.acomplete([{"role": "user", "content": "hello"}], model="general")          # a fallback
        sims["oa"].set_down()
        with pytest.raises(UpstreamFailed):
            await r.acomplete([{"role": "user", "content": "hello"}], model="general")      # every attempt fails
        await r.engine.complete({"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
                                trace_context={"traceparent": f"00-{CLIENT_TRACE:032x}-{CLIENT_SPAN:016x}-01",
                                               "tracestate": "vendor=1"})
    except UpstreamFailed:
        pass
    finally:
        await flush(r)
        await r.aclose()
    assert len(seen) == 5
    monkeypatch.setattr(tracing, "_kv", tracing._kv_py)
    monkeypatch.setattr(tracing, "_span", tracing._span_py)
    monkeypatch.setattr(tracing, "_request", None)
    monkeypatch.setattr(tracing, "_kv_cache", {})
    python = tracing._SpanWriter(tracer.http, tracer.writer.resource, tracer.writer.scope)   # no cached bytes
    for item, c_bytes in seen:
        assert b"".join(python.spans_py(item)) == c_bytes
        assert python.encode(item.trace, item.info, item.decision, item.error, item.capture) == c_bytes
    # and what the receiver decoded was those bytes
    assert len(receiver.spans) == sum(1 + len(item.trace.attempts) for item, _ in seen)


def test_the_c_request_encoder_matches_python_on_random_requests(monkeypatch):
    """`_otlp.request` (both spans of a request in one call) against `spans_py` on generated requests:
    fallbacks, retries, attempts never answered (unfinished, cancelled), streams, errors, a client's
    parent and tracestate, resumed and cached answers; values the C encoder leaves to Python (an int
    past 64 bits, a latency that is not finite) give None there and the same bytes from `encode`."""
    import random

    from router.core.decision import Decision
    from router.core.response import Attempt, RouterInfo
    from router.core.tracecontext import SpanContext
    from router.metering import tracing

    otlp = _otlp()
    policy = parse_policy(POLICY.format(telemetry="", ds="http://127.0.0.1:9/v1", oa="https://api.openai.com/v1"),
                          env={})
    deployments = [(policy.providers[m.provider], m) for m in policy.models.values()]
    writer = tracing._SpanWriter(tracing.OtlpHttpExporter("http://127.0.0.1:9/v1/traces"), {}, ("router", None))
    rng = random.Random(1616)
    left_to_python = 0
    for n in range(3000):
        parent = rng.choice([None, SpanContext(rng.getrandbits(128) or 1, rng.getrandbits(64) or 1, True,
                                               rng.choice([None, "vendor=1"]))])
        trace = tracing._Trace.begin(parent, remote=rng.random() < 0.5)
        trace.request_model = rng.choice([None, "auto", "general", "ds-chat"])
        trace.operation = rng.choice(["chat", "chat", "embeddings"])
        trace.request_params = rng.choice([(), (("gen_ai.request.max_tokens", 64),),
                                           (("gen_ai.request.temperature", 0.3), ("gen_ai.request.top_p", 1))])
        sent = [rng.choice(deployments) for _ in range(rng.choice([0, 1, 1, 1, 2, 3, 4]))]
        for provider, model in sent:
            trace.attempt(UpstreamCallFor(provider), provider, model, rng.random() < 0.4)
        status = rng.choice(["ok", "ok", "error", "cancelled"])
        info = RouterInfo(f"r{n}", rng.choice(["", "coding", "general"]), rng.choice(["", "classifier", "hint"]),
                          rng.random(), None, rng.choice(["", "general"]), rng.choice([None, 0, 3]),
                          tenant=rng.choice([None, "acme"]), status=status, latency_s=rng.random() / 10)
        for provider, model in sent:
            if rng.random() < 0.85:
                outcome = rng.choice(["ok", "http_503", "timeout", "http_429"])
                info.attempts.append(Attempt(provider.name, model.alias, outcome, rng.random() / 20,
                                             rng.choice([None, 200, 503])))
        rng.shuffle(info.attempts) if rng.random() < 0.2 else None
        if info.attempts and status == "ok":
            last = info.attempts[-1]
            info.provider, info.model = last.provider, last.model
            info.upstream_model = rng.choice([None, "gpt-4.1-mini", "deepseek-chat"])
            info.region = rng.choice([None, "us"])
        info.prompt_tokens, info.completion_tokens = rng.choice([0, 12, 2**40]), rng.choice([0, 5])
        info.cost_usd, info.cache_saved_usd = rng.random() / 1000, rng.choice([0.0, 0.001])
        info.resumed, info.hedge = rng.choice([0, 0, 1, 2]), rng.choice([None, "won"])
        info.response_cache, info.pick = rng.choice([None, "hit", "miss"]), rng.choice([None, "least_loaded"])
        if rng.random() < 0.3:
            trace.finish_reasons.append(rng.choice(["stop", "length"]))
        trace.response_id = rng.choice([None, "", "chatcmpl-1"])
        if rng.random() < 0.01:
            info.prompt_tokens = 2**70          # past 64 bits: the Python path's
        if rng.random() < 0.01:
            info.latency_s = float("nan")       # not finite: the Python path's (which raises)
        decision = rng.choice([None, Decision("coding", "classifier", 0.9, None, "general", 0, [], 10, 64,
                                              residency=rng.choice([(), ("eu", "us")]))])
        error = None if status == "ok" else rng.choice(["UpstreamFailed", "CancelledError", ""])
        capture = rng.random() < 0.1
        if capture:
            trace.body, trace.output = {"messages": [{"role": "user", "content": "hi"}]}, ["hello"]
        item = tracing._Finished(trace, info, decision, error, capture)
        try:
            want = b"".join(writer.spans_py(item))
        except Exception as e:
            with pytest.raises(type(e)):
                writer.encode(trace, info, decision, error, capture)
            left_to_python += 1
            continue
        got = otlp.request(trace, info, decision, error, writer._captured(trace) if capture else b"",
                           writer._shared, writer._shared_attributes, writer._attempt_cache,
                           writer._attempt_attributes)
        if got is None:
            left_to_python += 1
            assert info.prompt_tokens == 2**70, n
        else:
            assert got == want, n
        assert writer.encode(trace, info, decision, error, capture) == want
    assert 0 < left_to_python < 150


def test_the_c_encoder_rounds_the_confidence_as_round_does():
    """`router.confidence` is `round(confidence, 4)`; the C encoder rounds without the builtin where the
    answer is sure (away from a tie) and must write the same bytes as `spans_py` everywhere: exact and
    near ties (the float just below and above k + 0.5 ten-thousandths, where the binary value decides),
    negatives, -0.0, large values, infinities, NaN."""
    import math
    import random

    from router.core.response import RouterInfo
    from router.metering import tracing

    otlp = _otlp()
    writer = tracing._SpanWriter(tracing.OtlpHttpExporter("http://127.0.0.1:9/v1/traces"), {}, ("router", None))
    rng = random.Random(16)
    values = [0.0, -0.0, 0.5, 1.0, 5e-05, 1.5e-05, -4e-05, -5e-05, 0.12345, 0.99995, 65535.99995, 65536.00005,
              1e6 + 0.12345, 1e300, math.inf, -math.inf, math.nan]
    for _ in range(4000):
        values.append(rng.random())
        values.append(rng.uniform(-70000, 70000))
        tie = (rng.randrange(-700_000_000, 700_000_000) + 0.5) / 1e4
        values += [tie, math.nextafter(tie, math.inf), math.nextafter(tie, -math.inf)]
    trace = tracing._Trace.begin(None)
    differs = 0
    for n, confidence in enumerate(values):
        info = RouterInfo(f"r{n}", "coding", "classifier", confidence, None, "general", None, status="ok",
                          latency_s=0.01)
        want = b"".join(writer.spans_py(tracing._Finished(trace, info, None, None, False)))
        got = otlp.request(trace, info, None, None, b"", writer._shared, writer._shared_attributes,
                           writer._attempt_cache, writer._attempt_attributes)
        assert got == want, (n, confidence)
        differs += round(confidence, 4) != confidence
    assert differs > len(values) // 2   # the values were rounded, not written as they came


def UpstreamCallFor(provider):   # noqa: N802 - reads as the value it makes
    from router.core.translate import UpstreamCall

    return UpstreamCall(provider.base_url + "/chat/completions", {"Content-Type": "application/json"}, {})


def test_the_batch_queue_posts_full_batches_and_drops_with_one_warning(caplog):
    """`_Batcher`: the OTEL_BSP_* settings, a POST per full batch from its thread, everything on a flush,
    and a full queue dropping requests with a count and one warning (not one per span)."""
    import threading
    import time

    from router.metering.tracing import _Batcher

    posted: list[int] = []
    gate = threading.Event()

    def post(batch):
        gate.wait(10)          # a slow collector: the queue fills meanwhile
        posted.append(len(batch))
        return True

    b = _Batcher(post, {"OTEL_BSP_SCHEDULE_DELAY": "60000", "OTEL_BSP_MAX_QUEUE_SIZE": "20",
                        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "8"})
    assert (b.delay_s, b.max_queue, b.batch) == (60.0, 20, 8)
    with caplog.at_level("WARNING", logger="router.tracing"):
        for i in range(8):
            b.add(b"span %d" % i)
        deadline = time.monotonic() + 5
        while b.queue and time.monotonic() < deadline:   # the thread took the first batch, and waits
            time.sleep(0.01)
        assert not b.queue
        for i in range(30):
            b.add(b"more %d" % i)
        assert len(b.queue) == 20 and b.dropped == 10
    assert [r.getMessage() for r in caplog.records].count(
        "the trace export queue is full (20 requests): dropping spans (1 so far); raise OTEL_BSP_MAX_QUEUE_SIZE "
        "or check the collector") == 1 and len(caplog.records) == 1
    gate.set()
    assert b.flush()
    assert sum(posted) == 28 and max(posted) <= 8 and not b.queue
    b.shutdown()
    b.add(b"late")
    assert b.dropped == 11 and sum(posted) == 28
