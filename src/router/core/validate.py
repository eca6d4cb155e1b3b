"""Request validation at the edge: the standard fields of a chat or embeddings body, typed and
ranged as OpenAI's API checks them, before anything routes, estimates or forwards them.

Pure functions over plain data; each problem is an `InvalidRequest` (400) whose `param` names the
field (``messages[2].content[0].text``), so a client learns what to fix. Fields router does not know
pass through untouched (vLLM and other providers accept extras), but no value may nest deeper than
`MAX_DEPTH` levels: deeper JSON cannot be forwarded.

The engine calls these for every request (library and proxy alike); an HTTP shell that translates
another API into a chat body may call them on the translated body.

>>> validate_chat({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16})
>>> validate_chat({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "16"})
Traceback (most recent call last):
...
router.core.errors.InvalidRequest: Invalid type for 'max_tokens': expected an integer, got a string
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from router.core.errors import InvalidRequest

__all__ = ["MAX_DEPTH", "validate_chat", "validate_embeddings"]

#: The deepest nesting accepted in a body (orjson cannot re-encode beyond 254 levels for forwarding;
#: no real request comes near this).
MAX_DEPTH = 64

_INT_MAX = 2**31 - 1
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_PLAIN_ROLES = frozenset({"system", "developer", "user", "assistant"})  # valid as {role, content: str}
_TOOL_CHOICES = frozenset({"none", "auto", "required"})
_CONTAINERS = (dict, list)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def _bad(param: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(f"Invalid type for '{param}': expected {expected}, got {_kind(value)}", param=param)


def _range(param: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{param}': {what}", param=param)


def _integer(param: str, value: Any, low: int, high: int = _INT_MAX) -> None:
    if type(value) is not int:
        raise _bad(param, "an integer", value)
    if not low <= value <= high:
        raise _range(param, f"must be between {low} and {high}, got {value}")


def _number(param: str, value: Any, low: float, high: float) -> None:
    if type(value) not in (int, float):
        raise _bad(param, "a number", value)
    if not (low <= value <= high and math.isfinite(value)):
        raise _range(param, f"must be between {low:g} and {high:g}, got {value!r}")


def _checker(low: float, high: float, integer: bool = False) -> Callable[[str, Any], None]:
    """A range check; the valid case costs one type test and one comparison."""
    if integer:
        ilow, ihigh = int(low), int(high)

        def check_int(param: str, value: Any) -> None:
            if type(value) is not int or not ilow <= value <= ihigh:
                _integer(param, value, ilow, ihigh)
        return check_int

    def check_number(param: str, value: Any) -> None:
        if type(value) not in (int, float) or not low <= value <= high:
            _number(param, value, low, high)
    return check_number


def _boolean(param: str, value: Any) -> None:
    if type(value) is not bool:
        raise _bad(param, "a boolean", value)


def _string(param: str, value: Any) -> None:
    if type(value) is not str:
        raise _bad(param, "a string", value)


def _object(param: str, value: Any) -> None:
    if not isinstance(value, Mapping):
        raise _bad(param, "an object", value)


def _cost(param: str, value: Any) -> None:
    if type(value) not in (int, float):
        raise _bad(param, "a number (USD)", value)
    if not (math.isfinite(value) and value >= 0):
        raise _range(param, f"must be a finite amount >= 0, got {value!r}")


def _stop(param: str, value: Any) -> None:
    if type(value) is str:
        return
    if not isinstance(value, list):
        raise _bad(param, "a string or an array of strings", value)
    if len(value) > 4:
        raise _range(param, f"at most 4 stop sequences, got {len(value)}")
    for i, s in enumerate(value):
        _string(f"{param}[{i}]", s)


def _logit_bias(param: str, value: Any) -> None:
    _object(param, value)
    for k, v in value.items():
        _number(f"{param}.{k}", v, -100, 100)


def _metadata(param: str, value: Any) -> None:
    _object(param, value)
    for k, v in value.items():
        _string(f"{param}.{k}", v)


def _stream_options(param: str, value: Any) -> None:
    _object(param, value)
    usage = value.get("include_usage")
    if usage is not None:
        _boolean(f"{param}.include_usage", usage)


def _function(param: str, value: Any) -> None:
    _object(param, value)
    _string(f"{param}.name", value.get("name"))
    if not value["name"]:
        raise _range(f"{param}.name", "must not be empty")
    params = value.get("parameters")
    if params is not None:
        _object(f"{param}.parameters", params)
    desc = value.get("description")
    if desc is not None:
        _string(f"{param}.description", desc)


def _tools(param: str, value: Any) -> None:
    if not isinstance(value, list):
        raise _bad(param, "an array of tools", value)
    for i, tool in enumerate(value):
        p = f"{param}[{i}]"
        _object(p, tool)
        _string(f"{p}.type", tool.get("type"))
        if tool["type"] == "function":
            _function(f"{p}.function", tool.get("function"))


def _tool_choice(param: str, value: Any) -> None:
    if type(value) is str:
        if value not in _TOOL_CHOICES:
            raise _range(param, f"must be one of none, auto, required or an object, got '{value}'")
        return
    _object(param, value)
    _string(f"{param}.type", value.get("type"))
    if value["type"] == "function":
        fn = value.get("function")
        _object(f"{param}.function", fn)
        _string(f"{param}.function.name", fn.get("name"))


def _response_format(param: str, value: Any) -> None:
    _object(param, value)
    _string(f"{param}.type", value.get("type"))
    if value["type"] == "json_schema":
        _object(f"{param}.json_schema", value.get("json_schema"))


def _strings(param: str, value: Any) -> None:
    if not isinstance(value, list):
        raise _bad(param, "an array of strings", value)
    for i, s in enumerate(value):
        _string(f"{param}[{i}]", s)


# Top-level chat fields and their checks; a null value means "not set" and is always accepted.
_CHAT_FIELDS: dict[str, Callable[[str, Any], None]] = {
    "model": _string,
    "stream": _boolean,
    "stream_options": _stream_options,
    "max_tokens": _checker(1, _INT_MAX, integer=True),
    "max_completion_tokens": _checker(1, _INT_MAX, integer=True),
    "temperature": _checker(0, 2),
    "top_p": _checker(0, 1),
    "n": _checker(1, 128, integer=True),
    "presence_penalty": _checker(-2, 2),
    "frequency_penalty": _checker(-2, 2),
    "seed": _checker(-(2**63), 2**63 - 1, integer=True),
    "logprobs": _boolean,
    "top_logprobs": _checker(0, 20, integer=True),
    "logit_bias": _logit_bias,
    "user": _string,
    "stop": _stop,
    "tools": _tools,
    "tool_choice": _tool_choice,
    "parallel_tool_calls": _boolean,
    "response_format": _response_format,
    "metadata": _metadata,
    "store": _boolean,
    "reasoning_effort": _string,
    "service_tier": _string,
    "modalities": _strings,
    "max_cost_usd": _cost,
}


def _part(param: str, part: Any) -> None:
    _object(param, part)
    kind = part.get("type")
    _string(f"{param}.type", kind)
    if kind == "text" or kind == "refusal":
        _string(f"{param}.{kind}", part.get(kind))
    elif kind == "image_url":
        url = part.get("image_url")
        if type(url) is not str:
            _object(f"{param}.image_url", url)
            _string(f"{param}.image_url.url", url.get("url"))
    elif kind in ("input_audio", "file"):
        _object(f"{param}.{kind}", part.get(kind))
    elif not kind:
        raise _range(f"{param}.type", "must not be empty")


def _content(param: str, content: Any, *, required: bool) -> None:
    if type(content) is str:
        return
    if content is None:
        if required:
            raise _bad(param, "a string or an array of content parts", content)
        return
    if not isinstance(content, list):
        raise _bad(param, "a string or an array of content parts", content)
    for i, part in enumerate(content):
        _part(f"{param}[{i}]", part)


def _tool_calls(param: str, calls: Any) -> None:
    if not isinstance(calls, list):
        raise _bad(param, "an array of tool calls", calls)
    for i, call in enumerate(calls):
        p = f"{param}[{i}]"
        _object(p, call)
        if call.get("id") is not None:
            _string(f"{p}.id", call["id"])
        fn = call.get("function")
        if fn is not None:
            _object(f"{p}.function", fn)
            _string(f"{p}.function.name", fn.get("name"))
            args = fn.get("arguments")
            if args is not None:
                _string(f"{p}.function.arguments", args)


def _message(param: str, m: Any) -> None:
    _object(param, m)
    role = m.get("role")
    if type(role) is not str:
        raise _bad(f"{param}.role", "one of " + ", ".join(sorted(_ROLES)), role)
    if role not in _ROLES:
        raise _range(f"{param}.role", f"must be one of {', '.join(sorted(_ROLES))}, got '{role}'")
    if role == "assistant":
        _content(f"{param}.content", m.get("content"), required=False)
        calls = m.get("tool_calls")
        if calls is not None:
            _tool_calls(f"{param}.tool_calls", calls)
    else:
        _content(f"{param}.content", m.get("content"), required=role != "function")
    if role == "tool":
        _string(f"{param}.tool_call_id", m.get("tool_call_id"))
    name = m.get("name")
    if name is not None:
        _string(f"{param}.name", name)


def _too_deep(value: Any, depth: int) -> bool:
    """Whether `value`, a container at level `depth` (the body is level 1), nests deeper than MAX_DEPTH."""
    stack = [(value, depth)]
    containers = _CONTAINERS
    while stack:
        v, d = stack.pop()
        for child in (v.values() if type(v) is dict else v):
            if isinstance(child, containers):
                if d >= MAX_DEPTH:
                    return True
                stack.append((child, d + 1))
    return False


def _depth(key: str, value: Any, depth: int = 2) -> None:
    if isinstance(value, _CONTAINERS) and _too_deep(value, depth):
        raise InvalidRequest(f"Invalid value for '{key}': nested more than {MAX_DEPTH} levels deep", param=key)


def validate_chat(body: Mapping[str, Any]) -> None:
    """Raise `InvalidRequest` (with `param`) for the first malformed standard field of a chat request.

    >>> validate_chat({"messages": [{"role": "user", "content": [5]}]})
    Traceback (most recent call last):
    ...
    router.core.errors.InvalidRequest: Invalid type for 'messages[0].content[0]': expected an object, got an integer
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        if messages is None:
            raise InvalidRequest("Missing required parameter: 'messages'", param="messages")
        if isinstance(messages, list):
            raise _range("messages", "must contain at least one message")
        raise _bad("messages", "an array of messages", messages)
    plain = _PLAIN_ROLES
    for i, m in enumerate(messages):
        # the common shape, {"role": "user", "content": "..."}, is valid as it stands (and flat)
        if (type(m) is dict and len(m) == 2 and type(m.get("content")) is str and type(m.get("role")) is str
                and m["role"] in plain):  # (a role that is a list or object is not hashable: the slow path says so)
            continue
        _message(f"messages[{i}]", m)
        _depth("messages", m, 3)
    fields = _CHAT_FIELDS
    for key, value in body.items():
        if value is None or key == "messages":
            continue
        check = fields.get(key)
        if check is not None:
            check(key, value)
        if isinstance(value, _CONTAINERS):
            _depth(key, value)


