"""OpenAI's Responses API (``POST /v1/responses``) in front of the chat engine: pure translation.

Stateless use, as Codex and the OpenAI Agents SDK send it: `to_chat` turns a request into the
chat-completions body the engine routes (and a `Reply` holding what the answer needs);
`from_chat` turns a chat completion into a Response object; `ResponsesStream` turns chunks into
the Responses event stream (every event with its ``sequence_number``). No HTTP here.

What maps to what (docs/agents.md has the full table):

- ``instructions`` and ``system`` / ``developer`` messages: one leading system message.
- ``input`` (a string, or items): messages with ``input_text`` / ``output_text`` / ``input_image``
  parts; ``function_call`` items: the assistant's ``tool_calls``; ``function_call_output``:
  ``tool`` messages; ``reasoning`` items of earlier turns are dropped (providers reject or ignore
  reasoning in input; encrypted content cannot be read anyway).
- ``tools``: function tools, and the function tools inside a ``namespace`` (flattened, names
  kept); built-in tools (web search, file search, computer use, ...) are refused with a 400 naming
  them. ``tool_choice``, ``parallel_tool_calls``, ``max_output_tokens`` (``max_tokens``),
  ``temperature``, ``top_p``, ``user``, ``text.format`` (``response_format``) and
  ``reasoning.effort`` (``reasoning_effort``) carry over; ``metadata``, ``store``, ``include``,
  ``prompt_cache_key`` and the like are accepted and not forwarded.
- ``previous_response_id`` and ``conversation`` get a 400: router keeps no conversation state
  (send the whole conversation in ``input``, as Codex and the Agents SDK do with ``store: false``).
- Answers: ``reasoning_content`` becomes a ``reasoning`` item (its text as the summary), text a
  ``message`` item, tool calls ``function_call`` items; ``finish_reason: length`` makes the
  response ``incomplete`` (``max_output_tokens``).

>>> chat, reply = to_chat({"model": "auto", "instructions": "Be brief.", "input": "hi"})
>>> chat["messages"]
[{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'hi'}]
>>> r = from_chat({"choices": [{"message": {"content": "Hello"}, "finish_reason": "stop"}]}, reply, "resp_1", 0)
>>> r["status"], r["output_text"]
('completed', 'Hello')
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from router.core.errors import InvalidRequest, RequestError
from router.server.openai_chat import Usage, reasoning_text, usage_of

__all__ = ["API", "Reply", "ResponsesStream", "error_body", "from_chat", "to_chat"]

API = "responses"

_BUILT_IN = ("web_search", "web_search_preview", "file_search", "computer_use_preview", "computer", "code_interpreter",
             "image_generation", "mcp", "local_shell", "shell", "apply_patch", "custom")
_SKIPPED_ITEMS = frozenset({"reasoning"})
_STATELESS = ("router keeps no conversation state: send the whole conversation in `input` "
              "(with `store: false`), as Codex and the Agents SDK do")


@dataclass(frozen=True, slots=True)
class Reply:
    """What the answer to a Responses request needs from the request (echoed fields included)."""

    model: str
    stream: bool = False
    summary: bool = True                     # show the upstream's reasoning as a reasoning item's summary
    echo: Mapping[str, Any] = field(default_factory=dict)   # request fields a Response object repeats
    namespaces: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # chat name -> (namespace, name)


def _bad(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': {message}", param=param)


# ----------------------------------------------------------------------------- request


def _parts(content: Any, param: str, role: str) -> str | list[dict[str, Any]]:
    """Message content as chat content: a string, or parts when there are images."""
    if type(content) is str:
        return content
    if not isinstance(content, list):
        raise _bad(param, "expected a string or a list of content parts")
    out: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        p = f"{param}[{i}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            if type(part.get("text")) is not str:
                raise _bad(f"{p}.text", "expected a string")
            out.append({"type": "text", "text": part["text"]})
        elif kind == "refusal":
            out.append({"type": "text", "text": str(part.get("refusal") or "")})
        elif kind == "input_image":
            url = part.get("image_url")
            if type(url) is not str:
                raise _bad(p, "only images given by image_url (a URL or a data: URL) can be routed, not file_id")
            image: dict[str, Any] = {"url": url}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            out.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            raise _bad(p, "input_file parts are not supported: send the file's text as input_text")
        else:
            raise _bad(f"{p}.type", f"content part type '{kind}' is not supported in a {role} message")
    if all(p["type"] == "text" for p in out):
        return "\n".join(p["text"] for p in out)
    return out


def _output(value: Any, param: str) -> str:
    """A function_call_output's ``output``: a string, or parts whose text is joined."""
    if type(value) is str:
        return value
    if isinstance(value, list):
        parts = _parts(value, param, "tool")
        if type(parts) is str:
            return parts
        raise _bad(param, "images in a function_call_output cannot be routed to chat models")
    raise _bad(param, "expected a string or a list of content parts")


