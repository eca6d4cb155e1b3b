"""The routing decision is pure: these tests need no network."""

from __future__ import annotations

import pytest

from router.core.decision import LiveState, decide, estimate_prompt_tokens
from router.core.errors import BudgetExceeded, InvalidRequest, NoCandidate, NotFound, PermissionDenied
from router.core.policy_parser import parse_policy

POLICY = """
version: 1
providers:
  gpu-eu:  {kind: vllm, base_url: "http://gpu.internal/v1", region: eu}
  ds:      {kind: deepseek, base_url: "https://api.deepseek.com/v1", api_key: k, region: cn}
  oa:      {kind: openai, base_url: "https://api.openai.com/v1", api_key: k, region: us}
  mi:      {kind: mistral, base_url: "https://api.mistral.ai/v1", api_key: k, region: eu}
models:
  coder:   {provider: gpu-eu, model: Qwen/Qwen3-Coder-Next, price: {input_per_mtok: 0.03, output_per_mtok: 0.03},
            context_window: 1000, capabilities: [tools]}
  ds-chat: {provider: ds, model: deepseek-chat, price: {input_per_mtok: 0.28, output_per_mtok: 0.42}, capabilities: [tools]}
  ds-r1:   {provider: ds, model: deepseek-reasoner, price: {input_per_mtok: 0.28, output_per_mtok: 0.42}}
  mini:    {provider: oa, model: gpt-4.1-mini, price: {input_per_mtok: 0.4, output_per_mtok: 1.6},
            capabilities: [tools, vision]}
  large:   {provider: mi, model: mistral-large-latest, price: {input_per_mtok: 0.5, output_per_mtok: 1.5},
            capabilities: [tools]}
routes:
  coding:    {targets: [coder, ds-chat, mini]}
  reasoning: {targets: [ds-r1, mini], expected_output_tokens: 1000}
  general:   {targets: [mini, ds-chat], strategy: cheapest}
  eu:        {targets: [large, coder]}
  intl:      {targets: [ds-chat]}
rules:
  - {if: {residency: eu}, route: eu}
  - {if: {task: coding}, route: coding}
  - {if: {task: reasoning}, route: reasoning}
  - {if: {language: {not: [en]}}, route: intl}
  - {route: general}
residency:
  eu: [eu]
tenants:
  acme-eu: {residency: eu, budget: {daily_usd: 1}}
  nohints: {allow_hints: false}
  cheap:   {budget: {daily_usd: 1, on_exhausted: downgrade}}
  limited: {routes: [general]}
classifier: {min_confidence: 0.0, fallback_task: general}
defaults: {expected_output_tokens: 100}
"""


@pytest.fixture(scope="module")
def policy():
    return parse_policy(POLICY, env={})


