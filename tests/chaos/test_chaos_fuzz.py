"""Body fuzzing of every endpoint, over real sockets: no 5xx, and every request metered exactly once.

Hypothesis builds requests for /v1/chat/completions, /v1/messages, /v1/responses, /v1/embeddings,
/v1/messages/count_tokens and /v1/models: each API's own fields with values of every JSON type
(and plausible ones), raw bytes that are not JSON, keys that are right, wrong, missing or
lower-cased, task and residency hints that exist or not, streams and not. A real proxy over
simulated upstreams (in-process, on a loop of its own) answers each. Every answer must be below
500 and in the API's error shape when it is an error; every request to a metered endpoint leaves
exactly one record, under the `x-request-id` it was answered with, in memory and in the SQLite
ledger (count_tokens and models are not metered, by design: they reach no upstream).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from urllib.parse import quote

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router import Router
from router.core.meter import MemoryMeter
from router.dev.simulator import Simulator
from router.metering.budget import InProcessBudget
from router.metering.ledger import LedgerMeter, open_ledger
from router.server.proxy import Proxy, ProxyOptions
from tests.chaos.support import KEYS, ThreadedLoop, chaos_policy, figure, scale

EXAMPLES = scale(150, 3000)
METERED = {"chat", "messages", "responses", "embeddings"}
PATHS = {"chat": "/v1/chat/completions", "messages": "/v1/messages", "responses": "/v1/responses",
         "embeddings": "/v1/embeddings", "count_tokens": "/v1/messages/count_tokens", "models": "/v1/models"}
STATS: dict[str, Counter[str]] = {}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Simulators and a proxy on a loop of their own; the proxy meters into memory and SQLite."""
    loop = ThreadedLoop()
    ledger_path = str(tmp_path_factory.mktemp("fuzz") / "ledger.db")

    async def setup():
        sims = {name: await Simulator(models=["m"]).start() for name in ("eu-a", "eu-b", "us")}
        policy = chaos_policy(sims["eu-a"].base_url, sims["eu-b"].base_url, sims["us"].base_url)
        mem = MemoryMeter(maxlen=1_000_000)
        ledger = LedgerMeter(open_ledger(ledger_path), flush_interval_s=0.05)
        router = Router(policy, meters=[mem, ledger], budget=InProcessBudget(), monitor=False)
        proxy = Proxy(router.engine, ProxyOptions(max_body_bytes=256 * 1024, keepalive_s=0.5))
        from aiohttp import web

        runner = web.ServerRunner(proxy.server(), handle_signals=False, shutdown_timeout=1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return sims, router, runner, mem, ledger

    sims, router, runner, mem, ledger = loop.call(setup())
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    with httpx.Client(base_url=url, timeout=30) as http:
        yield http, mem, ledger, ledger_path

    async def teardown():
        await runner.cleanup()
        await router.aclose()
        for s in sims.values():
            await s.stop()

    loop.call(teardown())
    loop.close()


# ---------------------------------------------------------------------------- strategies

leaf = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=12)
json_values = st.recursive(leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                           max_leaves=8)
models = st.sampled_from(["auto", "general", "a", "b", "u", "gpt-4o", "claude-sonnet-4", ""]) | json_values
text = st.text(max_size=40)
small_int = st.integers(-3, 300)


def maybe(values: st.SearchStrategy) -> st.SearchStrategy:
    """Plausible values most of the time, anything JSON now and then."""
    return st.one_of(values, values, values, json_values)


chat_message = st.fixed_dictionaries(
    {"role": maybe(st.sampled_from(["user", "assistant", "system", "developer", "tool"])),
     "content": maybe(text | st.lists(st.fixed_dictionaries({"type": maybe(st.just("text")), "text": maybe(text)}),
                                      max_size=2))},
    optional={"tool_call_id": maybe(text), "name": maybe(text),
              "tool_calls": maybe(st.lists(st.fixed_dictionaries(
                  {"id": text, "type": st.just("function"),
                   "function": st.fixed_dictionaries({"name": maybe(text), "arguments": maybe(text)})}), max_size=1))})
