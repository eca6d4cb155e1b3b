"""The response cache's pure half: which requests may be cached, their keys, and answers kept as
one chat completion that replays as JSON or as a stream.

A key covers the tenant, the model alias that answers, and the *normalised* body: every field that
can change the answer (messages, tools, tool_choice, sampling parameters, response_format, ...),
with keys sorted, and none of the fields that only change how it is delivered (`stream`,
`stream_options`, `user`, `metadata`, ...). A streamed answer is assembled into the chat completion
it stands for (`Recorder`), so one entry serves JSON and streamed requests alike; `replay_chunks`
turns it back into a stream.

>>> key = cache_key("acme", "ds-chat", {"model": "auto", "stream": True, "temperature": 0,
...                                     "messages": [{"role": "user", "content": "hi"}]})
>>> key == cache_key("acme", "ds-chat", {"messages": [{"role": "user", "content": "hi"}], "temperature": 0})
True
>>> key == cache_key("globex", "ds-chat", {"messages": [{"role": "user", "content": "hi"}], "temperature": 0})
False
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

__all__ = ["DELIVERY_FIELDS", "Recorder", "cache_control", "cache_key", "effective_temperature", "replay_chunks"]

#: fields that change how an answer is delivered or recorded, never what it says: left out of keys
DELIVERY_FIELDS = frozenset({"model", "stream", "stream_options", "user", "metadata", "store", "service_tier",
                             "prompt_cache_key", "safety_identifier", "max_cost_usd"})


def cache_key(tenant: str | None, model: str, body: Mapping[str, Any]) -> str:
    """The key of `body`'s answer from model alias `model` for `tenant` (``""``: no tenant)."""
    kept = {k: v for k, v in body.items() if k not in DELIVERY_FIELDS}
    digest = hashlib.sha256(orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"{tenant or ''}:{model}:{digest}"


def effective_temperature(body: Mapping[str, Any], defaults: Mapping[str, Any]) -> float:
    """The temperature the upstream will sample at: the request's, else the model's `params`, else 1
    (the default of OpenAI-compatible APIs).

    >>> effective_temperature({}, {}), effective_temperature({"temperature": 0}, {}), effective_temperature({}, {"temperature": 0.2})
    (1.0, 0.0, 0.2)
    """
    value = body.get("temperature")
    if value is None:
        value = defaults.get("temperature")
    return float(value) if type(value) in (int, float) else 1.0


def cache_control(header: str | None) -> tuple[bool, bool]:
    """(read, write) for a client's ``Cache-Control``: ``no-cache`` skips the lookup (the fresh answer
    is stored), ``no-store`` skips both.

    >>> cache_control(None), cache_control("no-cache"), cache_control("max-age=0, no-store")
    ((True, True), (False, True), (False, False))
    """
    if not header:
        return True, True
    tokens = {t.strip().lower() for t in header.split(",")}
    if "no-store" in tokens:
        return False, False
    if "no-cache" in tokens:
        return False, True
    return True, True


class Recorder:
    """Assembles a chat-completion stream into the completion it stands for (content, reasoning,
    tool calls, finish reason per choice; usage). Logprobs are not kept.

    >>> r = Recorder()
    >>> for c in ({"id": "c1", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
    ...           {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
    ...           {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}):
    ...     r.feed(c)
    >>> r.completion()["choices"][0]["message"], r.completion()["usage"]
    ({'role': 'assistant', 'content': 'Hello'}, {'prompt_tokens': 3, 'completion_tokens': 2})
    """

    __slots__ = ("choices", "created", "id", "model", "usage")

    def __init__(self) -> None:
        self.id: Any = None
        self.created: Any = None
        self.model: Any = None
        self.usage: Any = None
        self.choices: dict[int, dict[str, Any]] = {}

    def feed(self, chunk: Mapping[str, Any]) -> None:
        if self.id is None:
            self.id, self.created, self.model = chunk.get("id"), chunk.get("created"), chunk.get("model")
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        choices = chunk.get("choices")
        if type(choices) is not list:
            return
        for choice in choices:
            if type(choice) is not dict:
                continue
            index = choice.get("index", 0)
            state = self.choices.get(index)
            if state is None:
                state = self.choices[index] = {"content": [], "reasoning": [], "calls": {}, "finish": None}
            delta = choice.get("delta")
            if type(delta) is dict:
                text = delta.get("content")
                if type(text) is str:
                    state["content"].append(text)
                thought = delta.get("reasoning_content") or delta.get("reasoning")
                if type(thought) is str:
                    state["reasoning"].append(thought)
                for call in delta.get("tool_calls") or ():
                    if type(call) is not dict:
                        continue
                    slot = state["calls"].setdefault(call.get("index", 0), {"id": None, "name": [], "arguments": []})
                    if call.get("id"):
                        slot["id"] = call["id"]
                    fn = call.get("function")
                    if type(fn) is dict:
                        if type(fn.get("name")) is str:
                            slot["name"].append(fn["name"])
                        if type(fn.get("arguments")) is str:
                            slot["arguments"].append(fn["arguments"])
            if choice.get("finish_reason"):
                state["finish"] = choice["finish_reason"]

    def completion(self) -> dict[str, Any]:
        """The assembled ``chat.completion``."""
        choices = []
        for index in sorted(self.choices):
            state = self.choices[index]
            message: dict[str, Any] = {"role": "assistant",
                                       "content": "".join(state["content"]) if state["content"] or not state["calls"]
                                       else None}
            if state["reasoning"]:
                message["reasoning_content"] = "".join(state["reasoning"])
            if state["calls"]:
                message["tool_calls"] = [
                    {"id": slot["id"], "type": "function",
                     "function": {"name": "".join(slot["name"]), "arguments": "".join(slot["arguments"])}}
                    for _, slot in sorted(state["calls"].items())]
            choices.append({"index": index, "message": message, "finish_reason": state["finish"]})
        out: dict[str, Any] = {"id": self.id, "object": "chat.completion", "created": self.created,
                               "model": self.model, "choices": choices}
        if self.usage is not None:
            out["usage"] = self.usage
        return out


def replay_chunks(completion: Mapping[str, Any], include_usage: bool) -> Iterator[dict[str, Any]]:
    """A stored chat completion as the chunks of a stream: per choice a role chunk, its reasoning,
    its text, its tool calls and its finish reason; then the usage chunk when asked for.

    >>> [c["choices"][0]["delta"] if c["choices"] else c["usage"] for c in replay_chunks(
    ...     {"id": "c", "model": "m", "choices": [{"index": 0, "message": {"content": "Hi"}, "finish_reason": "stop"}],
    ...      "usage": {"prompt_tokens": 3, "completion_tokens": 1}}, True)]
    [{'role': 'assistant', 'content': ''}, {'content': 'Hi'}, {}, {'prompt_tokens': 3, 'completion_tokens': 1}]
    """
    head = {"id": completion.get("id"), "object": "chat.completion.chunk", "created": completion.get("created"),
            "model": completion.get("model")}

    def chunk(index: int, delta: dict[str, Any], finish: Any = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    for choice in completion.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        calls = message.get("tool_calls") or []
        yield chunk(index, {"role": "assistant", "content": None if calls else ""})
        thought = message.get("reasoning_content") or message.get("reasoning")
        if type(thought) is str and thought:
            yield chunk(index, {"reasoning_content": thought})
        text = message.get("content")
        if type(text) is str and text:
            yield chunk(index, {"content": text})
        for i, call in enumerate(calls):
            fn = call.get("function") or {}
            yield chunk(index, {"tool_calls": [{"index": i, "id": call.get("id"), "type": "function",
                                                "function": {"name": fn.get("name"),
                                                             "arguments": fn.get("arguments", "")}}]})
        yield chunk(index, {}, choice.get("finish_reason") or "stop")
    if include_usage and completion.get("usage") is not None:
        yield {**head, "choices": [], "usage": dict(completion["usage"])}
