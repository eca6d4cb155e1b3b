"""PrometheusMeter: exact names, bounded labels, promtool-clean exposition, multiprocess aggregation."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from prometheus_client.parser import text_string_to_metric_families

from router import Router
from router.metering.budget import InProcessBudget
from router.metering.prometheus import PrometheusMeter

from .metering_support import make_policy, msgs

NAMES = {"router_requests_total", "router_request_duration_seconds", "router_time_to_first_token_seconds",
         "router_tokens_total", "router_cost_usd_total", "router_savings_usd_total",
         "router_upstream_attempts_total", "router_fallbacks_total", "router_budget_remaining_usd",
         "router_inflight_requests", "router_provider_state", "router_classifier_decisions_total",
         "router_ledger_pending_records"}



def families(body: bytes) -> dict[str, list]:
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(body.decode()):
        out.setdefault(fam.name, []).extend(fam.samples)
    return out


def samples(body: bytes, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value
            for fams in families(body).values() for s in fams if s.name == name}


async def serve_traffic(sims, prom: PrometheusMeter, extra: str = "") -> Router:
    r = Router(make_policy(sims, extra), meters=[prom], budget=InProcessBudget(metrics=prom))
    sims["gpu"].inject("status:503", times=2)
    await r.acomplete(msgs(), task="coding", tenant="acme", max_tokens=5)          # falls back to ds-chat
    await r.acomplete(msgs(), task="coding", tenant="acme", max_tokens=5)
    s = await r.acomplete(msgs(), task="reasoning", stream=True, max_tokens=7, tenant="acme")
    async for _ in s:
        pass
    return r


TENANTS = "tenants:\n  acme: {budget: {daily_usd: 5}}\n"


@pytest.mark.parametrize("lock_free", [False, True])
async def test_every_metric_is_exported_and_promtool_accepts_it(sims, tmp_path, lock_free):
    prom = PrometheusMeter(lock_free=lock_free)
    r = await serve_traffic(sims, prom, TENANTS)
    await r.aclose()
    body, ctype = prom.render()
    assert ctype.startswith("text/plain; version=0.0.4")
    fams = families(body)
    # prometheus_client strips _total from counter family names
    exported = {n if n in NAMES else n + "_total" for n in fams}
    assert exported >= NAMES, NAMES - exported
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    (tmp_path / "m.txt").write_bytes(body)
    done = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("lock_free", [False, True])
async def test_values_follow_the_requests(sims, lock_free):
    prom = PrometheusMeter(lock_free=lock_free)
    r = await serve_traffic(sims, prom, TENANTS)
    await r.aclose()
    body = prom.render()[0]
    req = samples(body, "router_requests_total")
    assert req[(("model", "ds-chat"), ("provider", "ds"), ("route", "coding"), ("status", "ok"),
                ("task", "coding"))] == 1
    assert req[(("model", "coder"), ("provider", "gpu"), ("route", "coding"), ("status", "ok"),
                ("task", "coding"))] == 1
    assert samples(body, "router_fallbacks_total") == {(("reason", "http_503"), ("route", "coding")): 1}
    att = samples(body, "router_upstream_attempts_total")
    assert att[(("model", "coder"), ("outcome", "http_503"), ("provider", "gpu"))] == 2
    assert samples(body, "router_classifier_decisions_total")[(("source", "hint"), ("task", "coding"))] == 2
    tokens = samples(body, "router_tokens_total")
    assert tokens[(("kind", "reasoning"), ("model", "ds-r1"), ("provider", "ds"))] > 0
    assert tokens[(("kind", "completion"), ("model", "ds-r1"), ("provider", "ds"))] >= 7
    assert set(samples(body, "router_provider_state").values()) == {0.0}
    assert len(samples(body, "router_provider_state")) == 4
    left = samples(body, "router_budget_remaining_usd")[(("tenant", "acme"),)]
    spent = sum(samples(body, "router_cost_usd_total").values())
    assert left == pytest.approx(5 - spent, abs=1e-12)
    assert sum(samples(body, "router_savings_usd_total").values()) > 0
    assert samples(body, "router_inflight_requests") == {(("provider", "ds"),): 0, (("provider", "gpu"),): 0}
    assert samples(body, "router_time_to_first_token_seconds_count")[(("provider", "ds"), ("route", "reasoning"))] == 1


@pytest.mark.parametrize("lock_free", [False, True])
async def test_tenant_is_a_label_only_when_the_policy_opts_in(sims, lock_free):
    prom = PrometheusMeter(lock_free=lock_free)
    r = await serve_traffic(sims, prom, TENANTS)
    await r.aclose()
    body = prom.render()[0]
    assert all("tenant" not in dict(k) for k in samples(body, "router_requests_total"))
    prom2 = PrometheusMeter(tenant_label=True, lock_free=lock_free)
    r2 = await serve_traffic(sims, prom2, TENANTS + "metering: {tenant_label: true}\n")
    await r2.aclose()
    body2 = prom2.render()[0]
    assert all(dict(k)["tenant"] == "acme" for k in samples(body2, "router_requests_total"))
    assert all(dict(k)["tenant"] == "acme" for k in samples(body2, "router_cost_usd_total"))


@pytest.mark.parametrize("lock_free", [False, True])
async def test_labels_never_carry_request_ids_or_errors(sims, lock_free):
    prom = PrometheusMeter(lock_free=lock_free)
    r = Router(make_policy(sims), meters=[prom])
    sims["ds"].set_fault("status:500")
    sims["oa"].set_fault("status:500")
    with pytest.raises(Exception):  # noqa: B017 - any upstream failure
        await r.acomplete(msgs(), task="general", request_id="req_secret_id")
    await r.aclose()
    body = prom.render()[0].decode()
    assert "req_secret_id" not in body and "status=\"error\"" in body
    label_values = {v for fams in families(prom.render()[0]).values() for s in fams for v in s.labels.values()}
    assert all(len(v) < 40 and " " not in v for v in label_values)


@pytest.mark.parametrize("lock_free", [False, True])
async def test_inflight_counts_calls_while_they_run(sims, lock_free):
    prom = PrometheusMeter(lock_free=lock_free)
    r = Router(make_policy(sims), meters=[prom])
    sims["gpu"].set_fault("delay:0.4")
    task = asyncio.create_task(r.acomplete(msgs(), task="coding"))
    await asyncio.sleep(0.15)
    assert prom.registry.get_sample_value("router_inflight_requests", {"provider": "gpu"}) == 1
    await task
    assert prom.registry.get_sample_value("router_inflight_requests", {"provider": "gpu"}) == 0
    await r.aclose()


MP_CHILD = textwrap.dedent("""
    import sys
    from router.metering.prometheus import PrometheusMeter
    from router.core.response import RouterInfo
    m = PrometheusMeter(lock_free=sys.argv[2] == "lock_free")
    info = RouterInfo("req_x", "coding", "hint", 1.0, None, "coding", None, provider="gpu", model="coder",
                      status="ok", cost_usd=0.25, latency_s=0.1)
    m.record(info)
    if sys.argv[1] == "render":
        sys.stdout.write(m.render()[0].decode())
