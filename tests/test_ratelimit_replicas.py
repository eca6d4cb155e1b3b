"""Rate limits across replicas: two real `router serve` processes, one Redis, 50 concurrent clients.

The issue's requirement: admitted requests exceed the limit by at most one per replica per window.
The whole run lasts a few seconds, inside one one-minute window. The same run with each proxy
counting in its own memory is the control: there the two together admit about twice the limit,
which the test asserts is beyond the bound, so the bound is known to catch limits that are not
shared.
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
from prometheus_client.parser import text_string_to_metric_families

from router.core.policy import hash_key
from router.dev.simulator import ModelConfig, Simulator

from .metering_support import service_url

KEY = "sk-acme-rate-replicas"
LIMIT = 40               # requests a minute for the tenant, over both replicas
CLIENTS = 50             # concurrent clients, 25 on each replica
CONCURRENT = 4           # the in-flight limit of the second test

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
  acme: {{keys: ["{key}"], rate_limits: {limits}}}
metering: {{tenant_label: true}}
"""

BODY = {"model": "auto", "max_tokens": 20, "messages": [{"role": "user", "content": "hello there, how fast?"}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Tally:
    ok: int = 0
    limited: int = 0
    other: list[str] = field(default_factory=list)


@pytest.fixture(params=["redis", "memory"])
def backend(request):
    """ROUTER_RATE_LIMITS of both proxies: one Redis under a key prefix of this test's own, or each its memory."""
    if request.param == "memory":
        yield "memory"
        return
    import redis

    url = service_url("ROUTER_TEST_REDIS_URL")
    prefix = "router-test:rl-replicas:" + uuid.uuid4().hex[:10]
    yield f"{url}?prefix={prefix}"
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=prefix + ":*"))
    if keys:
        client.delete(*keys)
    client.close()


