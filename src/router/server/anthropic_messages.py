"""Anthropic's Messages API (``POST /v1/messages``) in front of the chat engine: pure translation.

`to_chat` turns a Messages request into the chat-completions body the engine routes (and a
`Reply` holding what the answer needs); `from_chat` turns the engine's chat completion into a
Message; `MessagesStream` turns its chunks into Anthropic's event stream; `error_body` gives a
`RequestError` Anthropic's error shape. No HTTP here: the proxy reads, calls, and writes.

What maps to what (docs/agents.md has the full table):

- ``system`` (string or text blocks), and ``system`` turns inside ``messages``: one leading
  system message (open models' chat templates accept a system message only first).
- ``text`` / ``image`` (base64 or url) blocks: chat content parts; ``tool_use``: the assistant's
  ``tool_calls``; ``tool_result`` (``is_error`` prefixes "Error: "): ``tool`` messages, images in
  it follow as a user message; ``thinking`` blocks of earlier turns are dropped (providers reject
  or ignore reasoning in input).
- ``tools`` (custom tools with ``input_schema``): function tools; Anthropic's server tools (web
  search, code execution, ...) are refused with a 400 naming them. ``tool_choice`` auto / any /
  tool / none and ``disable_parallel_tool_use``: ``tool_choice`` and ``parallel_tool_calls``.
- ``stop_sequences``: ``stop``; ``metadata.user_id``: ``user``; ``thinking: {type: enabled,
  budget_tokens}``: ``reasoning_effort`` (low up to 4,096 tokens, medium up to 16,384, else
  high); ``top_k`` is dropped (chat APIs have no such field); other fields are ignored.
- Answers: ``reasoning_content`` becomes a ``thinking`` block, tool calls ``tool_use`` blocks,
  ``finish_reason`` the ``stop_reason``; cached prompt tokens, when the upstream reports them,
  become ``cache_read_input_tokens``.

>>> chat, reply = to_chat({"model": "claude-x", "max_tokens": 64, "system": "Be brief.",
...                        "messages": [{"role": "user", "content": "hi"}]})
>>> chat["messages"]
[{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'hi'}]
>>> from_chat({"choices": [{"message": {"content": "Hello"}, "finish_reason": "stop"}],
...            "usage": {"prompt_tokens": 9, "completion_tokens": 1}}, reply, "msg_1")["content"]
[{'type': 'text', 'text': 'Hello'}]
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from router.core.decision import estimate_prompt_tokens
from router.core.errors import InvalidRequest, RequestError
from router.server.openai_chat import Usage, arguments_object, reasoning_text, usage_of

__all__ = ["API", "MessagesStream", "Reply", "count_tokens", "error_body", "from_chat", "ratelimit_headers", "to_chat"]

API = "messages"


def ratelimit_headers(state: Mapping[str, tuple[int, int, float]], now: float) -> dict[str, str]:
    """Anthropic's ``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`` for a tenant's
    rate limits (`RouterInfo.rate_limit`: kind -> (limit, remaining, seconds to reset)); the reset
    is a moment in RFC 3339, UTC, as Anthropic sends it.

    >>> ratelimit_headers({"requests": (60, 59, 1.2)}, 1767225600.0)["anthropic-ratelimit-requests-reset"]
    '2026-01-01T00:00:02Z'
    """
    h: dict[str, str] = {}
    for kind, (limit, left, reset) in state.items():
        h[f"anthropic-ratelimit-{kind}-limit"] = str(limit)
        h[f"anthropic-ratelimit-{kind}-remaining"] = str(left)
        h[f"anthropic-ratelimit-{kind}-reset"] = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                               time.gmtime(math.ceil(now + reset)))
    return h

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                529: "overloaded_error"}
_MAX_STOP = 4  # what OpenAI-compatible chat APIs accept
_SERVER_BLOCKS = ("server_tool_use", "web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result",
                  "bash_code_execution_tool_result", "text_editor_code_execution_tool_result", "mcp_tool_use",
                  "mcp_tool_result", "container_upload")


@dataclass(frozen=True, slots=True)
class Reply:
    """What the answer to a Messages request needs from the request."""

    model: str                         # the name the client asked for, echoed back
    stream: bool = False
    stop_sequences: tuple[str, ...] = ()
    thinking: bool = True              # show reasoning as thinking blocks (off: thinking disabled or omitted)


# ----------------------------------------------------------------------------- request


def _bad(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: {message}", param=param)


def _text_of(blocks: Any, param: str) -> str:
    """A string, or the text of a list of text blocks (``system``, a system turn)."""
    if type(blocks) is str:
        return blocks
    if not isinstance(blocks, list):
        raise _bad(param, "expected a string or a list of text blocks")
    out = []
    for i, block in enumerate(blocks):
        if not isinstance(block, Mapping) or block.get("type") != "text" or type(block.get("text")) is not str:
            raise _bad(f"{param}.{i}", "expected a text block: {\"type\": \"text\", \"text\": \"...\"}")
        out.append(block["text"])
    return "\n".join(out)


def _image(block: Mapping[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, Mapping):
        raise _bad(f"{param}.source", "an image needs a source: base64 data or a url")
    kind = source.get("type")
    if kind == "base64" and type(source.get("data")) is str and type(source.get("media_type")) is str:
        return {"type": "image_url", "image_url": {"url": f"data:{source['media_type']};base64,{source['data']}"}}
    if kind == "url" and type(source.get("url")) is str:
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise _bad(f"{param}.source", f"image source type '{kind}' is not supported: send base64 data or a url")


def _document(block: Mapping[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, Mapping) and source.get("type") == "text" and type(source.get("data")) is str:
        return {"type": "text", "text": source["data"]}
    raise _bad(param, "only plain-text documents (source type text) can be sent to the routed models")


def _tool_result_content(block: Mapping[str, Any], param: str, images: list[dict[str, Any]]) -> str:
    content = block.get("content")
    if content is None:
        text = ""
    elif type(content) is str:
        text = content
    elif isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "text" and type(part.get("text")) is str:
                parts.append(part["text"])
            elif kind == "image":
                images.append(_image(part, f"{param}.content.{j}"))
            elif kind == "document":
                parts.append(_document(part, f"{param}.content.{j}")["text"])
            elif isinstance(part, Mapping):  # tool references, search results...: kept visible as JSON
                parts.append(orjson.dumps(part).decode())
            else:
                raise _bad(f"{param}.content.{j}", "expected a content block")
        text = "\n".join(parts)
    else:
        raise _bad(f"{param}.content", "expected a string or a list of content blocks")
    return "Error: " + text if block.get("is_error") is True else text


def _user(content: Any, param: str, out: list[dict[str, Any]]) -> None:
    if type(content) is str:
        out.append({"role": "user", "content": content})
        return
    if not isinstance(content, list):
        raise _bad(f"{param}.content", "expected a string or a list of content blocks")
    parts: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        p = f"{param}.content.{i}"
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            if type(block.get("text")) is not str:
                raise _bad(f"{p}.text", "expected a string")
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append(_image(block, p))
        elif kind == "tool_result":
            call_id = block.get("tool_use_id")
            if type(call_id) is not str or not call_id:
                raise _bad(f"{p}.tool_use_id", "expected the id of the tool_use block this answers")
            out.append({"role": "tool", "tool_call_id": call_id, "content": _tool_result_content(block, p, images)})
        elif kind == "document":
            parts.append(_document(block, p))
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise _bad(f"{p}.type", f"content block type '{kind}' is not supported in a user turn")
    parts += images  # a tool's images go to the model as the user's turn after the tool results
    if parts:
        if all(part["type"] == "text" for part in parts):
            out.append({"role": "user", "content": "\n".join(part["text"] for part in parts)})
        else:
            out.append({"role": "user", "content": parts})


def _assistant(content: Any, param: str, out: list[dict[str, Any]]) -> None:
    if type(content) is str:
        out.append({"role": "assistant", "content": content})
        return
    if not isinstance(content, list):
        raise _bad(f"{param}.content", "expected a string or a list of content blocks")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        p = f"{param}.content.{i}"
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            if type(block.get("text")) is not str:
                raise _bad(f"{p}.text", "expected a string")
            texts.append(block["text"])
        elif kind == "tool_use":
            call_id, name, args = block.get("id"), block.get("name"), block.get("input", {})
            if type(call_id) is not str or type(name) is not str or not isinstance(args, Mapping):
                raise _bad(p, "a tool_use block needs an id, a name and an input object")
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": name, "arguments": orjson.dumps(args).decode()}})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # the routed providers reject or ignore reasoning sent back to them
        elif kind in _SERVER_BLOCKS:
            raise _bad(f"{p}.type", f"'{kind}' blocks come from Anthropic's server tools, which router does not run")
        else:
            raise _bad(f"{p}.type", f"content block type '{kind}' is not supported in an assistant turn")
    if not texts and not calls:
        return  # a turn of thinking only: nothing the next model can use
    msg: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts) if texts else None}
    if calls:
        msg["tool_calls"] = calls
    out.append(msg)


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("tools", "expected a list of tools")
    out = []
    for i, tool in enumerate(tools):
        p = f"tools.{i}"
        if not isinstance(tool, Mapping):
            raise _bad(p, "expected a tool object")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise _bad(f"{p}.type", f"'{kind}' is an Anthropic-defined tool that router cannot run on other models; "
                                    "define it as a custom tool with a name and an input_schema")
        name, schema = tool.get("name"), tool.get("input_schema", {"type": "object"})
        if type(name) is not str or not name:
            raise _bad(f"{p}.name", "a tool needs a name")
        if not isinstance(schema, Mapping):
            raise _bad(f"{p}.input_schema", "expected a JSON schema object")
        fn: dict[str, Any] = {"name": name, "parameters": schema}
        if type(tool.get("description")) is str:
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any) -> tuple[Any, bool]:
    """The chat ``tool_choice`` and whether parallel tool calls are off."""
    if not isinstance(choice, Mapping):
        raise _bad("tool_choice", "expected an object such as {\"type\": \"auto\"}")
    kind = choice.get("type")
    serial = choice.get("disable_parallel_tool_use") is True
    if kind == "auto":
        return "auto", serial
    if kind == "any":
        return "required", serial
    if kind == "none":
        return "none", False
    if kind == "tool":
        if type(choice.get("name")) is not str:
            raise _bad("tool_choice.name", "name the tool to call")
        return {"type": "function", "function": {"name": choice["name"]}}, serial
    raise _bad("tool_choice.type", f"'{kind}' is not one of auto, any, tool, none")


def _number(body: Mapping[str, Any], key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value) or not low <= value <= high:
        raise _bad(key, f"expected a number between {low:g} and {high:g}")
    return value


def _effort(thinking: Any) -> tuple[str | None, bool]:
    """``reasoning_effort`` for the thinking config, and whether thinking blocks are shown."""
    if thinking is None:
        return None, True
    if not isinstance(thinking, Mapping):
        raise _bad("thinking", "expected an object such as {\"type\": \"enabled\", \"budget_tokens\": 2048}")
    kind = thinking.get("type")
    shown = thinking.get("display") != "omitted"
    if kind == "disabled":
        return None, False
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if type(budget) is not int or budget < 1:
            raise _bad("thinking.budget_tokens", "expected a positive integer")
        return ("low" if budget <= 4096 else "medium" if budget <= 16384 else "high"), shown
    return None, shown  # adaptive (and future kinds): the model decides, as it does by default


def to_chat(body: Mapping[str, Any]) -> tuple[dict[str, Any], Reply]:
    """The chat-completions body for a Messages request, and what the answer will need.

    Raises `InvalidRequest` (400) naming the Anthropic field at fault.
    """
    model = body.get("model")
    if type(model) is not str or not model:
        raise _bad("model", "required: auto, a route, a model alias or a name the policy's client_models maps")
    max_tokens = body.get("max_tokens")
    if type(max_tokens) is not int or max_tokens < 1:
        raise _bad("max_tokens", "required: a positive integer, the most tokens to generate")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "required: a non-empty list of messages")
    system: list[str] = []
    if body.get("system") is not None:
        system.append(_text_of(body["system"], "system"))
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        p = f"messages.{i}"
        role = m.get("role") if isinstance(m, Mapping) else None
        if role == "user":
            _user(m.get("content"), p, out)
        elif role == "assistant":
            _assistant(m.get("content"), p, out)
        elif role == "system":
            system.append(_text_of(m.get("content"), f"{p}.content"))
        else:
            raise _bad(f"{p}.role", f"expected user or assistant, got {role!r}")
    if system:
        out.insert(0, {"role": "system", "content": "\n".join(system)})
    if not any(m["role"] != "system" for m in out):
        raise _bad("messages", "no user or assistant content to send")

    chat: dict[str, Any] = {"model": model, "messages": out, "max_tokens": max_tokens}
    stream = body.get("stream")
    if stream is not None and type(stream) is not bool:
        raise _bad("stream", "expected true or false")
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    for key, high in (("temperature", 1.0), ("top_p", 1.0)):
        value = _number(body, key, 0.0, high)
        if value is not None:
            chat[key] = value
    stops: tuple[str, ...] = ()
    if body.get("stop_sequences") is not None:
        raw = body["stop_sequences"]
        if not isinstance(raw, list) or not all(type(s) is str for s in raw):
            raise _bad("stop_sequences", "expected a list of strings")
        if len(raw) > _MAX_STOP:
            raise _bad("stop_sequences", f"at most {_MAX_STOP} are supported by the routed chat APIs, got {len(raw)}")
        stops = tuple(raw)
        if stops:
            chat["stop"] = list(stops)
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
        if body.get("tool_choice") is not None:
            choice, serial = _tool_choice(body["tool_choice"])
            chat["tool_choice"] = choice
            if serial:
                chat["parallel_tool_calls"] = False
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping) and type(metadata.get("user_id")) is str:
        chat["user"] = metadata["user_id"]
    effort, shown = _effort(body.get("thinking"))
    if effort is not None:
        chat["reasoning_effort"] = effort
    return chat, Reply(model, bool(stream), stops, shown)


def count_tokens(body: Mapping[str, Any]) -> dict[str, int]:
    """``POST /v1/messages/count_tokens``: router's estimate, the one routing uses (about 4
    characters a token, plus 4 per message and the tools' JSON), never an upstream call.

    >>> count_tokens({"model": "m", "messages": [{"role": "user", "content": "hello world, hello"}]})
    {'input_tokens': 11}
    """
    chat, _ = to_chat({**body, "max_tokens": 1, "stream": False})
    return {"input_tokens": estimate_prompt_tokens(chat["messages"], chat.get("tools"))}


# ----------------------------------------------------------------------------- response


def _stop_reason(finish: Any, has_calls: bool, matched: Any, reply: Reply) -> tuple[str, str | None]:
    if finish == "length":
        return "max_tokens", None
    if has_calls or finish in ("tool_calls", "function_call"):
        return "tool_use", None
    if finish == "content_filter":
        return "refusal", None
    if type(matched) is str and matched in reply.stop_sequences:  # vLLM names the stop string it hit
        return "stop_sequence", matched
    return "end_turn", None


def _usage(u: Usage | None, fallback: tuple[int, int]) -> dict[str, int]:
    if u is None:
        return {"input_tokens": fallback[0], "output_tokens": fallback[1]}
    if u.cached is None:
        return {"input_tokens": u.prompt, "output_tokens": u.completion}
    return {"input_tokens": max(0, u.prompt - u.cached), "output_tokens": u.completion,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": u.cached}


def _text_content(content: Any) -> str:
    if type(content) is str:
        return content
    if isinstance(content, list):  # a few upstreams answer with content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and type(p.get("text")) is str)
    return ""


def from_chat(data: Mapping[str, Any], reply: Reply, message_id: str,
              fallback_usage: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    """The Message for a chat completion. `fallback_usage` (input, output tokens) stands in when
    the upstream reported no usage (router's estimate, the one it metered)."""
    choices = data.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], Mapping) else {}
    msg = choice.get("message")
    msg = msg if isinstance(msg, Mapping) else {}
    content: list[dict[str, Any]] = []
    thought = reasoning_text(msg)
    if thought and reply.thinking:
        content.append({"type": "thinking", "thinking": thought, "signature": ""})
    text = _text_content(msg.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    calls = msg.get("tool_calls")
    calls = calls if isinstance(calls, list) else []
    for i, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping):
            continue
        call_id = call.get("id") if type(call.get("id")) is str and call.get("id") else f"toolu_{message_id}_{i}"
        content.append({"type": "tool_use", "id": call_id, "name": str(fn.get("name") or ""),
                        "input": arguments_object(fn.get("arguments"))})
    stop, sequence = _stop_reason(choice.get("finish_reason"), bool(calls), choice.get("stop_reason"), reply)
    return {"id": message_id, "type": "message", "role": "assistant", "model": reply.model, "content": content,
            "stop_reason": stop, "stop_sequence": sequence, "usage": _usage(usage_of(data.get("usage")),
                                                                            fallback_usage)}


