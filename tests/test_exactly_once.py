"""Every request is metered exactly once and gives back what it held, whatever ends it.

An exception is injected at every step of a request (decide, reserve, build_call, transport send,
read, JSON parse, usage read, cost, each meter, budget settle, the stream at its first and a middle
chunk), and requests are cancelled, closed early and dropped unread. After each, four invariants
must hold: one record per meter, the budget reservation released, nothing left in flight (meters'
gauges and the monitor's counts), and the circuit not stuck half-open. Then the triggers found by
the adversarial run go through a real proxy over sockets: none may answer 500 or skip the ledger.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import time
from types import SimpleNamespace

import orjson
import pytest
from aiohttp import web

import router.engine.engine as engine_mod
from router import Router
from router.core.meter import MemoryMeter, Meter
from router.core.policy import hash_key
from router.metering.budget import InProcessBudget, open_budget
from router.monitor.health import HALF_OPEN
from router.monitor.monitor import Monitor
from router.transport.base import Transport, UpstreamResponse
from router.transport.chooser import ProviderTransport
from tests.metering_support import make_policy, msgs
from tests.reliability_support import Url, dead_port, post, scripted_upstream, start_proxy

KEY = "sk-tenant-acme"
TENANT = f"""
tenants:
  acme: {{keys: ["{hash_key(KEY)}"], budget: {{daily_usd: 100}}}}
"""


class Boom(RuntimeError):
    """The injected fault: not a RequestError, so nothing upstream of the engine expects it."""


class CountingMeter(Meter):
    """Counts records and in-flight deltas; can be told to raise in either hook (after applying it)."""

    tracks_inflight = True

    def __init__(self) -> None:
        self.records: list = []
        self.inflight: collections.Counter[str] = collections.Counter()
        self.fail_record = self.fail_inflight = False

    def record(self, info) -> None:
        self.records.append(info)
        if self.fail_record:
            raise Boom("meter.record")

    def track_inflight(self, provider: str, delta: int) -> None:
        self.inflight[provider] += delta
        if self.fail_inflight:
            raise Boom("meter.track_inflight")


class FaultyResponse(UpstreamResponse):
    def __init__(self, inner: UpstreamResponse, step: str | None):
        self.inner, self.step = inner, step
        self.status, self.headers = inner.status, inner.headers

    async def read(self) -> bytes:
        if self.step == "read":
            raise Boom("read")
        return await self.inner.read()

    async def sse_data(self):
        n = 0
        async for data in self.inner.sse_data():
            if (self.step == "first_chunk" and n == 0) or (self.step == "mid_chunk" and n == 3):
                raise Boom(self.step)
            n += 1
            yield data

    def close(self) -> None:
        self.inner.close()

    def release(self) -> None:
        self.inner.release()


class FaultyTransport(Transport):
    """The real transport, with an exception injected at `step` (send, read, first_chunk, mid_chunk)."""

    def __init__(self) -> None:
        self.inner = ProviderTransport()
        self.step: str | None = None

    async def send(self, call, *, connect_s, read_s, total_s):
        if self.step == "send":
            raise Boom("send")
        resp = await self.inner.send(call, connect_s=connect_s, read_s=read_s, total_s=total_s)
        return FaultyResponse(resp, self.step)

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Orjson:
    """orjson as the engine sees it, with loads failing (the JSON-parse step)."""

    dumps = staticmethod(orjson.dumps)
    JSONDecodeError = orjson.JSONDecodeError

    @staticmethod
    def loads(data):
        raise Boom("json parse")


@pytest.fixture
async def rig(sims):
    policy = make_policy(sims, TENANT)
    mem, counting = MemoryMeter(), CountingMeter()
    budget = InProcessBudget()
    transport = FaultyTransport()
    monitor = Monitor(policy, background=False)
    r = Router(policy, transport=transport, meters=[mem, counting], budget=budget, monitor=monitor)
    yield SimpleNamespace(router=r, mem=mem, counting=counting, budget=budget, transport=transport,
                          health=monitor.health, monitor=monitor)
    await r.aclose()


def half_open(rig, alias: str = "ds-chat") -> None:
    """Put the first candidate's circuit in half-open: one probe request may pass at a time."""
    b = rig.health.breakers[alias]
    b.state, b._successes = HALF_OPEN, 0
    rig.health._dirty = True


