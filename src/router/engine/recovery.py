"""Recovery after the first byte: a stream cut mid-way continues on another deployment.

With ``routes.NAME.resume`` (docs/routing.md, "Recovery after the first byte"), when a stream
breaks after chunks have reached the client (the connection drops, a chunk is malformed, an error
event arrives, or the stream ends without a finish), the engine sends the conversation again with
the text streamed so far as a partial assistant message for the model to continue, and splices
the continuation into the same client stream. Targets, in order: another replica of the same
model, then the decision's next candidates (already checked for residency and capabilities).
A target whose provider cannot prefill is skipped (any target will do when no text was streamed yet):

- ``vllm``: ``continue_final_message: true`` with ``add_generation_prompt: false``
  (vLLM's chat-completions extra parameters; the final assistant message is left open);
- ``deepseek``: chat prefix completion, ``"prefix": true`` on the final assistant message, sent to
  the beta base URL (``.../beta``, DeepSeek's documented requirement);
- ``mistral``: ``"prefix": true`` on the final assistant message.

OpenAI and litellm providers have no prefill and are skipped. Not resumed: streams that carried
tool calls (a half-written call cannot be continued reliably) and requests with ``n`` > 1.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from router.core.policy import Model, Policy
from router.core.pricing import usage_cost
from router.core.response import Attempt, RouterInfo
from router.core.translate import UpstreamCall, Usage
from router.engine.attempt import AttemptFailed, Leg, Opened

__all__ = ["PREFILL_KINDS", "add_carried", "continuation_body", "continuation_call", "resume"]

#: Provider kinds that can continue a partial assistant message.
PREFILL_KINDS = frozenset({"vllm", "deepseek", "mistral"})


def continuation_body(body: Mapping[str, Any], text: str, kind: str, produced_tokens: int) -> dict[str, Any]:
    """`body` with `text` appended as the assistant's partial answer, shaped for `kind`; a
    ``max_tokens`` limit is reduced by the tokens already produced.

    >>> b = continuation_body({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}, "Hel", "vllm", 1)
    >>> b["messages"][-1], b["continue_final_message"], b["add_generation_prompt"], b["max_tokens"]
    ({'role': 'assistant', 'content': 'Hel'}, True, False, 9)
    >>> continuation_body({"messages": []}, "Hel", "mistral", 1)["messages"][-1]
    {'role': 'assistant', 'content': 'Hel', 'prefix': True}
    """
    out = dict(body)
    if not text:
        return out
    partial: dict[str, Any] = {"role": "assistant", "content": text}
    if kind in ("deepseek", "mistral"):
        partial["prefix"] = True
    else:
        out["continue_final_message"] = True
        out["add_generation_prompt"] = False
    out["messages"] = [*body.get("messages", ()), partial]
    for limit in ("max_tokens", "max_completion_tokens"):
        value = out.get(limit)
        if type(value) is int:
            out[limit] = max(1, value - produced_tokens)
    return out


def continuation_call(call: UpstreamCall, kind: str, text: str) -> UpstreamCall:
    """DeepSeek serves prefix completion on its beta base URL: ``.../v1`` (or the bare host) becomes ``.../beta``.

    >>> continuation_call(UpstreamCall("https://api.deepseek.com/v1/chat/completions", {}, {}, (), "deepseek",
    ...                   "https://api.deepseek.com/v1"), "deepseek", "x").url
    'https://api.deepseek.com/beta/chat/completions'
    """
    if kind != "deepseek" or not text or call.base_url.endswith("/beta"):
        return call
    beta = re.sub(r"/v1$", "", call.base_url) + "/beta"
    return dataclasses.replace(call, url=beta + call.url[len(call.base_url):], base_url=beta)


async def resume(engine: Any, req: Any, targets: list[Leg], body: Mapping[str, Any], text: str, produced: int,
                 opener: Callable[..., Awaitable[Opened]]) -> Opened | None:
    """Open the continuation on the first of `targets` that can prefill and answers; None when none does.

    Each try is an attempt of the request (counted in flight on it, recorded when it fails)."""
    info, monitor = req.info, engine.monitor
    for leg in targets:
        kind = leg.provider.kind
        if text and kind not in PREFILL_KINDS:
            continue
        cont = continuation_body(body, text, kind, produced)
        call = continuation_call(engine._build_call(leg.provider, leg.model, cont), kind, text)
        if req.remaining() <= 0:
            return None
        t0 = engine.clock()
        engine._track_upstream(req, leg.provider.name)
        if monitor is not None:
            monitor.begin(req, leg.key)
        try:
            return await opener(leg.model, leg.provider, call, t0)
        except AttemptFailed as f:
            engine._track_upstream(req, None)
            if monitor is not None:
                monitor.end(req)
            req.fleet.tried.add(leg.key)
            info.attempts.append(Attempt(leg.provider.name, leg.model.alias, f.outcome, engine.clock() - t0,
                                         f.status, f.message if f.status or f.outcome == "error_event" else None))
    return None


def add_carried(info: RouterInfo, policy: Policy, carried: list[tuple[Model, Usage]]) -> None:
    """Meter a resumed stream as one request: the attempts cut mid-way add their tokens (estimated
    when the upstream sent no usage) and their cost at their own model's price to the final one's."""
    ref = policy.reference_model
    for model, usage in carried:
        info.prompt_tokens += usage.prompt_tokens
        info.completion_tokens += usage.completion_tokens
        info.reasoning_tokens += usage.reasoning_tokens
        info.cost_usd += usage_cost(model.price, usage, info.created)
        if ref is not None and info.reference_cost_usd is not None:
            info.reference_cost_usd += usage_cost(ref.price, usage, info.created)
        info.usage_estimated = info.usage_estimated or usage.estimated