def _messages(items: Any, system: list[str]) -> list[dict[str, Any]]:
    if type(items) is str:
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise _bad("input", "expected a string or a non-empty list of input items")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        p = f"input[{i}]"
        if not isinstance(item, Mapping):
            raise _bad(p, "expected an input item object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role in ("system", "developer"):
                content = _parts(item.get("content"), f"{p}.content", role)
                if type(content) is not str:
                    raise _bad(f"{p}.content", "a system or developer message carries text only")
                system.append(content)
            elif role in ("user", "assistant"):
                out.append({"role": role, "content": _parts(item.get("content"), f"{p}.content", role)})
            else:
                raise _bad(f"{p}.role", f"expected user, assistant, system or developer, got {role!r}")
        elif kind == "function_call":
            call_id, name, args = item.get("call_id"), item.get("name"), item.get("arguments", "")
            if type(call_id) is not str or type(name) is not str or type(args) is not str:
                raise _bad(p, "a function_call item needs call_id, name and arguments (a JSON string)")
            if type(item.get("namespace")) is str and item["namespace"]:
                name = _qualified(item["namespace"], name)
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and type(last.get("content") or "") is str:
                last.setdefault("tool_calls", []).append(call)  # the calls of one turn go in one message
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if type(call_id) is not str:
                raise _bad(f"{p}.call_id", "expected the call_id of the function_call this answers")
            out.append({"role": "tool", "tool_call_id": call_id, "content": _output(item.get("output"), f"{p}.output")})
        elif kind in _SKIPPED_ITEMS:
            continue
        elif kind == "item_reference":
            raise _bad(p, f"item_reference needs stored responses; {_STATELESS}")
        elif kind == "additional_tools":
            raise _bad(p, "additional_tools items carry custom (free-form) tools that chat models cannot call; Codex "
                          "sends them for OpenAI model names it knows: configure another model name (e.g. auto)")
        else:
            raise _bad(f"{p}.type", f"input item type '{kind}' is not supported (router routes function tools only)")
    return out


def _qualified(namespace: str, name: str) -> str:
    """The chat name of a namespaced function (chat names allow no dots): ``ns__name``."""
    return f"{namespace}__{name}"


def _function(tool: Mapping[str, Any], param: str, namespace: str | None = None,
              names: dict[str, tuple[str, str]] | None = None) -> dict[str, Any]:
    name = tool.get("name")
    if type(name) is not str or not name:
        raise _bad(f"{param}.name", "a function tool needs a name")
    if namespace is not None and names is not None:
        names[_qualified(namespace, name)] = (namespace, name)
        name = _qualified(namespace, name)
    params = tool.get("parameters")
    fn: dict[str, Any] = {"name": name, "parameters": params if isinstance(params, Mapping) else {"type": "object"}}
    if type(tool.get("description")) is str:
        fn["description"] = tool["description"]
    if type(tool.get("strict")) is bool:
        fn["strict"] = tool["strict"]
    return {"type": "function", "function": fn}


def _tools(tools: Any, names: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """Chat function tools; a namespace's functions become ``ns__name`` (recorded in `names`)."""
    if not isinstance(tools, list):
        raise _bad("tools", "expected a list of tools")
    out = []
    for i, tool in enumerate(tools):
        p = f"tools[{i}]"
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if kind == "function":
            out.append(_function(tool, p))
        elif kind == "namespace" and isinstance(tool.get("tools"), list) and type(tool.get("name")) is str:
            for j, inner in enumerate(tool["tools"]):
                q = f"{p}.tools[{j}]"
                if not isinstance(inner, Mapping) or inner.get("type") != "function":
                    what = inner.get("type") if isinstance(inner, Mapping) else None
                    raise _bad(f"{q}.type", f"'{what}' tools cannot be routed: only function tools can")
                out.append(_function(inner, q, tool["name"], names))
        elif kind == "custom":
            raise _bad(f"{p}.type", "custom (free-form) tools cannot be called by chat models: define a function tool")
        elif kind in _BUILT_IN or isinstance(kind, str):
            raise _bad(f"{p}.type", f"'{kind}' is a built-in tool of OpenAI's platform that router cannot run on "
                                    "other models; remove it (Codex: web_search = \"disabled\") or define a function tool")
        else:
            raise _bad(p, "expected a tool object with a type")
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, Mapping) and choice.get("type") == "function" and type(choice.get("name")) is str:
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _bad("tool_choice", "expected auto, none, required or {\"type\": \"function\", \"name\": ...}")


def _response_format(text: Any) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, Mapping) else None
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if type(fmt.get("name")) is not str or not isinstance(fmt.get("schema"), Mapping):
            raise _bad("text.format", "a json_schema format needs a name and a schema")
        schema: dict[str, Any] = {"name": fmt["name"], "schema": fmt["schema"]}
        for key in ("strict", "description"):
            if fmt.get(key) is not None:
                schema[key] = fmt[key]
        return {"type": "json_schema", "json_schema": schema}
    raise _bad("text.format.type", f"expected text, json_object or json_schema, got {kind!r}")


