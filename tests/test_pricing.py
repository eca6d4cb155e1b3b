"""Prices that match the bill: cached, cache-write and reasoning tokens at their own prices, read from
each provider's usage fields; time-of-day windows; the price's source; and the cost in every
response shape, agreeing to the micro-dollar with the ledger and the metrics (over real sockets)."""

from __future__ import annotations

import sqlite3

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.core.errors import PolicyError
from router.core.policy import Price, PriceWindow
from router.core.policy_parser import parse_policy
from router.core.prices import catalogue_lookup, catalogue_version
from router.core.pricing import describe_price, price_at, price_source, usage_cost
from router.core.translate import Usage, read_usage
from router.dev.simulator import ModelConfig, Simulator
from router.engine.engine import Engine
from router.metering.ledger import LedgerMeter, SQLiteLedger, open_ledger
from router.metering.prometheus import PrometheusMeter
from router.transport.chooser import ProviderTransport

from .metering_support import service_url
from .money_support import sse_events, start_proxy

# ----------------------------------------------------------------------------- usage of each provider


@pytest.mark.parametrize("usage,expected", [
    pytest.param({"prompt_tokens": 30, "completion_tokens": 5, "prompt_cache_hit_tokens": 20,
                  "prompt_cache_miss_tokens": 10}, Usage(30, 5, 0, False, 20), id="deepseek"),
    pytest.param({"completion_tokens": 5, "prompt_cache_hit_tokens": 20, "prompt_cache_miss_tokens": 10},
                 Usage(30, 5, 0, False, 20), id="deepseek hit and miss only"),
    pytest.param({"prompt_tokens": 30, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 24},
                  "completion_tokens_details": {"reasoning_tokens": 4}}, Usage(30, 9, 4, False, 24), id="openai"),
    pytest.param({"prompt_tokens": 30, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 0}},
                 Usage(30, 5), id="openai nothing cached"),
    pytest.param({"prompt_tokens": 30, "completion_tokens": 5, "prompt_tokens_details": None},
                 Usage(30, 5), id="vllm without prompt details"),
    pytest.param({"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100,
                  "cache_creation_input_tokens": 40}, Usage(150, 5, 0, False, 100, 40), id="anthropic native"),
    pytest.param({"prompt_tokens": 150, "completion_tokens": 5, "cache_read_input_tokens": 100,
                  "cache_creation_input_tokens": 40,
                  "prompt_tokens_details": {"cached_tokens": 100, "cache_creation_tokens": 40}},
                 Usage(150, 5, 0, False, 100, 40), id="anthropic through litellm"),
    pytest.param({"input_tokens": 50, "output_tokens": 7, "input_tokens_details": {"cached_tokens": 30},
                  "output_tokens_details": {"reasoning_tokens": 3}}, Usage(50, 7, 3, False, 30), id="responses"),
    pytest.param({"prompt_tokens": 30, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 99}},
                 Usage(30, 5, 0, False, 30), id="more cached than prompt: clamped"),
    pytest.param({"prompt_tokens": 30, "completion_tokens": 5, "prompt_cache_hit_tokens": -4},
                 Usage(30, 5), id="negative hit: zero"),
    pytest.param({"prompt_tokens": 30, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": "9"}},
                 Usage(30, 5), id="not a number: ignored"),
])
def test_read_usage_reads_each_providers_cache_fields(usage, expected):
    assert read_usage({"usage": usage}) == expected


# ----------------------------------------------------------------------------- billing, by hand

DEEPSEEK = Price(0.28, 0.42, cached_input_per_mtok=0.028)
SONNET = Price(3.0, 15.0, cached_input_per_mtok=0.3, cache_write_per_mtok=3.75)
THINKER = Price(1.0, 4.0, reasoning_per_mtok=8.0)


@pytest.mark.parametrize("price,usage,micro_usd", [
    (DEEPSEEK, Usage(1000, 100), 1000 * 0.28 + 100 * 0.42),
    (DEEPSEEK, Usage(1000, 100, cached_tokens=800), 200 * 0.28 + 800 * 0.028 + 100 * 0.42),
    (DEEPSEEK, Usage(1000, 100, cached_tokens=1000), 1000 * 0.028 + 100 * 0.42),
    (SONNET, Usage(1150, 50, cached_tokens=1000, cache_write_tokens=100), 50 * 3 + 1000 * 0.3 + 100 * 3.75 + 50 * 15),
    (THINKER, Usage(100, 60, reasoning_tokens=40), 100 * 1 + 20 * 4 + 40 * 8),
    (THINKER, Usage(100, 60, reasoning_tokens=400), 100 * 1 + 60 * 8),           # reasoning clamped to completion
    (Price(0.4, 1.6), Usage(1000, 10, cached_tokens=900), 1000 * 0.4 + 10 * 1.6),  # no cached price: input price
    (Price(0.4, 1.6), Usage(1000, 10, reasoning_tokens=5), 1000 * 0.4 + 10 * 1.6),
])
def test_each_token_kind_is_billed_at_its_price(price, usage, micro_usd):
    assert usage_cost(price, usage) == pytest.approx(micro_usd / 1e6, abs=1e-15)


