"""`router serve` reloads that go wrong: a policy that is not UTF-8 (SIGHUP and --watch, one worker and
a supervisor), budgets a reload adds (their backend and metrics), and the --workers refusal of
in-process budgets applied to a reloaded policy. Also: the uvloop ImportError is not the context
of every traceback."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import uuid

import aiohttp
import pytest

from router.core.policy import hash_key
from router.dev.simulator import Simulator
from router.server import serve as serve_mod
from tests.metering_support import service_url
from tests.serve_support import ServeProcesses, wait_until

POLICY = """
version: 1
providers:
  a: {{kind: vllm, base_url: "{url}", region: eu}}
models:
  one: {{provider: a, model: model-one, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
  two: {{provider: a, model: model-two, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
routes:
  general: {{targets: [{target}]}}
rules:
  - {{route: general}}
{extra}
"""
KEY = "sk-reload-tenant"
BODY = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
HINT = {"X-Router-Task": "general"}
NOT_UTF8 = b"version: 1\nproviders: {}\n# caf\xe9 \xff\xfe\n"


def policy(sim: Simulator, target: str = "one", extra: str = "") -> str:
    return POLICY.format(url=sim.base_url, target=target, extra=extra)


@pytest.fixture
async def sim():
    async with Simulator(models=["model-one", "model-two"]) as s:
        yield s


@pytest.fixture
def serve(tmp_path):
    with ServeProcesses(tmp_path) as procs:
        yield procs.start


async def routed(url: str, headers: dict[str, str] | None = None) -> tuple[int, str | None]:
    async with aiohttp.ClientSession() as http, http.post(url + "/v1/chat/completions", json=BODY,
                                                           headers={**HINT, **(headers or {})}) as r:
        await r.read()
        return r.status, r.headers.get("x-router-model")


async def test_one_worker_reports_a_policy_that_is_not_utf8_and_keeps_serving(sim, serve, tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(policy(sim))
    s = await serve(path)
    path.write_bytes(NOT_UTF8)
    s.proc.send_signal(signal.SIGHUP)

    async def rejected() -> bool:
        return "still serving digest" in s.stderr()
    await wait_until(rejected, what="the rejection")
    err = s.stderr()
    assert "not UTF-8 text (byte 0xe9" in err and "SIGHUP: the policy was rejected" in err
    assert "Task exception was never retrieved" not in err and "Traceback" not in err
    assert await routed(s.url) == (200, "one") and s.alive()


@pytest.mark.parametrize("trigger", ["SIGHUP", "watch"])
async def test_the_supervisor_survives_a_policy_that_is_not_utf8(sim, serve, tmp_path, trigger):
    path = tmp_path / "policy.yaml"
    path.write_text(policy(sim))
    s = await serve(path, "--workers", "2", "--watch", "--watch-interval-s", "0.1", "--grace-s", "2")
    path.write_bytes(NOT_UTF8)
    if trigger == "SIGHUP":
        s.proc.send_signal(signal.SIGHUP)

    async def rejected() -> bool:
        return "workers keep serving digest" in s.stderr()
    await wait_until(rejected, what="the rejection")
    assert "not UTF-8 text" in s.stderr() and s.alive()
    for _ in range(6):  # every worker still answers, on the old policy
        assert await routed(s.url) == (200, "one")
    path.write_text(policy(sim, "two"))  # and a valid file is taken afterwards
    s.proc.send_signal(signal.SIGHUP)

    async def two() -> bool:
        return all([await routed(s.url) == (200, "two") for _ in range(4)])
    await wait_until(two, what="the reload to 'two'")
    err = s.stderr()
    assert "Traceback" not in err and "exited with" not in err
    assert await s.stop() == 0


async def test_workers_refuse_a_reload_that_adds_in_process_budgets(sim, serve, tmp_path, monkeypatch):
    monkeypatch.delenv("ROUTER_BUDGETS", raising=False)
    path = tmp_path / "policy.yaml"
    tenant = f'tenants:\n  t: {{keys: ["{hash_key(KEY)}"]}}'
    path.write_text(policy(sim, extra=tenant))
    s = await serve(path, "--workers", "2", "--grace-s", "2")
    path.write_text(policy(sim, "two", extra=tenant.replace("]}", "], budget: {daily_usd: 1}}")))
    s.proc.send_signal(signal.SIGHUP)

    async def rejected() -> bool:
        return "workers keep serving digest" in s.stderr()
    await wait_until(rejected, what="the refusal")
    assert "--budgets redis://" in s.stderr()
    for _ in range(6):
        assert await routed(s.url, {"Authorization": f"Bearer {KEY}"}) == (200, "one")
    assert s.alive()


async def test_budgets_added_by_a_reload_use_the_budgets_flag_and_report_to_metrics(sim, serve, tmp_path):
    import redis

    url = service_url("ROUTER_TEST_REDIS_URL")
    prefix = f"t-reload-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "policy.yaml"
    tenant = f'tenants:\n  t: {{keys: ["{hash_key(KEY)}"]}}'
    path.write_text(policy(sim, extra=tenant))
    s = await serve(path, "--budgets", f"{url}?prefix={prefix}", env={"ROUTER_BUDGETS": "memory"})
    path.write_text(policy(sim, extra=tenant.replace("]}", "], budget: {daily_usd: 5}}")))
    s.proc.send_signal(signal.SIGHUP)

    async def reloaded() -> bool:
        return "SIGHUP: reloaded" in s.stderr()
    await wait_until(reloaded, what="the reload")
    for _ in range(3):
        assert (await routed(s.url, {"Authorization": f"Bearer {KEY}"}))[0] == 200
    client = redis.Redis.from_url(url)
    try:
        async def spent() -> bool:  # settles are sent in the background
            keys = await asyncio.to_thread(client.keys, f"{prefix}:*")
            return any(b":d:" in k and not k.endswith((b":res", b":exp")) for k in keys)
        await wait_until(spent, what="spend recorded under --budgets' prefix (not $ROUTER_BUDGETS=memory)")
        async with aiohttp.ClientSession() as http, http.get(s.url + "/metrics") as r:
            text = await r.text()
        m = re.search(r'^router_budget_remaining_usd\{tenant="t"\} ([0-9.e+-]+)$', text, re.M)
        assert m is not None and 0 < float(m.group(1)) < 5, text[:2000]
    finally:
        keys = client.keys(f"{prefix}:*")
        if keys:
            client.delete(*keys)
        client.close()


def test_tracebacks_do_not_carry_the_uvloop_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError

    async def context_of_a_handled_error() -> BaseException | None:
        try:
            raise RuntimeError("a bug somewhere, logged with its traceback")
        except RuntimeError as e:
            return e.__context__

    assert serve_mod._run(context_of_a_handled_error()) is None
