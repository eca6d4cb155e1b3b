"""Budgets across replicas: two real `router serve` processes, one Redis, one tenant hammered through both.

The issue's requirement: the overspend stays within one request's cost per replica. The same test
with each proxy keeping its budget in its own memory (`--budgets memory`) must blow that bound: it
shows the assertion can fail, i.e. that the Redis case passes because the budget is shared.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass, field

import aiohttp
import pytest

from router.core.policy import hash_key
from router.dev.simulator import ModelConfig, Simulator
from router.metering.ledger import open_ledger

from .metering_support import service_url

KEY = "sk-acme-replica-test"
LIMIT = 0.002            # USD a day; one request costs about 4e-5, so ~50 requests fit
PER_PROXY = 16           # concurrent requests on each proxy
ENOUGH_REJECTIONS = 16   # each proxy keeps going until it has answered this many 429s

POLICY = """
version: 1
providers:
  gpu: {{kind: vllm, base_url: "{url}", region: eu}}
models:
  m: {{provider: gpu, model: model-m, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
routes:
  general: {{targets: [m]}}
rules:
  - {{route: general}}
tenants:
  acme: {{keys: ["{key}"], budget: {{daily_usd: {limit}, on_exhausted: reject}}}}
metering: {{tenant_label: true}}
"""

BODY = {"model": "auto", "max_tokens": 20, "messages": [{"role": "user", "content": "hello there, how much?"}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Tally:
    costs: list[float] = field(default_factory=list)   # x-router-cost-usd of every 200
    rejected: int = 0
    other: list[str] = field(default_factory=list)     # anything else: fails the test


@pytest.fixture
async def sim():
    # a small latency, so that each proxy has many requests in flight at once
    async with Simulator(models=[ModelConfig("model-m", latency_s=0.03, reply_tokens=16)]) as s:
        yield s


@pytest.fixture(params=["redis", "memory"])
def budgets(request):
    """The --budgets of both proxies: one Redis under a key prefix of this test's own, or each its memory."""
    if request.param == "memory":
        yield "memory", None   # each proxy counts alone: the control that proves the assertion can fail
        return
    import redis

    url = service_url("ROUTER_TEST_REDIS_URL")
    prefix = "router-test:replicas:" + uuid.uuid4().hex[:10]
    client = redis.Redis.from_url(url)
    yield f"{url}?prefix={prefix}", (client, prefix)   # open_budget takes the prefix out of the URL
    keys = list(client.scan_iter(match=prefix + ":*"))
    if keys:
        client.delete(*keys)
    client.close()


async def start_proxies(n: int, policy_path, budgets: str, tmp_path) -> list[tuple[subprocess.Popen, str, str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("ROUTER_BUDGETS", "ROUTER_LEDGER")}
    out = []
    for i in range(n):
        port, ledger, err = free_port(), str(tmp_path / f"ledger-{i}.db"), tmp_path / f"stderr-{i}.log"
        proc = subprocess.Popen([sys.executable, "-m", "router.cli", "serve", "--policy", str(policy_path),
                                 "--port", str(port), "--budgets", budgets, "--ledger", ledger, "--grace-s", "5"],
                                stdout=subprocess.DEVNULL, stderr=open(err, "w"), env=env)  # noqa: SIM115
        out.append((proc, f"http://127.0.0.1:{port}", ledger))
    async with aiohttp.ClientSession() as http:
        for proc, url, _ in out:
            for _ in range(300):
                try:
                    async with http.get(url + "/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert proc.poll() is None, (tmp_path / "stderr-0.log").read_text()[-3000:]
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"router serve at {url} did not become ready")
    return out


async def send(http: aiohttp.ClientSession, url: str, tally: Tally) -> None:
    async with http.post(url + "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {KEY}"}) as r:
        body = await r.json()
        if r.status == 200:
            tally.costs.append(float(r.headers["x-router-cost-usd"]))
        elif (r.status == 429 and r.headers.get("x-should-retry") == "false"
              and body["error"]["type"] == "insufficient_quota"):
            tally.rejected += 1
        else:
            tally.other.append(f"{r.status} {dict(r.headers)} {body}")


async def hammer(url: str, tally: Tally, go: asyncio.Event) -> None:
    """PER_PROXY concurrent clients on one proxy, until it has rejected ENOUGH_REJECTIONS requests."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=PER_PROXY)) as http:
        await send(http, url, tally)   # warm: pool, Redis connection; else one proxy may start late and lose
        await go.wait()

        async def client() -> None:
            while tally.rejected < ENOUGH_REJECTIONS and len(tally.costs) < 1000 and len(tally.other) < 5:
                await send(http, url, tally)

        await asyncio.gather(*(client() for _ in range(PER_PROXY)))


def redis_spent(client, prefix: str) -> float:
    """`spent` summed over the tenant's day scopes (summed, in case the test straddles UTC midnight)."""
    total = 0.0
    for key in client.scan_iter(match=prefix + ":{acme}:d:*"):
        if not key.endswith((b":res", b":exp")):   # the scope hash, not its reservations
            total += float(client.hget(key, "spent") or 0)
    return total


@pytest.mark.timeout(60)
async def test_two_proxies_one_tenant_overspend_at_most_one_request_per_replica(budgets, sim, tmp_path):
    backend, redis = budgets
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(url=sim.base_url, key=hash_key(KEY), limit=LIMIT))
    proxies = await start_proxies(2, policy, backend, tmp_path)
    tallies = [Tally() for _ in proxies]
    go = asyncio.Event()
    try:
        runs = [asyncio.create_task(hammer(url, t, go)) for (_, url, _), t in zip(proxies, tallies, strict=True)]
        while sum(len(t.costs) + len(t.other) for t in tallies) < len(proxies):   # both warm
            if any(run.done() for run in runs):
                break
            await asyncio.sleep(0.01)
        go.set()
        await asyncio.gather(*runs)
    finally:
        for proc, _, _ in proxies:   # SIGTERM: settle every reservation and flush the ledger, then exit 0
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.to_thread(proc.wait, 15) for proc, _, _ in proxies]
    assert codes == [0, 0]
    for t in tallies:
        assert not t.other, t.other[:2]
        assert t.costs and t.rejected >= ENOUGH_REJECTIONS     # both replicas served, then refused
    costs = [c for t in tallies for c in t.costs]
    spent = sum(costs)
    one_request = max(costs)
    bound = LIMIT + 2 * one_request                             # one request's cost per replica

    rows = []
    for _, _, path in proxies:
        ledger = open_ledger(path)
        rows += [r for r in ledger.records() if r.tenant == "acme"]
        ledger.close()
    assert sum(1 for r in rows if r.status == "ok") == len(costs)
    ledger_spent = sum(r.cost_usd for r in rows)
    assert round(ledger_spent, 2) == round(spent, 2) and ledger_spent == pytest.approx(spent, abs=1e-8)

    if redis is None:
        # each proxy holds its own budget ...
        assert all(sum(t.costs) <= LIMIT + 1e-12 for t in tallies)
        # ... but together they spend nearly twice the limit: the bound below is not vacuous
        assert spent > bound, (spent, bound)
        return
    assert spent <= bound, f"overspend {spent - LIMIT:.6f} USD > 2 requests ({2 * one_request:.6f})"
    assert spent > LIMIT * 0.8                                  # the budget really was used up
    recorded = await asyncio.to_thread(redis_spent, *redis)
    assert round(recorded, 2) == round(spent, 2) and recorded == pytest.approx(spent, abs=1e-8)
