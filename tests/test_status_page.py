"""The status page in a real browser: Debian's chromium, driven headless by playwright, reading
``GET /status`` from a proxy over a socket while a simulated provider goes down and a tenant spends.

Skipped only when chromium is not installed (``apt-get install -y chromium``; .ci/run installs it),
and the skip says so. The screenshots are kept in .cache/test-artifacts/ (ignored by git).
"""

from __future__ import annotations

import os
import shutil
import uuid

import aiohttp
import orjson
import pytest
from aiohttp import web

from router import Router
from router.core.meter import MemoryMeter
from router.core.policy import hash_key
from router.core.policy_parser import parse_policy
from router.dev.simulator import ModelConfig, Simulator
from router.metering.ratelimit import InProcessRateLimiter, RedisRateLimiter
from router.server.proxy import Proxy
from router.server.status import StatusPage

from .conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / ".cache" / "test-artifacts"
KEY = "sk-tenant-acme-0123456789"
PROMPT = "Summarise the quarterly report of the zyzzyva beetle cooperative"   # never on the page

POLICY = """
version: 1
providers:
  ds: {kind: deepseek, base_url: "DS_URL", api_key: "sk-ds-secret", region: eu,
        health: {failure_threshold: 2, open_s: 60}}
  oa: {kind: openai, base_url: "OA_URL", api_key: "sk-oa-secret", region: eu}
models:
  ds-chat: {provider: ds, model: deepseek-chat, price: {input_per_mtok: 200, output_per_mtok: 400}}
  mini:    {provider: oa, model: gpt-4.1-mini, price: {input_per_mtok: 300, output_per_mtok: 600}}
routes:
  general: {targets: [ds-chat, mini]}
rules:
  - {route: general}
retry: {attempts: 1, backoff_s: 0.01}
timeouts: {connect_s: 1, first_token_s: 2, total_s: 10}
tenants:
  acme: {keys: ["KEY_HASH"], budget: {daily_usd: 5, on_exhausted: reject},
          rate_limits: {requests_per_minute: 1000, tokens_per_minute: 1000000, concurrent: 20,
                        per_key: {requests_per_minute: 500}, routes: {general: {requests_per_minute: 800}}}}
"""


def policy_for(ds: Simulator, oa: Simulator):
    text = POLICY.replace("DS_URL", ds.base_url).replace("OA_URL", oa.base_url).replace("KEY_HASH", hash_key(KEY))
    return parse_policy(text, env={})


