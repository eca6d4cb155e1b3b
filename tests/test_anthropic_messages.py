"""router.server.anthropic_messages: Anthropic Messages <-> the engine's chat shape, on plain data.

One table row per mapping; the stream translator is fed chunk lists and its events parsed back.
"""

from __future__ import annotations

import orjson
import pytest

from router.core.errors import (
    AuthenticationError,
    BudgetExceeded,
    InvalidRequest,
    NoCandidate,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RequestError,
    UpstreamFailed,
)
from router.core.validate import validate_chat
from router.server.anthropic_messages import (
    MessagesStream,
    Reply,
    count_tokens,
    error_body,
    from_chat,
    to_chat,
)

BASE = {"model": "claude-sonnet-4-5", "max_tokens": 100}
USER = {"role": "user", "content": "hi"}


def req(**kw):
    return {**BASE, "messages": [USER], **kw}


# (request, expected chat fields (subset), chat fields that must be absent)
REQUESTS = [
    pytest.param(req(), {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [USER]},
                 ("stream", "tools", "stop", "user"), id="minimal"),
    pytest.param(req(system="Be brief."), {"messages": [{"role": "system", "content": "Be brief."}, USER]}, (),
                 id="system string"),
    pytest.param(req(system=[{"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}},
                             {"type": "text", "text": "B"}]),
                 {"messages": [{"role": "system", "content": "A\nB"}, USER]}, (), id="system blocks, cache_control dropped"),
    pytest.param({**BASE, "system": "S", "messages": [USER, {"role": "system", "content": [{"type": "text", "text": "T"}]},
                                                      {"role": "user", "content": "again"}]},
                 {"messages": [{"role": "system", "content": "S\nT"}, USER, {"role": "user", "content": "again"}]}, (),
                 id="system turns inside messages join the leading system message"),
    pytest.param(req(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]),
                 {"messages": [{"role": "user", "content": "a\nb"}]}, (), id="text blocks become one string"),
    pytest.param(req(messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]),
                 {"messages": [{"role": "user", "content": [
                     {"type": "text", "text": "what is this?"},
                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                     {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}, (), id="images"),
    pytest.param(req(messages=[
        USER,
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                                          {"type": "text", "text": "Let me look."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"k": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"},
                                     {"type": "text", "text": "and?"}]}]),
                 {"messages": [USER,
                               {"role": "assistant", "content": "Let me look.", "tool_calls": [
                                   {"id": "toolu_1", "type": "function", "function": {"name": "get", "arguments": '{"k":1}'}}]},
                               {"role": "tool", "tool_call_id": "toolu_1", "content": "42"},
                               {"role": "user", "content": "and?"}]}, (),
                 id="tool_use and tool_result round trip; thinking dropped"),
    pytest.param(req(messages=[
        USER, {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                                      "content": [{"type": "text", "text": "boom"},
                                                  {"type": "image", "source": {"type": "url", "url": "u"}}]}]}]),
                 {"messages": [USER,
                               {"role": "assistant", "content": None, "tool_calls": [
                                   {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                               {"role": "tool", "tool_call_id": "t1", "content": "Error: boom"},
                               {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]}, (),
                 id="tool error and a tool's image"),
    pytest.param(req(tools=[{"name": "get", "description": "Get it", "input_schema": {"type": "object", "properties": {}}}],
                     tool_choice={"type": "any", "disable_parallel_tool_use": True}),
                 {"tools": [{"type": "function", "function": {"name": "get", "description": "Get it",
                                                              "parameters": {"type": "object", "properties": {}}}}],
                  "tool_choice": "required", "parallel_tool_calls": False}, (), id="tools, any, serial"),
    pytest.param(req(tools=[{"name": "get", "input_schema": {"type": "object"}}], tool_choice={"type": "tool", "name": "get"}),
                 {"tool_choice": {"type": "function", "function": {"name": "get"}}}, ("parallel_tool_calls",),
                 id="tool_choice tool"),
    pytest.param(req(tools=[{"name": "get", "input_schema": {"type": "object"}}], tool_choice={"type": "none"}),
                 {"tool_choice": "none"}, (), id="tool_choice none"),
    pytest.param(req(stream=True, stop_sequences=["END"], temperature=0.5, top_p=0.9, top_k=40,
                     metadata={"user_id": "u-1"}),
                 {"stream": True, "stream_options": {"include_usage": True}, "stop": ["END"], "temperature": 0.5,
                  "top_p": 0.9, "user": "u-1"}, ("top_k",), id="sampling, stream, user; top_k dropped"),
    pytest.param(req(thinking={"type": "enabled", "budget_tokens": 2048}), {"reasoning_effort": "low"}, (),
                 id="thinking budget -> low effort"),
    pytest.param(req(thinking={"type": "enabled", "budget_tokens": 32000}), {"reasoning_effort": "high"}, (),
                 id="thinking budget -> high effort"),
    pytest.param(req(thinking={"type": "adaptive"}, output_config={"effort": "medium"}, context_management={"edits": []}),
                 {}, ("reasoning_effort", "output_config", "context_management", "thinking"),
                 id="adaptive thinking and unknown fields: nothing forwarded"),
]


@pytest.mark.parametrize(("body", "expected", "absent"), REQUESTS)
def test_requests_translate_to_valid_chat(body, expected, absent):
    chat, reply = to_chat(body)
    for key, value in expected.items():
        assert chat[key] == value, key
    for key in absent:
        assert key not in chat
    validate_chat(chat)  # what the engine checks: a translation never trips it
    assert reply.model == body["model"]


# (request, the Anthropic field the 400 names)
BAD = [
    pytest.param({"messages": [USER], "max_tokens": 5}, "model", id="no model"),
    pytest.param({"model": "m", "messages": [USER]}, "max_tokens", id="max_tokens is required"),
    pytest.param({**BASE, "max_tokens": 0, "messages": [USER]}, "max_tokens", id="max_tokens below 1"),
    pytest.param({**BASE, "messages": []}, "messages", id="no messages"),
    pytest.param(req(messages=[{"role": "tool", "content": "x"}]), "messages.0.role", id="bad role"),
    pytest.param(req(messages=[{"role": "user", "content": [{"type": "audio"}]}]), "messages.0.content.0.type",
                 id="unknown block"),
    pytest.param(req(messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]),
                 "messages.0.content.0.source", id="file image"),
    pytest.param(req(messages=[{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]),
                 "messages.0.content.0.tool_use_id", id="tool_result without id"),
    pytest.param(req(tools=[{"type": "web_search_20250305", "name": "web_search"}]), "tools.0.type", id="server tool"),
    pytest.param(req(tools=[{"name": "f", "input_schema": {}}], tool_choice={"type": "sometimes"}), "tool_choice.type",
                 id="bad tool_choice"),
    pytest.param(req(stop_sequences=["a", "b", "c", "d", "e"]), "stop_sequences", id="too many stop sequences"),
    pytest.param(req(temperature=1.5), "temperature", id="temperature above Anthropic's 1"),
    pytest.param(req(thinking={"type": "enabled"}), "thinking.budget_tokens", id="thinking without budget"),
    pytest.param(req(stream="yes"), "stream", id="stream not a boolean"),
    pytest.param(req(messages=[{"role": "assistant", "content": [{"type": "server_tool_use", "id": "x"}]}]),
                 "messages.0.content.0.type", id="server tool block"),
]


@pytest.mark.parametrize(("body", "param"), BAD)
def test_bad_requests_name_the_field(body, param):
    with pytest.raises(InvalidRequest) as e:
        to_chat(body)
    assert e.value.param == param and e.value.status == 400
    assert e.value.message.startswith(param)


REPLY = Reply("claude-x", stop_sequences=("END",))


def completion(message, finish="stop", usage=None, **choice):
    data = {"id": "c", "object": "chat.completion", "choices": [{"index": 0, "message": message,
                                                                 "finish_reason": finish, **choice}]}
    if usage is not None:
        data["usage"] = usage
    return data


# (chat completion, expected content, stop_reason, stop_sequence, usage)
RESPONSES = [
    pytest.param(completion({"role": "assistant", "content": "Hi"}, usage={"prompt_tokens": 9, "completion_tokens": 2}),
                 [{"type": "text", "text": "Hi"}], "end_turn", None, {"input_tokens": 9, "output_tokens": 2}, id="text"),
    pytest.param(completion({"role": "assistant", "content": "Hi"}, "length"), [{"type": "text", "text": "Hi"}],
                 "max_tokens", None, {"input_tokens": 7, "output_tokens": 3}, id="length; no usage: the metered estimate"),
    pytest.param(completion({"role": "assistant", "content": "Hi"}, stop_reason="END"), [{"type": "text", "text": "Hi"}],
                 "stop_sequence", "END", {"input_tokens": 7, "output_tokens": 3}, id="vLLM names the stop sequence"),
    pytest.param(completion({"role": "assistant", "content": None, "reasoning_content": "think",
                             "tool_calls": [{"id": "call_1", "type": "function",
                                             "function": {"name": "get", "arguments": '{"a": 1}'}}]}, "tool_calls",
                            {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}}),
                 [{"type": "thinking", "thinking": "think", "signature": ""},
                  {"type": "tool_use", "id": "call_1", "name": "get", "input": {"a": 1}}], "tool_use", None,
                 {"input_tokens": 6, "output_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4},
                 id="reasoning, tool call, cached tokens"),
    pytest.param(completion({"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{broken"}}]}, "stop"),
                 [{"type": "tool_use", "id": "toolu_msg_1_0", "name": "f", "input": {"_arguments": "{broken"}}],
                 "tool_use", None, {"input_tokens": 7, "output_tokens": 3},
                 id="a tool call is tool_use whatever the finish reason; broken JSON kept"),
    pytest.param(completion({"role": "assistant", "content": "no"}, "content_filter"), [{"type": "text", "text": "no"}],
                 "refusal", None, {"input_tokens": 7, "output_tokens": 3}, id="content filter"),
]


@pytest.mark.parametrize(("data", "content", "stop", "sequence", "usage"), RESPONSES)
def test_completions_translate_to_messages(data, content, stop, sequence, usage):
    msg = from_chat(data, REPLY, "msg_1", (7, 3))
    assert msg["id"] == "msg_1" and msg["type"] == "message" and msg["role"] == "assistant"
    assert msg["model"] == "claude-x"
    assert msg["content"] == content
    assert (msg["stop_reason"], msg["stop_sequence"]) == (stop, sequence)
    assert msg["usage"] == usage


def test_thinking_blocks_are_left_out_when_thinking_is_disabled():
    _, reply = to_chat(req(thinking={"type": "disabled"}))
    msg = from_chat(completion({"role": "assistant", "content": "x", "reasoning_content": "r"}), reply, "m")
    assert [b["type"] for b in msg["content"]] == ["text"]


def events(raw: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = orjson.loads(lines["data"])
        assert data["type"] == lines["event"]
        out.append((lines["event"], data))
    return out


def chunk(delta=None, finish=None, usage=None):
    c = {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}
    if usage is not None:
        c = {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": usage}
    return c


def run(stream, chunks):
    raw = b"".join(stream.feed(c) for c in chunks) + stream.finish()
    return events(raw)


def test_stream_of_thinking_text_and_tool_calls():
    chunks = [chunk({"role": "assistant", "content": ""}), chunk({"reasoning_content": "Let me"}),
              chunk({"reasoning_content": " think"}), chunk({"content": "I'll call"}), chunk({"content": " it."}),
              chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                     "function": {"name": "get", "arguments": ""}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"k":'}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' 1}'}}]}),
              chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                     "function": {"name": "put", "arguments": "{}"}}]}),
              chunk(finish="tool_calls"),
              chunk(usage={"prompt_tokens": 20, "completion_tokens": 9})]
    ev = run(MessagesStream(REPLY, "msg_1", 18), chunks)
    names = [n for n, _ in ev]
    assert names == ["message_start",
                     "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]
    start = ev[0][1]["message"]
    assert start["id"] == "msg_1" and start["model"] == "claude-x" and start["usage"]["input_tokens"] == 18
    assert [e["content_block"]["type"] for n, e in ev if n == "content_block_start"] == ["thinking", "text", "tool_use",
                                                                                          "tool_use"]
    assert [e["index"] for n, e in ev if n == "content_block_start"] == [0, 1, 2, 3]
    deltas = [e["delta"] for n, e in ev if n == "content_block_delta"]
    assert "".join(d.get("thinking", "") for d in deltas) == "Let me think"
    assert "".join(d.get("text", "") for d in deltas) == "I'll call it."
    tool = [e for n, e in ev if n == "content_block_start"][2]["content_block"]
    assert tool == {"type": "tool_use", "id": "call_a", "name": "get", "input": {}}
    args = "".join(e["delta"]["partial_json"] for n, e in ev if n == "content_block_delta" and e["index"] == 2)
    assert orjson.loads(args) == {"k": 1}
    assert ev[-2][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert ev[-2][1]["usage"] == {"input_tokens": 20, "output_tokens": 9}


def test_stream_without_usage_reports_the_estimate_and_max_tokens():
    ev = run(MessagesStream(REPLY, "m", 11), [chunk({"content": "abcdefgh"}), chunk(finish="length")])
    assert ev[-2][1]["delta"]["stop_reason"] == "max_tokens"
    assert ev[-2][1]["usage"] == {"input_tokens": 11, "output_tokens": 2}


def test_keepalive_opens_the_message_then_pings_and_a_failure_ends_with_an_error_event():
    s = MessagesStream(REPLY, "m", 5)
    first = events(s.keepalive())
    assert [n for n, _ in first] == ["message_start", "ping"]
    assert [n for n, _ in events(s.keepalive())] == ["ping"]
    more = events(s.feed(chunk({"content": "x"})))
    assert [n for n, _ in more] == ["content_block_start", "content_block_delta"]  # no second message_start
    err = events(s.fail(UpstreamFailed("gpu: stream interrupted")))
    assert err == [("error", {"type": "error", "error": {"type": "overloaded_error",
                                                         "message": "gpu: stream interrupted"}})]


# (error, Anthropic status, Anthropic error type)
ERRORS = [
    pytest.param(InvalidRequest("bad"), 400, "invalid_request_error", id="400"),
    pytest.param(AuthenticationError("no key"), 401, "authentication_error", id="401"),
    pytest.param(PermissionDenied("no"), 403, "permission_error", id="403"),
    pytest.param(NoCandidate("residency", status=403, code="residency"), 403, "permission_error", id="residency 403"),
    pytest.param(NotFound("unknown model"), 404, "not_found_error", id="404"),
    pytest.param(PayloadTooLarge("big"), 413, "request_too_large", id="413"),
    pytest.param(BudgetExceeded("spent"), 429, "rate_limit_error", id="budget 429"),
    pytest.param(RequestError("boom", status=500), 500, "api_error", id="500"),
    pytest.param(UpstreamFailed("all down", status=502), 529, "overloaded_error", id="every candidate failed"),
    pytest.param(NoCandidate("circuits open"), 529, "overloaded_error", id="every candidate unavailable"),
    pytest.param(UpstreamFailed("deadline", status=504), 504, "api_error", id="timeout"),
    pytest.param(InvalidRequest("upstream said no", status=422), 422, "invalid_request_error", id="other 4xx"),
]


@pytest.mark.parametrize(("err", "status", "kind"), ERRORS)
def test_errors_take_anthropics_shape(err, status, kind):
    got_status, body = error_body(err, "req_1")
    assert got_status == status
    assert body == {"type": "error", "error": {"type": kind, "message": err.message}, "request_id": "req_1"}


def test_count_tokens_is_the_routing_estimate_and_counts_tools():
    plain = count_tokens(req())["input_tokens"]
    with_tools = count_tokens(req(tools=[{"name": "f", "input_schema": {"type": "object", "properties": {"x": {}}}}]))
    assert 0 < plain < with_tools["input_tokens"]
    with pytest.raises(InvalidRequest):
        count_tokens({"model": "m"})