def msgs(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_hint_routes_by_rule(policy):
    d = decide(policy, {"messages": msgs("hello")}, task="coding")
    assert (d.task, d.task_source, d.route, d.rule) == ("coding", "hint", "coding", 1)
    assert [c.model for c in d.candidates] == ["coder", "ds-chat", "mini"]
    assert all(c.excluded is None for c in d.candidates)


def test_cost_estimate_is_tokens_times_price(policy):
    body = {"messages": msgs("x" * 400), "max_tokens": 50}
    d = decide(policy, body, task="coding")
    prompt = estimate_prompt_tokens(body["messages"])
    assert d.prompt_tokens == prompt and d.output_tokens == 50
    by = {c.model: c.estimated_cost_usd for c in d.candidates}
    assert by["mini"] == pytest.approx((prompt * 0.4 + 50 * 1.6) / 1e6)
    assert by["coder"] == pytest.approx((prompt * 0.03 + 50 * 0.03) / 1e6)


def test_route_default_output_tokens(policy):
    assert decide(policy, {"messages": msgs("p")}, task="reasoning").output_tokens == 1000
    assert decide(policy, {"messages": msgs("p")}, task="general").output_tokens == 100


def test_cheapest_strategy_sorts(policy):
    d = decide(policy, {"messages": msgs("hi")}, task="general")
    assert [c.model for c in d.candidates] == ["ds-chat", "mini"]  # listed [mini, ds-chat]


def test_residency_excludes_out_of_region_and_keeps_order(policy):
    d = decide(policy, {"messages": msgs("hi"), "model": "coding"}, residency="eu")
    assert [(c.model, c.excluded) for c in d.candidates] == [
        ("coder", None), ("ds-chat", "residency"), ("mini", "residency")]


def test_residency_rule_wins(policy):
    d = decide(policy, {"messages": msgs("hi")}, task="coding", residency="eu")
    assert d.route == "eu" and d.rule == 0
    assert {c.region for c in d.allowed} == {"eu"}


def test_tenant_residency_cannot_be_lifted(policy):
    d = decide(policy, {"messages": msgs("hi"), "model": "mini"}, tenant="acme-eu")
    assert d.candidates[0].excluded == "residency"
    with pytest.raises(NoCandidate) as ei:
        d.require_candidates()
    assert (ei.value.status, ei.value.code, ei.value.type) == (403, "residency", "permission_error")


def test_no_candidate_status_says_whether_to_retry(policy):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    d = decide(policy, {"messages": msgs("hi"), "model": "ds-r1", "tools": tools})  # ds-r1 has no tools
    with pytest.raises(NoCandidate) as ei:
        d.require_candidates()
    assert (ei.value.status, ei.value.type) == (400, "invalid_request_error")
    state = LiveState(circuit_open=frozenset({"coder"}))
    d = decide(policy, {"messages": msgs("hi"), "model": "coding"}, residency="eu", state=state)
    assert {c.excluded for c in d.candidates} == {"circuit_open", "residency"}
    with pytest.raises(NoCandidate) as ei:
        d.require_candidates()
    assert ei.value.status == 503  # the EU deployment may recover


def test_pinned_alias(policy):
    d = decide(policy, {"messages": msgs("hi"), "model": "ds-r1"})
    assert d.route == "ds-r1" and d.rule is None and [c.model for c in d.candidates] == ["ds-r1"]


def test_route_named_after_task_sets_task_source_alias(policy):
    d = decide(policy, {"messages": msgs("hi"), "model": "reasoning"})
    assert (d.task, d.task_source) == ("reasoning", "alias")


def test_alias_of_one_task_route_gives_its_task(policy):
    d = decide(policy, {"messages": msgs("hello there"), "model": "ds-r1"})  # only in `reasoning`
    assert (d.task, d.task_source) == ("reasoning", "alias")
    d = decide(policy, {"messages": msgs("hello there"), "model": "ds-chat"})  # in coding and general
    assert d.task_source == "classifier"


def test_unknown_model_is_404(policy):
    with pytest.raises(NotFound) as ei:
        decide(policy, {"messages": msgs("hi"), "model": "gpt-5"})
    assert ei.value.status == 404 and "coding" in ei.value.message


def test_bad_inputs_are_400(policy):
    with pytest.raises(InvalidRequest):
        decide(policy, {"messages": []})
    with pytest.raises(InvalidRequest):
        decide(policy, {"messages": msgs("x")}, task="poetry")
    with pytest.raises(InvalidRequest):
        decide(policy, {"messages": msgs("x")}, residency="mars")


def test_capabilities(policy):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    d = decide(policy, {"messages": msgs("hi"), "tools": tools}, task="reasoning")
    assert [(c.model, c.excluded) for c in d.candidates] == [("mini", None), ("ds-r1", "capability:tools")]
    img = [{"role": "user", "content": [{"type": "text", "text": "what is this"},
                                        {"type": "image_url", "image_url": {"url": "data:,"}}]}]
    d = decide(policy, {"messages": img}, task="general")
    assert [(c.model, c.excluded) for c in d.candidates] == [("mini", None), ("ds-chat", "capability:vision")]


def test_context_window(policy):
    d = decide(policy, {"messages": msgs("y" * 5000)}, task="coding")
    assert d.candidates[-1].model == "coder" and d.candidates[-1].excluded == "context_window"


def test_max_cost(policy):
    d = decide(policy, {"messages": msgs("z" * 4000), "max_tokens": 1000, "max_cost_usd": 0.0012}, task="general")
    assert {c.model: c.excluded for c in d.candidates} == {"ds-chat": None, "mini": "max_cost"}


def test_live_state_exclusions(policy):
    state = LiveState(circuit_open=frozenset({"coder"}), saturated=frozenset({"ds-chat"}))
    d = decide(policy, {"messages": msgs("hi")}, task="coding", state=state)
    assert [(c.model, c.excluded) for c in d.candidates] == [
        ("mini", None), ("coder", "circuit_open"), ("ds-chat", "saturated")]


def test_budget_reject_and_downgrade(policy):
    state = LiveState(budget_remaining={"acme-eu": 0.0, "cheap": 0.0})
    d = decide(policy, {"messages": msgs("hi")}, tenant="acme-eu", state=state)
    with pytest.raises(BudgetExceeded) as ei:
        d.require_candidates()
    assert ei.value.status == 429
    d = decide(policy, {"messages": msgs("hi")}, task="coding", tenant="cheap", state=state)
    assert d.downgraded and [c.model for c in d.allowed] == ["coder"]


def test_tenant_hints_off_and_route_limits(policy):
    d = decide(policy, {"messages": msgs("what's the capital of France?")}, task="coding", tenant="nohints")
    assert d.task_source != "hint"
    with pytest.raises(PermissionDenied):
        decide(policy, {"messages": msgs("hi"), "model": "coding"}, tenant="limited")
    with pytest.raises(PermissionDenied):
        decide(policy, {"messages": msgs("hi")}, tenant="nobody")


def test_classifier_routes_obvious_code(policy):
    d = decide(policy, {"messages": msgs("Fix this Python error:\nTraceback (most recent call last):\n"
                                         "  File \"app.py\", line 3, in <module>\n    import reqests\n"
                                         "ModuleNotFoundError: No module named 'reqests'")})
    assert (d.task, d.task_source, d.route) == ("coding", "classifier", "coding")


def test_language_rule(policy):
    d = decide(policy, {"messages": msgs("Wie spät ist es in Tokio, und wie ist das Wetter dort heute?")},
               task="general")
    assert d.language == "de" and d.route == "intl"


def test_language_is_detected_without_a_rule_only_when_asked(policy):
    import dataclasses

    no_rule = dataclasses.replace(policy, rules=tuple(r for r in policy.rules if "language" not in r.conditions))
    assert policy.uses_language and not no_rule.uses_language
    body = {"messages": msgs("Wie spät ist es in Tokio, und wie ist das Wetter dort heute?")}
    full, lean = decide(no_rule, body), decide(no_rule, body, language=False)
    assert full.language == "de" and lean.language is None
    assert (lean.task, lean.confidence, lean.route, lean.rule) == (full.task, full.confidence, full.route, full.rule)
    # a policy that routes on the language detects it either way
    assert decide(policy, body, task="general", language=False).language == "de"


def test_low_confidence_falls_back(policy):
    import dataclasses

    strict = dataclasses.replace(policy, classifier=dataclasses.replace(policy.classifier, min_confidence=1.01))
    d = decide(strict, {"messages": msgs("def f(): pass  # fix my python code")})
    assert d.task_source == "fallback" and d.task == "general" and d.classified_task is not None


def test_decision_json_shape(policy):
    out = decide(policy, {"messages": msgs("hi")}, task="coding").to_dict()
    assert {"task", "task_source", "confidence", "language", "route", "rule", "candidates"} <= set(out)
    assert set(out["candidates"][0]) >= {"model", "provider", "region", "estimated_cost_usd", "excluded"}