def validate_embeddings(body: Mapping[str, Any]) -> None:
    """Raise `InvalidRequest` (with `param`) for a malformed embeddings request.

    >>> validate_embeddings({"model": "embed", "input": ["a", "b"], "dimensions": 0})
    Traceback (most recent call last):
    ...
    router.core.errors.InvalidRequest: Invalid value for 'dimensions': must be between 1 and 2147483647, got 0
    """
    model = body.get("model")
    if type(model) is not str or not model:
        raise InvalidRequest("`model` must name a model alias from the policy", param="model")
    inputs = body.get("input")
    if type(inputs) is str:
        if not inputs:
            raise _range("input", "must not be an empty string")
    elif isinstance(inputs, list) and inputs:
        for i, item in enumerate(inputs):
            if type(item) is str or type(item) is int:
                continue
            if isinstance(item, list) and item and all(type(t) is int for t in item):
                continue
            raise _bad(f"input[{i}]", "a string, a token id or an array of token ids", item)
    else:
        raise _bad("input", "a string or a non-empty array", inputs)
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise _range("encoding_format", f"must be float or base64, got {fmt!r}")
    dims = body.get("dimensions")
    if dims is not None:
        _integer("dimensions", dims, 1)
    user = body.get("user")
    if user is not None:
        _string("user", user)
    for key, value in body.items():
        _depth(key, value)
