"""`router simulate`: the spec parser, the sampled month through decide(), the table and the plot."""

from __future__ import annotations

import pathlib
import time

import pytest

from router.cli import main
from router.core.policy_parser import load_policy, parse_policy
from router.tools.simulate import SpecError, format_table, load_spec, parse_spec, simulate

ROOT = pathlib.Path(__file__).resolve().parent.parent
SPECS = ROOT / "simulate"


def policy(name: str):
    return load_policy(SPECS / "policies" / f"{name}.yaml")


def test_spec_loads_and_resolves_policies() -> None:
    spec = load_spec(SPECS / "100m.yaml")
    assert spec.tokens_per_month == 100e6 and len(spec.daily_curve) == 24
    assert sum(spec.daily_curve) == pytest.approx(24) and sum(spec.tasks.values()) == pytest.approx(1)
    assert all(pathlib.Path(p).exists() for p in spec.policies) and len(spec.policies) == 5


def test_spec_is_strict() -> None:
    base = {"tokens_per_month": 1e6, "input_tokens": {"mean": 100}, "output_tokens": {"mean": 10}}
    with pytest.raises(SpecError, match="tokens_per_mnth: unknown key"):
        parse_spec({**base, "tokens_per_mnth": 1})
    with pytest.raises(SpecError, match="daily_curve"):
        parse_spec({**base, "daily_curve": [1, 2]})
    with pytest.raises(SpecError, match="deployments.gpu.ttft_s: expected a positive number"):
        parse_spec({**base, "deployments": {"gpu": {"ttft_s": -1}}})
    with pytest.raises(SpecError, match="input_tokens.mean: required"):
        parse_spec({**base, "input_tokens": {}})


def test_api_cost_matches_the_hand_computed_price() -> None:
    spec = load_spec(SPECS / "100m.yaml")
    r = simulate(policy("deepseek"), spec, days=7)
    monthly_tokens = r.tokens * r.scale
    assert monthly_tokens == pytest.approx(100e6, rel=0.1)
    share_in = spec.input_tokens.mean / spec.tokens_per_request
    hand = 100 * (share_in * 0.28 + (1 - share_in) * 0.42)
    assert r.monthly_cost_usd == pytest.approx(hand, rel=0.15)
    assert r.self_hosted_tokens == 0 and r.spilled == 0


def test_time_of_day_prices_order_the_candidates_at_their_hour() -> None:
    # B is dearer than A except in its off-peak window (16:30-00:30 UTC), when it is the cheapest:
    # the simulated requests must go where decide() sends them at that hour, and not count as spilled
    p = parse_policy("""
version: 1
providers:
  a: {kind: openai, base_url: "https://a.example/v1", region: us}
  b: {kind: deepseek, base_url: "https://api.deepseek.com/v1", region: cn}
models:
  a: {provider: a, model: a, price: {input_per_mtok: 0.20, output_per_mtok: 0.30}}
  b: {provider: b, model: b, price: {input_per_mtok: 0.28, output_per_mtok: 0.42,
      windows: [{from: "16:30", to: "00:30", input_per_mtok: 0.07, output_per_mtok: 0.105}]}}
routes:
  general: {targets: [a, b], strategy: cheapest}
rules:
  - {route: general}
""")
    spec = load_spec(SPECS / "100m.yaml")
    r = simulate(p, spec, days=1)
    evening = [h for h in range(24) if h >= 17]     # entirely inside the window
    daytime = [h for h in range(1, 16)]             # entirely outside
    assert all(r.hourly.get("a", [0.0] * 24)[h] == 0 and r.hourly["b"][h] > 0 for h in evening)
    assert all(r.hourly["a"][h] > 0 and r.hourly.get("b", [0.0] * 24)[h] == 0 for h in daytime)
    assert r.spilled == 0


def test_small_volume_fits_on_the_gpus_large_volume_spills() -> None:
    small, large = load_spec(SPECS / "100m.yaml"), load_spec(SPECS / "100b.yaml")
    mixed_small = simulate(policy("mixed"), small, days=3)
    assert mixed_small.self_hosted_tokens / mixed_small.tokens > 0.99
    assert mixed_small.fixed_cost_usd * mixed_small.scale == pytest.approx(2.08 * 2 * 720)
    mixed_large = simulate(policy("mixed"), large, days=3)
    only_gpu = simulate(policy("self-hosted"), large, days=3)
    assert 0.05 < mixed_large.self_hosted_tokens / mixed_large.tokens < 0.5
    assert mixed_large.spilled / mixed_large.requests > 0.5 and mixed_large.failed / mixed_large.requests < 0.02
    assert only_gpu.failed / only_gpu.requests > 0.5          # no spill target: the peaks fail
    ds = simulate(policy("deepseek"), large, days=3)
    assert mixed_large.monthly_cost_usd < ds.monthly_cost_usd


def test_a_month_at_100b_tokens_is_fast() -> None:
    t = time.perf_counter()
    r = simulate(policy("mixed"), load_spec(SPECS / "100b.yaml"), days=30)
    assert time.perf_counter() - t < 30
    assert r.per_sample > 100                                     # sampled and scaled, and it says so
    assert "each sample stands for" in format_table(load_spec(SPECS / "100b.yaml"), [r])


def test_cli_prints_the_table_and_draws_the_plot(tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "sim.png"
    code = main(["simulate", "--traffic", str(SPECS / "100m.yaml"), "--days", "2",
                 "--policy", str(SPECS / "policies" / "mixed.yaml"),
                 "--policy", str(SPECS / "policies" / "claude-sonnet.yaml"), "--plot", str(png)])
    out = capsys.readouterr().out
    assert code == 0
    assert "mixed.yaml" in out and "claude-sonnet.yaml" in out and "p95 s" in out and "spilled" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reports_a_bad_spec(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tokens_per_month: 5\nfoo: 1\n")
    assert main(["simulate", "--traffic", str(bad)]) == 1
    assert "foo: unknown key" in capsys.readouterr().err
