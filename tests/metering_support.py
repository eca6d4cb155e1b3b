"""Shared pieces of the metering suites: simulators, a policy over them, service URLs from the env."""

from __future__ import annotations

import os

import pytest

from router.core.policy_parser import parse_policy
from router.dev.simulator import ModelConfig, Simulator

POLICY = """
version: 1
providers:
  gpu: {{kind: vllm, base_url: "{gpu}", region: eu}}
  ds:  {{kind: deepseek, base_url: "{ds}", api_key: "sk-ds", region: cn}}
  oa:  {{kind: openai, base_url: "{oa}", api_key: "sk-oa", region: us}}
models:
  coder:   {{provider: gpu, model: Qwen/Qwen3-Coder-Next, price: {{input_per_mtok: 0.03, output_per_mtok: 0.03}}}}
  ds-chat: {{provider: ds, model: deepseek-chat, price: {{input_per_mtok: 0.28, output_per_mtok: 0.42}}}}
  ds-r1:   {{provider: ds, model: deepseek-reasoner, price: {{input_per_mtok: 0.55, output_per_mtok: 2.19}}}}
  mini:    {{provider: oa, model: gpt-4.1-mini, price: {{input_per_mtok: 0.4, output_per_mtok: 1.6}}}}
routes:
  coding:    {{targets: [coder, ds-chat, mini]}}
  reasoning: {{targets: [ds-r1, mini]}}
  general:   {{targets: [ds-chat, mini]}}
rules:
  - {{if: {{task: coding}}, route: coding}}
  - {{if: {{task: reasoning}}, route: reasoning}}
  - {{route: general}}
retry: {{attempts: 2, backoff_s: 0.01, max_backoff_s: 0.02}}
timeouts: {{connect_s: 1, first_token_s: 2, total_s: 10, attempt_s: 2}}
reference_model: {{name: claude-sonnet, price: {{input_per_mtok: 3, output_per_mtok: 15}}}}
{extra}
"""


async def start_sims() -> dict[str, Simulator]:
    sims = {"gpu": Simulator(models=["Qwen/Qwen3-Coder-Next"]),
            "ds": Simulator(models=[ModelConfig("deepseek-chat"), ModelConfig("deepseek-reasoner", reasoning=True)],
                            require_api_key="sk-ds"),
            "oa": Simulator(models=["gpt-4.1-mini"], require_api_key="sk-oa")}
    for s in sims.values():
        await s.start()
    return sims


def policy_text(sims: dict[str, object], extra: str = "") -> str:
    return POLICY.format(extra=extra, **{k: s.base_url for k, s in sims.items()})  # type: ignore[attr-defined]


def make_policy(sims: dict[str, object], extra: str = ""):
    return parse_policy(policy_text(sims, extra), env={})


def msgs(text: str = "hello there") -> list[dict]:
    return [{"role": "user", "content": text}]


def service_url(var: str) -> str:
    """The URL in `var`; skip the test when the variable is unset (a set variable means: must run)."""
    url = os.environ.get(var)
    if not url:
        pytest.skip(f"{var} is not set")
    return url


@pytest.fixture
async def sims():
    """The simulated providers of POLICY, started for one test."""
    s = await start_sims()
    yield s
    for sim in s.values():
        await sim.stop()