tool = st.fixed_dictionaries({"type": maybe(st.just("function")), "function": maybe(st.fixed_dictionaries(
    {"name": maybe(st.sampled_from(["get_weather", "x"])), "parameters": maybe(st.just({"type": "object"}))}))})

chat_bodies = st.fixed_dictionaries(
    {"model": models, "messages": maybe(st.lists(chat_message, max_size=3))},
    optional={"stream": maybe(st.booleans()), "max_tokens": maybe(small_int), "max_completion_tokens": maybe(small_int),
              "temperature": maybe(st.floats(-1, 3)), "top_p": maybe(st.floats(-1, 2)), "n": maybe(st.integers(-1, 3)),
              "stop": maybe(text | st.lists(text, max_size=2)), "tools": maybe(st.lists(tool, max_size=2)),
              "tool_choice": maybe(st.sampled_from(["auto", "none", "required"])),
              "stream_options": maybe(st.fixed_dictionaries({"include_usage": maybe(st.booleans())})),
              "max_cost_usd": maybe(st.floats(-1, 1)), "response_format": json_values, "user": json_values,
              "seed": json_values, "x_unknown": json_values})

block = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": maybe(text)}),
    st.fixed_dictionaries({"type": st.just("image"), "source": maybe(st.fixed_dictionaries(
        {"type": maybe(st.just("base64")), "media_type": maybe(st.just("image/png")), "data": maybe(text)}))}),
    st.fixed_dictionaries({"type": st.just("tool_use"), "id": maybe(text), "name": maybe(text), "input": json_values}),
    st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": maybe(text), "content": maybe(text)}),
    st.fixed_dictionaries({"type": maybe(text)}), json_values)
anthropic_message = st.fixed_dictionaries({"role": maybe(st.sampled_from(["user", "assistant"])),
                                           "content": maybe(text | st.lists(block, max_size=3))})
messages_bodies = st.fixed_dictionaries(
    {"model": models, "max_tokens": maybe(small_int), "messages": maybe(st.lists(anthropic_message, max_size=3))},
    optional={"system": maybe(text | st.lists(block, max_size=2)), "stream": maybe(st.booleans()),
              "tools": maybe(st.lists(st.fixed_dictionaries({"name": maybe(text), "input_schema": json_values}),
                                      max_size=2)),
              "tool_choice": json_values, "thinking": json_values, "metadata": json_values,
              "stop_sequences": maybe(st.lists(text, max_size=2)), "temperature": maybe(st.floats(-1, 3))})

input_item = st.one_of(
    st.fixed_dictionaries({"role": maybe(st.sampled_from(["user", "assistant", "system", "developer"])),
                           "content": maybe(text | st.lists(st.fixed_dictionaries(
                               {"type": maybe(st.sampled_from(["input_text", "output_text"])), "text": maybe(text)}),
                               max_size=2))}),
    st.fixed_dictionaries({"type": st.just("function_call"), "call_id": maybe(text), "name": maybe(text),
                           "arguments": maybe(text)}),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": maybe(text), "output": maybe(text)}),
    json_values)
responses_bodies = st.fixed_dictionaries(
    {"model": models, "input": maybe(text | st.lists(input_item, max_size=3))},
    optional={"instructions": maybe(text), "stream": maybe(st.booleans()), "max_output_tokens": maybe(small_int),
              "tools": maybe(st.lists(st.fixed_dictionaries({"type": maybe(st.just("function")), "name": maybe(text),
                                                             "parameters": json_values}), max_size=2)),
              "previous_response_id": maybe(text), "reasoning": json_values, "text": json_values, "store": json_values})

embeddings_bodies = st.fixed_dictionaries(
    {"model": maybe(st.sampled_from(["a", "b", "u", "auto", "nope"])),
     "input": maybe(text | st.lists(text, max_size=3) | st.lists(st.integers(-5, 70000), max_size=5))},
    optional={"encoding_format": maybe(st.sampled_from(["float", "base64"])), "dimensions": maybe(small_int)})