async def settle_callbacks() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def check_invariants(rig, alias: str = "ds-chat") -> None:
    # 1. metered exactly once, in every meter (the raising one was called exactly once too)
    assert len(rig.mem.records) == 1, [i.status for i in rig.mem.records]
    assert len(rig.counting.records) == 1
    assert rig.mem.records[0].status in ("ok", "error", "cancelled")
    # 2. the budget reservation released (settled or dropped)
    assert rig.budget._holds == {}, rig.budget._holds
    assert all(abs(v) < 1e-12 for v in rig.budget._reserved.values()), rig.budget._reserved
    # 3. nothing left in flight: meters' gauges and the monitor's counts
    assert all(v == 0 for v in rig.counting.inflight.values()), rig.counting.inflight
    assert all(v == 0 for v in rig.health.inflight.values()), rig.health.inflight
    assert all(v == 0 for v in rig.health.provider_inflight.values()), rig.health.provider_inflight
    assert not rig.monitor._active
    # 4. the circuit is not stuck half-open with its probe slot taken
    b = rig.health.breakers[alias]
    assert not (b.state == HALF_OPEN and alias in rig.health.circuit_open()), "circuit stuck half-open"


JSON_STEPS = ["decide", "reserve", "build_call", "send", "read", "json_parse", "usage", "cost",
              "meter_record", "meter_inflight", "settle"]
STREAM_STEPS = ["decide", "reserve", "build_call", "send", "first_chunk", "mid_chunk", "json_parse", "usage",
                "cost", "meter_record", "meter_inflight", "settle"]


def inject(rig, monkeypatch, step: str) -> None:
    def boom(*a, **k):
        raise Boom(step)

    if step == "decide":
        monkeypatch.setattr(engine_mod, "decide", boom)
    elif step == "reserve":
        async def reserve(*a, **k):
            raise Boom(step)
        monkeypatch.setattr(rig.budget, "_reserve", reserve)
    elif step == "build_call":
        monkeypatch.setattr(engine_mod, "build_call", boom)
    elif step in ("send", "read", "first_chunk", "mid_chunk"):
        rig.transport.step = step
    elif step == "json_parse":
        monkeypatch.setattr(engine_mod, "orjson", _Orjson)
    elif step == "usage":
        monkeypatch.setattr(engine_mod, "read_usage", boom)
    elif step == "cost":
        monkeypatch.setattr(engine_mod.Engine, "_cost", boom)
    elif step == "meter_record":
        rig.counting.fail_record = True
    elif step == "meter_inflight":
        rig.counting.fail_inflight = True
    elif step == "settle":
        monkeypatch.setattr(rig.budget, "settle", boom)
    else:  # pragma: no cover
        raise AssertionError(step)


@pytest.mark.parametrize("step", JSON_STEPS)
async def test_json_request_with_a_fault_at_every_step_keeps_all_four_invariants(rig, monkeypatch, step):
    half_open(rig)
    inject(rig, monkeypatch, step)
    with contextlib.suppress(Exception):  # which exception depends on the step; the invariants are the point
        await rig.router.acomplete(msgs(), task="general", tenant="acme", max_tokens=5)
    await settle_callbacks()
    check_invariants(rig)


@pytest.mark.parametrize("step", STREAM_STEPS)
async def test_stream_with_a_fault_at_every_step_keeps_all_four_invariants(rig, monkeypatch, step):
    half_open(rig)
    inject(rig, monkeypatch, step)
    with contextlib.suppress(Exception):
        stream = await rig.router.acomplete(msgs(), task="general", tenant="acme", max_tokens=8, stream=True)
        async for _ in stream:
            pass
    await settle_callbacks()
    check_invariants(rig)


async def test_cancelled_json_request_keeps_the_invariants(rig, sims):
    half_open(rig)
    sims["ds"].set_fault("delay:5")
    task = asyncio.create_task(rig.router.acomplete(msgs(), task="general", tenant="acme", max_tokens=5))
    await asyncio.sleep(0.3)
    assert rig.health.inflight.get("ds-chat") == 1  # the attempt is in flight when it is cancelled
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settle_callbacks()
    check_invariants(rig)
    assert rig.mem.records[0].status == "cancelled"


@pytest.mark.parametrize("how", ["aclose_after_first", "break", "aclose_unread", "dropped_unread"])
async def test_streams_closed_early_or_never_read_keep_the_invariants(rig, how):
    half_open(rig)
    stream = await rig.router.acomplete(msgs(), task="general", tenant="acme", max_tokens=8, stream=True)
    if how == "aclose_after_first":
        await stream.__anext__()
        await stream.aclose()
    elif how == "break":
        async for _ in stream:
            break
        await stream.aclose()
    elif how == "aclose_unread":
        await stream.aclose()
    else:
        del stream
        gc.collect()
    await settle_callbacks()
    check_invariants(rig)
    assert rig.mem.records[0].status == "cancelled"


async def test_engine_stream_dropped_without_a_wrapper_is_metered(rig):
    """The engine's own ChunkStream, never iterated and dropped: collected streams still meter."""
    chunks = rig.router.engine.stream({"model": "auto", "messages": msgs()}, task="general", tenant="acme")
    del chunks
    gc.collect()
    await settle_callbacks()
    check_invariants(rig)