def _number(body: Mapping[str, Any], key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value) or not low <= value <= high:
        raise _bad(key, f"expected a number between {low:g} and {high:g}")
    return value


def to_chat(body: Mapping[str, Any]) -> tuple[dict[str, Any], Reply]:
    """The chat-completions body for a Responses request, and what the answer will need.

    Raises `InvalidRequest` (400) naming the Responses field at fault.
    """
    for key in ("previous_response_id", "conversation"):
        if body.get(key) is not None:
            raise _bad(key, _STATELESS)
    if body.get("background") is True:
        raise _bad("background", "background responses need stored responses; " + _STATELESS)
    model = body.get("model")
    if model is None:
        model = "auto"
    elif type(model) is not str or not model:
        raise _bad("model", "expected auto, a route, a model alias or a name the policy's client_models maps")
    if "input" not in body:
        raise _bad("input", "required: a string or a list of input items")
    system: list[str] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if type(instructions) is not str:
            raise _bad("instructions", "expected a string")
        system.append(instructions)
    messages = _messages(body["input"], system)
    if system:
        messages.insert(0, {"role": "system", "content": "\n".join(system)})
    if not any(m["role"] != "system" for m in messages):
        raise _bad("input", "no user or assistant content to send")
    chat: dict[str, Any] = {"model": model, "messages": messages}
    stream = body.get("stream")
    if stream is not None and type(stream) is not bool:
        raise _bad("stream", "expected true or false")
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    limit = body.get("max_output_tokens")
    if limit is not None:
        if type(limit) is not int or limit < 1:
            raise _bad("max_output_tokens", "expected a positive integer")
        chat["max_tokens"] = limit
    for key, high in (("temperature", 2.0), ("top_p", 1.0)):
        value = _number(body, key, 0.0, high)
        if value is not None:
            chat[key] = value
    namespaces: dict[str, tuple[str, str]] = {}
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"], namespaces)
        if body.get("tool_choice") is not None:
            chat["tool_choice"] = _tool_choice(body["tool_choice"])
        if type(body.get("parallel_tool_calls")) is bool:
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    fmt = _response_format(body.get("text"))
    if fmt is not None:
        chat["response_format"] = fmt
    reasoning = body.get("reasoning")
    if isinstance(reasoning, Mapping) and type(reasoning.get("effort")) is str and reasoning["effort"] != "none":
        chat["reasoning_effort"] = reasoning["effort"]
    user = body.get("user") or body.get("safety_identifier")
    if type(user) is str:
        chat["user"] = user
    echo = {
        "instructions": instructions, "max_output_tokens": limit,
        "parallel_tool_calls": body.get("parallel_tool_calls", True), "temperature": body.get("temperature"),
        "top_p": body.get("top_p"), "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
        "text": body.get("text") or {"format": {"type": "text"}}, "metadata": body.get("metadata") or {},
        "reasoning": reasoning if isinstance(reasoning, Mapping) else {"effort": None, "summary": None},
        "store": body.get("store", True) is True, "user": user if type(user) is str else None,
    }
    return chat, Reply(model, bool(stream), True, echo, namespaces)


# ----------------------------------------------------------------------------- response


def _usage(u: Usage | None, fallback: tuple[int, int]) -> dict[str, Any]:
    prompt, completion, cached, reasoning = ((u.prompt, u.completion, u.cached or 0, u.reasoning) if u is not None
                                             else (fallback[0], fallback[1], 0, 0))
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion}


