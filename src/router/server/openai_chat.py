"""The OpenAI chat shape the engine speaks, and what the API translators share about it.

The engine takes a chat-completions body and returns chat completions (or chunks); every API the
proxy serves is a translation in front of it (`anthropic_messages`, `openai_responses`), and chat
itself is the identity translation here. Pure functions over plain data: no HTTP.

A stream translator has four methods, called by the proxy in this order: ``feed(chunk) -> bytes``
for each chunk the engine yields, then ``finish() -> bytes`` on a clean end or ``fail(err) ->
bytes`` after a failure mid-stream; ``keepalive() -> bytes`` whenever the upstream has been silent
for a while (it may open the stream if nothing was sent yet).

>>> s = ChatStream()
>>> s.feed({"choices": [{"index": 0, "delta": {"content": "hi"}}]})
b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\\n\\n'
>>> s.finish()
b'data: [DONE]\\n\\n'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from router.core.errors import RequestError

__all__ = ["ChatStream", "StreamTranslator", "Usage", "arguments_object", "chat_error", "reasoning_text",
           "usage_of"]

_DONE = b"data: [DONE]\n\n"
_KEEPALIVE = b": keep-alive\n\n"


class StreamTranslator(Protocol):
    """Turns the engine's chat chunks into one API's server-sent events."""

    def feed(self, chunk: dict[str, Any]) -> bytes: ...

    def finish(self) -> bytes: ...

    def fail(self, err: RequestError) -> bytes: ...

    def keepalive(self) -> bytes: ...


class ChatStream:
    """Chat completions streamed as they come: ``data: {chunk}`` events, then ``[DONE]``.

    With `info` (the request's `RouterInfo`), the chunk carrying usage is held back until the end,
    when the request's cost is known, and sent with ``usage.cost`` in USD (OpenRouter's convention).

    >>> from router.core.response import RouterInfo
    >>> info = RouterInfo("req_1", "general", "hint", 1.0, None, "general", None)
    >>> s = ChatStream(info)
    >>> s.feed({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
    b''
    >>> info.cost_usd = 4.2e-06
    >>> s.finish()
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"cost":4.2e-6}}\\n\\ndata: [DONE]\\n\\n'
    """

    __slots__ = ("held", "info")

    def __init__(self, info: Any = None):
        self.info = info
        self.held: dict[str, Any] | None = None   # the last chunk with usage, sent by finish() with its cost

    def feed(self, chunk: dict[str, Any]) -> bytes:
        out = b""
        if self.held is not None:  # a later chunk: the held one goes first, as it came
            out, self.held = b"data: " + orjson.dumps(self.held) + b"\n\n", None
        if self.info is not None and chunk.get("usage"):
            self.held = chunk
            return out
        return out + b"data: " + orjson.dumps(chunk) + b"\n\n"

    def finish(self) -> bytes:
        held = self.held
        if held is None:
            return _DONE
        self.held = None
        usage = held.get("usage")
        if type(usage) is dict:
            usage["cost"] = round(self.info.cost_usd, 10)
        return b"data: " + orjson.dumps(held) + b"\n\n" + _DONE

    def fail(self, err: RequestError) -> bytes:
        # After the first chunk there is no failing over (the client has part of an answer): an
        # OpenAI-style error event, and the stream ends without [DONE].
        return b"data: " + orjson.dumps(err.to_openai()) + b"\n\n"

    def keepalive(self) -> bytes:
        return _KEEPALIVE


def chat_error(err: RequestError) -> tuple[int, dict[str, Any]]:
    """The HTTP status and OpenAI error body for `err` (chat completions, embeddings, Responses)."""
    return err.status, err.to_openai()


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of a chat completion, as the translated APIs report them."""

    prompt: int = 0
    completion: int = 0
    cached: int | None = None      # prompt tokens served from the upstream's prompt cache, when it says
    reasoning: int = 0


def _int(value: Any) -> int:
    return value if type(value) is int and value > 0 else 0


def usage_of(usage: Any) -> Usage | None:
    """A chat ``usage`` object read defensively, or None when there is none.

    >>> usage_of({"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}})
    Usage(prompt=10, completion=5, cached=4, reasoning=0)
    """
    if type(usage) is not dict:  # decoded JSON: a dict or nothing (dict checks are cheap, ABC checks are not)
        return None
    cached = None
    details = usage.get("prompt_tokens_details")
    if type(details) is dict and type(details.get("cached_tokens")) is int:
        cached = _int(details["cached_tokens"])
    elif type(usage.get("prompt_cache_hit_tokens")) is int:  # DeepSeek's own field
        cached = _int(usage["prompt_cache_hit_tokens"])
    out = usage.get("completion_tokens_details")
    reasoning = _int(out.get("reasoning_tokens")) if type(out) is dict else 0
    return Usage(_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")), cached, reasoning)


def reasoning_text(message: Mapping[str, Any]) -> str | None:
    """The reasoning a message or delta carries: DeepSeek's and vLLM's ``reasoning_content``, or
    the newer ``reasoning`` field (vLLM 0.10+, OpenRouter)."""
    text = message.get("reasoning_content")
    if type(text) is str:
        return text
    text = message.get("reasoning")
    return text if type(text) is str else None


def arguments_object(raw: Any) -> dict[str, Any]:
    """A tool call's ``arguments`` (a JSON string) as an object. A model can emit broken JSON; the
    text is then kept under ``_arguments`` so the agent sees what came and the model can retry.

    >>> arguments_object('{"city": "Paris"}'), arguments_object(""), arguments_object("{oops")
    ({'city': 'Paris'}, {}, {'_arguments': '{oops'})
    """
    if isinstance(raw, Mapping):
        return dict(raw)
    if not isinstance(raw, str) or not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"_arguments": raw}
    return value if isinstance(value, dict) else {"_arguments": raw}