""")


@pytest.mark.parametrize("mode", ["locked", "lock_free"])
def test_multiprocess_mode_aggregates_every_process(tmp_path, mode):
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    subprocess.run([sys.executable, "-c", MP_CHILD, "record", mode], env=env, check=True, timeout=30)
    out = subprocess.run([sys.executable, "-c", MP_CHILD, "render", mode], env=env, check=True, timeout=30,
                         capture_output=True).stdout
    cost = samples(out, "router_cost_usd_total")
    assert cost == {(("model", "coder"), ("provider", "gpu"), ("route", "coding")): 0.5}


def test_lock_free_totals_equal_the_locked_series_exactly():
    """Same records into both kinds of meter: every sample identical, bit for bit, scrape after scrape."""
    import random

    from router.core.response import Attempt, RouterInfo

    rng = random.Random(7)
    locked, free = PrometheusMeter(), PrometheusMeter(lock_free=True)
    for round_ in range(3):
        for i in range(500):
            provider = rng.choice(["gpu", "ds", None])
            attempts = [Attempt(p, p + "-m", rng.choice(["ok", "http_503", "timeout"]), rng.random(), 200)
                        for p in rng.sample(["gpu", "ds", "oa"], rng.randint(0, 3))]
            info = RouterInfo(f"req_{round_}_{i}", rng.choice(["coding", "general", ""]),
                              rng.choice(["hint", "classifier", ""]), 1.0, None, rng.choice(["coding", "general"]),
                              None, provider=provider, model=provider and provider + "-m",
                              status=rng.choice(["ok", "error"]), cost_usd=rng.random() / 1000,
                              latency_s=rng.expovariate(1.0), prompt_tokens=rng.randint(0, 900),
                              completion_tokens=rng.randint(0, 900), reasoning_tokens=rng.randint(0, 9),
                              attempts=attempts)
            info.ttft_s = rng.choice([None, rng.random()])
            info.reference_cost_usd = rng.choice([None, rng.random() / 500])
            for meter in (locked, free):
                meter.track_inflight("gpu", 1)
                meter.record(info)
                if i % 3:
                    meter.track_inflight("gpu", -1)
        def values(meter):
            return {(s.name, tuple(sorted(s.labels.items()))): s.value
                    for fam in meter.registry.collect() for s in fam.samples if not s.name.endswith("_created")}
        assert values(free) == values(locked)
        assert families(free.render()[0]).keys() == families(locked.render()[0]).keys()
