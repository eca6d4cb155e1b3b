"""`router serve` as a real process: SIGHUP and --watch reload, SIGTERM drain, --workers with /metrics."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import pytest

from router.dev.simulator import Simulator

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
"""

BODY = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
HINT = {"X-Router-Task": "general"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    def __init__(self, proc: subprocess.Popen, url: str, stderr_path: str):
        self.proc, self.url, self.stderr_path = proc, url, stderr_path

    def stderr(self) -> str:
        with open(self.stderr_path) as f:
            return f.read()


@pytest.fixture
async def sim():
    async with Simulator(models=["model-one", "model-two"]) as s:
        yield s


@pytest.fixture
def serve(tmp_path):
    procs: list[subprocess.Popen] = []

    async def start(policy_path, *args: str) -> Served:
        port = free_port()
        err = str(tmp_path / f"stderr-{port}.log")
        env = {**os.environ, "ROUTER_LEDGER": str(tmp_path / f"ledger-{port}.db")}
        proc = subprocess.Popen([sys.executable, "-m", "router.cli", "serve", "--policy", str(policy_path),
                                 "--port", str(port), *args],
                                stdout=subprocess.DEVNULL, stderr=open(err, "w"), env=env)  # noqa: SIM115
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(url + "/readyz") as r:
                        if r.status == 200:
                            return Served(proc, url, err)
                except aiohttp.ClientError:
                    pass
                assert proc.poll() is None, Served(proc, url, err).stderr()
                await asyncio.sleep(0.05)
        raise AssertionError("router serve did not become ready")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()


async def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def routed_model(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.post(
            url + "/v1/chat/completions", json=BODY, headers=HINT) as r:
        assert r.status == 200
        return r.headers["x-router-model"]


async def test_sighup_reloads_a_valid_policy_and_rejects_an_invalid_one(sim, serve, tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(url=sim.base_url, target="one"))
    s = await serve(path)
    assert await routed_model(s.url) == "one"

    path.write_text(POLICY.format(url=sim.base_url, target="two"))
    s.proc.send_signal(signal.SIGHUP)

    async def is_two() -> bool:
        return await routed_model(s.url) == "two"
    await wait_until(is_two)

    path.write_text(POLICY.format(url=sim.base_url, target="three"))  # a dangling model alias
    s.proc.send_signal(signal.SIGHUP)

    async def rejected() -> bool:
        return "was rejected" in s.stderr()
    await wait_until(rejected)
    err = s.stderr()
    assert "1 problem" in err and "routes.general.targets[0]: unknown model 'three'" in err
    assert await routed_model(s.url) == "two" and s.proc.poll() is None


async def test_watch_reloads_on_file_change(sim, serve, tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(url=sim.base_url, target="one"))
    s = await serve(path, "--watch", "--watch-interval-s", "0.1")
    assert await routed_model(s.url) == "one"
    path.write_text(POLICY.format(url=sim.base_url, target="two") + "\n# changed\n")

    async def is_two() -> bool:
        return await routed_model(s.url) == "two"
    await wait_until(is_two)
    assert "file changed: reloaded" in s.stderr()


async def test_sigterm_drains_streams_in_flight_then_exits_0(sim, serve, tmp_path):
    sim.configure_model("model-one", tokens_per_s=20, reply_tokens=16)  # a stream of ~0.8 s
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(url=sim.base_url, target="one"))
    s = await serve(path, "--grace-s", "5")
    async with aiohttp.ClientSession() as http:
        r = await http.post(s.url + "/v1/chat/completions", json={**BODY, "stream": True}, headers=HINT)
        assert r.status == 200
        await r.content.readline()
        s.proc.send_signal(signal.SIGTERM)
        raw = await r.read()
        assert raw.endswith(b"data: [DONE]\n\n")  # the stream in flight finished
        await asyncio.sleep(0.1)
        with pytest.raises(aiohttp.ClientConnectionError):  # and no new connection is accepted
            async with http.get(s.url + "/healthz", headers={"Connection": "close"}):
                pass
    assert await asyncio.to_thread(s.proc.wait, 10) == 0
    assert "stopped" in s.stderr()


async def test_sigterm_cuts_streams_at_the_grace_deadline(sim, serve, tmp_path):
    sim.configure_model("model-one", tokens_per_s=5, reply_tokens=100)  # 20 s: longer than the grace
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(url=sim.base_url, target="one"))
    s = await serve(path, "--grace-s", "0.5")
    async with aiohttp.ClientSession() as http:
        r = await http.post(s.url + "/v1/chat/completions", json={**BODY, "stream": True}, headers=HINT)
        await r.content.readline()
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(s.proc.wait, 10) == 0
        assert time.monotonic() - t0 < 3
        r.close()
    for _ in range(50):
        if sim.in_flight()[0] == 0:
            break
        await asyncio.sleep(0.02)
    assert sim.in_flight()[0] == 0


