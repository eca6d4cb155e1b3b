"""`router simulate` plans fleets: replicas, prefix-cache hits, hedging, and the replica-count search."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

from router.cli import main
from router.core.policy_parser import load_policy, parse_policy
from router.tools.fleet import plan_fleet
from router.tools.simulate import SpecError, load_spec, parse_spec, simulate

ROOT = pathlib.Path(__file__).resolve().parent.parent
SPECS = ROOT / "simulate"


def _spec(name: str = "100b.yaml", **gpu: object):
    spec = load_spec(SPECS / name)
    if gpu:
        spec = dataclasses.replace(spec, deployments={**spec.deployments,
                                                      "gpu": dataclasses.replace(spec.deployments["gpu"], **gpu)})
    return spec


def test_fleet_keys_parse_strictly():
    spec = load_spec(SPECS / "agents-100b.yaml")
    gpu = spec.deployments["gpu"]
    assert (gpu.replicas, gpu.prefix_hit_rate, gpu.ttft_sigma) == (3, 0.93, 0.3)
    base = {"tokens_per_month": 1e6, "input_tokens": {"mean": 100}, "output_tokens": {"mean": 10}}
    with pytest.raises(SpecError, match="deployments.gpu.replicas: a whole number"):
        parse_spec({**base, "deployments": {"gpu": {"replicas": 1.5}}})
    with pytest.raises(SpecError, match="prefix_hit_rate: a share between 0 and 1"):
        parse_spec({**base, "deployments": {"gpu": {"prefix_hit_rate": 2}}})


def test_replicas_multiply_capacity_and_gpu_cost():
    policy = load_policy(SPECS / "policies/self-hosted.yaml")
    one = simulate(policy, _spec(), days=2)
    four = simulate(policy, _spec(replicas=4), days=2)
    assert four.fixed_cost_usd == pytest.approx(4 * one.fixed_cost_usd)
    # over capacity all day long (8:00-20:00 UTC), four replicas serve four times the tokens
    peak = [h for h in range(48) if 8 <= h % 24 < 20]
    served = [sum(r.hourly["gpu"][h] for h in peak) for r in (one, four)]
    assert 3.2 < served[1] / served[0] < 4.8, served
    # over the day fewer requests find no capacity; not 4x fewer: at night one replica nearly keeps up
    assert four.overflow < 0.7 * one.overflow and four.failed < 0.7 * one.failed


def test_prefix_cache_hits_cut_prefill_work_and_time_to_first_token():
    policy = load_policy(SPECS / "policies/self-hosted.yaml")
    cold = simulate(policy, _spec("agents-100b.yaml", prefix_hit_rate=0.0), days=2)
    warm = simulate(policy, _spec("agents-100b.yaml", prefix_hit_rate=0.93), days=2)
    assert warm.percentile(0.9, "ttfts") < cold.percentile(0.9, "ttfts") / 2
    assert warm.overflow < cold.overflow


def test_hedging_to_a_faster_target_cuts_the_tail_and_pays_for_losers():
    spec = parse_spec({"tokens_per_month": 1e8, "input_tokens": {"mean": 1000}, "output_tokens": {"mean": 100},
                       "seed": 3, "deployments": {"slow": {"ttft_s": 0.5, "ttft_sigma": 1.0},
                                                  "fast": {"ttft_s": 0.3, "ttft_sigma": 0.2}}})
    text = """
providers:
  slow: {kind: openai, base_url: "https://slow/v1", api_key: k}
  fast: {kind: openai, base_url: "https://fast/v1", api_key: k}
models:
  a: {provider: slow, model: a, price: {input_per_mtok: 1, output_per_mtok: 2}}
  b: {provider: fast, model: b, price: {input_per_mtok: 1, output_per_mtok: 2}}
routes:
  general: {targets: [a, b]%s}
rules:
  - {route: general}
"""
    plain = simulate(parse_policy(text % "", env={}), spec, days=2)
    hedged = simulate(parse_policy(text % ", hedge: {delay_s: 0.8, max_share: 0.2}", env={}), spec, days=2)
    assert plain.hedged == 0
    assert 0.05 < hedged.hedged / hedged.requests <= 0.2 + 1e-9                 # within the share cap
    assert hedged.hedges_won > 0.5 * hedged.hedged
    assert hedged.percentile(0.99, "ttfts") < 0.7 * plain.percentile(0.99, "ttfts")
    assert hedged.hedge_cost_usd > 0 and hedged.token_cost_usd > plain.token_cost_usd


def test_the_plan_is_the_fewest_replicas_that_meet_the_target():
    policy = load_policy(SPECS / "policies/self-hosted.yaml")
    spec = _spec()
    plan = plan_fleet(policy, spec, "gpu", p90_ttft_s=1.0, days=3)
    answer = plan.answer
    assert answer is not None and answer.ttft_p90 <= 1.0 and answer.overflow <= 0.001
    below = {r.replicas: r for r in plan.rows}[answer.replicas - 1]            # the bisection ran the count below
    assert below.ttft_p90 > 1.0 or below.overflow > 0.001
    assert answer.gpus == 2 * answer.replicas
    assert answer.result.fixed_cost_usd == pytest.approx(answer.replicas * 2 * 2.08 * 24 * 3)


def test_cli_plan_prints_the_answer_and_the_apis(capsys):
    code = main(["simulate", "--traffic", str(SPECS / "agents-100b.yaml"), "--plan", "gpu", "--p90-ttft", "1",
                 "--days", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "answer:" in out and "GPUs" in out and "vs deepseek.yaml" in out and "vs claude-sonnet.yaml" in out
    assert main(["simulate", "--traffic", str(SPECS / "100b.yaml"), "--plan", "gpu"]) == 1
    assert "--plan needs --p90-ttft" in capsys.readouterr().err
    assert main(["simulate", "--traffic", str(SPECS / "100b.yaml"), "--plan", "nope", "--p90-ttft", "1"]) == 1
