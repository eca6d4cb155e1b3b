"""Dashboards: the files are the generator's output, and every panel's PromQL returns data from a real
Prometheus scraping a PrometheusMeter that metered real traffic through the simulators."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time

import aiohttp
import pytest
import yaml
from aiohttp import web

from router import Router
from router.core.errors import RateLimited, UpstreamFailed
from router.dev.dashboards import DASHBOARDS, build
from router.dev.simulator import ModelConfig, Simulator
from router.metering.budget import InProcessBudget
from router.metering.prometheus import PrometheusMeter

from .conftest import ROOT
from .fleet_support import PRICE, collect, fleet_policy
from .metering_support import make_policy, msgs, start_sims


def test_committed_dashboards_are_the_generated_ones():
    for d in DASHBOARDS:
        with open(ROOT / "dashboards" / f"{d.uid}.json", encoding="utf-8") as f:
            assert json.load(f) == build(d), f"regenerate: python -m router.dev.dashboards dashboards ({d.uid})"
    prov = yaml.safe_load((ROOT / "dashboards" / "provisioning" / "dashboards.yaml").read_text())
    assert prov["apiVersion"] == 1 and prov["providers"][0]["type"] == "file"


def test_the_dashboards_cover_the_issues():
    titles = {d.uid: " | ".join(p.title for p in d.panels) for d in DASHBOARDS}
    for word in ("route", "provider", "Error rate", "Fallbacks", "p95", "Time to first token"):
        assert word in titles["router-overview"]
    for word in ("route", "provider", "model", "tenant", "Savings", "Budget remaining"):
        assert word in titles["router-cost"]
    for word in ("state", "outcome", "in flight"):
        assert word in titles["router-providers"]
    for word in ("API", "confidence", "custom tasks", "cache hit", "cache savings", "Rate-limited", "Replica picks",
                 "Affinity hit rate", "Hedges", "won", "recovered after the first byte"):
        assert word in titles["router-features"], word


def _prometheus() -> str:
    path = shutil.which("prometheus")
    if path is None:
        if os.environ.get("ROUTER_TEST_PROMETHEUS") == "1":
            pytest.fail("ROUTER_TEST_PROMETHEUS=1 but no `prometheus` binary (apt-get install -y prometheus)")
        pytest.skip("prometheus is not installed")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_every_panel_query_returns_data_from_a_real_prometheus(tmp_path):
    binary = _prometheus()
    sims = await start_sims()
    prom = PrometheusMeter(tenant_label=True)
    policy = make_policy(sims, "tenants:\n  acme: {budget: {daily_usd: 10}}\nmetering: {tenant_label: true}\n")
    r = Router(policy, meters=[prom], budget=InProcessBudget(metrics=prom))
    sims["gpu"].inject("status:500", times=2)
    for task in ("coding", "coding", "reasoning", "general"):
        await r.acomplete(msgs(), task=task, tenant="acme", max_tokens=8)
    s = await r.acomplete(msgs(), task="general", tenant="acme", stream=True, max_tokens=8)
    async for _ in s:
        pass
    sims["ds"].set_fault("status:500")
    sims["oa"].set_fault("status:500")
    with pytest.raises(UpstreamFailed):
        await r.acomplete(msgs(), task="general", tenant="acme")

    fleet_sims, fleet, fleet_prom = await _fleet_traffic()   # the APIs, cache, rate limits, fleets

    runners = []
    for meter in (prom, fleet_prom):   # two routers, two scrape targets of one job (as two replicas)
        async def metrics(_request: web.Request, meter: PrometheusMeter = meter) -> web.Response:
            body, ctype = meter.render()
            return web.Response(body=body, headers={"Content-Type": ctype})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
    targets = [f"127.0.0.1:{rn.addresses[0][1]}" for rn in runners]
    prom_port = _free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "router", "static_configs": [{"targets": targets}]}]}))
    proc = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    api = f"http://127.0.0.1:{prom_port}/api/v1/query"
    try:
        async with aiohttp.ClientSession() as http:
            async def query(expr: str) -> dict:
                async with http.get(api, params={"query": expr}) as resp:
                    return await resp.json()

            deadline = time.monotonic() + 30
            while True:   # at least three scrapes, so rate() and increase() have points
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                try:
                    got = await query('count_over_time(up{job="router"}[1m])')
                    res = got["data"]["result"]
                    if len(res) == 2 and min(float(x["value"][1]) for x in res) >= 3:
                        break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "prometheus never scraped the meter"
                await asyncio.sleep(0.25)
            empty = []
            for d in DASHBOARDS:
                for p in d.panels:
                    for t in p.targets:
                        expr = t.expr.replace("$__rate_interval", "1m")
                        got = await query(expr)
                        assert got["status"] == "success", (p.title, got)
                        if not got["data"]["result"]:
                            empty.append(f"{d.uid} / {p.title}: {expr}")
            assert not empty, "panels without data:\n" + "\n".join(empty)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
        for runner in runners:
            await runner.cleanup()
        await r.aclose()
        await fleet.aclose()
        for sim in [*sims.values(), *fleet_sims]:
            await sim.stop()


async def _fleet_traffic() -> tuple[list[Simulator], Router, PrometheusMeter]:
    """A router whose traffic exercises the features dashboard: the three APIs, classified requests (below
    the confidence threshold: the fallback task), a response cache hit, a rate-limit refusal, replica picks
    with affinity, a hedge that wins and a stream recovered after its first byte."""
    g0, g1 = Simulator(models=[ModelConfig("q")]), Simulator(models=[ModelConfig("q")])
    slow = Simulator(models=[ModelConfig("q", ttft_s=1.0)])
    cut = Simulator(models=[ModelConfig("q")])
    sims = [g0, g1, slow, cut]
    for sim in sims:
        await sim.start()
    policy = fleet_policy(
        "\n".join(f'  {n}: {{kind: vllm, base_url: "{s.base_url}"}}' for n, s in
                  (("g0", g0), ("g1", g1), ("slow", slow), ("cut", cut))),
        f"  q: {{replicas: [g0, g1], model: q, price: {PRICE}, balance: {{affinity: session}}}}\n"
        f"  s: {{provider: slow, model: q, price: {PRICE}}}\n"
        f"  c: {{provider: cut, model: q, price: {PRICE}}}",
        "  general: {targets: [q]}\n"
        "  hedged: {targets: [s, q], hedge: {delay_s: 0.05, max_share: 1}}\n"
        "  resumed: {targets: [c, q], resume: {attempts: 1}}\n"
        "  cached: {targets: [q], cache: {ttl_s: 60, max_entries: 10}}",
        "classifier: {min_confidence: 0.99, fallback_task: general}\n"
        "tenants:\n  acme: {}\n  limited: {rate_limits: {requests_per_minute: 1}}")
    prom = PrometheusMeter()
    r = Router(policy, meters=[prom], monitor=False)
    body = {"model": "general", "messages": msgs(), "max_tokens": 8}
    for api in ("chat", "messages", "responses"):
        await r.engine.complete(body, api=api, tenant="acme")
    for text in ("refund my order please, the invoice is wrong", "hello there"):
        await r.acomplete(msgs(text), model="auto", tenant="acme", max_tokens=8)   # classified
    for _ in range(3):
        await r.acomplete(msgs(), model="general", session="conv-1", tenant="acme", max_tokens=8)
    for _ in range(2):
        await r.acomplete(msgs("what is 2+2?"), model="cached", temperature=0, tenant="acme", max_tokens=8)
    await r.acomplete(msgs(), model="general", tenant="limited", max_tokens=8)
    with pytest.raises(RateLimited):
        await r.acomplete(msgs(), model="general", tenant="limited", max_tokens=8)
    await collect(await r.acomplete(msgs(), model="hedged", stream=True, tenant="acme", max_tokens=8))
    cut.inject("drop-mid-stream:4")
    await collect(await r.acomplete(msgs(), model="resumed", stream=True, tenant="acme", max_tokens=40))
    return sims, r, prom


def test_the_json_carries_every_panel_query_the_prometheus_test_evaluates():
    # the Prometheus test evaluates the panel data; this ties that data to what Grafana is given
    for d in DASHBOARDS:
        built = build(d)
        assert built["uid"] == d.uid and built["schemaVersion"] == 39
        assert [p["title"] for p in built["panels"]] == [p.title for p in d.panels]
        for data, panel in zip(d.panels, built["panels"], strict=True):
            assert [t["expr"] for t in panel["targets"]] == [t.expr for t in data.targets]
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["fieldConfig"]["defaults"]["unit"] == data.unit and panel["type"] == data.kind
        ids = [p["id"] for p in built["panels"]]
        assert len(set(ids)) == len(ids)
        cells = {(x, y) for p in built["panels"] for g in [p["gridPos"]]
                 for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert len(cells) == sum(p["gridPos"]["w"] * p["gridPos"]["h"] for p in built["panels"])  # no overlap