def _counter_total(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M))


async def test_workers_share_a_port_and_metrics_aggregate(sim, serve, tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(url=sim.base_url, target="one"))
    s = await serve(path, "--workers", "2", "--grace-s", "2")
    n = 40
    pids = set()
    for _ in range(n):  # a new connection each time, so the kernel spreads them over the workers
        async with aiohttp.ClientSession() as http, http.post(
                s.url + "/v1/chat/completions", json=BODY, headers=HINT) as r:
            assert r.status == 200
        async with aiohttp.ClientSession() as http, http.get(s.url + "/healthz") as r:
            pids.add(r.headers["x-router-worker"])
    assert len(pids) == 2
    for _ in range(4):  # whichever worker answers the scrape reports every worker's requests
        async with aiohttp.ClientSession() as http, http.get(s.url + "/metrics") as r:
            text = await r.text()
        assert _counter_total(text, "router_requests_total") == n
    s.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(s.proc.wait, 10) == 0


async def test_invalid_policy_at_start_exits_1_with_check_messages(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nproviders: {}\n")
    proc = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "router.cli", "serve", "--policy",
                                                    str(path), "--port", str(free_port())],
                                   capture_output=True, text=True, timeout=20)
    assert proc.returncode == 1
    assert f"{path}: " in proc.stderr and "missing required key 'models'" in proc.stderr
    assert os.path.exists(path)


async def test_served_requests_reach_the_ledger_and_provider_state(sim, serve, tmp_path):
    from router.metering.ledger import open_ledger

    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(url=sim.base_url, target="one"))
    ledger_path = tmp_path / "served-ledger.db"
    s = await serve(path, "--ledger", str(ledger_path))
    async with aiohttp.ClientSession() as http:
        async with http.post(s.url + "/v1/chat/completions", json=BODY,
                             headers={**HINT, "X-Request-Id": "req-ledger-1"}) as r:
            assert r.status == 200
            cost = float(r.headers["x-router-cost-usd"])
            rid = r.headers["x-request-id"]
        async with http.get(s.url + "/metrics") as r:
            text = await r.text()
    assert re.search(r'router_provider_state\{model="[^"]+",provider="[^"]+"\} 0', text), text
    s.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(s.proc.wait, 10) == 0
    ledger = open_ledger(str(ledger_path))
    row = ledger.get(rid)
    ledger.close()
    assert row is not None and row.status == "ok" and row.client_request_id == "req-ledger-1"
    assert round(row.cost_usd, 2) == round(cost, 2) and abs(row.cost_usd - cost) < 1e-9


async def test_workers_with_in_process_budgets_refuse_to_start(sim, tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(url=sim.base_url, target="one") + "tenants:\n  t: {budget: {daily_usd: 1}}\n")
    run = [sys.executable, "-m", "router.cli", "serve", "--policy", str(path), "--port", str(free_port()),
           "--workers", "2", "--ledger", "none"]
    env = {k: v for k, v in os.environ.items() if k != "ROUTER_BUDGETS"}
    proc = await asyncio.to_thread(subprocess.run, run, capture_output=True, text=True, timeout=20, env=env)
    assert proc.returncode == 1 and "--budgets redis://" in proc.stderr


async def test_probes_run_from_start_up_before_any_request(sim, serve, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    path = tmp_path / "policy.yaml"
    path.write_text(f"""
version: 1
providers:
  a: {{kind: vllm, base_url: "{sim.base_url}", region: eu}}
  dead: {{kind: vllm, base_url: "{dead}/v1", region: eu,
          health: {{probe: {{path: "{dead}/health", interval_s: 0.1, timeout_s: 0.2}}}}}}
models:
  one: {{provider: a, model: model-one, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
  three: {{provider: dead, model: m3, price: {{input_per_mtok: 1, output_per_mtok: 1}}}}
routes:
  general: {{targets: [three, one]}}
rules:
  - {{route: general}}
""")
    s = await serve(path)

    async def dead_is_down() -> bool:  # no chat request has been made
        async with aiohttp.ClientSession() as http, http.get(s.url + "/metrics") as r:
            text = await r.text()
        return re.search(r'router_provider_state\{model="three",provider="dead"\} 2', text) is not None

    await wait_until(dead_is_down, timeout=5)
    assert await routed_model(s.url) == "one"  # and the first request already skips it


async def test_start_up_says_when_the_classifier_runs_without_its_accelerator(sim, serve, tmp_path, monkeypatch):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(url=sim.base_url, target="one"))
    quiet = await serve(path)
    assert "classifier:" not in quiet.stderr()  # the accelerator is built (tests require it)
    monkeypatch.setenv("ROUTER_CLASSIFIER_NATIVE", "0")
    slow = await serve(path)
    assert await routed_model(slow.url) == "one"
    assert "classifier: pure-Python path" in slow.stderr() and "ROUTER_CLASSIFIER_NATIVE=0" in slow.stderr()
