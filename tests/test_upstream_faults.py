"""Upstream faults the adversarial run found mishandled: a stream that fails or errors mid-way,
keys in error text near the cut, and a route that stayed closed after its fault cleared."""

from __future__ import annotations

import asyncio
import random
import string
import time

import aiohttp
import orjson
import pytest
from aiohttp import web

from router import Router
from router.core.meter import MemoryMeter
from router.core.policy_parser import load_policy, parse_policy
from router.dev.simulator import Simulator
from router.engine.engine import _upstream_message
from tests.conftest import ROOT
from tests.metering_support import make_policy, msgs
from tests.reliability_support import Url, post, scripted_upstream, start_proxy


def chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    body = {"id": "c", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def streaming(events: list[bytes]):
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for e in events:
            await resp.write(e)
        await resp.write_eof()
        return resp
    return handler


ERROR_EVENT = b'data: {"error": {"message": "overloaded: key sk-ds-abcdefgh12345678 rejected", "type": "server_error"}}\n\n'
CASES = {
    "error_event_after_first_chunk": [chunk("Hel"), chunk("lo"), ERROR_EVENT, b"data: [DONE]\n\n"],
    "clean_eof_without_finish_or_done": [chunk("Hel"), chunk("lo")],
}


@pytest.mark.parametrize("case", list(CASES))
async def test_a_stream_that_fails_mid_way_is_an_error_for_the_client_and_the_ledger(sims, case):
    runner, url = await scripted_upstream(streaming(CASES[case]))
    p = await start_proxy(make_policy({**sims, "ds": Url(url)}))
    try:
        body = {"model": "ds-chat", "messages": msgs(), "stream": True}
        async with aiohttp.ClientSession() as http, http.post(p.url + "/v1/chat/completions", json=body,
                                                               headers={"X-Router-Task": "general"}) as r:
            assert r.status == 200
            rid = r.headers["x-request-id"]
            frames = (await r.read()).strip().split(b"\n\n")
        assert frames[:2] == [chunk("Hel").strip(), chunk("lo").strip()]
        assert frames[-1] != b"data: [DONE]"
        err = orjson.loads(frames[-1][6:])["error"]
        assert err["code"] == "upstream_failed"
        [info] = [i for i in p.mem.records if i.request_id == rid]
        assert info.status == "error" and info.error
        if case == "error_event_after_first_chunk":
            assert "overloaded" in err["message"] and "sk-ds-abcdefgh" not in err["message"]
            assert "sk-ds-abcdefgh" not in info.error
    finally:
        await p.stop()
        await runner.cleanup()


async def test_an_error_event_before_the_first_chunk_fails_over(sims):
    runner, url = await scripted_upstream(streaming([ERROR_EVENT]))
    r = Router(make_policy({**sims, "ds": Url(url)}), meters=[MemoryMeter()], monitor=False)
    try:
        stream = await r.acomplete(msgs(), model="general", task="general", stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text and stream.router.model == "mini"
        assert [a.outcome for a in stream.router.attempts] == ["error_event", "error_event", "ok"]
    finally:
        await r.aclose()
        await runner.cleanup()


# ---------------------------------------------------------------------------- redaction before truncation

ALNUM = string.ascii_letters + string.digits


def pieces(secret: str, n: int = 6) -> set[str]:
    return {secret[i:i + n] for i in range(len(secret) - n + 1)}


@pytest.mark.parametrize("shape", ["sk-proj-", ""])
@pytest.mark.parametrize("limit,as_json", [(500, True), (200, False)])
def test_a_key_straddling_the_cut_never_leaks_in_part(shape, limit, as_json):
    rng = random.Random(7)
    secret = shape + "".join(rng.choice(ALNUM) for _ in range(40))
    for offset in range(limit - len(secret) - 2, limit + 2):
        text = "x" * (offset - 1) + " " + secret + " and more text after it" * 20
        raw = orjson.dumps({"error": {"message": text}}) if as_json else text.encode()
        out = _upstream_message(raw, (secret,) if not shape else ())
        assert not any(p in out for p in pieces(secret)), (offset, out[-30:])
        assert len(out) <= limit


async def test_upstream_errors_reach_client_ledger_and_log_redacted(sims, caplog):
    secret = "sk-ds-secret"  # the provider's own key (metering_support's POLICY)
    prefix = "Incorrect API key provided: "
    # the key starts just before, at and after the 500-character cut of an upstream message
    for start in range(500 - len(secret) - 4, 502, 3):
        async def reject(request: web.Request, pad: int = start - len(prefix)) -> web.Response:
            message = "y" * (pad - 1) + " " + prefix + f"{secret}XYZ tail"
            return web.json_response({"error": {"message": message}}, status=400)

        runner, url = await scripted_upstream(reject)
        p = await start_proxy(make_policy({**sims, "ds": Url(url)}))
        try:
            status, headers, data = await post(p.url + "/v1/chat/completions", {"model": "ds-chat", "messages": msgs()},
                                               {"X-Router-Task": "general"})
            assert status == 400
            info = p.mem.records[-1]
            for text in (data["error"]["message"], info.error, *(a.error or "" for a in info.attempts)):
                assert not any(piece in text for piece in pieces(secret + "XYZ", 5)), (start, text[-40:])
        finally:
            await p.stop()
            await runner.cleanup()


# ---------------------------------------------------------------------------- recovery after a fault clears

EU_POLICY = """
version: 1
providers:
  eu:  {{kind: vllm, base_url: "{eu}", region: eu,
         health: {{failure_threshold: 2, open_s: 30, probe: {{path: /models, interval_s: 0.2, timeout_s: 1}}}}}}
  us:  {{kind: vllm, base_url: "{us}", region: us}}
models:
  eu-model: {{provider: eu, model: m, price: {{input_per_mtok: 0.1, output_per_mtok: 0.1}}}}
  us-model: {{provider: us, model: m, price: {{input_per_mtok: 1, output_per_mtok: 1}}}}
routes:
  general: {{targets: [eu-model, us-model]}}
rules:
  - {{route: general}}
retry: {{attempts: 1, backoff_s: 0.01, max_backoff_s: 0.02}}
timeouts: {{connect_s: 1, first_token_s: 1, total_s: 5, attempt_s: 0.3}}
"""


async def test_a_route_recovers_as_soon_as_probes_pass_after_a_delay_fault_clears():
    async with Simulator(models=["m"]) as eu, Simulator(models=["m"]) as us:
        policy = parse_policy(EU_POLICY.format(eu=eu.base_url, us=us.base_url), env={})
        r = Router(policy, meters=[MemoryMeter()])
        try:
            eu.set_fault("delay:1")   # API calls hang past attempt_s; the probe (/models) still answers
            for _ in range(2):
                resp = await r.acomplete(msgs(), task="general")
                assert resp.router.model == "us-model"
            health = r.engine.monitor.health
            assert health.breakers["eu-model"].opens >= 1
            eu.clear_faults()
            cleared = time.monotonic()
            while True:
                resp = await r.acomplete(msgs(), task="general")
                if resp.router.model == "eu-model":
                    break
                assert time.monotonic() - cleared < 5, "the EU route stayed closed after its fault cleared"
                await asyncio.sleep(0.1)
            assert time.monotonic() - cleared < 5  # open_s is 30: recovery came from the probes
        finally:
            await r.aclose()


# ---------------------------------------------------------------------------- the shipped policies' timeouts


@pytest.mark.parametrize("path", ["policies/default.yaml", "src/router/policies/default.yaml", "policies/demo.yaml"])
def test_shipped_policies_bound_each_non_streaming_attempt(path, example_env):
    """Without `attempt_s` a hung JSON upstream holds a request for all of `total_s` and fallback never
    happens: every try of the first candidate must fit well inside the deadline."""
    policy = load_policy(str(ROOT / path))
    t = policy.timeouts
    assert t.attempt_s is not None
    assert t.attempt_s * policy.retry.attempts <= t.total_s / 2
