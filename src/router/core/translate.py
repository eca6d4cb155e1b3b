"""Provider quirks: turn an OpenAI-style request into what each provider accepts, and read usage back.

Pure functions over plain data; one table-driven test per quirk lives in tests/test_translate.py.

- ``vllm``: OpenAI-compatible; no key needed; every parameter passes through (vLLM accepts extras).
- ``openai``: passes through untouched.
- ``deepseek``: R1 returns ``reasoning_content``, which survives in responses, but DeepSeek rejects
  it in input messages (HTTP 400), so it is stripped from assistant turns on the way in;
  ``deepseek-reasoner`` rejects ``logprobs``/``top_logprobs``, so those are dropped for it.
- ``mistral``: rejects unknown fields (HTTP 422) and names some differently: ``seed`` is
  ``random_seed``, ``max_completion_tokens`` is ``max_tokens``; ``stream_options`` is not accepted
  (Mistral sends usage in the last chunk anyway). Only the fields Mistral documents are sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from router.core.policy import Model, Provider

__all__ = ["ROUTER_FIELDS", "UpstreamCall", "Usage", "build_call", "read_usage"]

# Fields that steer `router` itself and never go upstream.
ROUTER_FIELDS = frozenset({"max_cost_usd"})

_MISTRAL_FIELDS = frozenset({
    "model", "messages", "temperature", "top_p", "max_tokens", "stream", "stop", "random_seed",
    "response_format", "tools", "tool_choice", "presence_penalty", "frequency_penalty", "n",
    "safe_prompt", "parallel_tool_calls", "prediction", "prompt_mode", "metadata",
})
_MISTRAL_RENAMES = {"seed": "random_seed", "max_completion_tokens": "max_tokens"}
_DEEPSEEK_REASONER_DROP = ("logprobs", "top_logprobs")


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    url: str
    headers: Mapping[str, str]
    payload: dict[str, Any]
    dropped: tuple[str, ...] = ()   # request fields this provider does not accept
    kind: str = "openai"            # the provider's kind: picks the transport (litellm has its own)
    base_url: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _strip_reasoning(messages: list[Any]) -> list[Any]:
    if not any(isinstance(m, Mapping) and "reasoning_content" in m for m in messages):
        return messages
    return [{k: v for k, v in m.items() if k != "reasoning_content"} if isinstance(m, Mapping) else m
            for m in messages]


def build_call(provider: Provider, model: Model, body: Mapping[str, Any], *, stream: bool,
               path: str = "/chat/completions") -> UpstreamCall:
    """The HTTP call that sends `body` to `model` on `provider` (`path`: chat completions or embeddings)."""
    payload: dict[str, Any] = dict(model.params) if model.params else {}
    for k, v in body.items():
        if k not in ROUTER_FIELDS:
            payload[k] = v
    payload["model"] = model.model
    dropped = _chat_quirks(provider.kind, model, payload, stream) if path == "/chat/completions" else []
    headers = {"Content-Type": "application/json", **provider.headers}
    if provider.api_key is not None:
        headers["Authorization"] = "Bearer " + provider.api_key.reveal()
    return UpstreamCall(provider.base_url + path, headers, payload, tuple(dropped), provider.kind, provider.base_url)


def _chat_quirks(kind: str, model: Model, payload: dict[str, Any], stream: bool) -> list[str]:
    """Shape a chat completion for `kind` in place; returns the fields it had to drop."""
    dropped: list[str] = []
    if stream:
        payload["stream"] = True
        if kind != "mistral":
            opts = dict(payload.get("stream_options") or {})
            opts["include_usage"] = True
            payload["stream_options"] = opts
    else:
        payload.pop("stream", None)
        payload.pop("stream_options", None)
    if kind == "deepseek":
        if "messages" in payload:
            payload["messages"] = _strip_reasoning(payload["messages"])
        if model.model == "deepseek-reasoner":
            for k in _DEEPSEEK_REASONER_DROP:
                if payload.pop(k, None) is not None:
                    dropped.append(k)
    elif kind == "mistral":
        for old, new in _MISTRAL_RENAMES.items():
            if old in payload:
                payload.setdefault(new, payload.pop(old))
        for k in [k for k in payload if k not in _MISTRAL_FIELDS]:
            del payload[k]
            dropped.append(k)
        if "messages" in payload:
            payload["messages"] = _strip_reasoning(payload["messages"])
    return dropped


def read_usage(data: Mapping[str, Any] | None) -> Usage | None:
    """Usage from a completion or a final stream chunk, or None when the upstream gave none."""
    if not data:
        return None
    usage = data.get("usage")
    if not isinstance(usage, Mapping):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    details = usage.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, Mapping) else None
    return Usage(prompt, completion, reasoning if isinstance(reasoning, int) else 0)
