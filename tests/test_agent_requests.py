"""Requests real agents sent (tests/data/agents: Claude Code, Codex, the SDKs), through the translators.

Each must become a chat body the engine accepts (`validate_chat`) and that an OpenAI-compatible
upstream accepts (the simulator's tool-turn check, as OpenAI's API applies it), keeping what
matters: one leading system message, every tool, every tool call answered by its result.
"""

from __future__ import annotations

import gzip
import json
import pathlib

import pytest

from router.core.errors import InvalidRequest
from router.core.validate import validate_chat
from router.dev.simulator import _tool_sequence_problem
from router.server import anthropic_messages, openai_responses

DATA = pathlib.Path(__file__).parent / "data" / "agents"


def load(name: str) -> dict:
    with gzip.open(DATA / f"{name}.json.gz", "rt") as f:
        return json.load(f)


def check(chat: dict) -> None:
    validate_chat(chat)
    msgs = chat["messages"]
    assert [m["role"] for m in msgs].count("system") <= 1
    assert all(m["role"] != "system" for m in msgs[1:]), "a system message after the first one"
    assert _tool_sequence_problem(msgs) is None


CLAUDE_CODE = ["claude_code_messages_first", "claude_code_messages_tool_result", "claude_code_messages_thinking_tool_result",
               "claude_code_messages_tool_reference", "claude_code_messages_interactive",
               "claude_code_messages_subagent_haiku", "claude_code_messages_nonstream_fallback",
               "claude_code_messages_disable_experimental_betas", "sdk_anthropic_v1_messages_fco"]


@pytest.mark.parametrize("name", CLAUDE_CODE)
def test_anthropic_clients_requests_translate(name):
    body = load(name)
    chat, reply = anthropic_messages.to_chat(body)
    check(chat)
    assert reply.model == body["model"] and reply.stream == bool(body.get("stream"))
    assert len(chat.get("tools", [])) == len(body.get("tools", []))
    results = sum(1 for m in body["messages"] if isinstance(m["content"], list)
                  for b in m["content"] if b.get("type") == "tool_result")
    assert sum(1 for m in chat["messages"] if m["role"] == "tool") == results
    if name.startswith("claude_code"):  # its `role: system` turn joins the leading system message
        assert "# Environment" in chat["messages"][0]["content"]


def test_claude_codes_tool_reference_results_stay_visible():
    chat, _ = anthropic_messages.to_chat(load("claude_code_messages_tool_reference"))
    tool_messages = [m["content"] for m in chat["messages"] if m["role"] == "tool"]
    assert any('"tool_reference"' in c for c in tool_messages)


def test_claude_codes_count_tokens_request():
    counted = anthropic_messages.count_tokens(load("claude_code_count_tokens_tool"))
    assert counted["input_tokens"] > 0


CODEX_AND_SDKS = ["codex_responses_first", "codex_responses_function_call_output", "codex_responses_namespace_followup",
                  "codex_responses_reasoning_followup", "sdk_agents_v1_responses_fco", "sdk_openai_v1_responses_fco"]


@pytest.mark.parametrize("name", CODEX_AND_SDKS)
def test_responses_clients_requests_translate(name):
    body = load(name)
    # Some captures ran Codex with its default config, which adds the built-in web_search tool;
    # docs/agents.md sets `web_search = "disabled"`, which leaves exactly the rest.
    body["tools"] = [t for t in body.get("tools", []) if t.get("type") != "web_search"]
    chat, reply = openai_responses.to_chat(body)
    check(chat)
    outputs = sum(1 for i in body["input"] if i.get("type") == "function_call_output")
    assert sum(1 for m in chat["messages"] if m["role"] == "tool") == outputs


def test_codex_namespaced_tools_round_trip():
    body = load("codex_responses_namespace_followup")
    chat, reply = openai_responses.to_chat(body)
    names = {t["function"]["name"] for t in chat["tools"]}
    assert "multi_agent_v1__close_agent" in names and "exec_command" in names
    assert reply.namespaces["multi_agent_v1__close_agent"] == ("multi_agent_v1", "close_agent")
    calls = [c["function"]["name"] for m in chat["messages"] for c in m.get("tool_calls", [])]
    assert calls == ["multi_agent_v1__close_agent"]


@pytest.mark.parametrize(("name", "param"), [("codex_responses_default_config", "tools"),
                                             ("codex_responses_openai_model_name", "input[0]")])
def test_codex_configs_router_cannot_serve_get_a_clear_400(name, param):
    """Codex's default config sends a built-in web_search tool; with an OpenAI model name it knows, custom
    tools in an additional_tools item. docs/agents.md gives the config that avoids both."""
    with pytest.raises(InvalidRequest) as e:
        openai_responses.to_chat(load(name))
    assert e.value.param.startswith(param)