async def start_proxies(n: int, policy_path, limits_url: str, tmp_path) -> list[tuple[subprocess.Popen, str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("ROUTER_BUDGETS", "ROUTER_LEDGER", "ROUTER_RESPONSE_CACHE")}
    env["ROUTER_RATE_LIMITS"] = limits_url
    out = []
    for i in range(n):
        port, err = free_port(), tmp_path / f"stderr-{i}.log"
        proc = subprocess.Popen([sys.executable, "-m", "router.cli", "serve", "--policy", str(policy_path),
                                 "--port", str(port), "--ledger", "none", "--grace-s", "5"],
                                stdout=subprocess.DEVNULL, stderr=open(err, "w"), env=env)  # noqa: SIM115
        out.append((proc, f"http://127.0.0.1:{port}"))
    async with aiohttp.ClientSession() as http:
        for i, (proc, url) in enumerate(out):
            for _ in range(300):
                try:
                    async with http.get(url + "/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert proc.poll() is None, (tmp_path / f"stderr-{i}.log").read_text()[-3000:]
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"router serve at {url} did not become ready")
    return out


async def stop(proxies) -> list[int]:
    for proc, _ in proxies:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    return [await asyncio.to_thread(proc.wait, 15) for proc, _ in proxies]


async def hammer(url: str, tally: Tally, clients: int, go: asyncio.Event, until_limited: int = 0,
                 seconds: float = 0.0, pause_s: float = 0.0) -> None:
    """`clients` concurrent clients on one proxy, until it refused `until_limited` requests (or for
    `seconds`, pausing `pause_s` after each refusal); one warm-up request first (pool, Redis connection)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients),
                                     headers={"Authorization": f"Bearer {KEY}"}) as http:

        async def send() -> None:
            async with http.post(url + "/v1/chat/completions", json=BODY) as r:
                body = await r.json()
                if r.status == 200:
                    tally.ok += 1
                elif r.status == 429 and body["error"]["code"] == "rate_limit_exceeded" and "retry-after" in r.headers:
                    tally.limited += 1
                    await asyncio.sleep(pause_s)
                else:
                    tally.other.append(f"{r.status} {body}")

        await send()
        await go.wait()
        end = asyncio.get_running_loop().time() + seconds

        async def client() -> None:
            while tally.ok + tally.limited < 3000 and len(tally.other) < 5 and (
                    tally.limited < until_limited if until_limited else asyncio.get_running_loop().time() < end):
                await send()

        await asyncio.gather(*(client() for _ in range(clients)))


async def rate_limited_metric(url: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as r:
        text = await r.text()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "router_rate_limited_total" and s.labels.get("tenant") == "acme")


@pytest.mark.timeout(90)
async def test_two_replicas_admit_at_most_one_request_per_replica_over_the_limit(backend, tmp_path):
    async with Simulator(models=[ModelConfig("model-m", latency_s=0.02)]) as sim:
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY.format(url=sim.base_url, key=hash_key(KEY), limits=f"{{requests_per_minute: {LIMIT}}}"))
        proxies = await start_proxies(2, policy, backend, tmp_path)
        tallies = [Tally() for _ in proxies]
        go = asyncio.Event()
        try:
            runs = [asyncio.create_task(hammer(url, t, CLIENTS // 2, go, until_limited=3 * LIMIT))
                    for (_, url), t in zip(proxies, tallies, strict=True)]
            while sum(t.ok + t.limited for t in tallies) < len(proxies):   # both warm
                await asyncio.sleep(0.01)
            go.set()
            await asyncio.gather(*runs)
            counted = [await rate_limited_metric(url) for _, url in proxies]
        finally:
            codes = await stop(proxies)
    assert codes == [0, 0]
    for t in tallies:
        assert not t.other, t.other[:2]
    admitted = sum(t.ok for t in tallies)
    bound = LIMIT + len(proxies)                     # one request per replica per window
    print(f"{backend}: admitted {admitted} of limit {LIMIT} (per replica {[t.ok for t in tallies]}), "
          f"refused {[t.limited for t in tallies]}")
    assert counted == [t.limited for t in tallies]   # router_rate_limited_total counts every refusal
    if backend == "memory":
        # each proxy holds its own minute: together they admit about twice the limit, beyond the bound
        assert all(t.ok == LIMIT for t in tallies) and admitted > bound, admitted
        return
    assert LIMIT <= admitted <= bound, (admitted, [t.ok for t in tallies])
    assert all(t.ok > 0 for t in tallies)            # both replicas served a share


async def test_two_replicas_share_the_in_flight_limit(tmp_path):
    """`concurrent: 4` over two replicas: the upstream never sees more than 4 of the tenant's requests at once."""
    url = service_url("ROUTER_TEST_REDIS_URL")
    import redis

    prefix = "router-test:rl-inflight:" + uuid.uuid4().hex[:10]
    async with Simulator(models=[ModelConfig("model-m", latency_s=0.15)]) as sim:
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY.format(url=sim.base_url, key=hash_key(KEY), limits=f"{{concurrent: {CONCURRENT}}}"))
        proxies = await start_proxies(2, policy, f"{url}?prefix={prefix}", tmp_path)
        tallies = [Tally() for _ in proxies]
        peak = 0
        go = asyncio.Event()

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, sim.in_flight()[0])
                await asyncio.sleep(0.002)

        watcher = asyncio.create_task(watch())
        try:
            runs = [asyncio.create_task(hammer(u, t, CLIENTS // 2, go, seconds=1.5, pause_s=0.01))
                    for (_, u), t in zip(proxies, tallies, strict=True)]
            while sum(t.ok + t.limited for t in tallies) < len(proxies):
                await asyncio.sleep(0.01)
            go.set()
            await asyncio.gather(*runs)
        finally:
            watcher.cancel()
            await stop(proxies)
            client = redis.Redis.from_url(url)
            keys = list(client.scan_iter(match=prefix + ":*"))
            if keys:
                client.delete(*keys)
            client.close()
    assert all(not t.other for t in tallies), [t.other[:2] for t in tallies]
    # 1.5 s of 0.15 s requests, 4 at a time: about 40 served, shared by both replicas; the rest refused
    assert sum(t.ok for t in tallies) >= 20 and all(t.ok > 0 and t.limited > 0 for t in tallies)
    print(f"in flight at the upstream: peak {peak} of limit {CONCURRENT}; served {[t.ok for t in tallies]}, "
          f"refused {[t.limited for t in tallies]}")
    assert 1 <= peak <= CONCURRENT, peak
