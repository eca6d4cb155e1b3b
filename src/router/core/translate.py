"""Provider quirks: turn an OpenAI-style request into what each provider accepts, and read usage back.

Pure functions over plain data; one table-driven test per quirk lives in tests/test_translate.py.

- ``vllm``: OpenAI-compatible; no key needed; every parameter passes through (vLLM accepts extras).
- ``openai``: passes through untouched, but for ``reasoning_effort`` (which an agent's thinking or
  ``reasoning.effort`` becomes): OpenAI refuses it for a model that does not reason, so it is sent
  only to models with the ``reasoning`` capability (DeepSeek and vLLM accept it and get it).
- Every model: ``max_tokens`` / ``max_completion_tokens`` above its ``max_output_tokens`` are capped.
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
    """Tokens of one request, normalised across providers: `prompt_tokens` includes the cached and
    cache-write tokens, `completion_tokens` the reasoning tokens (as OpenAI counts them)."""

    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int = 0
    estimated: bool = False
    cached_tokens: int = 0          # prompt tokens read from the provider's prompt cache
    cache_write_tokens: int = 0     # prompt tokens written to it (Anthropic bills these above input)

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
    limit = model.max_output_tokens
    if limit is not None:   # an agent's 32k or 128k ask would be refused by a model that writes at most 8k
        for k in ("max_tokens", "max_completion_tokens"):
            v = payload.get(k)
            if type(v) is int and v > limit:
                payload[k] = limit
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
    if "reasoning_effort" in payload and kind == "openai" and "reasoning" not in model.capabilities:
        # a reasoning control (from an agent's thinking or reasoning.effort) that these models refuse
        del payload["reasoning_effort"]
        dropped.append("reasoning_effort")
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


_CACHE_FIELDS = frozenset({"prompt_cache_hit_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"})


def _count(value: Any) -> int | None:
    """A token count as metered: an integer clamped at 0 (an upstream's negative count costs nothing)."""
    if type(value) is not int:
        return None
    return value if value > 0 else 0


def read_usage(data: Mapping[str, Any] | None) -> Usage | None:
    """Usage from a completion or a final stream chunk, or None when the upstream gave none.

    Counts are clamped at zero, so usage and cost are never negative whatever an upstream sends.
    Cached prompt tokens are read from each provider's fields: OpenAI's and vLLM's
    ``prompt_tokens_details.cached_tokens``, DeepSeek's ``prompt_cache_hit_tokens`` (with
    ``prompt_cache_miss_tokens``), Anthropic's ``cache_read_input_tokens`` and
    ``cache_creation_input_tokens`` (as litellm passes them on, or in Anthropic's own shape, whose
    ``input_tokens`` leaves them out); reasoning tokens from ``completion_tokens_details``.

    >>> read_usage({"usage": {"prompt_tokens": 12, "completion_tokens": -1000000}})
    Usage(prompt_tokens=12, completion_tokens=0, reasoning_tokens=0, estimated=False, cached_tokens=0, cache_write_tokens=0)
    >>> read_usage({"usage": {"prompt_tokens": 30, "completion_tokens": 5, "prompt_cache_hit_tokens": 20,
    ...                       "prompt_cache_miss_tokens": 10}}).cached_tokens
    20
    """
    if not data:
        return None
    usage = data.get("usage")
    if type(usage) is not dict and not isinstance(usage, Mapping):
        return None
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        return _other_usage(usage)
    details = usage.get("completion_tokens_details")
    reasoning = _count(details.get("reasoning_tokens")) if isinstance(details, Mapping) else None
    details = usage.get("prompt_tokens_details")
    if details is None and not _CACHE_FIELDS.intersection(usage):   # nothing cached: the common case, kept cheap
        return Usage(prompt, completion, reasoning or 0)
    cached = written = None
    if isinstance(details, Mapping):   # OpenAI, vLLM (--enable-prompt-tokens-details), litellm, OpenRouter
        cached = _count(details.get("cached_tokens"))
        written = _count(details.get("cache_creation_tokens")) or _count(details.get("cache_write_tokens"))
    if cached is None:
        cached = _count(usage.get("prompt_cache_hit_tokens"))      # DeepSeek
    if cached is None:
        cached = _count(usage.get("cache_read_input_tokens"))      # Anthropic's, passed on by litellm
    if written is None:
        written = _count(usage.get("cache_creation_input_tokens"))
    if not cached and not written:
        return Usage(prompt, completion, reasoning or 0)
    cached = min(cached or 0, prompt)
    return Usage(prompt, completion, reasoning or 0, False, cached, min(written or 0, prompt - cached))


def _other_usage(usage: Mapping[str, Any]) -> Usage | None:
    """Usage without ``prompt_tokens``/``completion_tokens``: DeepSeek's hit and miss counts alone,
    the Responses API's shape, or Anthropic's (whose ``input_tokens`` excludes cache reads and writes)."""
    completion = _count(usage.get("completion_tokens"))
    hit, miss = _count(usage.get("prompt_cache_hit_tokens")), _count(usage.get("prompt_cache_miss_tokens"))
    if completion is not None and hit is not None and miss is not None:
        return Usage(hit + miss, completion, 0, False, hit)
    inp, out = _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))
    if inp is None or out is None:
        return None
    details = usage.get("input_tokens_details")
    if isinstance(details, Mapping):   # OpenAI Responses' shape: input_tokens includes the cached ones
        cached = min(_count(details.get("cached_tokens")) or 0, inp)
        out_details = usage.get("output_tokens_details")
        reasoning = _count(out_details.get("reasoning_tokens")) if isinstance(out_details, Mapping) else None
        return Usage(inp, out, reasoning or 0, False, cached)
    read = _count(usage.get("cache_read_input_tokens")) or 0
    written = _count(usage.get("cache_creation_input_tokens")) or 0
    return Usage(inp + read + written, out, 0, False, read, written)