async def serve_status(router: Router) -> tuple[web.BaseRunner, str]:
    status = StatusPage(router.engine, loaded_at=lambda: router.loaded_at)
    proxy = Proxy(router.engine, status=status)
    runner = web.ServerRunner(proxy.server(), handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def stack():
    ds = await Simulator(models=[ModelConfig("deepseek-chat")], require_api_key="sk-ds-secret").start()
    oa = await Simulator(models=["gpt-4.1-mini"], require_api_key="sk-oa-secret").start()
    router = Router(policy_for(ds, oa), meters=[MemoryMeter()], rate_limiter=InProcessRateLimiter())
    runner, url = await serve_status(router)
    async with aiohttp.ClientSession() as http:
        yield {"url": url, "ds": ds, "oa": oa, "router": router, "http": http}
    await runner.cleanup()
    await router.aclose()
    await ds.stop()
    await oa.stop()


async def chat(s, n: int = 1, url: str | None = None) -> list[dict]:
    out = []
    for _ in range(n):
        resp = await s["http"].post((url or s["url"]) + "/v1/chat/completions",
                                    json={"model": "auto", "messages": [{"role": "user", "content": PROMPT}],
                                          "max_tokens": 50},
                                    headers={"Authorization": f"Bearer {KEY}"})
        assert resp.status == 200, await resp.text()
        out.append(await resp.json())
    return out


async def test_status_json_without_a_key_and_without_text(stack):
    answers = await chat(stack)
    resp = await stack["http"].get(stack["url"] + "/status.json")   # no key: the same rule as /metrics
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/json")
    raw = await resp.read()
    data = orjson.loads(raw)
    policy = stack["router"].policy
    assert data["policy"]["digest"] == policy.digest and data["policy"]["loaded_at"].endswith("Z")
    providers = {p["name"]: p for p in data["providers"]}
    assert set(providers) == {"ds", "oa"}
    [ds_chat] = providers["ds"]["models"]
    assert ds_chat["alias"] == "ds-chat" and ds_chat["state"] == "healthy" and ds_chat["inflight"] == 0
    [acme] = data["tenants"]
    assert acme["name"] == "acme" and acme["daily_usd"] == 5 and acme["requests_today"] == 1
    assert acme["spent_today_usd"] == pytest.approx(stack["router"].engine.meters[0].records[-1].cost_usd, rel=1e-4)
    assert acme["left_usd"] == pytest.approx(5 - acme["spent_today_usd"], rel=1e-4)
    assert acme["rate_limits"]["tenant"]["requests_per_minute"] == 1000
    # the live counts of this minute's window, per scope: the tenant, its key, its route
    live = acme["rate_limit_usage"]
    assert live["available"] and live["window_s"] == 60
    scopes = {r["scope"]: r for r in live["scopes"]}
    key_scope = f"key {hash_key(KEY)[7:23]}"
    assert list(scopes) == ["tenant", key_scope, "general"]
    usage = answers[0]["usage"]
    assert scopes["tenant"]["requests"] == {"used": 1, "limit": 1000}
    assert scopes["tenant"]["tokens"] == {"used": usage["prompt_tokens"] + usage["completion_tokens"], "limit": 1000000}
    assert scopes["tenant"]["concurrent"] == {"used": 0, "limit": 20}   # settled: not in flight any more
    assert 0 < scopes["tenant"]["requests_reset_s"] <= 60
    assert scopes[key_scope]["requests"] == {"used": 1, "limit": 500} and scopes[key_scope]["tokens"] is None
    assert scopes["general"]["requests"] == {"used": 1, "limit": 800}
    again = orjson.loads(await (await stack["http"].get(stack["url"] + "/status.json")).read())
    for before, after in zip(live["scopes"], again["tenants"][0]["rate_limit_usage"]["scopes"], strict=True):
        assert [after[k] for k in ("scope", "requests", "tokens", "concurrent")] == \
            [before[k] for k in ("scope", "requests", "tokens", "concurrent")]   # reading counts nothing
    [d] = data["decisions"]
    assert d["route"] == "general" and d["tenant"] == "acme" and d["status"] == "ok" and d["model"] == "ds-chat"
    assert d["task"] and 0 <= d["confidence"] <= 1 and d["attempts"] == [{"provider": "ds", "model": "ds-chat",
                                                                           "outcome": "ok"}]
    page = await (await stack["http"].get(stack["url"] + "/status")).text()
    for body in (raw.decode(), page):
        assert PROMPT not in body and answers[0]["choices"][0]["message"]["content"] not in body
        assert KEY not in body and "sk-ds-secret" not in body


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: apt-get install -y chromium "
                                              "(CI installs it in .ci/run); the browser test cannot run")
async def test_the_page_in_chromium_shows_a_provider_going_down_and_a_budget_falling(stack):
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await chat(stack)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            await page.goto(stack["url"] + "/status")
            assert await page.title() == "router status"
            ds_row = page.locator('#providers tr[data-provider="ds"]')
            assert (await ds_row.locator("td.state").text_content()) == "healthy"
            live = page.locator('#tenants tr[data-tenant="acme"] td.usage div.rl[data-scope="tenant"]')
            assert (await live.get_attribute("data-requests")) == "1"
            assert (await live.text_content()).startswith("tenant: 1 / 1000 requests, ")
            left_before = _usd(await page.locator('#tenants tr[data-tenant="acme"] td.left').text_content())
            spent_before = _usd(await page.locator('#tenants tr[data-tenant="acme"] td.spent').text_content())
            assert spent_before > 0 and left_before == pytest.approx(5 - spent_before, abs=1e-4)
            await page.screenshot(path=str(ARTIFACTS / "status-page-healthy.png"), full_page=True)

            stack["ds"].set_down()          # 503s: two failures in a row open ds's circuit
            await chat(stack, 3)            # each answered by mini after ds failed (or was skipped)
            await page.reload()
            ds_state = await ds_row.locator("td.state").text_content()
            assert ds_state == "down"
            assert "state-down" in (await ds_row.get_attribute("class"))
            assert (await page.locator('#providers tr[data-provider="oa"] td.state').text_content()) == "healthy"
            left_after = _usd(await page.locator('#tenants tr[data-tenant="acme"] td.left').text_content())
            assert left_after < left_before
            assert (await live.get_attribute("data-requests")) == "4"   # the live count rose with the requests
            assert (await live.text_content()).startswith("tenant: 4 / 1000 requests, ")
            route = page.locator('#tenants tr[data-tenant="acme"] td.usage div.rl[data-scope="general"]')
            assert (await route.text_content()) == "general: 4 / 800 requests"
            decisions = page.locator("#decisions tbody tr")
            assert await decisions.count() == 4
            newest = await decisions.first.text_content()
            assert "circuit_open" in newest and "oa/mini ok" in newest   # ds excluded, and why
            assert PROMPT not in await page.content()
            await page.screenshot(path=str(ARTIFACTS / "status-page-provider-down.png"), full_page=True)
        finally:
            await browser.close()
    assert (ARTIFACTS / "status-page-provider-down.png").stat().st_size > 10_000


