"""router.server.openai_responses: OpenAI Responses <-> the engine's chat shape, on plain data.

One table row per mapping; the stream translator is fed chunk lists and its events parsed back.
"""

from __future__ import annotations

import orjson
import pytest

from router.core.errors import BudgetExceeded, InvalidRequest, UpstreamFailed
from router.core.validate import validate_chat
from router.server.openai_responses import Reply, ResponsesStream, error_body, from_chat, to_chat

USER = {"role": "user", "content": "hi"}
FN = {"type": "function", "name": "get_weather", "description": "Weather", "strict": False,
      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CHAT_FN = {"type": "function", "function": {"name": "get_weather", "parameters": FN["parameters"],
                                            "description": "Weather", "strict": False}}


def req(**kw):
    return {"model": "gpt-5", "input": "hi", **kw}


# (request, expected chat fields (subset), chat fields that must be absent)
REQUESTS = [
    pytest.param(req(), {"model": "gpt-5", "messages": [USER]}, ("stream", "tools", "max_tokens"), id="string input"),
    pytest.param({"input": "hi"}, {"model": "auto"}, (), id="no model: auto"),
    pytest.param(req(instructions="Be brief.", input=[
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Use tools."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]}]),
                 {"messages": [{"role": "system", "content": "Be brief.\nUse tools."}, {"role": "user", "content": "a\nb"}]},
                 (), id="instructions and developer messages: one system message"),
    pytest.param(req(input=[{"role": "user", "content": [
        {"type": "input_text", "text": "what?"},
        {"type": "input_image", "image_url": "data:image/png;base64,AAA", "detail": "low"}]}]),
                 {"messages": [{"role": "user", "content": [
                     {"type": "text", "text": "what?"},
                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA", "detail": "low"}}]}]},
                 (), id="image"),
    pytest.param(req(input=[
        USER,
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "xyz"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "rain"}]}]),
                 {"messages": [USER,
                               {"role": "assistant", "content": "Checking.", "tool_calls": [
                                   {"id": "call_1", "type": "function",
                                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                                   {"id": "call_2", "type": "function",
                                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
                               {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                               {"role": "tool", "tool_call_id": "call_2", "content": "rain"}]}, (),
                 id="a turn's text and calls in one assistant message; outputs as tool messages; reasoning dropped"),
    pytest.param(req(input=[USER, {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                            {"type": "function_call_output", "call_id": "c", "output": "ok"}]),
                 {"messages": [USER, {"role": "assistant", "content": None, "tool_calls": [
                     {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                     {"role": "tool", "tool_call_id": "c", "content": "ok"}]}, (), id="a call without text"),
    pytest.param(req(tools=[FN], tool_choice="required", parallel_tool_calls=False),
                 {"tools": [CHAT_FN], "tool_choice": "required", "parallel_tool_calls": False}, (), id="tools"),
    pytest.param(req(tools=[FN], tool_choice={"type": "function", "name": "get_weather"}),
                 {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, (), id="named tool choice"),
    pytest.param(req(tools=[{"type": "namespace", "name": "agents", "tools": [FN]}],
                     input=[USER, {"type": "function_call", "namespace": "agents", "name": "get_weather", "call_id": "c",
                                   "arguments": "{}"},
                            {"type": "function_call_output", "call_id": "c", "output": "ok"}]),
                 {"tools": [{"type": "function", "function": {**CHAT_FN["function"], "name": "agents__get_weather"}}],
                  "messages": [USER, {"role": "assistant", "content": None, "tool_calls": [
                      {"id": "c", "type": "function", "function": {"name": "agents__get_weather", "arguments": "{}"}}]},
                      {"role": "tool", "tool_call_id": "c", "content": "ok"}]}, (),
                 id="a namespace's functions are flattened as ns__name, its calls too"),
    pytest.param(req(stream=True, max_output_tokens=50, temperature=0.3, top_p=0.5, user="u1",
                     text={"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True}},
                     reasoning={"effort": "high", "summary": "auto"}, store=False, metadata={"a": "b"},
                     include=["reasoning.encrypted_content"], prompt_cache_key="k"),
                 {"stream": True, "stream_options": {"include_usage": True}, "max_tokens": 50, "temperature": 0.3,
                  "top_p": 0.5, "user": "u1", "reasoning_effort": "high",
                  "response_format": {"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"},
                                                                             "strict": True}}},
                 ("store", "metadata", "include", "prompt_cache_key"), id="parameters"),
    pytest.param(req(text={"format": {"type": "json_object"}}, reasoning={"effort": "none"}),
                 {"response_format": {"type": "json_object"}}, ("reasoning_effort",), id="json_object; effort none"),
]


@pytest.mark.parametrize(("body", "expected", "absent"), REQUESTS)
def test_requests_translate_to_valid_chat(body, expected, absent):
    chat, reply = to_chat(body)
    for key, value in expected.items():
        assert chat[key] == value, key
    for key in absent:
        assert key not in chat
    validate_chat(chat)
    assert reply.model == chat["model"]


# (request, the field the 400 names)
BAD = [
    pytest.param(req(previous_response_id="resp_1"), "previous_response_id", id="stateful: previous_response_id"),
    pytest.param(req(conversation="conv_1"), "conversation", id="stateful: conversation"),
    pytest.param(req(background=True), "background", id="background"),
    pytest.param({"model": "m"}, "input", id="no input"),
    pytest.param(req(input=[]), "input", id="empty input"),
    pytest.param(req(input=[{"type": "item_reference", "id": "msg_1"}]), "input[0]", id="item reference"),
    pytest.param(req(input=[{"type": "web_search_call", "id": "ws"}]), "input[0].type", id="built-in tool item"),
    pytest.param(req(input=[{"role": "tool", "content": "x"}]), "input[0].role", id="bad role"),
    pytest.param(req(input=[{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]), "input[0].content[0]",
                 id="file input"),
    pytest.param(req(input=[{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]),
                 "input[0].content[0]", id="image by file id"),
    pytest.param(req(tools=[{"type": "web_search"}]), "tools[0].type", id="web search"),
    pytest.param(req(tools=[{"type": "file_search", "vector_store_ids": ["v"]}]), "tools[0].type", id="file search"),
    pytest.param(req(tools=[FN], tool_choice={"type": "web_search"}), "tool_choice", id="hosted tool choice"),
    pytest.param(req(tools=[{"type": "custom", "name": "exec"}]), "tools[0].type", id="custom tool"),
    pytest.param(req(input=[{"type": "additional_tools", "role": "developer", "tools": []}]), "input[0]",
                 id="Codex's additional_tools"),
    pytest.param(req(max_output_tokens=0), "max_output_tokens", id="max_output_tokens"),
    pytest.param(req(temperature=3), "temperature", id="temperature"),
    pytest.param(req(text={"format": {"type": "json_schema"}}), "text.format", id="schema without schema"),
]


@pytest.mark.parametrize(("body", "param"), BAD)
def test_bad_requests_name_the_field(body, param):
    with pytest.raises(InvalidRequest) as e:
        to_chat(body)
    assert e.value.param == param and e.value.status == 400


def test_the_stateless_refusal_says_what_to_do_instead():
    with pytest.raises(InvalidRequest, match="send the whole conversation in `input`"):
        to_chat(req(previous_response_id="resp_1"))
    with pytest.raises(InvalidRequest, match="web_search"):
        to_chat(req(tools=[{"type": "web_search"}]))


REPLY = Reply("gpt-5", echo={"instructions": None, "tools": [], "tool_choice": "auto", "parallel_tool_calls": True,
                             "temperature": None, "top_p": None, "metadata": {}, "store": False, "max_output_tokens": None,
                             "text": {"format": {"type": "text"}}, "reasoning": {}, "user": None})


def completion(message, finish="stop", usage=None):
    data = {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}
    if usage is not None:
        data["usage"] = usage
    return data


def test_text_reasoning_and_calls_become_output_items():
    data = completion({"role": "assistant", "content": "Calling.", "reasoning_content": "think",
                       "tool_calls": [{"id": "call_9", "type": "function",
                                       "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
                      "tool_calls", {"prompt_tokens": 10, "completion_tokens": 6,
                                     "prompt_tokens_details": {"cached_tokens": 2},
                                     "completion_tokens_details": {"reasoning_tokens": 1}})
    r = from_chat(data, REPLY, "resp_abc", 123)
    assert r["id"] == "resp_abc" and r["object"] == "response" and r["created_at"] == 123 and r["model"] == "gpt-5"
    assert r["status"] == "completed" and r["incomplete_details"] is None and r["error"] is None
    assert [i["type"] for i in r["output"]] == ["reasoning", "message", "function_call"]
    assert r["output"][0]["summary"] == [{"type": "summary_text", "text": "think"}]
    assert r["output"][1]["content"][0] == {"type": "output_text", "text": "Calling.", "annotations": [], "logprobs": []}
    call = r["output"][2]
    assert (call["call_id"], call["name"], call["arguments"], call["status"]) == (
        "call_9", "get_weather", '{"city":"Paris"}', "completed")
    assert r["output_text"] == "Calling."
    assert r["usage"] == {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 2}, "output_tokens": 6,
                          "output_tokens_details": {"reasoning_tokens": 1}, "total_tokens": 16}
    assert len({i["id"] for i in r["output"]}) == 3


def test_length_makes_an_incomplete_response_and_missing_usage_uses_the_estimate():
    r = from_chat(completion({"role": "assistant", "content": "The quick"}, "length"), REPLY, "resp_1", 0, (8, 2))
    assert r["status"] == "incomplete" and r["incomplete_details"] == {"reason": "max_output_tokens"}
    assert r["usage"]["input_tokens"] == 8 and r["usage"]["output_tokens"] == 2


def events(raw: bytes) -> list[dict]:
    out = []
    for block in raw.decode().split("\n\n"):
        if not block or block.startswith(":"):
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = orjson.loads(lines["data"])
        assert data["type"] == lines["event"]
        out.append(data)
    return out


def chunk(delta=None, finish=None, usage=None):
    if usage is not None:
        return {"choices": [], "usage": usage}
    return {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}


def test_stream_events_in_order_with_sequence_numbers():
    s = ResponsesStream(REPLY, "resp_x", 7, 12)
    chunks = [chunk({"role": "assistant", "content": ""}), chunk({"reasoning_content": "hm"}), chunk({"content": "Hel"}),
              chunk({"content": "lo"}),
              chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                     "function": {"name": "f", "arguments": ""}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
              chunk(finish="tool_calls"), chunk(usage={"prompt_tokens": 12, "completion_tokens": 7})]
    ev = events(b"".join(s.feed(c) for c in chunks) + s.finish())
    assert [e["sequence_number"] for e in ev] == list(range(len(ev)))
    assert [e["type"] for e in ev] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    assert ev[0]["response"]["status"] == "in_progress" and ev[0]["response"]["output"] == []
    added = [e for e in ev if e["type"] == "response.output_item.added"]
    assert [e["output_index"] for e in added] == [0, 1, 2]
    assert [e["item"]["type"] for e in added] == ["reasoning", "message", "function_call"]
    text_done = next(e for e in ev if e["type"] == "response.output_text.done")
    assert text_done["text"] == "Hello" and text_done["output_index"] == 1
    args_done = next(e for e in ev if e["type"] == "response.function_call_arguments.done")
    assert args_done["arguments"] == '{"a":1}' and args_done["output_index"] == 2
    final = ev[-1]["response"]
    assert final["status"] == "completed" and final["output_text"] == "Hello"
    assert [i["type"] for i in final["output"]] == ["reasoning", "message", "function_call"]
    assert final["output"][2]["call_id"] == "call_1" and final["output"][2]["status"] == "completed"
    assert final["usage"]["input_tokens"] == 12 and final["usage"]["output_tokens"] == 7
    items = {e["item"]["id"] for e in ev if e["type"] == "response.output_item.done"}
    assert items == {i["id"] for i in final["output"]}


def test_stream_incomplete_keepalive_and_failure():
    s = ResponsesStream(REPLY, "resp_y", 0, 3)
    opened = events(s.keepalive())
    assert [e["type"] for e in opened] == ["response.created", "response.in_progress"]
    assert s.keepalive() == b": keep-alive\n\n"
    ev = events(s.feed(chunk({"content": "abcd"})) + s.feed(chunk(finish="length")) + s.finish())
    assert ev[0]["type"] == "response.output_item.added"  # not created twice
    assert ev[-1]["type"] == "response.incomplete"
    assert ev[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert ev[-1]["response"]["usage"]["input_tokens"] == 3 and ev[-1]["response"]["usage"]["output_tokens"] == 1

    f = ResponsesStream(REPLY, "resp_z", 0)
    ev = events(f.feed(chunk({"content": "part"})) + f.fail(UpstreamFailed("gpu: stream interrupted")))
    assert ev[-1]["type"] == "response.failed"
    assert ev[-1]["response"]["status"] == "failed"
    assert ev[-1]["response"]["error"] == {"code": "server_error", "message": "gpu: stream interrupted"}


def test_a_namespaced_call_goes_back_with_its_namespace():
    _, reply = to_chat(req(tools=[{"type": "namespace", "name": "agents", "tools": [FN]}]))
    call = {"id": "call_1", "type": "function", "function": {"name": "agents__get_weather", "arguments": "{}"}}
    r = from_chat(completion({"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"), reply, "resp_1", 0)
    assert (r["output"][0]["namespace"], r["output"][0]["name"]) == ("agents", "get_weather")
    s = ResponsesStream(reply, "resp_2", 0)
    ev = events(s.feed(chunk({"tool_calls": [{"index": 0, **call}]})) + s.finish())
    added = next(e for e in ev if e["type"] == "response.output_item.added")["item"]
    done = next(e for e in ev if e["type"] == "response.output_item.done")["item"]
    assert added["namespace"] == done["namespace"] == "agents" and added["name"] == done["name"] == "get_weather"
    assert ev[-1]["response"]["output"][0]["namespace"] == "agents"


def test_errors_are_openai_shaped_and_a_spent_budget_is_insufficient_quota():
    assert error_body(BudgetExceeded("spent")) == (429, {"error": {"message": "spent", "type": "insufficient_quota",
                                                                    "param": None, "code": "insufficient_quota"}})
    assert error_body(InvalidRequest("bad", param="input"))[1]["error"]["param"] == "input"
