"""The status page in a real browser: Debian's chromium, driven headless by playwright, reading
``GET /status`` from a proxy over a socket while a simulated provider goes down and a tenant spends.

Skipped only when chromium is not installed (``apt-get install -y chromium``; .ci/run installs it),
and the skip says so. The screenshots are kept in .cache/test-artifacts/ (ignored by git).
"""

from __future__ import annotations

import shutil

import aiohttp
import orjson
import pytest
from aiohttp import web

from router import Router
from router.core.meter import MemoryMeter
from router.core.policy import hash_key
from router.core.policy_parser import parse_policy
from router.dev.simulator import ModelConfig, Simulator
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
          rate_limits: {requests_per_minute: 1000}}
"""


@pytest.fixture
async def stack():
    ds = await Simulator(models=[ModelConfig("deepseek-chat")], require_api_key="sk-ds-secret").start()
    oa = await Simulator(models=["gpt-4.1-mini"], require_api_key="sk-oa-secret").start()
    text = POLICY.replace("DS_URL", ds.base_url).replace("OA_URL", oa.base_url).replace("KEY_HASH", hash_key(KEY))
    policy = parse_policy(text, env={})
    router = Router(policy, meters=[MemoryMeter()])
    status = StatusPage(router.engine, loaded_at=lambda: router.loaded_at)
    proxy = Proxy(router.engine, status=status)
    runner = web.ServerRunner(proxy.server(), handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    async with aiohttp.ClientSession() as http:
        yield {"url": url, "ds": ds, "oa": oa, "router": router, "http": http}
    await runner.cleanup()
    await router.aclose()
    await ds.stop()
    await oa.stop()


async def chat(s, n: int = 1) -> list[dict]:
    out = []
    for _ in range(n):
        resp = await s["http"].post(s["url"] + "/v1/chat/completions",
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
