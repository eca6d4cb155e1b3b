"""The command line and the shipped examples, run as users run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import EXAMPLE_ENV, ROOT


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def test_import_router_stays_light():
    code = ("import sys, router; heavy = [m for m in ('aiohttp', 'yaml', 'litellm', 'httpx', 'prometheus_client',"
            " 'numpy', 'router.classify.classifier') if m in sys.modules]; print(heavy)")
    r = run("-c", code)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_explain_prints_the_decision_json():
    r = run("-m", "router.cli", "explain", "--policy", "policies/example.yaml",
            "Write a Rust function that parses ISO dates", env=EXAMPLE_ENV)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["task"], d["task_source"], d["route"], d["rule"]) == ("coding", "classifier", "coding", 1)
    assert 0 < d["confidence"] <= 1 and d["language"] == "en"
    assert [c["model"] for c in d["candidates"]] == ["qwen3-coder-next", "deepseek-v3", "gpt-4.1-mini"]
    first = d["candidates"][0]
    assert first == {**first, "provider": "vllm-eu", "region": "eu", "excluded": None}
    assert first["estimated_cost_usd"] > 0
    assert "sk-" not in r.stdout  # no secret in explain output


def test_explain_residency_and_errors():
    r = run("-m", "router.cli", "explain", "--policy", "policies/example.yaml", "--residency", "eu",
            "--tenant", "acme-eu", "hello", env=EXAMPLE_ENV)
    d = json.loads(r.stdout)
    assert d["route"] == "eu" and {c["region"] for c in d["candidates"] if c["excluded"] is None} == {"eu"}
    r = run("-m", "router.cli", "explain", "--policy", "policies/example.yaml", "--model", "nope", "x",
            env=EXAMPLE_ENV)
    assert r.returncode == 1 and "unknown model 'nope'" in r.stderr


def test_hash_key_reads_stdin():
    r = subprocess.run([sys.executable, "-m", "router.cli", "hash-key"], input="sk-acme-eu-demo\n",
                       capture_output=True, text=True)
    assert r.stdout.strip() == "sha256:b3e0993da880739e0621b2423f29d1dbb3b5755b6228fee02e5ac469cf666b9f"


def test_demo_runs_and_shows_a_fallback():
    r = run("-m", "router.cli", "demo")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for route in ("coding", "reasoning", "general", "multilingual", "eu"):
        assert f"  {route} " in out
    assert "deepseek:http_503 > deepseek:http_503 > openai:ok" in out
    assert "10 requests, 1 with a fallback" in out and "10 metered" in out


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_examples_run(example):
    r = run(f"examples/{example}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() and "Unclosed" not in r.stderr and "Traceback" not in r.stderr


def test_explain_api_shows_what_an_agent_session_gets():
    """A plain question is `general` over chat completions, but `coding` from Claude Code (messages)
    or Codex (responses), by the coding-agents policy's `api` rule."""
    env = {"DEEPSEEK_API_KEY": "sk-x", "OPENAI_API_KEY": "sk-y"}
    base = ("-m", "router.cli", "explain", "--policy", "policies/coding-agents.yaml", "--model", "claude-sonnet-4-5")
    routes = {}
    for api in ("chat", "messages", "responses"):
        r = run(*base, "--api", api, "What is the capital of France?", env=env)
        assert r.returncode == 0, r.stderr
        routes[api] = json.loads(r.stdout)["route"]
    assert routes == {"chat": "general", "messages": "coding", "responses": "coding"}
    r = run(*base, "--api", "grpc", "hi", env=env)
    assert r.returncode == 2 and "invalid choice" in r.stderr