OFF_PEAK = Price(0.28, 0.42, cached_input_per_mtok=0.028,
                 windows=(PriceWindow(16 * 60 + 30, 30, Price(0.14, 0.21, cached_input_per_mtok=0.014)),))


@pytest.mark.parametrize("hhmm,input_price", [
    ("16:29", 0.28), ("16:30", 0.14), ("23:59", 0.14), ("00:00", 0.14), ("00:29", 0.14), ("00:30", 0.28),
    ("12:00", 0.28),
])
def test_a_window_past_midnight_applies_from_its_start_to_its_end(hhmm, input_price):
    h, m = map(int, hhmm.split(":"))
    when = 1_750_000_000 // 86400 * 86400 + h * 3600 + m * 60   # some day, at hh:mm UTC
    assert price_at(OFF_PEAK, when).input_per_mtok == input_price
    assert usage_cost(OFF_PEAK, Usage(1000, 0, cached_tokens=500), when) == pytest.approx(
        500 * input_price / 1e6 + 500 * input_price / 10 / 1e6, abs=1e-15)
    assert price_source(OFF_PEAK, when) == ("policy [16:30-00:30 UTC]" if input_price == 0.14 else "policy")


def test_policy_prices_parse_every_key_and_report_mistakes_with_their_path():
    text = """
providers: {ds: {kind: deepseek, base_url: "https://api.deepseek.com/v1", api_key: k}}
models:
  a: {provider: ds, model: deepseek-chat, price: {input_per_mtok: 0.28, cached_input_per_mtok: 0.028,
      output_per_mtok: 0.42, windows: [{from: "16:30", to: "00:30", input_per_mtok: 0.14, output_per_mtok: 0.21}]}}
  b: {provider: ds, model: deepseek-chat}
routes: {general: {targets: [a, b]}}
rules: [{route: general}]
reference_model: {name: sonnet, price: {input_per_mtok: 3, cached_input_per_mtok: 0.3, cache_write_per_mtok: 3.75,
                                        output_per_mtok: 15, reasoning_per_mtok: 15}}
"""
    policy = parse_policy(text, env={})
    a = policy.models["a"].price
    assert (a.input_per_mtok, a.cached_input_per_mtok, a.output_per_mtok, a.source) == (0.28, 0.028, 0.42, "policy")
    window = a.windows[0]
    # keys a window leaves out are the base price's
    assert (window.label, window.price.input_per_mtok, window.price.cached_input_per_mtok) == ("16:30-00:30", 0.14, 0.028)
    b = policy.models["b"].price
    assert b.source == f"catalogue:deepseek/deepseek-chat (litellm {catalogue_version()})"
    assert b.cached_input_per_mtok == catalogue_lookup("deepseek", "deepseek-chat").cached_input_per_mtok is not None
    assert policy.reference_model.price.cache_write_per_mtok == 3.75
    assert describe_price(a)["windows"] == [{"utc": "16:30-00:30", "input_per_mtok": 0.14,
                                             "cached_input_per_mtok": 0.028, "output_per_mtok": 0.21}]

    bad = (text.replace('"16:30"', '"16:61"').replace("cached_input_per_mtok: 0.028", "cached_input_per_mtok: -1")
           .replace("reasoning_per_mtok: 15", "reasoning_per_mtk: 15"))
    with pytest.raises(PolicyError) as e:
        parse_policy(bad, env={})
    paths = {i.path for i in e.value.issues}
    assert paths == {"models.a.price.windows[0].from", "models.a.price.cached_input_per_mtok",
                     "reference_model.price.reasoning_per_mtk"}, e.value.issues


# ----------------------------------------------------------------------------- over real sockets

PROMPT = "lorem ipsum dolor sit amet " * 600            # 16,200 characters: 4 + 4,050 = 4,054 tokens
PROMPT_TOKENS, CACHED = 4 + len(PROMPT) // 4, 3000
DS_REPLY, OA_REPLY = 1000, 800