HOSTILE = {"chat": chat_bodies, "messages": messages_bodies, "responses": responses_bodies,
           "embeddings": embeddings_bodies, "count_tokens": messages_bodies}

# plausible requests, so that successes (JSON and streamed) are fuzzed too, not only refusals
words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
routed = st.sampled_from(["auto", "auto", "general", "a", "b", "u"])
PLAUSIBLE = {
    "chat": st.fixed_dictionaries(
        {"model": routed, "messages": st.lists(st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "system"]), "content": words}), min_size=1, max_size=3)
            .map(lambda m: [*m, {"role": "user", "content": "and?"}])},
        optional={"stream": st.booleans(), "max_tokens": st.integers(1, 40), "temperature": st.floats(0, 2),
                  "top_p": st.floats(0, 1), "n": st.integers(1, 2), "stop": st.lists(words, max_size=2),
                  "user": words, "seed": st.integers(0, 2**31), "tools": st.just([{"type": "function", "function": {
                      "name": "get_weather", "parameters": {"type": "object", "properties": {}}}}])}),
    "messages": st.fixed_dictionaries(
        {"model": routed, "max_tokens": st.integers(1, 40), "messages": st.lists(st.fixed_dictionaries(
            {"role": st.just("user"), "content": words | st.lists(st.fixed_dictionaries(
                {"type": st.just("text"), "text": words}), min_size=1, max_size=2)}), min_size=1, max_size=2)},
        optional={"system": words, "stream": st.booleans(), "temperature": st.floats(0, 1),
                  "stop_sequences": st.lists(words, max_size=2)}),
    "responses": st.fixed_dictionaries(
        {"model": routed, "input": words | st.lists(st.fixed_dictionaries(
            {"role": st.just("user"), "content": words}), min_size=1, max_size=2)},
        optional={"instructions": words, "stream": st.booleans(), "max_output_tokens": st.integers(16, 40)}),
    "embeddings": st.fixed_dictionaries({"model": st.sampled_from(["a", "b", "u"]),
                                         "input": words | st.lists(words, min_size=1, max_size=3)}),
}
PLAUSIBLE["count_tokens"] = PLAUSIBLE["messages"]
raw_bodies = st.one_of(st.binary(max_size=64), st.just(b""), st.just(b"[" * 5000 + b"]" * 5000),
                       st.just(b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}]'),
                       st.just('{"model": "auto", "messages": "é"}'.encode("latin-1")),
                       st.text(max_size=40).map(str.encode))
good_auth = st.sampled_from([{"Authorization": f"Bearer {KEYS['open']}"}, {"Authorization": f"Bearer {KEYS['eu']}"},
                             {"Authorization": f"Bearer {KEYS['budget']}"}, {"x-api-key": KEYS["open"]}])
any_auth = good_auth | st.sampled_from([{"Authorization": f"bearer {KEYS['open']}"},
                                        {"Authorization": "Bearer sk-wrong"}, {"Authorization": "Basic abc"}, {}])
good_hints = st.fixed_dictionaries({}, optional={
    "X-Router-Task": st.sampled_from(["coding", "general", "reasoning"]), "X-Router-Residency": st.just("eu")})
any_hints = st.fixed_dictionaries({}, optional={
    "X-Router-Task": st.sampled_from(["coding", "general", "reasoning", "poetry", ""]),
    "X-Router-Residency": st.sampled_from(["eu", "us", "mars"]),
    "X-Request-Id": st.text(min_size=1, max_size=30).filter(lambda s: s.isprintable() and s.isascii()
                                                             and s.strip() == s)})   # what a client can send


# ---------------------------------------------------------------------------- checks


def error_shape_ok(api: str, status: int, body: bytes) -> bool:
    if status < 400:
        return True
    data = orjson.loads(body)
    if api in ("messages", "count_tokens"):
        return data.get("type") == "error" and set(data["error"]) >= {"type", "message"}
    return set(data["error"]) == {"message", "type", "param", "code"}