def _usd(text: str | None) -> float:
    assert text and text.startswith("$"), text
    return float(text[1:])


async def test_status_is_404_when_not_enabled(stack):
    proxy = Proxy(stack["router"].engine)   # a proxy built without a status page (as without metrics)
    runner = web.ServerRunner(proxy.server(), handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        for path in ("/status", "/status.json"):
            resp = await stack["http"].get(f"http://127.0.0.1:{runner.addresses[0][1]}{path}")
            assert resp.status == 404 and (await resp.json())["error"]["code"] == "unknown_url"
    finally:
        await runner.cleanup()


class Clock:
    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def limiter_and_clock(request):
    clock = Clock()
    if request.param == "memory":
        yield InProcessRateLimiter(wall=clock), clock
        return
    url = _redis_url()
    prefix = "router-test:status-rl:" + uuid.uuid4().hex[:10]
    backend = RedisRateLimiter(url, prefix=prefix, wall=clock)
    yield backend, clock
    await backend.aclose()
    _drop_keys(url, prefix)


def _redis_url() -> str:
    url = os.environ.get("ROUTER_TEST_REDIS_URL")
    if not url:
        pytest.skip("ROUTER_TEST_REDIS_URL is not set")
    return url


def _drop_keys(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=prefix + ":*"))
    if keys:
        client.delete(*keys)
    client.close()


async def test_usage_reads_the_window_without_counting_anything(limiter_and_clock):
    limiter, clock = limiter_and_clock
    policy = parse_policy(POLICY.replace("DS_URL", "http://127.0.0.1:9/v1").replace("OA_URL", "http://127.0.0.1:9/v1")
                          .replace("KEY_HASH", hash_key(KEY)), env={})
    key_id = hash_key(KEY)[7:23]

    async def used() -> dict[str, tuple[int, int, int]]:
        rows = await limiter.tenant_usage(policy, "acme", timeout_s=2)
        return {r.scope.key: (r.usage.requests, r.usage.tokens, r.usage.concurrent) for r in rows}

    assert await used() == {"acme": (0, 0, 0), f"acme:k:{key_id}": (0, 0, 0), "acme:r:general": (0, 0, 0)}
    leases = [await limiter.admit(policy, "acme", key_id, ["general", "ds-chat"], 100, timeout_s=2) for _ in range(3)]
    clock.now += 10
    # the key's scope counts requests only; the route's requests; the tenant's all three
    assert await used() == {"acme": (3, 300, 3), f"acme:k:{key_id}": (3, 0, 0), "acme:r:general": (3, 0, 0)}
    assert await used() == {"acme": (3, 300, 3), f"acme:k:{key_id}": (3, 0, 0), "acme:r:general": (3, 0, 0)}
    [tenant] = [r for r in await limiter.tenant_usage(policy, "acme") if r.scope.key == "acme"]
    assert tenant.usage.requests_reset_s == pytest.approx(50, abs=0.01)
    limiter.settle(leases[0], 40)   # the estimate of 100 becomes the 40 used; its slot is free
    if isinstance(limiter, RedisRateLimiter):
        assert await limiter.store.drain(5)
    assert (await used())["acme"] == (3, 240, 2)
    clock.now += 55   # the three admissions (at t=0) left the window; the settled tokens (t=10) did not
    assert (await used())["acme"] == (0, 40, 2)
    clock.now += 10
    assert (await used())["acme"] == (0, 0, 2)
    # and reading never consumed: the limit still admits exactly what it would have
    assert await limiter.admit(policy, "acme", key_id, ["general"], 1, timeout_s=2) is not None