POLICY = """
providers:
  ds: {{kind: deepseek, base_url: "{ds}", api_key: sk-ds}}
  oa: {{kind: openai, base_url: "{oa}", api_key: sk-oa}}
models:
  ds-chat: {{provider: ds, model: deepseek-chat, price: {{input_per_mtok: 0.28, cached_input_per_mtok: 0.028,
             output_per_mtok: 0.42}}}}
  mini: {{provider: oa, model: gpt-4.1-mini, price: {{input_per_mtok: 0.4, cached_input_per_mtok: 0.1,
          output_per_mtok: 1.6}}}}
routes:
  general: {{targets: [ds-chat, mini]}}
rules: [{{route: general}}]
"""

# by hand: (uncached x input + cached x cached input + output x output price) / 1e6
HAND = {"ds-chat": ((PROMPT_TOKENS - CACHED) * 0.28 + CACHED * 0.028 + DS_REPLY * 0.42) / 1e6,
        "mini": ((PROMPT_TOKENS - CACHED) * 0.4 + CACHED * 0.1 + OA_REPLY * 1.6) / 1e6}


@pytest.fixture
async def cached_sims():
    ds = Simulator(models=[ModelConfig("deepseek-chat", reply_tokens=DS_REPLY, cached_tokens=CACHED,
                                       usage_style="deepseek")], require_api_key="sk-ds")
    oa = Simulator(models=[ModelConfig("gpt-4.1-mini", reply_tokens=OA_REPLY, cached_tokens=CACHED)],
                   require_api_key="sk-oa")
    await ds.start()
    await oa.start()
    yield ds, oa
    await ds.stop()
    await oa.stop()


def _samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_a_mixed_cached_request_costs_the_hand_computation_in_every_shape_ledger_and_metrics(cached_sims, tmp_path):
    ds, oa = cached_sims
    assert HAND["ds-chat"] == pytest.approx(0.00079912, abs=1e-12)   # 1,054 x 0.28 + 3,000 x 0.028 + 1,000 x 0.42
    assert HAND["mini"] == pytest.approx(0.0020016, abs=1e-12)       # 1,054 x 0.4 + 3,000 x 0.1 + 800 x 1.6
    prom = PrometheusMeter(lock_free=True)
    ledger = LedgerMeter(SQLiteLedger(tmp_path / "ledger.db"), metrics=prom)
    px = await start_proxy(POLICY.format(ds=ds.base_url, oa=oa.base_url), meters=[prom, ledger])
    messages = [{"role": "user", "content": PROMPT}]
    seen: dict[str, list[float]] = {"ds-chat": [], "mini": []}
    try:
        async with aiohttp.ClientSession() as http:
            for model in ("ds-chat", "mini"):
                hand = HAND[model]
                # chat, JSON: the header and usage.cost
                async with http.post(px.url + "/v1/chat/completions",
                                     json={"model": model, "messages": messages}) as r:
                    assert r.status == 200, await r.text()
                    body = await r.json()
                    assert r.headers["x-router-cost-usd"] == f"{hand:.10f}"
                    assert body["usage"]["cost"] == round(hand, 10)
                    seen[model].append(float(r.headers["x-router-cost-usd"]))
                # chat, streamed: usage.cost in the final usage chunk, right before [DONE]
                async with http.post(px.url + "/v1/chat/completions", json={
                        "model": model, "messages": messages, "stream": True,
                        "stream_options": {"include_usage": True}}) as r:
                    events = sse_events(await r.read())
                    assert events[-1] == (None, "[DONE]")
                    usage = events[-2][1]["usage"]
                    assert usage["cost"] == round(hand, 10)
                    seen[model].append(usage["cost"])
                # Anthropic Messages, streamed: message_delta's usage
                async with http.post(px.url + "/v1/messages", json={
                        "model": model, "max_tokens": 4000, "stream": True, "messages": messages}) as r:
                    delta = next(d for name, d in sse_events(await r.read()) if name == "message_delta")
                    assert delta["usage"]["cost"] == round(hand, 10)
                    assert delta["usage"]["cache_read_input_tokens"] == CACHED
                    seen[model].append(delta["usage"]["cost"])
                # Anthropic Messages, JSON
                async with http.post(px.url + "/v1/messages", json={
                        "model": model, "max_tokens": 4000, "messages": messages}) as r:
                    msg = await r.json()
                    assert msg["usage"]["cost"] == round(hand, 10) == float(r.headers["x-router-cost-usd"])
                    seen[model].append(msg["usage"]["cost"])
                # OpenAI Responses, streamed: response.completed's usage
                async with http.post(px.url + "/v1/responses", json={
                        "model": model, "input": PROMPT, "stream": True}) as r:
                    done = next(d for name, d in sse_events(await r.read()) if name == "response.completed")
                    assert done["response"]["usage"]["cost"] == round(hand, 10)
                    assert done["response"]["usage"]["input_tokens_details"]["cached_tokens"] == CACHED
                    seen[model].append(done["response"]["usage"]["cost"])
                # OpenAI Responses, JSON
                async with http.post(px.url + "/v1/responses", json={"model": model, "input": PROMPT}) as r:
                    resp = await r.json()
                    assert resp["usage"]["cost"] == round(hand, 10)
                    seen[model].append(resp["usage"]["cost"])
            metrics, _ = prom.render()
    finally:
        await px.stop()
    rows = open_ledger(tmp_path / "ledger.db").records()
    for model in ("ds-chat", "mini"):
        mine = [r for r in rows if r.model == model]
        assert len(mine) == 6 and all(r.status == "ok" for r in mine)
        for r in mine:   # the ledger holds the same float the headers and usage.cost were printed from
            assert r.cost_usd == pytest.approx(HAND[model], abs=1e-12)
            assert (r.prompt_tokens, r.cached_tokens, r.price_source) == (PROMPT_TOKENS, CACHED, "policy")
        assert seen[model] == [round(HAND[model], 10)] * 6
    samples = _samples(metrics)
    provider = {"ds-chat": "ds", "mini": "oa"}
    for model in ("ds-chat", "mini"):   # a pinned alias is its own route
        cost = samples["router_cost_usd_total", (("model", model), ("provider", provider[model]), ("route", model))]
        assert cost == pytest.approx(6 * HAND[model], abs=1e-12)
        cached = samples["router_tokens_total", (("kind", "cached"), ("model", model), ("provider", provider[model]))]
        assert cached == 6 * CACHED