# Anthropic's events; %d is the block index, %s a JSON string.
_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_TEXT = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
         b'"delta":{"type":"text_delta","text":%s}}\n\n')
_THINKING = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
             b'"delta":{"type":"thinking_delta","thinking":%s}}\n\n')
_JSON = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
         b'"delta":{"type":"input_json_delta","partial_json":%s}}\n\n')
_OPEN_TEXT = (b'event: content_block_start\ndata: {"type":"content_block_start","index":%d,'
              b'"content_block":{"type":"text","text":""}}\n\n')
_OPEN_THINKING = (b'event: content_block_start\ndata: {"type":"content_block_start","index":%d,'
                  b'"content_block":{"type":"thinking","thinking":"","signature":""}}\n\n')
_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n'
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class MessagesStream:
    """Chat chunks in, Anthropic's event stream out: ``message_start``, then per content block
    ``content_block_start`` / ``_delta`` (text, thinking, tool input JSON) / ``_stop``, then
    ``message_delta`` (stop reason, usage) and ``message_stop``; ``ping`` while the upstream is
    silent; an ``error`` event after a failure mid-stream.

    `input_tokens` is the estimate ``message_start`` carries; ``message_delta`` carries the
    upstream's count.
    """

    __slots__ = ("block", "calls", "chars", "finish_reason", "index", "info", "input_tokens", "matched",
                 "message_id", "next", "reply", "started", "tools", "usage")

    def __init__(self, reply: Reply, message_id: str, input_tokens: int = 0, info: Any = None):
        self.reply, self.message_id, self.input_tokens = reply, message_id, input_tokens
        self.info = info                  # the request's RouterInfo: message_delta's usage carries its cost
        self.started = False
        self.block: str | None = None     # the open block: text | thinking | tool
        self.index = -1                   # its index
        self.next = 0                     # the next block's index
        self.tools: dict[int, int] = {}   # chat tool-call index -> block index
        self.calls = False
        self.finish_reason: Any = None
        self.matched: Any = None
        self.usage: Any = None
        self.chars = 0

    def _start(self) -> bytes:
        self.started = True
        return _event("message_start", {"type": "message_start", "message": {
            "id": self.message_id, "type": "message", "role": "assistant", "model": self.reply.model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0}}})

    def _open(self, kind: str, head: bytes) -> bytes:
        out = _STOP % self.index if self.block is not None else b""
        self.block, self.index = kind, self.next
        self.next += 1
        return out + head % self.index

    def feed(self, chunk: dict[str, Any]) -> bytes:
        out = b"" if self.started else self._start()
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        choices = chunk.get("choices")
        if not choices:
            return out
        choice = choices[0]
        delta = choice.get("delta")
        if delta:
            thought = delta.get("reasoning_content") or delta.get("reasoning")
            if thought and type(thought) is str:
                self.chars += len(thought)
                if self.reply.thinking:
                    if self.block != "thinking":
                        out += self._open("thinking", _OPEN_THINKING)
                    out += _THINKING % (self.index, orjson.dumps(thought))
            text = delta.get("content")
            if text and type(text) is str:
                self.chars += len(text)
                if self.block != "text":
                    out += self._open("text", _OPEN_TEXT)
                out += _TEXT % (self.index, orjson.dumps(text))
            calls = delta.get("tool_calls")
            if calls:
                out += self._tool_deltas(calls)
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
            self.matched = choice.get("stop_reason")
        return out

    def _tool_deltas(self, calls: Any) -> bytes:
        out = b""
        for call in calls if type(calls) is list else ():
            if type(call) is not dict:
                continue
            i = call.get("index", 0)
            fn = call.get("function")
            fn = fn if type(fn) is dict else {}
            index = self.tools.get(i)
            if index is None:
                out += _STOP % self.index if self.block is not None else b""
                self.block, index = "tool", self.next
                self.index = self.tools[i] = index
                self.next += 1
                self.calls = True
                call_id = call.get("id") if type(call.get("id")) is str and call.get("id") else (
                    f"toolu_{self.message_id}_{i}")
                out += _event("content_block_start", {"type": "content_block_start", "index": index, "content_block": {
                    "type": "tool_use", "id": call_id, "name": str(fn.get("name") or ""), "input": {}}})
            args = fn.get("arguments")
            if args and type(args) is str:
                self.chars += len(args)
                out += _JSON % (index, orjson.dumps(args))
        return out

    def finish(self) -> bytes:
        out = b"" if self.started else self._start()
        if self.block is not None:
            out += _STOP % self.index
            self.block = None
        stop, sequence = _stop_reason(self.finish_reason, self.calls, self.matched, self.reply)
        usage: dict[str, Any] = _usage(usage_of(self.usage), (self.input_tokens, (self.chars + 3) // 4))
        if self.info is not None:
            usage["cost"] = round(self.info.cost_usd, 10)   # USD, as x-router-cost-usd
        out += _event("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": sequence},
                                        "usage": usage})
        return out + _MESSAGE_STOP

    def fail(self, err: RequestError) -> bytes:
        return _event("error", error_body(err)[1])

    def keepalive(self) -> bytes:
        return _PING if self.started else self._start() + _PING


def error_body(err: RequestError, request_id: str | None = None) -> tuple[int, dict[str, Any]]:
    """The HTTP status and Anthropic error body for `err`: ``{"type": "error", "error": {"type",
    "message"}}``. Every candidate down or unavailable (503, 502) is 529 ``overloaded_error``, as
    Anthropic reports an overloaded API; a gateway timeout stays 504 (``api_error``).

    >>> error_body(RequestError("no budget left", status=429))
    (429, {'type': 'error', 'error': {'type': 'rate_limit_error', 'message': 'no budget left'}})
    """
    status = err.status
    if status in (502, 503):
        status = 529
    kind = _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": err.message}}
    if request_id is not None:
        body["request_id"] = request_id
    return status, body
