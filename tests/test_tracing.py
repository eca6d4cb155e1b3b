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


@pytest.fixture(params=["c", "python"])
async def receiver(request, monkeypatch):
    """The receiver, and which export queue the routers of the test use: the C sender (`_otlp.Sender`,
    the default for an http:// endpoint) or the Python one (ROUTER_OTLP_SENDER=python): every
    end-to-end test runs with both, and `flush` checks the one in use."""
    if request.param == "python":
        monkeypatch.setenv("ROUTER_OTLP_SENDER", "python")
    else:
        monkeypatch.delenv("ROUTER_OTLP_SENDER", raising=False)
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
    from router.metering import tracing

    tracer = r.engine.tracer
    assert tracer is not None
    if os.environ.get("ROUTER_OTLP_SENDER") == "python":
        assert isinstance(tracer.batcher, tracing._Batcher)
    else:
        assert isinstance(tracer.batcher, _otlp().Sender)
    assert await asyncio.to_thread(tracer.force_flush, 10.0)


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


# --- the C export queue and thread (router.metering._otlp.Sender) --------------------------------------
# It POSTs without the GIL. Tested against a raw HTTP/1.1 endpoint on a real socket whose answers a
# script gives, request by request: keep-alive, closed connections, retries, refusals, malformed
# answers, a collector that is down or never answers, a full queue, a fork.

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
RESOURCE, SCOPE = {"service.name": "sender-test", "host.name": "h"}, ("router", "9.9")