async def test_the_engine_bills_the_window_the_request_arrived_in_and_records_it(cached_sims):
    ds, _ = cached_sims
    window = ('windows: [{from: "16:30", to: "00:30", input_per_mtok: 0.14, cached_input_per_mtok: 0.014, '
              'output_per_mtok: 0.21}]')
    text = POLICY.format(ds=ds.base_url, oa="http://127.0.0.1:9/v1").replace(
        "output_per_mtok: 0.42}}", "output_per_mtok: 0.42, " + window + "}}")
    policy = parse_policy(text, env={})
    assert policy.models["ds-chat"].price.windows
    day = 1_750_000_000 // 86400 * 86400
    for hour, factor, source in ((12, 1.0, "policy"), (20, 0.5, "policy [16:30-00:30 UTC]")):
        engine = Engine(policy, ProviderTransport(), wall=lambda h=hour: day + h * 3600)
        resp = await engine.complete({"model": "ds-chat", "messages": [{"role": "user", "content": PROMPT}]})
        assert resp.router.cost_usd == pytest.approx(HAND["ds-chat"] * factor, abs=1e-12)
        assert resp.router.price_source == source
        await engine.transport.aclose()


def _old_ledger(path) -> None:
    """A ledger as the version before cached tokens wrote it (no cache or price-source columns), with one row."""
    conn = sqlite3.connect(path)
    conn.execute("""CREATE TABLE router_requests (id TEXT PRIMARY KEY, ts REAL NOT NULL, tenant TEXT, task TEXT NOT NULL,
        task_source TEXT NOT NULL, route TEXT NOT NULL, provider TEXT, model TEXT, upstream_model TEXT, region TEXT,
        prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, reasoning_tokens INTEGER NOT NULL,
        usage_estimated INTEGER NOT NULL, cost_usd REAL NOT NULL, reference_cost_usd REAL, latency_s REAL NOT NULL,
        ttft_s REAL, status TEXT NOT NULL, error TEXT, attempts TEXT NOT NULL, api TEXT NOT NULL DEFAULT 'chat',
        client_request_id TEXT)""")
    conn.execute("INSERT INTO router_requests VALUES ('req_old', 1.0, 'acme', 'general', 'classifier', 'general', "
                 "'ds', 'ds-chat', 'deepseek-chat', NULL, 10, 5, 0, 0, 0.001, NULL, 0.1, 0.1, 'ok', NULL, '[]', "
                 "'chat', NULL)")
    conn.commit()
    conn.close()


