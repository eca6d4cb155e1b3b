"""router.core.translate: provider quirks, one table row per quirk, on plain data."""

from __future__ import annotations

import pytest

from router.core.policy_parser import parse_policy
from router.core.translate import Usage, build_call, read_usage

POLICY = """
version: 1
providers:
  gpu:  {kind: vllm, base_url: "http://gpu.internal/v1"}
  ds:   {kind: deepseek, base_url: "https://api.deepseek.com/v1", api_key: sk-ds}
  oa:   {kind: openai, base_url: "https://api.openai.com/v1", api_key: sk-oa, headers: {OpenAI-Organization: org-1}}
  mi:   {kind: mistral, base_url: "https://api.mistral.ai/v1", api_key: sk-mi}
models:
  coder: {provider: gpu, model: Qwen/Qwen3-Coder-Next, price: {input_per_mtok: 0, output_per_mtok: 0},
          params: {temperature: 0.2}}
  chat:  {provider: ds, model: deepseek-chat, price: {input_per_mtok: 0.28, output_per_mtok: 0.42}, context_window: 131072}
  r1:    {provider: ds, model: deepseek-reasoner, price: {input_per_mtok: 0.28, output_per_mtok: 0.42}}
  o4:    {provider: oa, model: o4-mini, price: {input_per_mtok: 1.1, output_per_mtok: 4.4}, capabilities: [reasoning]}
  mini:  {provider: oa, model: gpt-4.1-mini, price: {input_per_mtok: 0.4, output_per_mtok: 1.6}, max_output_tokens: 4096}
  large: {provider: mi, model: mistral-large-latest, price: {input_per_mtok: 0.5, output_per_mtok: 1.5}}
routes:
  general: {targets: [chat]}
rules:
  - {route: general}
"""

ASSISTANT_WITH_REASONING = {"role": "assistant", "content": "4", "reasoning_content": "2+2..."}
MESSAGES = [{"role": "user", "content": "2+2?"}, ASSISTANT_WITH_REASONING, {"role": "user", "content": "and 3+3?"}]


@pytest.fixture(scope="module")
def policy():
    return parse_policy(POLICY, env={})


def call(policy, alias: str, body: dict, *, stream: bool = False, path: str = "/chat/completions"):
    model = policy.models[alias]
    return build_call(policy.providers[model.provider], model, body, stream=stream, path=path)


# (model alias, request body, stream, expected payload subset, keys that must be absent, expected dropped)
CASES = [
    pytest.param("coder", {"model": "auto", "messages": MESSAGES, "max_cost_usd": 1, "top_k": 5}, False,
                 {"model": "Qwen/Qwen3-Coder-Next", "temperature": 0.2, "top_k": 5, "messages": MESSAGES},
                 ("max_cost_usd", "stream", "stream_options"), (), id="vllm: model params + extras pass, router fields never"),
    pytest.param("coder", {"messages": MESSAGES, "temperature": 0.9}, False, {"temperature": 0.9}, (), (),
                 id="request sampling overrides the model's params"),
    pytest.param("coder", {"messages": MESSAGES, "stream": True, "stream_options": {"x": 1}}, True,
                 {"stream": True, "stream_options": {"x": 1, "include_usage": True}}, (), (),
                 id="streams always ask for usage"),
    pytest.param("mini", {"messages": MESSAGES, "stream": True}, False, {"model": "gpt-4.1-mini"},
                 ("stream", "stream_options"), (), id="a JSON call drops stream fields"),
    pytest.param("chat", {"messages": MESSAGES, "logprobs": True}, False,
                 {"messages": [MESSAGES[0], {"role": "assistant", "content": "4"}, MESSAGES[2]], "logprobs": True},
                 (), (), id="deepseek: reasoning_content stripped from input turns"),
    pytest.param("r1", {"messages": MESSAGES, "logprobs": True, "top_logprobs": 2}, False,
                 {"model": "deepseek-reasoner"}, ("logprobs", "top_logprobs"), ("logprobs", "top_logprobs"),
                 id="deepseek-reasoner: logprobs dropped"),
    pytest.param("large", {"messages": MESSAGES, "seed": 7, "max_completion_tokens": 50, "user": "u1",
                           "stream": True, "logit_bias": {}}, True,
                 {"random_seed": 7, "max_tokens": 50, "stream": True,
                  "messages": [MESSAGES[0], {"role": "assistant", "content": "4"}, MESSAGES[2]]},
                 ("seed", "max_completion_tokens", "user", "stream_options", "logit_bias"), ("user", "logit_bias"),
                 id="mistral: renames, allowlist, no stream_options"),
]