def encode(body: object) -> bytes:
    """JSON as a client may send it: integers beyond 64 bits and Infinity included (stdlib json)."""
    return json.dumps(body).encode()


def records_for(mem: MemoryMeter, rid: str) -> int:
    return sum(1 for i in list(mem.records) if i.request_id == rid)


def exchange(world, api: str, data: st.DataObject) -> None:
    http, mem, _, _ = world
    plausible = data.draw(st.integers(0, 2), "plausible?") > 0   # two thirds plausible, one third hostile
    headers = {**data.draw(good_auth if plausible else any_auth, "auth"),
               **data.draw(good_hints if plausible else any_hints, "hints")}
    stats = STATS.setdefault(api, Counter())
    if api == "models":
        name = data.draw(st.one_of(st.just(""), st.sampled_from(["/auto", "/general", "/a", "/nope"]),
                                   st.text(max_size=20).map(lambda t: "/" + quote(t, safe=""))), "name")
        r = http.get(PATHS[api] + name, headers=headers)
    else:
        if plausible:
            raw = encode(data.draw(PLAUSIBLE[api], "body"))
        else:
            raw = data.draw(st.one_of(HOSTILE[api].map(encode), raw_bodies), "body")
        r = http.post(PATHS[api], content=raw, headers={"Content-Type": "application/json", **headers})
    body = r.read()
    stats["requests"] += 1
    stats[f"{r.status_code // 100}xx"] += 1
    assert r.status_code < 500, (api, r.status_code, body[:500])
    ctype = r.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        assert error_shape_ok(api, r.status_code, body), (api, body[:300])
    rid = r.headers.get("x-request-id")
    if api in METERED:
        assert rid, (api, r.status_code)
        deadline = time.monotonic() + 2
        while records_for(mem, rid) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert records_for(mem, rid) == 1, (api, r.status_code, rid)
        stats["metered"] += 1
        STATS.setdefault("_ids", Counter())[rid] += 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # hypothesis' own, when it reports a failure
@pytest.mark.parametrize("api", list(PATHS))
@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not scale(False, True),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(data=st.data())
def test_fuzzed_requests_never_get_a_5xx_and_are_metered_once(world, api, data):
    exchange(world, api, data)


# what the fuzzing found, kept: each got a 500 once
FOUND = [("chat", {"model": "auto", "messages": [{"role": [], "content": ""}]}),   # unhashable role in a fast path
         ("chat", {"model": "auto", "messages": [{"role": {}, "content": "x"}]})]


@pytest.mark.parametrize("api,body", FOUND)
def test_what_fuzzing_found_stays_fixed(world, api, body):
    http, mem, _, _ = world
    r = http.post(PATHS[api], content=encode(body), headers={"Authorization": f"Bearer {KEYS['open']}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].role"
    deadline = time.monotonic() + 2
    while records_for(mem, r.headers["x-request-id"]) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert records_for(mem, r.headers["x-request-id"]) == 1
    STATS.setdefault("_ids", Counter())[r.headers["x-request-id"]] += 1


def test_every_fuzzed_request_left_exactly_one_ledger_row(world):
    """After the fuzzing: the SQLite ledger holds one row per metered request, no more, no fewer."""
    _, mem, ledger, path = world
    assert ledger.flush(10)
    db = open_ledger(path)
    rows = Counter(r.id for r in db.records())
    db.close()
    ids = STATS.get("_ids", Counter())
    assert ids and all(n == 1 for n in ids.values())
    assert set(ids) <= set(rows) and all(rows[i] == 1 for i in ids)
    for api in PATHS:
        s = STATS.get(api, Counter())
        figure(f"fuzz {PATHS[api]}", requests=s["requests"], **{"5xx": s["5xx"]}, **{"2xx": s["2xx"]},
               **{"4xx": s["4xx"]}, metered_once=s["metered"] if api in METERED else "n/a (not metered)")
    figure("fuzz ledger", metered_requests=len(ids), ledger_rows=sum(rows[i] for i in ids), all_rows=sum(rows.values()))