def _response(response_id: str, created: int, reply: Reply, status: str, output: list[dict[str, Any]],
              usage: dict[str, Any] | None, incomplete: str | None = None,
              error: dict[str, Any] | None = None) -> dict[str, Any]:
    text = "".join(part["text"] for item in output if item["type"] == "message" for part in item["content"])
    return {"id": response_id, "object": "response", "created_at": created, "status": status, "background": False,
            "error": error, "incomplete_details": {"reason": incomplete} if incomplete else None,
            "model": reply.model, "output": output, "output_text": text, "previous_response_id": None,
            "truncation": "disabled", "usage": usage, **reply.echo}


def _status(finish: Any) -> tuple[str, str | None]:
    if finish == "length":
        return "incomplete", "max_output_tokens"
    if finish == "content_filter":
        return "incomplete", "content_filter"
    return "completed", None


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def _reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id, "summary": [{"type": "summary_text", "text": text}]}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed",
               namespaces: Mapping[str, tuple[str, str]] | None = None) -> dict[str, Any]:
    item = {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}
    if namespaces and name in namespaces:  # Codex accepts a namespaced call only in this form
        item["namespace"], item["name"] = namespaces[name]
    return item


def _text_content(content: Any) -> str:
    if type(content) is str:
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and type(p.get("text")) is str)
    return ""


def from_chat(data: Mapping[str, Any], reply: Reply, response_id: str, created: int,
              fallback_usage: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    """The Response object for a chat completion. `fallback_usage` (input, output tokens) stands
    in when the upstream reported no usage (router's estimate, the one it metered)."""
    choices = data.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], Mapping) else {}
    msg = choice.get("message")
    msg = msg if isinstance(msg, Mapping) else {}
    ref = response_id.removeprefix("resp_")
    output: list[dict[str, Any]] = []
    thought = reasoning_text(msg)
    if thought and reply.summary:
        output.append(_reasoning_item(f"rs_{ref}_{len(output)}", thought))
    text = _text_content(msg.get("content"))
    if text:
        output.append(_message_item(f"msg_{ref}_{len(output)}", text))
    calls = msg.get("tool_calls")
    for i, call in enumerate(calls if isinstance(calls, list) else ()):
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping):
            continue
        call_id = call.get("id") if type(call.get("id")) is str and call.get("id") else f"call_{ref}_{i}"
        args = fn.get("arguments")
        args = args if type(args) is str else orjson.dumps(args or {}).decode()
        output.append(_call_item(f"fc_{ref}_{len(output)}", call_id, str(fn.get("name") or ""), args,
                                 namespaces=reply.namespaces))
    status, incomplete = _status(choice.get("finish_reason"))
    return _response(response_id, created, reply, status, output, _usage(usage_of(data.get("usage")), fallback_usage),
                     incomplete)


def _ev(kind: str, fields: str) -> bytes:
    """An event template: ``%d`` the sequence number, then `fields` (more ``%``-slots) inside the data."""
    return (f'event: {kind}\ndata: {{"type":"{kind}","sequence_number":%d,' + fields + "}\n\n").encode()


# The Responses events, pre-serialised: ids and text go in as JSON strings (%s), indexes as %d.
_CREATED = _ev("response.created", '"response":%s')
_IN_PROGRESS = _ev("response.in_progress", '"response":%s')
_ITEM_ADDED = _ev("response.output_item.added", '"output_index":%d,"item":%s')
_ITEM_DONE = _ev("response.output_item.done", '"output_index":%d,"item":%s')
_PART_ADDED = _ev("response.content_part.added", '"item_id":%s,"output_index":%d,"content_index":0,'
                  '"part":{"type":"output_text","text":"","annotations":[],"logprobs":[]}')
_TEXT_DELTA = _ev("response.output_text.delta", '"item_id":%s,"output_index":%d,"content_index":0,"delta":%s,'
                  '"logprobs":[]')
_TEXT_DONE = _ev("response.output_text.done", '"item_id":%s,"output_index":%d,"content_index":0,"text":%s,'
                 '"logprobs":[]')
_PART_DONE = _ev("response.content_part.done", '"item_id":%s,"output_index":%d,"content_index":0,'
                 '"part":{"type":"output_text","text":%s,"annotations":[],"logprobs":[]}')
