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
         "router_ledger_pending_records", "router_classifier_confidence"}



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
                              rng.choice(["hint", "classifier", ""]), rng.choice([1.0, rng.random(), 0.95]), None,
                              rng.choice(["coding", "general"]),
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


CUSTOM_ROWS = {
    "sql": ["SELECT name FROM users WHERE age > 30 ORDER BY name", "write a query that counts orders per customer",
            "join the orders and customers tables on customer_id", "add an index on the email column in postgres",
            "delete duplicate rows from the payments table", "group sales by month and sum the amount"],
    "translation": ["translate 'good morning, how are you' into French", "what is 'thank you very much' in Japanese",
                    "please translate this paragraph to German", "render this sentence in Spanish",
                    "how do you say 'I am allergic to peanuts' in Italian", "translate to English: je voudrais"],
    "chat": ["tell me a joke about cats", "how was your weekend", "recommend a good science fiction novel",
             "what's a nice name for a golden retriever puppy", "i'm bored, any ideas for tonight",
             "give me three tips to sleep better"],
}


@pytest.fixture(scope="module")
def custom_model(tmp_path_factory):
    """A task model with the free task names sql, translation and chat, trained by `router train`."""
    import json

    root = tmp_path_factory.mktemp("custom-tasks")
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps({"text": t, "task": task}) + "\n"
                            for task, texts in CUSTOM_ROWS.items() for t in texts))
    out = subprocess.run([sys.executable, "-m", "router.cli", "train", "--data", str(data), "--out",
                          str(root / "tasks.json.gz")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return root / "tasks.json.gz"


@pytest.mark.parametrize("lock_free", [False, True])
async def test_classifier_confidence_by_task_and_source_with_custom_tasks(custom_model, lock_free):
    """router_classifier_confidence{task, source}: one observation per routed request, the custom model's
    task names as labels, each request's own confidence (classifier, fallback) or 1 (hint, alias)."""
    from router.core.policy_parser import parse_policy
    from router.dev.simulator import ModelConfig, Simulator

    sim = Simulator(models=[ModelConfig("m")])
    await sim.start()
    policy = parse_policy(textwrap.dedent(f"""\
        version: 1
        providers:
          sim: {{kind: vllm, base_url: "{sim.base_url}"}}
        models:
          m: {{provider: sim, model: m, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
        routes:
          sql: {{targets: [m]}}
          chat: {{targets: [m]}}
        rules:
          - {{if: {{task: sql}}, route: sql}}
          - {{route: chat}}
        classifier: {{model: "{custom_model}", min_confidence: 0.7, fallback_task: chat}}
        """), env={})
    prom = PrometheusMeter(lock_free=lock_free)
    r = Router(policy, meters=[prom], monitor=False)
    seen: dict[tuple[str, str], list[float]] = {}
    try:
        prompts = ["list the ten most recent orders with the customer's email from the orders table",
                   "translate 'where is the bathroom' to French", "any tips for a first date?",
                   "hmm", "SELECT * FROM t"]
        for text in prompts:
            out = await r.acomplete(msgs(text), max_tokens=4)
            seen.setdefault((out.router.task, out.router.task_source), []).append(out.router.confidence)
        out = await r.acomplete(msgs("hello"), task="translation", max_tokens=4)   # a hint
        seen.setdefault((out.router.task, out.router.task_source), []).append(out.router.confidence)
        out = await r.acomplete(msgs("hello"), model="sql", max_tokens=4)          # a route named after a task
        seen.setdefault((out.router.task, out.router.task_source), []).append(out.router.confidence)
    finally:
        await r.aclose()
        await sim.stop()
    body = prom.render()[0]
    count = samples(body, "router_classifier_confidence_count")
    total = samples(body, "router_classifier_confidence_sum")
    expect = {(("source", src), ("task", task)): v for (task, src), v in seen.items()}
    assert {k: v for k, v in count.items() if v} == {k: len(v) for k, v in expect.items()}
    for k, v in expect.items():
        assert total[k] == pytest.approx(sum(v), abs=1e-12)
    assert {dict(k)["task"] for k in count} <= {"sql", "translation", "chat"}   # the model's tasks, no others
    sources = {dict(k)["source"] for k in count}
    assert {"classifier", "fallback", "hint", "alias"} <= sources, seen
    assert expect[(("source", "hint"), ("task", "translation"))] == [1.0]
    assert (("source", "classifier"), ("task", "translation")) in expect   # a custom task, classified
    # the buckets are cumulative and end with every observation
    buckets = samples(body, "router_classifier_confidence_bucket")
    for k, n in count.items():
        les = sorted((float(dict(b)["le"]), v) for b, v in buckets.items() if dict(b)["le"] and
                     {x for x in b if x[0] != "le"} == set(k))
        assert [v for _, v in les] == sorted(v for _, v in les) and les[-1] == (float("inf"), n)
