"""What `Router(policy)` sets up by itself: a policy's budgets are enforced, its ledger is written."""

from __future__ import annotations

import pytest

from router import Router
from router.core.errors import BudgetExceeded
from router.core.policy_parser import parse_policy
from router.dev.simulator import Simulator
from router.metering.ledger import open_ledger

POLICY = """
version: 1
providers:
  up: {{kind: openai, base_url: "{url}", api_key: k, region: eu}}
models:
  m: {{provider: up, model: m, price: {{input_per_mtok: 1000, output_per_mtok: 1000}}}}
routes:
  general: {{targets: [m]}}
rules:
  - {{route: general}}
tenants:
  small: {{budget: {{daily_usd: 0.05}}}}
{metering}
"""


@pytest.fixture
async def sim():
    async with Simulator(models=["m"]) as s:
        yield s


async def test_policy_budget_is_enforced_without_wiring(sim, monkeypatch):
    monkeypatch.delenv("ROUTER_LEDGER", raising=False)
    r = Router(parse_policy(POLICY.format(url=sim.base_url, metering=""), env={}))
    assert r.engine.budget is not None and r.engine.meters == []
    spent = 0.0
    with pytest.raises(BudgetExceeded):
        for _ in range(50):
            resp = await r.acomplete([{"role": "user", "content": "hi"}], tenant="small", task="general", max_tokens=5)
            spent += resp.router.cost_usd
    assert 0 < spent <= 0.05
    await r.aclose()


async def test_policy_ledger_is_written(sim, tmp_path, monkeypatch):
    monkeypatch.delenv("ROUTER_LEDGER", raising=False)
    path = tmp_path / "lib.db"
    r = Router(parse_policy(POLICY.format(url=sim.base_url, metering=f"metering: {{ledger: '{path}'}}"), env={}))
    resp = await r.acomplete([{"role": "user", "content": "hi"}], task="general", request_id="req-lib-1", max_tokens=2)
    await r.aclose()  # flushes the ledger
    ledger = open_ledger(str(path))
    row = ledger.get(resp.router.request_id)
    ledger.close()
    assert row is not None and row.cost_usd == pytest.approx(resp.router.cost_usd)
    assert row.client_request_id == "req-lib-1" != row.id


async def test_router_ledger_env_wins(sim, tmp_path, monkeypatch):
    path = tmp_path / "env.db"
    monkeypatch.setenv("ROUTER_LEDGER", str(path))
    r = Router(parse_policy(POLICY.format(url=sim.base_url, metering=""), env={}))
    resp = await r.acomplete([{"role": "user", "content": "hi"}], task="general", request_id="req-env-1")
    await r.aclose()
    ledger = open_ledger(str(path))
    assert ledger.get(resp.router.request_id).client_request_id == "req-env-1"
    ledger.close()