async def test_success_meters_once_and_settles(rig):
    resp = await rig.router.acomplete(msgs(), task="general", tenant="acme", max_tokens=5)
    await settle_callbacks()
    check_invariants(rig)
    assert rig.mem.records[0] is resp.router and resp.router.status == "ok"
    assert rig.budget.spent(f"acme:d:{time.strftime('%Y%m%d', time.gmtime())}") == pytest.approx(resp.router.cost_usd)


# ---------------------------------------------------------------------------- the proxy, over sockets


async def chat_without_usage(request: web.Request) -> web.Response:
    """A provider that answers a chat completion without `usage` (and with odd choice shapes)."""
    body = await request.json()
    choices = [{"index": 0, "message": {"role": "assistant", "content": "hi there"}, "finish_reason": "stop"},
               {"index": 1, "message": "not an object"}, 5]
    return web.json_response({"id": "x", "object": "chat.completion", "model": body["model"], "choices": choices})


class Nested:
    """A field nested `depth` arrays deep (orjson cannot even write it beyond 254 levels)."""

    def __init__(self, depth: int):
        self.depth = depth

    def json(self) -> bytes:
        return b"[" * self.depth + b"1" + b"]" * self.depth


def encode(body: dict) -> bytes:
    plain = {k: v for k, v in body.items() if not isinstance(v, Nested)}
    raw = orjson.dumps(plain)[:-1]
    for k, v in body.items():
        if isinstance(v, Nested):
            raw += b"," + orjson.dumps(k) + b":" + v.json()
    return raw + b"}"


TRIGGERS = {
    "max_tokens_string": {"max_tokens": "100"},
    "max_tokens_negative": {"max_tokens": -1000000},
    "max_tokens_float": {"max_tokens": 1e9},
    "max_cost_string": {"max_cost_usd": "x"},
    "messages_str": {"messages": ["str"]},
    "messages_null": {"messages": [None]},
    "messages_list": {"messages": [[1]]},
    "tools_true": {"tools": True},
    "tools_5": {"tools": 5},
    "temperature_hot": {"temperature": "hot"},
    "n_huge": {"n": 100000},
    "content_5": {"messages": [{"role": "user", "content": [5]}]},
    "role_5": {"messages": [{"role": 5, "content": "hi"}]},
    "nested_300": {"metadata_extra": Nested(300)},
    "nested_1000": {"metadata_extra": Nested(1000)},
}


@pytest.mark.parametrize("name", list(TRIGGERS))
async def test_adversarial_triggers_over_the_proxy_never_500_and_always_metered(sims, name):
    policy = make_policy(sims, TENANT)
    p = await start_proxy(policy)
    try:
        body = {"model": "auto", "messages": msgs(), **TRIGGERS[name]}
        for _ in range(6):  # more than failure_threshold: a client's field must never open a circuit
            status, headers, data = await post(p.url + "/v1/chat/completions", encode(body),
                                               {"Authorization": f"Bearer {KEY}", "X-Router-Task": "general"})
            assert status == 400, (status, data)
            assert data["error"]["param"], data
            rid = headers["x-request-id"]
            assert [i.status for i in p.mem.records if i.request_id == rid] == ["error"]
        assert len(p.mem.records) == 6
        assert p.health.circuit_open() == frozenset()
        assert all(b.opens == 0 for b in p.health.breakers.values())
    finally:
        await p.stop()


async def test_upstream_body_without_usage_is_estimated_not_500(sims):
    runner, url = await scripted_upstream(chat_without_usage)
    try:
        sims = {**sims, "ds": Url(url)}
        p = await start_proxy(make_policy(sims, TENANT))
        try:
            status, headers, data = await post(p.url + "/v1/chat/completions",
                                               {"model": "ds-chat", "messages": msgs()},
                                               {"Authorization": f"Bearer {KEY}", "X-Router-Task": "general"})
            assert status == 200, data
            rid = headers["x-request-id"]
            [info] = [i for i in p.mem.records if i.request_id == rid]
            assert info.status == "ok" and info.usage_estimated and info.completion_tokens == 2
        finally:
            await p.stop()
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("mode,status", [("fail_closed", 503), ("fail_open", 200)])
async def test_redis_error_is_never_500_and_always_metered(sims, mode, status):
    policy = make_policy(sims, TENANT + f"metering: {{budget_unavailable: {mode}}}\n")
    p = await start_proxy(policy, budget=open_budget(f"redis://127.0.0.1:{dead_port()}/0"))
    try:
        code, headers, data = await post(p.url + "/v1/chat/completions", {"model": "auto", "messages": msgs()},
                                         {"Authorization": f"Bearer {KEY}", "X-Router-Task": "general"})
        assert code == status, data
        rid = headers["x-request-id"]
        if status == 503:
            assert data["error"]["code"] == "budget_unavailable" and "budget store" in data["error"]["message"]
        assert [i.status for i in p.mem.records if i.request_id == rid] == ["error" if status == 503 else "ok"]
    finally:
        await p.stop()
