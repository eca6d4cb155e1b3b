"""The money in the offline commands: `router explain` shows each price with its source (policy, or
the catalogue and litellm's version) and the time-of-day window in force; `router report` sums
cached tokens and the response cache's hits and savings from a ledger and prices cached input in
`--compare`; `router simulate --cache-hit-rate` bills that share of input at cached prices."""

from __future__ import annotations

import json
import pathlib

import pytest

from router.cli import main
from router.core.policy_parser import load_policy
from router.core.prices import catalogue_lookup, catalogue_version
from router.metering.ledger import SQLiteLedger
from router.tools.simulate import format_table, load_spec, simulate

from .test_ledger import _rec

ROOT = pathlib.Path(__file__).resolve().parent.parent
SPECS = ROOT / "simulate"

POLICY = """
providers:
  ds: {kind: deepseek, base_url: "https://api.deepseek.com/v1", api_key: none}
models:
  ds-timed: {provider: ds, model: deepseek-chat, price: {input_per_mtok: 0.28, cached_input_per_mtok: 0.028,
     output_per_mtok: 0.42, windows: [{from: "00:00", to: "12:00", input_per_mtok: 0.14, output_per_mtok: 0.21},
                                      {from: "12:00", to: "00:00", input_per_mtok: 0.2, output_per_mtok: 0.3}]}}
  ds-catalogue: {provider: ds, model: deepseek-chat}
routes: {general: {targets: [ds-timed, ds-catalogue]}}
rules: [{route: general}]
"""


def test_explain_shows_each_price_with_its_source_and_the_window_in_force(tmp_path, capsys):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    assert main(["explain", "--policy", str(path), "hello there"]) == 0
    out = capsys.readouterr().out
    prices = {c["model"]: c["price"] for c in json.loads(out)["candidates"]}
    timed = prices["ds-timed"]
    assert (timed["input_per_mtok"], timed["cached_input_per_mtok"], timed["source"]) == (0.28, 0.028, "policy")
    assert [w["utc"] for w in timed["windows"]] == ["00:00-12:00", "12:00-00:00"]
    # the two windows cover the day: whenever this runs, one of them is in force, and explain says which
    now = timed["now"]
    morning = int(now["utc"][:2]) < 12
    assert now["source"] == ("policy [00:00-12:00 UTC]" if morning else "policy [12:00-00:00 UTC]")
    assert now["input_per_mtok"] == (0.14 if morning else 0.2)
    entry = catalogue_lookup("deepseek", "deepseek-chat")
    catalogue = prices["ds-catalogue"]
    assert catalogue["source"] == f"catalogue:deepseek/deepseek-chat (litellm {catalogue_version()})"
    assert (catalogue["input_per_mtok"], catalogue["cached_input_per_mtok"]) == (entry.input_per_mtok,
                                                                                 entry.cached_input_per_mtok)
    assert "windows" not in catalogue and "now" not in catalogue


def test_a_ledger_row_names_the_catalogue_and_its_version(tmp_path):
    policy = load_policy(_write(tmp_path, POLICY))
    source = policy.models["ds-catalogue"].price.source
    ledger = SQLiteLedger(tmp_path / "l.db")
    ledger.write([_rec(1, price_source=source, cached_tokens=7)])
    row = ledger.get("req_1")
    ledger.close()
    assert row.price_source == source and "litellm " + catalogue_version() in row.price_source
    assert row.cached_tokens == 7


def _write(tmp_path, text: str) -> pathlib.Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def test_report_sums_cached_tokens_cache_hits_and_their_savings(tmp_path, capsys):
    path = str(tmp_path / "ledger.db")
    ledger = SQLiteLedger(path)
    ledger.write([
        _rec(1, route="general", prompt_tokens=4054, cached_tokens=3000, cost_usd=0.00079912, response_cache="miss"),
        _rec(2, route="general", prompt_tokens=4054, cached_tokens=0, cost_usd=0.0, provider=None,
             response_cache="hit", cache_saved_usd=0.00079912),
        _rec(3, route="general", prompt_tokens=100, cached_tokens=50, cost_usd=0.0001),
        _rec(4, route="coding", prompt_tokens=10, cost_usd=0.001),
    ])
    ledger.close()
    assert main(["report", "--ledger", path, "--by", "route", "--format", "json"]) == 0
    rows = {r["route"]: r for r in json.loads(capsys.readouterr().out)}
    general = rows["general"]
    assert (general["requests"], general["cached_tokens"], general["cache_hits"]) == (3, 3050, 1)
    assert general["cache_saved_usd"] == 0.000799 and general["cost_usd"] == round(0.00079912 + 0.0001, 6)
    assert (rows["coding"]["cached_tokens"], rows["coding"]["cache_hits"], rows["coding"]["cache_saved_usd"]) == (
        0, 0, 0)
    assert main(["report", "--ledger", path]) == 0   # the table has the same columns
    table = capsys.readouterr().out
    assert "cached_tokens" in table and "cache_hits" in table and "cache_saved_usd" in table


def test_report_compare_bills_the_cached_share_at_the_cached_price(capsys):
    assert main(["report", "--compare", "ds=0.28/0.42/0.028,plain=0.28/0.42", "--tokens", "100M",
                 "--cache-hit-rate", "0.8", "--format", "json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)}
    # 75M input (60M of it cached) and 25M output
    assert rows["ds"]["cost_usd"] == round(15e6 * 0.28 / 1e6 + 60e6 * 0.028 / 1e6 + 25e6 * 0.42 / 1e6, 2) == 16.38
    assert rows["plain"]["cost_usd"] == round(75 * 0.28 + 25 * 0.42, 2)   # no cached price: billed as input
    assert (rows["ds"]["cached_tokens"], rows["plain"]["cached_input_per_mtok"]) == (60_000_000, 0.28)
    assert main(["report", "--compare", "ds=0.28/0.42", "--cache-hit-rate", "1.5"]) == 1
    assert "--cache-hit-rate must be between 0 and 1" in capsys.readouterr().err


def test_simulate_bills_the_cache_hit_rate_at_cached_prices(capsys):
    spec = load_spec(SPECS / "100m.yaml")
    policy = load_policy(SPECS / "policies" / "deepseek.yaml")
    none = simulate(policy, spec, days=3, cache_hit_rate=0.0)
    half = simulate(policy, spec, days=3, cache_hit_rate=0.5)
    assert none.cached_tokens == 0 and half.tokens == none.tokens   # the same sampled requests
    input_tokens = half.tokens * spec.input_tokens.mean / spec.tokens_per_request
    assert half.cached_tokens == pytest.approx(0.5 * input_tokens, rel=0.05)
    # each cached token costs 0.028 instead of 0.28 USD per million: the difference, exactly
    assert none.token_cost_usd - half.token_cost_usd == pytest.approx(half.cached_tokens * (0.28 - 0.028) / 1e6,
                                                                      rel=1e-9)
    assert "prompt cache:" in format_table(spec, [half]) and "prompt cache:" not in format_table(spec, [none])
    assert main(["simulate", "--traffic", str(SPECS / "100m.yaml"), "--days", "1",
                 "--policy", str(SPECS / "policies" / "deepseek.yaml"), "--cache-hit-rate", "0.5"]) == 0
    assert "prompt cache:" in capsys.readouterr().out
    assert main(["simulate", "--traffic", str(SPECS / "100m.yaml"), "--days", "1",
                 "--policy", str(SPECS / "policies" / "deepseek.yaml"), "--cache-hit-rate", "2"]) == 1
    assert "cache_hit_rate" in capsys.readouterr().err
