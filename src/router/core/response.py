"""Responses that read like the OpenAI SDK's, plus what `router` did to produce them.

``resp.choices[0].message.content``, ``resp.usage.total_tokens``, ``resp.to_dict()`` (the raw
JSON as a dict), ``resp.model_dump_json()``; and ``resp.router``: task, route, provider, model
alias, attempts, cost. Objects wrap the decoded JSON lazily, so reading one field costs nothing
for the fields not read. A field the upstream did not send reads as None, as optional fields do
in the OpenAI SDK.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

__all__ = ["Attempt", "ChatCompletion", "ChatCompletionChunk", "Embeddings", "OpenAIObject", "RouterInfo"]


def _wrap(value: Any) -> Any:
    if type(value) is dict:
        return OpenAIObject(value)
    if type(value) is list:
        return [_wrap(v) for v in value]
    return value


class OpenAIObject:
    """Attribute access over a JSON object: ``obj.choices[0].message.content``."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]):
        object.__setattr__(self, "_data", data)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _wrap(self._data.get(name))

    def __getitem__(self, key: str) -> Any:
        return _wrap(self._data[key])

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str, default: Any = None) -> Any:
        return _wrap(self._data.get(key, default))

    def to_dict(self) -> dict[str, Any]:
        """The raw JSON object, as decoded."""
        return self._data

    model_dump = to_dict

    def to_json(self) -> str:
        return orjson.dumps(self._data).decode()

    model_dump_json = to_json

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OpenAIObject) and other._data == self._data

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"


@dataclass(slots=True)
class Attempt:
    """One call to one upstream: which, how it ended, how long it took."""

    provider: str
    model: str
    outcome: str            # ok | http_<status> | connect_error | timeout | protocol_error | malformed | cancelled
    latency_s: float
    status: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class RouterInfo:
    """What `router` decided and did for one request."""

    request_id: str                     # router's own, unguessable: the ledger's key
    task: str
    task_source: str
    confidence: float
    language: str | None
    route: str
    rule: int | None
    tenant: str | None = None
    provider: str | None = None
    model: str | None = None            # the policy's alias
    upstream_model: str | None = None
    region: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    usage_estimated: bool = False
    cost_usd: float = 0.0
    latency_s: float = 0.0
    ttft_s: float | None = None
    status: str = "pending"             # ok | error | cancelled
    error: str | None = None
    created: float = 0.0                # wall-clock time the request arrived (Unix seconds)
    reference_cost_usd: float | None = None  # the same tokens at the policy's reference_model price
    client_request_id: str | None = None     # the caller's own id (X-Request-Id), kept for correlation only
    api: str = "chat"                   # the API it came in on: chat | messages | responses
    cached_tokens: int = 0              # prompt tokens the provider read from its prompt cache
    cache_write_tokens: int = 0         # prompt tokens it wrote to it
    price_source: str | None = None     # where cost_usd's price came from: policy, or catalogue with its version
    response_cache: str | None = None   # router's response cache: hit | miss (None: not cacheable)
    cache_saved_usd: float = 0.0        # a hit: what the upstream call it replaced cost
    # fleets (docs/routing.md): how the replica was picked (affinity | spill | least_loaded | round_robin | only;
    # None: one provider); the hedge (won | lost | failed | capped) and what its losing attempt cost (part of
    # cost_usd); how many times a stream cut mid-way was continued on another deployment
    pick: str | None = None
    hedge: str | None = None
    hedge_cost_usd: float = 0.0
    resumed: int = 0
    # the tenant's rate limits at admission, the scope with the least left of each kind:
    # {"requests": (limit, remaining, reset_s), "tokens": (...)}; None when none applies
    rate_limit: dict[str, tuple[int, int, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ChatCompletion(OpenAIObject):
    """A chat completion, as the OpenAI SDK shows it, with `.router` beside it."""

    __slots__ = ("router",)

    def __init__(self, data: dict[str, Any], router: RouterInfo):
        super().__init__(data)
        object.__setattr__(self, "router", router)


class ChatCompletionChunk(OpenAIObject):
    __slots__ = ()


class Embeddings(OpenAIObject):
    """An embeddings list, as the OpenAI SDK shows it (``resp.data[0].embedding``), with `.router`."""

    __slots__ = ("router",)

    def __init__(self, data: dict[str, Any], router: RouterInfo):
        super().__init__(data)
        object.__setattr__(self, "router", router)