@pytest.mark.parametrize("alias,body,stream,expected,absent,dropped", CASES)
def test_quirks(policy, alias, body, stream, expected, absent, dropped) -> None:
    c = call(policy, alias, body, stream=stream)
    for k, v in expected.items():
        assert c.payload[k] == v, k
    for k in absent:
        assert k not in c.payload, k
    assert sorted(c.dropped) == sorted(dropped)


def test_the_request_body_is_never_mutated(policy) -> None:
    body = {"messages": [dict(m) for m in MESSAGES], "seed": 1, "stream": True}
    before = repr(body)
    for alias in ("coder", "chat", "r1", "mini", "large"):
        call(policy, alias, body, stream=True)
    assert repr(body) == before


def test_url_headers_and_key(policy) -> None:
    c = call(policy, "mini", {"messages": MESSAGES})
    assert c.url == "https://api.openai.com/v1/chat/completions"
    assert c.headers == {"Content-Type": "application/json", "OpenAI-Organization": "org-1",
                         "Authorization": "Bearer sk-oa"}
    assert "Authorization" not in call(policy, "coder", {"messages": MESSAGES}).headers  # keyless vLLM
    e = call(policy, "large", {"input": "x", "seed": 3}, path="/embeddings")
    assert e.url.endswith("/embeddings") and e.payload["seed"] == 3  # chat quirks do not touch embeddings


@pytest.mark.parametrize("data,usage", [
    ({"usage": {"prompt_tokens": 10, "completion_tokens": 5}}, Usage(10, 5)),
    ({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "completion_tokens_details": {"reasoning_tokens": 3}}},
     Usage(10, 5, 3)),
    ({"usage": {"prompt_tokens": 10}}, None),
    ({"usage": {"prompt_tokens": "10", "completion_tokens": 5}}, None),
    ({"usage": None}, None),
    ({}, None),
    (None, None),
])
def test_read_usage(data, usage) -> None:
    assert read_usage(data) == usage


@pytest.mark.parametrize(("alias", "body", "sent"), [
    # deepseek-chat writes at most 8,192 tokens (litellm's catalogue): Claude Code's 32k ask is capped
    ("chat", {"max_tokens": 32000}, {"max_tokens": 8192}),
    ("chat", {"max_tokens": 100}, {"max_tokens": 100}),
    # the policy's own `max_output_tokens` wins over the catalogue's 32,768
    ("mini", {"max_completion_tokens": 128000}, {"max_completion_tokens": 4096}),
    ("mini", {"max_tokens": 5000, "max_completion_tokens": 300}, {"max_tokens": 4096, "max_completion_tokens": 300}),
    # self-hosted: no catalogue, no limit in the policy, nothing capped
    ("coder", {"max_tokens": 128000}, {"max_tokens": 128000}),
])
def test_max_tokens_is_capped_at_what_the_model_can_write(policy, alias, body, sent) -> None:
    payload = call(policy, alias, {"messages": MESSAGES, **body}).payload
    assert {k: payload.get(k) for k in sent} == sent


def test_the_cap_keeps_a_large_ask_inside_the_context_window(policy) -> None:
    from router.core.decision import decide

    d = decide(policy, {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 131070})
    assert [c.excluded for c in d.candidates] == [None]   # a 131k ask, a 131k window: 8k written at most


@pytest.mark.parametrize(("alias", "kept"), [
    ("mini", False),    # gpt-4.1-mini: OpenAI refuses reasoning_effort for a model that does not reason
    ("o4", True),       # a model with the `reasoning` capability gets it
    ("chat", True),     # DeepSeek's API takes it (and `thinking`) for its thinking mode
    ("r1", True),
    ("coder", True),    # vLLM accepts the field (and uses it for models that reason)
])
def test_reasoning_effort_goes_only_where_it_is_accepted(policy, alias, kept) -> None:
    c = call(policy, alias, {"messages": MESSAGES, "reasoning_effort": "high"})
    assert ("reasoning_effort" in c.payload) is kept
    assert ("reasoning_effort" in c.dropped) is not kept
