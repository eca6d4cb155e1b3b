"""Secrets never appear in errors, ledger records or explain output, even when an upstream echoes them."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from router import Router
from router.core.errors import InvalidRequest, UpstreamFailed
from router.core.meter import MemoryMeter
from router.core.policy_parser import parse_policy

KEY = "sk-proj-VerySecret0123456789"

POLICY = """
version: 1
providers:
  echo: {{kind: openai, base_url: "{url}", api_key: "{key}", region: us}}
models:
  m: {{provider: echo, model: m, price: {{input_per_mtok: 1, output_per_mtok: 1}}}}
routes:
  general: {{targets: [m]}}
rules:
  - {{route: general}}
retry: {{attempts: 1}}
"""


@pytest.fixture
async def echo_upstream():
    """An upstream that quotes the credentials it got back in its error, as some providers do."""
    state = {"status": 401}

    async def handler(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        body = {"error": {"message": f"Incorrect API key provided: {auth[7:]} (header was {auth})"}}
        return web.json_response(body, status=state["status"])

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1", state
    await runner.cleanup()


@pytest.mark.parametrize("status,error", [(401, UpstreamFailed), (400, InvalidRequest)])
async def test_upstream_echo_of_the_key_is_redacted(echo_upstream, status, error):
    url, state = echo_upstream
    state["status"] = status
    meter = MemoryMeter()
    r = Router(parse_policy(POLICY.format(url=url, key=KEY), env={}), meters=[meter])
    with pytest.raises(error) as ei:
        await r.acomplete([{"role": "user", "content": "hi"}], task="general")
    await r.aclose()
    assert "Incorrect API key provided: [redacted]" in ei.value.message
    record = json.dumps(meter.records[-1].to_dict())
    for text in (str(ei.value), ei.value.message, json.dumps(ei.value.to_openai()), record):
        assert KEY not in text and "VerySecret" not in text


def test_explain_never_shows_keys():
    r = Router(parse_policy(POLICY.format(url="http://127.0.0.1:9/v1", key=KEY), env={}), meters=[])
    d = r.explain([{"role": "user", "content": "hi"}])
    assert KEY not in json.dumps(d.to_dict()) and KEY not in repr(r.policy)
