"""policies/open-models-2026.yaml: it checks, and every model in it is chosen by some request (`router explain`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from router.cli import main
from router.core.policy_parser import load_policy

from .conftest import ROOT

POLICY = "policies/open-models-2026.yaml"

# model alias -> the `router explain` arguments of a request that the policy sends to it first
CHOSEN_BY = {
    "qwen3-coder-next": ["Write a Rust function that parses ISO 8601 dates and returns a Result"],
    "deepseek-v3.2": ["--down", "qwen3-coder-next", "Write a Rust function that parses ISO 8601 dates"],
    "gpt-4.1-mini": ["--down", "qwen3-coder-next", "--down", "deepseek-v3.2",
                     "Write a Rust function that parses ISO 8601 dates"],
    "deepseek-r1": ["A train leaves at 3 pm at 80 km/h, another at 4 pm at 100 km/h on the same track. "
                    "When does the second catch up with the first?"],
    "qwen3.5": ["Quelle est la meilleure saison pour visiter la Bretagne, et que faut-il y voir ?"],
    "llama-3.3-70b": ["What are some good habits for a healthy morning routine?"],
    "acme-support-lora": ["--tenant", "acme", "My order arrived damaged, what should I do?"],
    "llama-4-maverick": ["--image", "https://example.com/cat.png", "What is in this picture?"],
    "llama-4-scout": ["--model", "long-context", "Summarise the attached repository history."],
    "mistral-large-3": ["--residency", "eu", "Summarise this contract for me."],
    "claude-sonnet": ["--model", "premium", "Draft a careful reply to this customer complaint."],
}


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    """`router explain` as the command line runs it (in this process: a subprocess per case costs a second)."""
    assert main(["explain", "--policy", str(ROOT / POLICY), *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_it_checks_and_lists_every_model_of_the_ranking() -> None:
    policy = load_policy(ROOT / POLICY, env={})
    assert set(policy.models) == set(CHOSEN_BY)
    upstream = {m.model for m in policy.models.values()}
    for needed in ("Qwen/Qwen3-Coder-Next", "deepseek-chat", "deepseek-reasoner", "mistral-large-2512",
                   "meta-llama/Llama-3.3-70B-Instruct", "meta-llama/Llama-4-Scout-17B-16E-Instruct", "gpt-4.1-mini"):
        assert needed in upstream
    r = subprocess.run([sys.executable, "-m", "router.cli", "check", POLICY], capture_output=True, text=True,
                       cwd=ROOT, timeout=90)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


@pytest.mark.parametrize("alias", sorted(CHOSEN_BY))
def test_every_model_is_chosen_by_some_request(capsys: pytest.CaptureFixture[str], alias: str) -> None:
    decision = explain(capsys, *CHOSEN_BY[alias])
    first = next(c for c in decision["candidates"] if c["excluded"] is None)
    assert first["model"] == alias, decision


def test_eu_traffic_never_reaches_a_non_eu_model(capsys: pytest.CaptureFixture[str]) -> None:
    decision = explain(capsys, "--residency", "eu", "--down", "mistral-large-3", "--down", "qwen3-coder-next",
                       "Summarise this contract for me.")
    allowed = [c for c in decision["candidates"] if c["excluded"] is None]
    assert allowed and all(c["region"] == "eu" for c in allowed)
