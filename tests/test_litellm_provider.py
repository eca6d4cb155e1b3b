"""`kind: litellm` providers go through litellm, imported only when such a provider is used."""

from __future__ import annotations

import subprocess
import sys

import pytest

from router import Router
from router.core.errors import UpstreamFailed
from router.core.policy_parser import parse_policy
from router.dev.simulator import Simulator

POLICY = """
version: 1
providers:
  via-litellm: {{kind: litellm, base_url: "{url}", api_key: "sk-lite", region: us}}
  backup: {{kind: openai, base_url: "{url}", api_key: "sk-lite", region: us}}
models:
  lite: {{provider: via-litellm, model: openai/gpt-4.1-mini, price: {{input_per_mtok: 0.4, output_per_mtok: 1.6}}}}
  plain: {{provider: backup, model: gpt-4.1-mini, price: {{input_per_mtok: 0.4, output_per_mtok: 1.6}}}}
routes:
  general: {{targets: [lite, plain]}}
rules:
  - {{route: general}}
retry: {{attempts: 1}}
"""


def test_litellm_not_imported_without_a_litellm_provider():
    code = ("import sys, router; from router.core.policy_parser import load_policy; r = router.Router('policies/default.yaml');"
            "r.explain(messages=[{'role': 'user', 'content': 'hi'}]); print('litellm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


@pytest.fixture
async def sim():
    async with Simulator(models=["gpt-4.1-mini"], require_api_key="sk-lite") as s:
        yield s


async def test_litellm_provider_json_and_stream(sim):
    r = Router(parse_policy(POLICY.format(url=sim.base_url), env={}))
    resp = await r.acomplete([{"role": "user", "content": "hello"}], task="general", max_tokens=5)
    assert resp.router.provider == "via-litellm" and resp.choices[0].message.content
    assert resp.usage.completion_tokens == 5 and resp.router.cost_usd > 0
    assert sim.requests[-1].body["model"] == "gpt-4.1-mini"
    stream = await r.acomplete([{"role": "user", "content": "hello"}], task="general", stream=True, max_tokens=4)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text and stream.router.provider == "via-litellm" and stream.router.completion_tokens == 4
    await r.aclose()


async def test_litellm_provider_errors_fall_back(sim):
    r = Router(parse_policy(POLICY.format(url=sim.base_url), env={}))
    sim.inject("status:503", times=1)
    resp = await r.acomplete([{"role": "user", "content": "hello"}], task="general")
    assert [(a.provider, a.outcome) for a in resp.router.attempts] == [("via-litellm", "http_503"), ("backup", "ok")]
    sim.set_fault("status:500")
    with pytest.raises(UpstreamFailed):
        await r.acomplete([{"role": "user", "content": "hello"}], task="general")
    await r.aclose()