def test_an_older_sqlite_ledger_gains_the_new_columns_and_old_rows_read_as_uncached(tmp_path):
    path = tmp_path / "old.db"
    _old_ledger(path)
    ledger = SQLiteLedger(path)
    old = ledger.get("req_old")
    assert (old.cached_tokens, old.cache_write_tokens, old.price_source, old.response_cache, old.cache_saved_usd) == (
        0, 0, None, None, 0.0)
    [row] = ledger.summary()
    assert (row.requests, row.cached_tokens, row.cache_hits, row.cache_saved_usd) == (1, 0, 0, 0.0)
    ledger.close()


async def test_an_older_postgres_ledger_gains_the_new_columns(tmp_path):
    url = service_url("ROUTER_TEST_POSTGRES_URL")
    import uuid

    import psycopg

    schema = "t14_" + uuid.uuid4().hex[:10]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute("""CREATE TABLE router_requests (id TEXT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, tenant TEXT,
            task TEXT NOT NULL, task_source TEXT NOT NULL, route TEXT NOT NULL, provider TEXT, model TEXT,
            upstream_model TEXT, region TEXT, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
            reasoning_tokens INTEGER NOT NULL, usage_estimated BOOLEAN NOT NULL, cost_usd DOUBLE PRECISION NOT NULL,
            reference_cost_usd DOUBLE PRECISION, latency_s DOUBLE PRECISION NOT NULL, ttft_s DOUBLE PRECISION,
            status TEXT NOT NULL, error TEXT, attempts JSONB NOT NULL, api TEXT NOT NULL DEFAULT 'chat',
            client_request_id TEXT)""")
        conn.execute("INSERT INTO router_requests VALUES ('req_old', 1.0, 'acme', 'general', 'classifier', 'general', "
                     "'ds', 'ds-chat', 'deepseek-chat', NULL, 10, 5, 0, false, 0.001, NULL, 0.1, 0.1, 'ok', NULL, "
                     "'[]', 'chat', NULL)")
    try:
        ledger = open_ledger(f"{url}?schema={schema}")
        meter = LedgerMeter(ledger)
        from router.core.response import RouterInfo

        info = RouterInfo("req_new", "general", "hint", 1.0, None, "general", None, provider="ds", model="ds-chat",
                          prompt_tokens=30, completion_tokens=5, cached_tokens=20, cost_usd=0.00001,
                          price_source="policy", status="ok", created=2.0)
        meter.record(info)
        assert meter.flush()
        rows = {r.id: r for r in ledger.records()}
        assert rows["req_old"].cached_tokens == 0 and rows["req_old"].price_source is None
        assert (rows["req_new"].cached_tokens, rows["req_new"].price_source) == (20, "policy")
        meter.close()
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_the_catalogue_price_carries_cached_rates_and_its_version():
    entry = catalogue_lookup("deepseek", "deepseek-chat")
    assert entry.cached_input_per_mtok is not None and entry.cached_input_per_mtok < entry.input_per_mtok
    assert entry.source.startswith("catalogue:deepseek/deepseek-chat (litellm ") and catalogue_version() in entry.source
    assert orjson.dumps(describe_price(Price(entry.input_per_mtok, entry.output_per_mtok, entry.source,
                                             entry.cached_input_per_mtok)))


def test_cheapest_first_follows_the_window_in_force_and_explain_shows_it():
    from router.core.decision import decide

    text = """
providers: {ds: {kind: deepseek, base_url: "https://api.deepseek.com/v1", api_key: k},
            oa: {kind: openai, base_url: "https://api.openai.com/v1", api_key: k}}
models:
  ds: {provider: ds, model: deepseek-chat, price: {input_per_mtok: 0.5, output_per_mtok: 0.5,
       windows: [{from: "16:30", to: "00:30", input_per_mtok: 0.1, output_per_mtok: 0.1}]}}
  oa: {provider: oa, model: gpt-4.1-mini, price: {input_per_mtok: 0.3, output_per_mtok: 0.3}}
routes: {general: {targets: [ds, oa], strategy: cheapest}}
rules: [{route: general}]
"""
    policy = parse_policy(text, env={})
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 100}
    day = 1_750_000_000 // 86400 * 86400
    noon, evening = decide(policy, body, now=day + 12 * 3600), decide(policy, body, now=day + 20 * 3600)
    assert [c.model for c in noon.allowed] == ["oa", "ds"]
    assert [c.model for c in evening.allowed] == ["ds", "oa"]           # off-peak: DeepSeek is the cheaper
    est = {c.model: c.estimated_cost_usd for c in evening.candidates}
    assert est["ds"] == pytest.approx((evening.prompt_tokens + 100) * 0.1 / 1e6, abs=1e-15)
    assert [c.model for c in decide(policy, body).allowed] == ["oa", "ds"]   # no time given: the base price