_SUMMARY_ADDED = _ev("response.reasoning_summary_part.added", '"item_id":%s,"output_index":%d,"summary_index":0,'
                     '"part":{"type":"summary_text","text":""}')
_SUMMARY_DELTA = _ev("response.reasoning_summary_text.delta", '"item_id":%s,"output_index":%d,"summary_index":0,'
                     '"delta":%s')
_SUMMARY_DONE = _ev("response.reasoning_summary_text.done", '"item_id":%s,"output_index":%d,"summary_index":0,'
                    '"text":%s')
_SUMMARY_PART_DONE = _ev("response.reasoning_summary_part.done", '"item_id":%s,"output_index":%d,"summary_index":0,'
                         '"part":{"type":"summary_text","text":%s}')
_ARGS_DELTA = _ev("response.function_call_arguments.delta", '"item_id":%s,"output_index":%d,"delta":%s')
_ARGS_DONE = _ev("response.function_call_arguments.done", '"item_id":%s,"output_index":%d,"name":%s,"arguments":%s')
_DONE_EVENTS = {"completed": _ev("response.completed", '"response":%s'),
                "incomplete": _ev("response.incomplete", '"response":%s'),
                "failed": _ev("response.failed", '"response":%s')}


class ResponsesStream:
    """Chat chunks in, the Responses event stream out: ``response.created`` and
    ``response.in_progress``; per output item ``response.output_item.added``, its deltas (reasoning
    summary text, ``output_text``, ``function_call_arguments``) and their ``.done`` events, then
    ``response.output_item.done``; finally ``response.completed`` (or ``response.incomplete``) with
    usage, or ``response.failed`` after a failure mid-stream. Every event has a ``sequence_number``.

    Events are filled into pre-serialised templates: a stream costs a few microseconds per event.
    """

    __slots__ = ("calls", "chars", "created", "finish_reason", "head", "info", "input_tokens", "item", "item_id",
                 "output", "output_json", "parts", "ref", "reply", "response_id", "seq", "started", "text", "usage")

    def __init__(self, reply: Reply, response_id: str, created: int, input_tokens: int = 0, info: Any = None):
        self.reply, self.response_id, self.created, self.input_tokens = reply, response_id, created, input_tokens
        self.info = info                         # the request's RouterInfo: the final usage carries its cost
        self.ref = response_id.removeprefix("resp_")
        self.started = False
        self.seq = 0
        self.output: list[dict[str, Any]] = []   # items done so far
        self.output_json: list[bytes] = []       # the same, serialised
        self.text: list[str] = []                # output_text so far
        self.head = b""                          # the response object's fixed fields, serialised once
        self.item: dict[str, Any] | None = None  # the open item
        self.item_id = b""                       # its id, as a JSON string
        self.parts: list[str] = []               # its text (or arguments) so far
        self.calls: dict[int, int] = {}          # chat tool-call index -> output index
        self.finish_reason: Any = None
        self.usage: Any = None
        self.chars = 0

    def _next(self) -> int:
        seq = self.seq
        self.seq = seq + 1
        return seq

    def _start(self) -> bytes:
        self.started = True
        self.head = orjson.dumps({
            "id": self.response_id, "object": "response", "created_at": self.created, "background": False,
            "model": self.reply.model, "previous_response_id": None, "truncation": "disabled", **self.reply.echo})[:-1]
        base = self._response(b'"in_progress"', None, None, b"null")
        return _CREATED % (self._next(), base) + _IN_PROGRESS % (self._next(), base)

    def _response(self, status: bytes, incomplete: str | None, error: dict[str, Any] | None, usage: bytes) -> bytes:
        """The response object: its fixed fields, then what changes (the same fields as `_response`)."""
        return (self.head + b',"status":' + status + b',"error":' + orjson.dumps(error)
                + b',"incomplete_details":' + (b'{"reason":"%s"}' % incomplete.encode() if incomplete else b"null")
                + b',"output":[' + b",".join(self.output_json) + b'],"output_text":' + orjson.dumps("".join(self.text))
                + b',"usage":' + usage + b"}")

    def _close(self) -> bytes:
        item = self.item
        if item is None:
            return b""
        self.item = None
        index, kind, text = len(self.output), item["type"], "".join(self.parts)
        self.parts = []
        item_id, dumped = self.item_id, orjson.dumps(text)
        if kind == "message":
            out = (_TEXT_DONE % (self._next(), item_id, index, dumped)
                   + _PART_DONE % (self._next(), item_id, index, dumped))
            done = _message_item(item["id"], text)
            self.text.append(text)
        elif kind == "reasoning":
            out = (_SUMMARY_DONE % (self._next(), item_id, index, dumped)
                   + _SUMMARY_PART_DONE % (self._next(), item_id, index, dumped))
            done = _reasoning_item(item["id"], text)
        else:
            out = _ARGS_DONE % (self._next(), item_id, index, orjson.dumps(item["name"]), dumped)
            done = {**item, "arguments": text, "status": "completed"}
        self.output.append(done)
        done_json = orjson.dumps(done)
        self.output_json.append(done_json)
        return out + _ITEM_DONE % (self._next(), index, done_json)

    def _open(self, item: dict[str, Any]) -> bytes:
        out = self._close()
        self.item = item
        self.item_id = item_id = orjson.dumps(item["id"])
        index = len(self.output)
        out += _ITEM_ADDED % (self._next(), index, orjson.dumps(item))
        if item["type"] == "message":
            out += _PART_ADDED % (self._next(), item_id, index)
        elif item["type"] == "reasoning":
            out += _SUMMARY_ADDED % (self._next(), item_id, index)
        return out

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
                if self.reply.summary:
                    item = self.item
                    if item is None or item["type"] != "reasoning":
                        out += self._open({"type": "reasoning", "id": f"rs_{self.ref}_{len(self.output)}",
                                           "summary": []})
                    self.parts.append(thought)
                    out += _SUMMARY_DELTA % (self._next(), self.item_id, len(self.output), orjson.dumps(thought))
            text = delta.get("content")
            if text and type(text) is str:
                self.chars += len(text)
                item = self.item
                if item is None or item["type"] != "message":
                    out += self._open({"type": "message", "id": f"msg_{self.ref}_{len(self.output)}",
                                       "status": "in_progress", "role": "assistant", "content": []})
                self.parts.append(text)
                out += _TEXT_DELTA % (self._next(), self.item_id, len(self.output), orjson.dumps(text))
            calls = delta.get("tool_calls")
            if calls:
                out += self._tool_deltas(calls)
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        return out

    def _tool_deltas(self, calls: Any) -> bytes:
        out = b""
        for call in calls if type(calls) is list else ():
            if type(call) is not dict:
                continue
            i = call.get("index", 0)
            fn = call.get("function")
            fn = fn if type(fn) is dict else {}
            if i not in self.calls:
                out += self._close()
                n = len(self.output)
                call_id = call.get("id") if type(call.get("id")) is str and call.get("id") else f"call_{self.ref}_{i}"
                out += self._open(_call_item(f"fc_{self.ref}_{n}", call_id, str(fn.get("name") or ""), "",
                                             "in_progress", self.reply.namespaces))
                self.calls[i] = n
            args = fn.get("arguments")
            if args and type(args) is str and self.item is not None and self.calls[i] == len(self.output):
                self.chars += len(args)
                self.parts.append(args)
                out += _ARGS_DELTA % (self._next(), self.item_id, len(self.output), orjson.dumps(args))
        return out

    def finish(self) -> bytes:
        out = b"" if self.started else self._start()
        out += self._close()
        status, incomplete = _status(self.finish_reason)
        usage = _usage(usage_of(self.usage), (self.input_tokens, (self.chars + 3) // 4))
        if self.info is not None:
            usage["cost"] = round(self.info.cost_usd, 10)   # USD, as x-router-cost-usd
        final = self._response(b'"%s"' % status.encode(), incomplete, None, orjson.dumps(usage))
        return out + _DONE_EVENTS[status] % (self._next(), final)

    def fail(self, err: RequestError) -> bytes:
        out = b"" if self.started else self._start()
        error = {"code": "server_error", "message": err.message}
        return out + _DONE_EVENTS["failed"] % (self._next(), self._response(b'"failed"', None, error, b"null"))

    def keepalive(self) -> bytes:
        return b": keep-alive\n\n" if self.started else self._start()


def error_body(err: RequestError) -> tuple[int, dict[str, Any]]:
    """The HTTP status and OpenAI error body for `err` (the Responses API shares chat's errors). A
    spent budget reads ``insufficient_quota`` in type and code, which Codex does not retry."""
    body = err.to_openai()
    if err.status == 429 and err.code == "budget_exceeded":   # a rate limit keeps rate_limit_exceeded: retried
        body["error"]["type"] = body["error"]["code"] = "insufficient_quota"
    return err.status, body