class Collector:
    """An OTLP/HTTP endpoint written on a bare socket, one thread per connection. The n-th request (from
    0) gets ``script(n)``: the bytes to answer, ``(bytes, True)`` to answer then close, None to close
    without answering, or a `threading.Event` to wait for before answering 200. A body counts as
    delivered when its answer's last status line is 2xx (or as `delivered_if` says)."""

    def __init__(self, script=lambda n: OK, delivered_if=None):
        import socket
        import threading

        self.script, self.delivered_if = script, delivered_if
        self.requests: list[tuple[int, list[str], bytes]] = []   # (connection, head lines, body) as read
        self.delivered: list[bytes] = []                          # the bodies answered with a 2xx
        self.connections = 0
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                number, self.connections = self.connections, self.connections + 1
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn, number: int) -> None:
        try:
            self._requests(conn, number)
        except OSError:   # the sender closed the connection (as it does after a malformed answer)
            conn.close()

    def _requests(self, conn, number: int) -> None:
        import re
        import threading

        with conn, conn.makefile("rb") as f:
            while True:
                line = f.readline()
                if not line:
                    return
                head = [line.decode().rstrip("\r\n")]
                while (h := f.readline()) not in (b"\r\n", b""):
                    head.append(h.decode().rstrip("\r\n"))
                fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in head[1:])}
                body = f.read(int(fields.get("content-length", 0)))
                with self.lock:
                    n = len(self.requests)
                    self.requests.append((number, head, body))
                action = self.script(n)
                if isinstance(action, threading.Event):
                    action.wait(10)
                    action = OK
                if action is None:
                    return
                data, close = action if isinstance(action, tuple) else (action, False)
                statuses = re.findall(rb"HTTP/1\.[01] (\d\d\d)", data)
                if (self.delivered_if(data) if self.delivered_if else statuses and statuses[-1].startswith(b"2")):
                    with self.lock:
                        self.delivered.append(body)
                conn.sendall(data)
                if close:
                    return

    def spans(self) -> list[str]:
        """The names of the spans delivered, in order."""
        out = []
        for body in self.delivered:
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            out += [s.name for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
        return out

    def close(self) -> None:
        self.sock.close()


def spans_named(*names: str) -> list[bytes]:
    from router.metering.tracing import _span_py

    return [_span_py(bytes(range(16)), i + 1, None, None, name, 1, 10**18, 10**18 + 5000, b"", 0, None, 0x101)
            for i, name in enumerate(names)]


def sender_for(collector: Collector, **settings):
    from router.metering import tracing

    settings = {"max_queue": 100, "batch": 4, "delay_s": 60.0, "timeout_s": 5.0, "backoff_s": 0.01,
                "warn": tracing._sender_warning, **settings}
    return _otlp().Sender("127.0.0.1", collector.port, "/v1/traces",
                          [("User-Agent", "router/test"), ("Content-Type", "application/x-protobuf"),
                           ("X-Api-Key", "k-123")], *tracing._envelope(RESOURCE, SCOPE), **settings)


@pytest.fixture
def collector():
    made: list[Collector] = []

    def make(script=lambda n: OK, delivered_if=None) -> Collector:
        made.append(Collector(script, delivered_if))
        return made[-1]

    yield make
    for c in made:
        c.close()


def wait_until(predicate, seconds: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_the_c_sender_posts_the_python_envelope_on_one_kept_alive_connection(collector):
    """Full batches go on their own (the thread is woken once per batch), the rest on a flush or on the
    schedule delay; each body is exactly `encode_request`'s for its batch; one connection for all."""
    from router.metering.tracing import encode_request

    c = collector()
    sender = sender_for(c)
    assert (sender.max_queue, sender.batch, sender.delay_s, sender.timeout_s) == (100, 4, 60.0, 5.0)
    spans = spans_named(*(f"s{i}" for i in range(10)))
    for s in spans:
        sender.add(s)
    wait_until(lambda: len(c.delivered) == 2)          # two full batches, no flush
    assert sender.queued == 2
    assert sender.flush(5.0)
    assert c.delivered == [encode_request(RESOURCE, SCOPE, spans[i:i + 4]) for i in (0, 4, 8)]
    assert c.spans() == [f"s{i}" for i in range(10)]
    [(_, head, _)] = {r[0]: r for r in c.requests}.values()   # every request on connection 0
    assert head[0] == "POST /v1/traces HTTP/1.1"
    assert {f"Host: 127.0.0.1:{c.port}", "User-Agent: router/test", "Content-Type: application/x-protobuf",
            "X-Api-Key: k-123", f"Content-Length: {len(c.delivered[-1])}"} <= set(head)
    assert (sender.exported, sender.failed, sender.dropped, sender.posts, sender.connections) == (10, 0, 0, 3, 1)
    assert sender.last_error is None
    sender.shutdown()

    timed = sender_for(c, delay_s=0.05)                 # a partial batch waits for the schedule delay only
    timed.add(spans_named("late")[0])
    wait_until(lambda: c.spans()[-1:] == ["late"])
    timed.shutdown()


def test_the_c_sender_reconnects_at_once_when_the_collector_closed_the_connection(collector):
    """A connection the collector closed while idle is replaced before the POST; one it closes on the POST
    (no answer) is retried at once on a new one: nothing lost, no backoff (it is set to 30 s here)."""
    import time

    script = {0: (OK, True), 1: OK, 2: None, 3: OK}
    c = collector(lambda n: script.get(n, OK))
    sender = sender_for(c, backoff_s=30.0)
    t0 = time.monotonic()
    for name in ("a", "b", "c"):
        sender.add(spans_named(name)[0])
        assert sender.flush(5.0)
    assert time.monotonic() - t0 < 5
    assert c.spans() == ["a", "b", "c"]
    assert [r[0] for r in c.requests] == [0, 1, 1, 2]   # a; b on a new connection; c sent twice, then answered
    assert (sender.connections, sender.failed, sender.exported) == (3, 0, 3)
    sender.shutdown()


def test_the_c_sender_retries_503_after_the_backoff(collector):
    import time

    c = collector(lambda n: b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy" if n == 0 else OK)
    sender = sender_for(c, backoff_s=0.5)               # tracing.py's value
    sender.add(spans_named("a")[0])
    t0 = time.monotonic()
    assert sender.flush(5.0)
    assert time.monotonic() - t0 >= 0.5
    assert c.spans() == ["a"] and len(c.requests) == 2 and sender.posts == 2 and sender.connections == 1
    sender.shutdown()


def test_the_c_sender_gives_up_after_three_tries_with_one_warning_a_minute(collector, caplog):
    answers = [b"HTTP/1.1 429 Slow down\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.1 502 Bad\r\nContent-Length: 0\r\n\r\n",
               b"HTTP/1.1 504 Late\r\nContent-Length: 0\r\n\r\n"]
    c = collector(lambda n: answers[n % 3] if n < 6 else OK)
    sender = sender_for(c)
    with caplog.at_level("WARNING", logger="router.tracing"):
        sender.add(spans_named("a")[0])
        sender.add(spans_named("b")[0])
        assert not sender.flush(5.0)
        sender.add(spans_named("c")[0])
        assert not sender.flush(5.0)                       # failed too: counted, not logged again
        sender.add(spans_named("d")[0])
        assert sender.flush(5.0)                           # the next batch goes through
    assert len(c.requests) == 7 and c.spans() == ["d"]
    assert (sender.failed, sender.exported, sender.posts) == (3, 1, 7)
    message = f"could not export traces to http://127.0.0.1:{c.port}/v1/traces: HTTP 504"
    assert sender.last_error == message
    assert [r.getMessage() for r in caplog.records] == [f"{message} (2 requests' spans not exported so far)"]
    sender.shutdown()


def test_the_c_sender_does_not_retry_a_refused_batch(collector, caplog):
    c = collector(lambda n: b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nbad" if n == 0 else OK)
    sender = sender_for(c, backoff_s=30.0)
    with caplog.at_level("WARNING", logger="router.tracing"):
        spans = spans_named("a", "b")
        for s in spans:
            sender.add(s)
        assert not sender.flush(5.0)
    assert len(c.requests) == 1 and (sender.failed, sender.posts) == (2, 1)
    size = len(c.requests[0][2])
    assert [r.getMessage() for r in caplog.records] == [
        f"the OTLP endpoint refused a batch of {size} bytes: HTTP 400 (2 requests' spans not exported so far)"]
    sender.add(spans_named("c")[0])
    assert sender.flush(5.0) and c.spans() == ["c"] and sender.connections == 1   # the connection is kept
    sender.shutdown()


MALFORMED = [
    (b"garbage\r\n\r\n", False),
    (b"\x00\xff" * 100, True),
    (b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/2 200\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\n Folded: x\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 12x\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 20000000\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", False),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\n", False),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\n", False),
    (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", False),
    (b"HTTP/1.1 100 Continue\r\n\r\n" * 9 + OK, False),
    (b"HTTP/1.1 200 OK\r\n", True),
    (b"", True),
]


@pytest.mark.parametrize(("answer", "then_close"), MALFORMED, ids=[f"malformed{i}" for i in range(len(MALFORMED))])
def test_a_malformed_answer_closes_the_connection_and_counts_as_a_failure(collector, answer, then_close):
    """Three tries, each on a new connection (the one with the bad answer is closed, even when the
    collector keeps it open), then a failure counted; the sender goes on working."""
    c = collector(lambda n: (answer, then_close) if n < 3 else OK, delivered_if=lambda data: data == OK)
    sender = sender_for(c)
    sender.add(spans_named("a")[0])
    assert not sender.flush(10.0)
    assert (sender.failed, sender.exported, sender.connections, len(c.requests)) == (1, 0, 3, 3)
    assert "malformed response" in sender.last_error or "closed" in sender.last_error, sender.last_error
    sender.add(spans_named("b")[0])
    assert sender.flush(10.0) and c.spans() == ["b"] and sender.connections == 4
    sender.shutdown()


def test_the_c_sender_reads_chunked_interim_and_read_to_close_answers(collector):
    chunked = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n")
    script = [chunked, chunked,                                               # kept alive
              (b"HTTP/1.0 200 OK\r\n\r\n{\"partialSuccess\": {}}", True),     # to the end of the stream
              b"HTTP/1.1 204 No Content\r\n\r\n",                             # a new connection, no body
              (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", True),
              b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
              b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"]
    c = collector(lambda n: script[n] if n < len(script) else OK)
    sender = sender_for(c, backoff_s=30.0)
    for i in range(len(script)):
        sender.add(spans_named(f"s{i}")[0])
        assert sender.flush(5.0), sender.last_error
    assert c.spans() == [f"s{i}" for i in range(len(script))]
    assert [r[0] for r in c.requests] == [0, 0, 0, 1, 1, 2, 2]
    assert (sender.failed, sender.connections, sender.posts) == (0, 3, len(script))
    sender.shutdown()


def test_an_endpoint_that_is_down_costs_bounded_time_and_is_counted(collector):
    import socket
    import time

    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = _otlp().Sender("127.0.0.1", port, "/v1/traces", [], b"", b"", batch=4, backoff_s=0.01, warn=None)
    for s in spans_named("a", "b", "c"):
        down.add(s)
    t0 = time.monotonic()
    assert not down.flush(10.0)
    assert (down.failed, down.connections, down.posts) == (3, 0, 0)
    assert "Connection refused" in down.last_error
    down.shutdown()
    assert time.monotonic() - t0 < 3

    # a collector that takes the connection and never answers: the shutdown's timeout bounds the export
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        hung = _otlp().Sender("127.0.0.1", silent.getsockname()[1], "/v1/traces", [], b"", b"", timeout_s=60.0,
                              warn=None)
        for s in spans_named("a", "b"):
            hung.add(s)
        t0 = time.monotonic()
        hung.shutdown(0.5)
        assert time.monotonic() - t0 < 2.5
        assert (hung.failed, hung.exported, hung.queued) == (2, 0, 0)
        assert hung.flush(1.0) is True                      # stopped, nothing queued: at once
        hung.add(spans_named("late")[0])
        assert hung.dropped == 1
    finally:
        silent.close()


def test_the_c_sender_drops_when_its_queue_is_full_with_one_warning(collector, caplog):
    """The twin of `_Batcher`'s test: a slow collector, the queue fills, drops are counted and logged once."""
    import threading

    gate = threading.Event()
    c = collector(lambda n: gate if n == 0 else OK)
    sender = sender_for(c, max_queue=20, batch=8)
    with caplog.at_level("WARNING", logger="router.tracing"):
        for _ in range(8):
            sender.add(b"\x12\x00")
        wait_until(lambda: len(c.requests) == 1)       # the thread took the first batch, and waits
        assert sender.queued == 0
        for _ in range(30):
            sender.add(b"\x12\x00")
        assert sender.queued == 20 and sender.dropped == 10
    assert [r.getMessage() for r in caplog.records] == [
        "the trace export queue is full (20 requests): dropping spans (1 so far); raise OTEL_BSP_MAX_QUEUE_SIZE "
        "or check the collector"]
    gate.set()
    assert sender.flush(5.0)
    assert len(c.spans()) == 28 and sender.exported == 28 and sender.queued == 0
    sender.shutdown()
    sender.add(b"\x12\x00")
    assert sender.dropped == 11 and sender.exported == 28
    with pytest.raises(TypeError):
        sender.add("not bytes")


def test_flush_and_shutdown_deliver_everything_in_order(collector):
    c = collector()
    sender = sender_for(c, batch=64, max_queue=5000)
    names = [f"n{i}" for i in range(1000)]
    for s in spans_named(*names):
        sender.add(s)
    assert sender.flush(10.0)
    assert c.spans() == names
    for s in spans_named("x", "y"):
        sender.add(s)
    sender.shutdown()                                   # exports what is left
    assert c.spans() == [*names, "x", "y"] and sender.exported == 1002
    sender.shutdown()                                   # twice: nothing happens
    assert sender.flush(1.0) is True


def test_a_sender_dropped_without_shutdown_is_freed_safely(collector):
    import gc

    c = collector()
    for _ in range(20):
        sender = sender_for(c, batch=2)
        for s in spans_named("a", "b", "c"):
            sender.add(s)
        del sender
        gc.collect()
    wait_until(lambda: len(c.spans()) == 60)          # the threads exported what was queued, then ended


def test_bad_headers_are_refused_when_the_tracer_is_made_and_never_shown():
    from router.metering import tracing

    with pytest.raises(ValueError, match="X-Key") as e:
        tracing.OtlpHttpExporter("http://127.0.0.1:9/v1/traces", {"X-Key": "sec\r\nInjected: ret"})
    assert "sec" not in str(e.value).replace("X-Key", "")
    with pytest.raises(ValueError, match="not a valid header name"):
        tracing.OtlpHttpExporter("http://127.0.0.1:9/v1/traces", {"Bad Name": "v"})
    policy = parse_policy(POLICY.format(ds="http://a", oa="http://b", telemetry=""), env={})
    with pytest.raises(ValueError, match="authorization"):
        tracing.tracer_for(policy, env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                                        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20tok%0A"})
    sender = _otlp().Sender
    for headers in ([("X-Key", "a\nb")], [("X-Key", "a\rb")], [("X-Key", "a\x00b")], [("Bad Name", "v")],
                    [("", "v")], [("X:Y", "v")]):
        with pytest.raises(ValueError) as e:
            sender("127.0.0.1", 9, "/v1/traces", headers, b"", b"")
        assert "a\nb" not in str(e.value) and "a\rb" not in str(e.value)
    for host, port, path in (("127.0.0.1", 0, "/"), ("127.0.0.1", 70000, "/"), ("", 9, "/"), ("a b", 9, "/"),
                             ("127.0.0.1", 9, "v1"), ("127.0.0.1", 9, "/a b"), ("127.0.0.1", 9, "/a\r\nb")):
        with pytest.raises(ValueError):
            sender(host, port, path, [], b"", b"")


def test_the_export_queue_is_chosen_by_endpoint_compression_and_variable():
    from router.metering import tracing

    def kind(env):
        tracer = tracing.tracer_for(parse_policy(POLICY.format(ds="http://a", oa="http://b", telemetry=""), env={}),
                                    env=env)
        try:
            return type(tracer.batcher).__name__
        finally:
            tracer.shutdown()

    assert kind({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}) == "Sender"
    assert kind({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://127.0.0.1:9"}) == "_Batcher"
    assert kind({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}) \
        == "_Batcher"
    assert kind({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "ROUTER_OTLP_SENDER": "python"}) == "_Batcher"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_BSP_SCHEDULE_DELAY": "250",
           "OTEL_BSP_MAX_QUEUE_SIZE": "30", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "50"}
    tracer = tracing.tracer_for(parse_policy(POLICY.format(ds="http://a", oa="http://b", telemetry=""), env={}),
                                env=env)
    assert (tracer.batcher.delay_s, tracer.batcher.max_queue, tracer.batcher.batch) == (0.25, 30, 30)
    tracer.shutdown()


async def test_the_c_sender_exports_what_the_python_path_exports(sims, monkeypatch):
    """Real requests (a success, a fallback, a failure) through the C sender; their encoded spans then
    POSTed by the Python exporter to a second receiver: the same bodies, so the same decoded spans."""
    from router.metering import tracing

    monkeypatch.delenv("ROUTER_OTLP_SENDER", raising=False)
    c_side, py_side = await Receiver().start(), await Receiver().start()
    r = make_router(sims, f"telemetry: {{endpoint: '{c_side.url}'}}")
    tracer = r.engine.tracer
    assert isinstance(tracer.batcher, _otlp().Sender)
    encoded: list[bytes] = []
    encode = tracer.writer.encode
    monkeypatch.setattr(tracer.writer, "encode", lambda *a: encoded.append(encode(*a)) or encoded[-1])
    try:
        await r.acomplete([{"role": "user", "content": "hello"}])
        sims["ds"].set_down()
        await r.acomplete([{"role": "user", "content": "hello"}], model="general")          # a fallback
        sims["oa"].set_down()
        with pytest.raises(UpstreamFailed):
            await r.acomplete([{"role": "user", "content": "hello"}], model="general")      # a failure
        await flush(r)
        python = tracing._SpanWriter(tracing.OtlpHttpExporter(py_side.url + "/v1/traces"), tracer.writer.resource,
                                     tracer.writer.scope)
        assert await asyncio.to_thread(python.export, encoded)
        python.http.close()
    finally:
        await r.aclose()
        await asyncio.to_thread(tracer.shutdown)
        await c_side.runner.cleanup()
        await py_side.runner.cleanup()
    assert len(encoded) == 3 and c_side.bodies == py_side.bodies and len(c_side.spans) == 2 + 4 + 5
    assert c_side.spans == py_side.spans and c_side.resource == py_side.resource
    assert tracer.batcher.exported == 3 and tracer.dropped == 0


def test_the_c_sender_works_in_a_forked_child(collector):
    """A forked child gets a new queue and thread (the parent's cannot be used there): it exports and shuts
    down; the parent's sender goes on, on its own connection."""
    import warnings

    from router.metering import tracing

    c = collector()
    tracer = tracing.OtelTracer(tracing.OtlpHttpExporter(c.url + "/v1/traces"), env={})
    sender = tracer.batcher
    assert isinstance(sender, _otlp().Sender)
    sender.add(spans_named("parent 1")[0])
    assert tracer.force_flush(5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:   # the child: never back into pytest
        code = 1
        try:
            sender.add(spans_named("child")[0])
            ok = tracer.force_flush(5.0)
            tracer.shutdown()
            code = 0 if ok and sender.exported >= 2 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    sender.add(spans_named("parent 2")[0])
    assert tracer.force_flush(5.0)
    tracer.shutdown()
    assert c.spans() == ["parent 1", "child", "parent 2"]
    assert len({r[0] for r in c.requests}) == 2          # the parent's connection, and the child's own