async def test_replicas_on_one_redis_show_the_same_live_counts():
    """Two routers sharing the Redis rate limiter: each status page shows the requests of both."""
    url = _redis_url()
    prefix = "router-test:status-shared:" + uuid.uuid4().hex[:10]
    ds = await Simulator(models=[ModelConfig("deepseek-chat")], require_api_key="sk-ds-secret").start()
    oa = await Simulator(models=["gpt-4.1-mini"], require_api_key="sk-oa-secret").start()
    routers = [Router(policy_for(ds, oa), meters=[MemoryMeter()], rate_limiter=RedisRateLimiter(url, prefix=prefix))
               for _ in range(2)]
    served = [await serve_status(r) for r in routers]
    try:
        async with aiohttp.ClientSession() as http:
            s = {"http": http, "url": served[0][1]}
            await chat(s, 2)
            await chat(s, 3, url=served[1][1])
            for _, base in served:
                data = orjson.loads(await (await http.get(base + "/status.json")).read())
                [acme] = data["tenants"]
                assert acme["requests_today"] in (2, 3)   # this worker's own tally
                tenant = acme["rate_limit_usage"]["scopes"][0]
                assert tenant["scope"] == "tenant" and tenant["requests"] == {"used": 5, "limit": 1000}
                page = await (await http.get(base + "/status")).text()
                assert 'data-scope="tenant" data-requests="5"' in page
    finally:
        for (runner, _), r in zip(served, routers, strict=True):
            await runner.cleanup()
            await r.aclose()
        await ds.stop()
        await oa.stop()
        _drop_keys(url, prefix)


async def test_a_rate_limit_store_that_does_not_answer_leaves_the_page_up(stack):
    ds, oa = stack["ds"], stack["oa"]
    with socket_closed() as port:
        router = Router(policy_for(ds, oa), meters=[MemoryMeter()],
                        rate_limiter=RedisRateLimiter(f"redis://127.0.0.1:{port}/0", connect_timeout_s=0.2,
                                                      op_timeout_s=0.2))
        runner, base = await serve_status(router)
        try:
            data = orjson.loads(await (await stack["http"].get(base + "/status.json")).read())
            assert data["tenants"][0]["rate_limit_usage"] == {"available": False, "scopes": []}
            page = await (await stack["http"].get(base + "/status")).text()
            assert "rate-limit store unavailable" in page
        finally:
            await runner.cleanup()
            await router.aclose()


class socket_closed:
    """A local port nothing listens on."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        pass


def test_spend_today_resets_at_utc_midnight_and_ignores_earlier_days() -> None:
    from router.core.response import RouterInfo
    from router.server.status import _SpendToday

    midnight = 1_796_342_400.0            # 2026-12-04T00:00:00Z
    tally = _SpendToday(lambda: midnight - 10)
    assert tally.day == "2026-12-03"

    def spend(ts: float, usd: float) -> None:
        info = RouterInfo.__new__(RouterInfo)
        object.__setattr__(info, "created", ts)
        object.__setattr__(info, "tenant", "acme")
        object.__setattr__(info, "cost_usd", usd)
        tally.record(info)

    spend(midnight - 5, 1.0)
    spend(midnight - 0.001, 2.0)
    assert (tally.day, tally.spent, tally.requests) == ("2026-12-03", {"acme": 3.0}, {"acme": 1 + 1})
    spend(midnight, 4.0)                  # the first instant of the new day starts a new tally
    assert (tally.day, tally.spent) == ("2026-12-04", {"acme": 4.0})
    spend(midnight - 1, 8.0)              # a late report from yesterday is not counted today
    spend(midnight + 86_399.5, 16.0)
    assert (tally.day, tally.spent, tally.requests) == ("2026-12-04", {"acme": 20.0}, {"acme": 2})
    spend(midnight + 86_400, 32.0)
    assert (tally.day, tally.spent) == ("2026-12-05", {"acme": 32.0})
