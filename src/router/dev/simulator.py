"""An OpenAI-compatible fake LLM provider over real sockets, for tests, the demo and benchmarks.

One :class:`Simulator` is one fake upstream: it serves ``/v1/chat/completions`` (JSON and SSE),
``/v1/embeddings``, ``/v1/models``, ``/health`` and a vLLM-style ``/metrics`` on an ephemeral
127.0.0.1 port. Everything it returns is deterministic (token counts follow
:func:`count_prompt_tokens` and the configured reply length), faults can be injected
programmatically or per request with the ``X-Sim-Fault`` header, and every request it received
is kept in ``sim.requests``.

Example::

    async with Simulator(models=["gpt-4o-mini"], latency_s=0.01) as sim:
        client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="x")
        reply = await client.chat.completions.create(model="gpt-4o-mini", messages=[...])
        sim.inject("status:429:retry-after=1")      # the next request gets a 429
        assert sim.requests[-1].body["model"] == "gpt-4o-mini"

This module owns the aiohttp *server* dependency; see ``docs/simulator.md`` for every knob.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import struct
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
from aiohttp import web

__all__ = [
    "MISTRAL_CHAT_FIELDS",
    "Fault",
    "ModelConfig",
    "RecordedRequest",
    "Simulator",
    "SimulatorConfig",
    "SimulatorThread",
    "count_prompt_tokens",
    "main",
    "parse_fault",
]

FAULT_HEADER = "X-Sim-Fault"

#: Top-level chat-completion fields Mistral's API accepted when this was written (an
#: approximation for ``strict_fields``; anything else gets a 422 like Mistral's ``extra_forbidden``).
MISTRAL_CHAT_FIELDS: frozenset[str] = frozenset(
    {
        "model", "messages", "temperature", "top_p", "max_tokens", "stream", "stop",
        "random_seed", "response_format", "tools", "tool_choice", "presence_penalty",
        "frequency_penalty", "n", "prediction", "parallel_tool_calls", "safe_prompt", "prompt_mode",
    }
)  # fmt: skip

_REPLY_WORDS = ("The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog.")
_REASONING_WORDS = ("Let", "me", "think", "about", "this", "step", "by", "step.")
_TOOL_ARGUMENT_PIECE = 8  # characters of tool-call arguments per streamed chunk


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """How one served model behaves.

    ``reply_tokens`` words make a full reply (a ``max_tokens`` below it truncates the reply and
    sets ``finish_reason="length"``). ``latency_s`` delays JSON responses; streaming responses send
    headers at once, the first chunk after ``ttft_s`` and then ``tokens_per_s`` chunks a second
    (0 means unpaced). ``reasoning`` adds ``reasoning_tokens`` words of ``reasoning_content``.
    ``call_tools`` makes the model call a tool whenever the request offers tools.
    ``prefill_tokens_per_s`` > 0 adds the prompt's uncached tokens / that rate to the time to first
    token (and to ``latency_s``): with the server's prefix cache on, a cached prefix answers sooner.
    ``cached_tokens`` of each prompt (at most all of it) are reported as read from the prompt
    cache, in ``usage_style`` ``openai`` (``prompt_tokens_details.cached_tokens``, as vLLM too) or
    ``deepseek`` (``prompt_cache_hit_tokens`` / ``prompt_cache_miss_tokens``, sent even when 0).

    Example::

        ModelConfig("deepseek-r1", reasoning=True, ttft_s=0.2, tokens_per_s=50)
        ModelConfig("deepseek-chat", cached_tokens=20, usage_style="deepseek")
    """

    name: str
    reply_tokens: int = 16
    reasoning: bool = False
    reasoning_tokens: int = 8
    latency_s: float = 0.0
    ttft_s: float = 0.0
    tokens_per_s: float = 0.0
    call_tools: bool = False
    embedding_dim: int = 8
    prefill_tokens_per_s: float = 0.0   # > 0: uncached prompt tokens add to the time to first token
    cached_tokens: int = 0
    usage_style: str = "openai"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ModelConfig.name: must not be empty")
        if self.usage_style not in ("openai", "deepseek"):
            raise ValueError(f"models.{self.name}.usage_style: must be openai or deepseek")
        for knob in ("reply_tokens", "reasoning_tokens", "embedding_dim", "cached_tokens"):
            if getattr(self, knob) < 0:
                raise ValueError(f"models.{self.name}.{knob}: must be >= 0")
        for knob in ("latency_s", "ttft_s", "tokens_per_s", "prefill_tokens_per_s"):
            if getattr(self, knob) < 0:
                raise ValueError(f"models.{self.name}.{knob}: must be >= 0")


_MODEL_KNOBS = frozenset(f.name for f in dataclasses.fields(ModelConfig)) - {"name"}


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """Server-wide knobs. ``models`` entries may be names or :class:`ModelConfig`.

    ``serve_unknown_models`` answers any other model name with the first model's behaviour
    (else 404 ``model_not_found``). ``capacity`` > 0 caps concurrently running requests; the rest
    queue (and show as ``vllm:num_requests_waiting``). ``strict_fields`` rejects any other
    top-level chat field with 422; ``require_api_key`` demands ``Authorization: Bearer <key>``.
    ``prefix_cache_blocks`` > 0 turns on a vLLM-like prefix cache (an LRU of that many blocks of
    ``block_tokens`` tokens): usage reports ``prompt_tokens_details.cached_tokens``, ``/metrics``
    ``vllm:prefix_cache_queries_total`` and ``vllm:prefix_cache_hits_total`` (tokens).
    """

    models: tuple[ModelConfig, ...] = (ModelConfig("sim-model"),)
    serve_unknown_models: bool = True
    capacity: int = 0
    strict_fields: frozenset[str] | None = None
    require_api_key: str | None = None
    max_logged_requests: int = 1000
    host: str = "127.0.0.1"
    port: int = 0
    prefix_cache_blocks: int = 0     # > 0: a prefix cache of this many blocks (LRU), like vLLM's
    block_tokens: int = 16

    def __post_init__(self) -> None:
        models = tuple(m if isinstance(m, ModelConfig) else ModelConfig(str(m)) for m in self.models)
        if not models:
            raise ValueError("models: at least one model is required")
        seen: set[str] = set()
        for m in models:
            if m.name in seen:
                raise ValueError(f"models.{m.name}: duplicate entry")
            seen.add(m.name)
        object.__setattr__(self, "models", models)
        if self.strict_fields is not None:
            object.__setattr__(self, "strict_fields", frozenset(self.strict_fields))
        if self.capacity < 0:
            raise ValueError("capacity: must be >= 0 (0 means unbounded)")
        if self.max_logged_requests < 0:
            raise ValueError("max_logged_requests: must be >= 0")
        if self.prefix_cache_blocks < 0 or self.block_tokens < 1:
            raise ValueError("prefix_cache_blocks: must be >= 0; block_tokens: must be >= 1")


_SIM_KNOBS = frozenset(f.name for f in dataclasses.fields(SimulatorConfig))


# --------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------

_FAULT_KINDS = ("status", "delay", "drop", "drop-mid-stream", "malformed", "hang")


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected failure; build it with :func:`parse_fault` from its text form.

    ``kind`` is one of ``status`` (``status``, optional ``retry_after`` header value and error
    ``code``), ``delay`` (``seconds``), ``drop``, ``drop-mid-stream`` (``chunks``), ``malformed``
    or ``hang``.
    """

    kind: str
    status: int = 0
    retry_after: str | None = None
    code: str | None = None
    seconds: float = 0.0
    chunks: int = 0


@lru_cache(maxsize=256)
def parse_fault(text: str) -> tuple[Fault, ...]:
    """Parse a fault spec; comma-separated faults apply in order (delays first, one terminal).

    Example::

        parse_fault("delay:0.5,status:429:retry-after=1")
        # -> (Fault("delay", seconds=0.5), Fault("status", status=429, retry_after="1"))
    """
    faults: list[Fault] = []
    for raw in text.split(","):
        part = raw.strip()
        kind, _, rest = part.partition(":")
        kind = kind.strip().lower()
        try:
            if kind == "status":
                code_s, *opts = rest.split(":")
                status = int(code_s)
                if not 400 <= status <= 599:
                    raise ValueError("status must be 4xx or 5xx")
                retry_after = code = None
                for opt in opts:
                    key, eq, value = opt.partition("=")
                    if not eq:
                        raise ValueError(f"option {opt!r} is not key=value")
                    if key == "retry-after":
                        float(value)
                        retry_after = value
                    elif key == "code":
                        code = value
                    else:
                        raise ValueError(f"unknown option {key!r}")
                faults.append(Fault("status", status=status, retry_after=retry_after, code=code))
            elif kind == "delay":
                seconds = float(rest)
                if not seconds >= 0:
                    raise ValueError("delay must be >= 0")
                faults.append(Fault("delay", seconds=seconds))
            elif kind == "drop-mid-stream":
                chunks = int(rest)
                if chunks < 0:
                    raise ValueError("chunk count must be >= 0")
                faults.append(Fault("drop-mid-stream", chunks=chunks))
            elif kind in ("drop", "malformed", "hang") and not rest:
                faults.append(Fault(kind))
            else:
                raise ValueError(f"expected one of {', '.join(_FAULT_KINDS)}")
        except ValueError as exc:
            raise ValueError(f"invalid fault {part!r}: {exc}") from None
    if sum(f.kind != "delay" for f in faults) > 1:
        raise ValueError(f"invalid fault {text!r}: at most one non-delay fault")
    return tuple(sorted(faults, key=lambda f: f.kind != "delay"))


def _as_faults(fault: str | Fault | Sequence[Fault]) -> tuple[Fault, ...]:
    if isinstance(fault, str):
        return parse_fault(fault)
    if isinstance(fault, Fault):
        return (fault,)
    return tuple(fault)


# --------------------------------------------------------------------------------------------
# Deterministic token accounting
# --------------------------------------------------------------------------------------------


def count_prompt_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Prompt tokens the simulator bills: ``4 * len(messages) + ceil(total_chars / 4)``.

    ``total_chars`` sums the length of every message's ``content`` when it is a string, or of the
    ``text`` of each part when it is a list of parts; other fields (names, tool calls, the
    ``tools`` list) and non-text parts count nothing.

    Example::

        >>> count_prompt_tokens([{"role": "user", "content": "hello world"}])  # 4 + ceil(11/4)
        7
    """
    n = 0
    chars = 0
    for message in messages:
        n += 1
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    text = part.get("text")
                    if isinstance(text, str):
                        chars += len(text)
    return 4 * n + -(-chars // 4)


def _embedding_input_tokens(item: Any) -> int:
    if isinstance(item, str):
        return -(-len(item) // 4)
    return len(item)  # already a token array


def _text_of(content: Any) -> str:
    """A message's text: its string content, or the text of its parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _tool_sequence_problem(messages: list[Any]) -> str | None:
    """What OpenAI's API rejects about tool turns (400): a ``tool`` message that answers no
    ``tool_calls`` id of the assistant turn before it, or a tool call left unanswered."""
    open_ids: set[str] = set()
    for m in messages:
        role = m.get("role")
        if role == "tool":
            if m.get("tool_call_id") not in open_ids:
                return ("Invalid parameter: messages with role 'tool' must be a response to a preceding "
                        "message with 'tool_calls'.")
            open_ids.discard(m["tool_call_id"])
            continue
        if open_ids:
            return ("An assistant message with 'tool_calls' must be followed by tool messages responding to "
                    f"each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                    f"{', '.join(sorted(open_ids))}")
        calls = m.get("tool_calls") if role == "assistant" else None
        if isinstance(calls, list):
            open_ids = {c.get("id") for c in calls if isinstance(c, dict) and isinstance(c.get("id"), str)}
    return None


def _cache_usage(usage: dict[str, Any], cached: int, style: str) -> None:
    """Add prompt-cache hits to `usage` in `style`'s fields (DeepSeek's always; OpenAI's when any)."""
    if style == "deepseek":
        usage["prompt_cache_hit_tokens"] = cached
        usage["prompt_cache_miss_tokens"] = usage["prompt_tokens"] - cached
    elif cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}


def _words(vocabulary: tuple[str, ...], n: int) -> list[str]:
    return [vocabulary[i % len(vocabulary)] for i in range(n)]


class _Text:
    """A reply of ``n`` word-tokens, its joined text and its pre-serialised stream deltas."""

    __slots__ = ("n", "text", "deltas")

    def __init__(self, vocabulary: tuple[str, ...], n: int, key: str, pieces: Sequence[str] | None = None) -> None:
        if pieces is None:
            words = _words(vocabulary, n)
            pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        self.n = len(pieces)
        self.text = "".join(pieces)
        self.deltas = tuple(orjson.dumps({key: p}) for p in pieces)


def _continuation(full: str, partial: str, limit: int | None) -> tuple[list[str], bool]:
    """The rest of the reply `full` after the assistant's `partial` text (vLLM's continue_final_message,
    DeepSeek's and Mistral's prefix completion), one piece per token, at most `limit` pieces; the whole
    reply when `partial` is not a prefix of it. Returns (pieces, truncated)."""
    rest = full[len(partial):] if full.startswith(partial) else (" " if partial else "") + full
    pieces = re.findall(r"\s*\S+", rest)
    if limit is not None and len(pieces) > limit:
        return pieces[:limit], True
    return pieces, False


def _prefill_request(body: Mapping[str, Any], messages: list[Any]) -> str | None:
    """The partial assistant text to continue, when the request asks for a continuation, else None.
    Raises `_Invalid` as vLLM does for an inconsistent request."""
    last = messages[-1]
    if body.get("continue_final_message") is True:
        if body.get("add_generation_prompt", True) is not False:
            raise _Invalid(400, "Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        if last.get("role") != "assistant":
            raise _Invalid(400, "continue_final_message requires the final message to be from the assistant",
                           param="messages")
        return _text_of(last.get("content"))
    if last.get("role") == "assistant" and last.get("prefix") is True:
        return _text_of(last.get("content"))
    return None


class _PrefixCache:
    """A vLLM-like automatic prefix cache: an LRU of full blocks of ``block_tokens`` tokens (4
    characters a token), each keyed by the hash of everything before it and itself."""

    __slots__ = ("block_chars", "blocks", "capacity", "hits", "queries")

    def __init__(self, capacity: int, block_tokens: int) -> None:
        self.capacity = capacity
        self.block_chars = 4 * block_tokens
        self.blocks: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.queries = 0    # prompt tokens looked up
        self.hits = 0       # of them, found cached

    def _chain(self, text: str) -> list[bytes]:
        out, prev, size = [], b"", self.block_chars
        for start in range(0, len(text) - size + 1, size):
            prev = hashlib.blake2b(prev + text[start:start + size].encode(), digest_size=8).digest()
            out.append(prev)
        return out

    def lookup(self, prompt: str, prompt_tokens: int, answer: str) -> int:
        """Cached tokens of `prompt` (its leading blocks found); then caches prompt + answer."""
        chain = self._chain(prompt)
        hit = 0
        for h in chain:
            if h not in self.blocks:
                break
            hit += 1
        cached = min(prompt_tokens, hit * self.block_chars // 4)
        self.queries += prompt_tokens
        self.hits += cached
        for h in self._chain(prompt + answer):
            self.blocks[h] = None
            self.blocks.move_to_end(h)
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)
        return cached


def _conversation_text(body: Mapping[str, Any], messages: list[Any]) -> str:
    """What a chat template would render, as text: the tools, then each message with its role."""
    tools = body.get("tools")
    parts = [orjson.dumps(tools).decode()] if tools else []
    for m in messages:
        parts.append(f"<|{m.get('role')}|>{_text_of(m.get('content'))}\n")
    return "".join(parts)


def _example_value(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return "sim"
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return _example_arguments(schema)
    if not isinstance(kind, str):
        return "sim"
    return {"integer": 1, "number": 1, "boolean": True, "array": [], "null": None}.get(kind, "sim")


def _example_arguments(parameters: Any) -> dict[str, Any]:
    """Deterministic arguments satisfying a JSON schema's required properties."""
    if not isinstance(parameters, dict):
        return {}
    props = parameters.get("properties")
    props = props if isinstance(props, dict) else {}
    required = parameters.get("required")
    names = required if isinstance(required, list) else list(props)
    return {name: _example_value(props.get(name)) for name in names if isinstance(name, str)}


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RecordedRequest:
    """One request that reached the simulator (kept in ``Simulator.requests``).

    ``headers`` is aiohttp's case-insensitive view of all request headers; ``body`` the parsed
    JSON body (``None`` when it was not JSON).
    """

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    received_at: float

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None


class _ModelState:
    __slots__ = (
        "config",
        "running",
        "waiting",
        "prompt_tokens",
        "generation_tokens",
        "down",
        "_replies",
        "_reasoning",
    )

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.running = 0
        self.waiting = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.down = False
        self._replies: dict[int, _Text] = {}
        self._reasoning: _Text | None = None

    def reply(self, n: int) -> _Text:
        text = self._replies.get(n)
        if text is None:
            text = self._replies[n] = _Text(_REPLY_WORDS, n, "content")
        return text

    def reasoning(self) -> _Text:
        if self._reasoning is None:
            self._reasoning = _Text(_REASONING_WORDS, self.config.reasoning_tokens, "reasoning_content")
        return self._reasoning


class _Invalid(Exception):
    """An error answer decided on the request path; becomes an OpenAI-shaped error response."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def response(self) -> web.Response:
        return _error_response(
            self.status, self.message, param=self.param, code=self.code, headers=self.headers
        )


# --------------------------------------------------------------------------------------------
# HTTP helpers
# --------------------------------------------------------------------------------------------

_JSON = "application/json"
_SSE = "text/event-stream; charset=utf-8"
_DONE = b"data: [DONE]\n\n"
_NULL_TAIL = b',"logprobs":null,"finish_reason":null}]'
_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 409: "conflict_error", 413: "request_too_large",
    422: "invalid_request_error", 429: "rate_limit_error",
}  # fmt: skip


def _json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, headers={"Content-Type": _JSON})


def _error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    error_type = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    all_headers = {"Content-Type": _JSON}
    if headers:
        all_headers.update(headers)
    return web.Response(body=orjson.dumps(body), status=status, headers=all_headers)


def _abandon(request: web.BaseRequest) -> None:
    """Close the connection (flushing what was written) and end the handler without a response."""
    request[_ABANDONED] = True   # the simulator hung up, not the client
    transport = request.transport
    if transport is not None:
        transport.close()
    # aiohttp treats a cancelled handler as "client went away": no response, nothing logged.
    raise asyncio.CancelledError


# marks a request the simulator itself hung up on (aiohttp >= 3.13 wants a typed key for request storage)
_ABANDONED: Any = web.RequestKey("router-sim-abandoned", bool) if hasattr(web, "RequestKey") else "router-sim-abandoned"


async def _json_body(request: web.BaseRequest, payload: bytes, fault: Fault | None) -> web.StreamResponse:
    """The 200 JSON answer, or its broken form under a ``malformed`` / ``drop-mid-stream`` fault."""
    if fault is None:
        return web.Response(body=payload, headers={"Content-Type": _JSON})
    half = payload[: len(payload) // 2]
    if fault.kind == "malformed":
        return web.Response(body=half, headers={"Content-Type": _JSON})
    # drop-mid-stream: announce the full length, send half, hang up.
    response = web.StreamResponse(headers={"Content-Type": _JSON})
    response.content_length = len(payload)
    await response.prepare(request)
    await response.write(half)
    _abandon(request)
    raise AssertionError("unreachable")


async def _forever() -> None:
    await asyncio.get_running_loop().create_future()


def _prom_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# --------------------------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------------------------

_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class Simulator:
    """A fake OpenAI-compatible provider on a real socket.

    ``Simulator(config=None, **options)``: ``options`` override :class:`SimulatorConfig` fields,
    and :class:`ModelConfig` knobs (``latency_s``, ``reasoning``, ...) given here apply to every
    model. Use it as an async context manager, or ``start()`` / ``stop()``, or
    :meth:`start_in_thread` from sync code.

    Example::

        async with Simulator(models=["m1", "m2"], capacity=4, require_api_key="k") as sim:
            sim.set_down("m2")
            sim.inject("drop", times=2)
            ...
    """

    def __init__(self, config: SimulatorConfig | None = None, **options: Any) -> None:
        config = config or SimulatorConfig()
        unknown = set(options) - _SIM_KNOBS - _MODEL_KNOBS
        if unknown:
            raise TypeError(f"Simulator() got unknown options: {', '.join(sorted(unknown))}")
        sim_options = {k: v for k, v in options.items() if k in _SIM_KNOBS}
        model_options = {k: v for k, v in options.items() if k in _MODEL_KNOBS}
        if sim_options:
            config = dataclasses.replace(config, **sim_options)
        if model_options:
            models = tuple(dataclasses.replace(m, **model_options) for m in config.models)
            config = dataclasses.replace(config, models=models)
        self._config = config
        self._states: dict[str, _ModelState] = {m.name: _ModelState(m) for m in config.models}
        self._default_model = config.models[0]
        self._strict = config.strict_fields
        self._auth = None if config.require_api_key is None else f"Bearer {config.require_api_key}"

        self.requests: deque[RecordedRequest] = deque(maxlen=config.max_logged_requests)
        self.request_count = 0

        self._fault_lock = threading.Lock()
        self._fault_queue: list[list[Any]] = []  # [faults, remaining, model]
        self._persistent: dict[str | None, tuple[Fault, ...]] = {}
        self._all_down = False
        self._load: dict[str | None, dict[str, float]] = {}

        self.prefix_cache = (_PrefixCache(config.prefix_cache_blocks, config.block_tokens)
                             if config.prefix_cache_blocks else None)
        self.disconnects = 0   # chat requests whose client hung up before the answer was complete
        self._id_prefix = os.urandom(3).hex()
        self._seq = itertools.count(1)
        self._semaphore: asyncio.Semaphore | None = None
        self._runner: web.ServerRunner | None = None
        self._port: int | None = None
        self._routes: dict[tuple[str, str], _Handler] = {}
        for prefix in ("/v1", ""):
            self._routes["POST", prefix + "/chat/completions"] = self._chat
            self._routes["POST", prefix + "/embeddings"] = self._embeddings
            self._routes["GET", prefix + "/models"] = self._models
        self._routes["POST", "/beta/chat/completions"] = self._chat   # DeepSeek's beta base URL (prefix completion)
        self._routes["GET", "/health"] = self._health
        self._routes["GET", "/metrics"] = self._metrics

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def config(self) -> SimulatorConfig:
        return self._config

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("simulator is not running; use `async with Simulator()` or start()")
        return self._port

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (no path)."""
        return f"http://{self._config.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI ``base_url``: ``http://HOST:PORT/v1``."""
        return self.url + "/v1"

    @property
    def metrics_url(self) -> str:
        return self.url + "/metrics"

    async def start(self) -> Simulator:
        """Bind and serve; returns self. The port is ephemeral unless ``port`` was configured."""
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        if self._config.capacity:
            self._semaphore = asyncio.Semaphore(self._config.capacity)
        server = web.Server(self._dispatch, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, self._config.host, self._config.port, backlog=1024)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Stop serving; in-flight requests (hangs, slow streams) are cut off."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._port = None

    async def __aenter__(self) -> Simulator:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def start_in_thread(self, timeout: float = 10.0) -> SimulatorThread:
        """Serve from a background thread with its own event loop (for sync tests and the demo).

        Example::

            handle = Simulator(latency_s=0.05).start_in_thread()
            try:
                openai.OpenAI(base_url=handle.base_url, api_key="x") ...
            finally:
                handle.stop()
        """
        return SimulatorThread(self, timeout)

    # ---- programmatic control --------------------------------------------------------------

    def inject(self, fault: str | Fault | Sequence[Fault], times: int = 1, model: str | None = None) -> None:
        """Apply ``fault`` to the next ``times`` API requests (for ``model`` only, if given)."""
        faults = _as_faults(fault)
        if times < 1:
            raise ValueError("times: must be >= 1")
        with self._fault_lock:
            self._fault_queue.append([faults, times, model])

    def set_fault(self, fault: str | Fault | Sequence[Fault], model: str | None = None) -> None:
        """Apply ``fault`` to every API request (for ``model`` only, if given) until cleared."""
        self._persistent[model] = _as_faults(fault)

    def clear_faults(self) -> None:
        """Drop queued and persistent faults."""
        with self._fault_lock:
            self._fault_queue.clear()
        self._persistent.clear()

    def set_down(self, model: str | None = None, down: bool = True) -> None:
        """Mark one model (or, with no model, the whole provider) down: API calls get 503."""
        if model is None:
            self._all_down = down
        else:
            self._state_for(model, create=True).down = down  # type: ignore[union-attr]

    def set_load(
        self,
        *,
        running: float | None = None,
        waiting: float | None = None,
        kv_cache: float | None = None,
        model: str | None = None,
    ) -> None:
        """Override the gauges ``/metrics`` reports (for one model label or all); None keeps live."""
        if kv_cache is not None and not 0.0 <= kv_cache <= 1.0:
            raise ValueError("kv_cache: must be within 0..1")
        override = self._load.setdefault(model, {})
        for key, value in (("running", running), ("waiting", waiting), ("kv_cache", kv_cache)):
            if value is not None:
                override[key] = float(value)

    def clear_load(self) -> None:
        self._load.clear()

    def configure_model(self, name: str, **changes: Any) -> ModelConfig:
        """Change a model's knobs while running (e.g. ``latency_s``); adds the model if new."""
        state = self._state_for(name, create=True)
        assert state is not None
        config = dataclasses.replace(state.config, **changes)
        fresh = _ModelState(config)
        fresh.running, fresh.waiting, fresh.down = state.running, state.waiting, state.down
        fresh.prompt_tokens, fresh.generation_tokens = state.prompt_tokens, state.generation_tokens
        self._states[name] = fresh
        models = {m.name: m for m in self._config.models}
        models[name] = config
        self._config = dataclasses.replace(self._config, models=tuple(models.values()))
        return config

    def reset(self) -> None:
        """Forget logged requests and counters, faults, down switches and load overrides."""
        self.requests.clear()
        self.request_count = 0
        self.clear_faults()
        self.clear_load()
        self._all_down = False
        for state in self._states.values():
            state.down = False
            state.prompt_tokens = state.generation_tokens = 0

    def in_flight(self, model: str | None = None) -> tuple[int, int]:
        """Live ``(running, waiting)`` counts, for one model or all."""
        states = self._states.values() if model is None else [self._states.get(model)]
        running = sum(s.running for s in states if s)
        waiting = sum(s.waiting for s in states if s)
        return running, waiting

    # ---- request path ----------------------------------------------------------------------

    def _state_for(self, model: str, create: bool = False) -> _ModelState | None:
        state = self._states.get(model)
        if state is None and (create or self._config.serve_unknown_models):
            state = self._states[model] = _ModelState(dataclasses.replace(self._default_model, name=model))
        return state

    def _faults_for(self, request: web.BaseRequest, model: str | None) -> tuple[Fault, ...] | None:
        spec = request.headers.get(FAULT_HEADER)
        if spec:
            try:
                return parse_fault(spec)
            except ValueError as exc:
                raise _Invalid(400, f"{FAULT_HEADER}: {exc}") from None
        if self._fault_queue:
            with self._fault_lock:
                for i, entry in enumerate(self._fault_queue):
                    if entry[2] is None or entry[2] == model:
                        entry[1] -= 1
                        if entry[1] == 0:
                            del self._fault_queue[i]
                        return entry[0]  # type: ignore[no-any-return]
        if self._persistent:
            return self._persistent.get(model) or self._persistent.get(None)
        return None

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        handler = self._routes.get((request.method, request.path))
        if handler is not None:
            return await handler(request)
        if any(path == request.path for _, path in self._routes):
            return _error_response(405, f"method {request.method} not allowed on {request.path}")
        return _error_response(404, f"unknown path {request.path}", code="unknown_url")

    async def _admit(self, request: web.BaseRequest) -> tuple[Any, float]:
        """Log, authenticate and parse an API request; returns (body, received_at)."""
        self.request_count += 1
        raw = await request.read()
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        now = time.time()
        self.requests.append(RecordedRequest(request.method, request.path, request.headers, body, now))
        if self._auth is not None and request.headers.get("Authorization") != self._auth:
            raise _Invalid(401, "Incorrect API key provided.", code="invalid_api_key")
        if not isinstance(body, dict):
            raise _Invalid(400, "request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _Invalid(400, "you must provide a model parameter", param="model")
        return body, now

    async def _prelude(
        self, request: web.BaseRequest, body: dict[str, Any]
    ) -> tuple[_ModelState, Fault | None]:
        """Faults, down switches and model lookup, shared by chat and embeddings."""
        model = body["model"]
        terminal = None
        faults = self._faults_for(request, model)
        if faults:
            for fault in faults:
                if fault.kind == "delay":
                    await asyncio.sleep(fault.seconds)
                else:
                    terminal = fault
            if terminal is not None:
                kind = terminal.kind
                if kind == "status":
                    retry = None if terminal.retry_after is None else {"Retry-After": terminal.retry_after}
                    raise _Invalid(
                        terminal.status,
                        f"simulated {terminal.status} error",
                        code=terminal.code,
                        headers=retry,
                    )
                if kind == "drop":
                    _abandon(request)
                if kind == "hang":
                    await _forever()
        state = self._state_for(model)
        if state is None:
            raise _Invalid(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")
        if self._all_down or state.down:
            raise _Invalid(503, f"{model} is down (simulated)", code="service_unavailable")
        return state, terminal

    async def _chat(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            body, now = await self._admit(request)
            if self._strict is not None:
                extra = sorted(k for k in body if k not in self._strict)
                if extra:
                    raise _Invalid(
                        422,
                        f"Extra inputs are not permitted: {', '.join(extra)}",
                        param=extra[0],
                        code="extra_forbidden",
                    )
            messages = body.get("messages")
            if (
                not isinstance(messages, list)
                or not messages
                or not all(isinstance(m, dict) for m in messages)
            ):
                raise _Invalid(400, "messages: must be a non-empty array of objects", param="messages")
            problem = _tool_sequence_problem(messages)
            if problem is not None:
                raise _Invalid(400, problem, param="messages")
            limit = body.get("max_tokens")
            if limit is None:
                limit = body.get("max_completion_tokens")
            if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
                raise _Invalid(400, "max_tokens: must be a non-negative integer", param="max_tokens")
            state, terminal = await self._prelude(request, body)
        except _Invalid as exc:
            return exc.response()

        try:
            semaphore = self._semaphore
            if semaphore is None:
                state.running += 1
                try:
                    return await self._complete(request, body, now, state, terminal, messages, limit)
                finally:
                    state.running -= 1
            state.waiting += 1
            try:
                await semaphore.acquire()
            finally:
                state.waiting -= 1
            state.running += 1
            try:
                return await self._complete(request, body, now, state, terminal, messages, limit)
            finally:
                state.running -= 1
                semaphore.release()
        except asyncio.CancelledError:
            if not request.get(_ABANDONED):
                self.disconnects += 1
            raise

    async def _complete(
        self,
        request: web.BaseRequest,
        body: dict[str, Any],
        now: float,
        state: _ModelState,
        terminal: Fault | None,
        messages: list[Any],
        limit: int | None,
    ) -> web.StreamResponse:
        cfg = state.config
        model: str = body["model"]
        seq = next(self._seq)
        completion_id = f"chatcmpl-{self._id_prefix}{seq:08x}"
        created = int(now)
        prompt_tokens = count_prompt_tokens(messages)
        partial = _prefill_request(body, messages)
        tool_call = self._tool_call(body, messages, cfg, seq) if "tools" in body and partial is None else None
        reasoning = state.reasoning() if cfg.reasoning and partial is None else None
        reasoning_tokens = reasoning.n if reasoning is not None else 0
        if tool_call is not None:
            reply = None
            answer_tokens = -(
                -(len(tool_call["function"]["name"]) + len(tool_call["function"]["arguments"])) // 4
            )
            finish_reason = "tool_calls"
        elif partial is not None:  # continue the assistant's partial answer where it stops
            pieces, truncated = _continuation(state.reply(cfg.reply_tokens).text, partial, limit)
            reply = _Text(_REPLY_WORDS, 0, "content", pieces)
            answer_tokens = reply.n
            finish_reason = "length" if truncated else "stop"
        else:
            n = cfg.reply_tokens if limit is None or limit >= cfg.reply_tokens else limit
            reply = state.reply(n)
            answer_tokens = n
            finish_reason = "stop" if n == cfg.reply_tokens else "length"
        completion_tokens = answer_tokens + reasoning_tokens
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if reasoning is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
        prefill_s = 0.0
        cache = self.prefix_cache
        if cache is not None or cfg.prefill_tokens_per_s:
            cached = 0
            if cache is not None:
                answer = f"<|assistant|>{reply.text if reply is not None else ''}\n"
                cached = cache.lookup(_conversation_text(body, messages), prompt_tokens, answer)
                usage["prompt_tokens_details"] = {"cached_tokens": cached}
            if cfg.prefill_tokens_per_s:
                prefill_s = (prompt_tokens - cached) / cfg.prefill_tokens_per_s
        _cache_usage(usage, min(cfg.cached_tokens, prompt_tokens), cfg.usage_style)
        state.prompt_tokens += prompt_tokens
        state.generation_tokens += completion_tokens

        if body.get("stream") is True:
            return await self._stream(
                request,
                body,
                state,
                terminal,
                completion_id,
                created,
                model,
                reply,
                reasoning,
                tool_call,
                finish_reason,
                usage,
                prefill_s,
            )

        message: dict[str, Any] = {"role": "assistant", "content": reply.text if reply else None}
        if reasoning is not None:
            message["reasoning_content"] = reasoning.text
        if tool_call is not None:
            message["tool_calls"] = [tool_call]
        payload = orjson.dumps(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
                ],
                "usage": usage,
            }
        )
        if cfg.latency_s or prefill_s:
            await asyncio.sleep(cfg.latency_s + prefill_s)
        return await _json_body(request, payload, terminal)

    def _tool_call(
        self, body: dict[str, Any], messages: list[Any], cfg: ModelConfig, seq: int
    ) -> dict[str, Any] | None:
        tools = body.get("tools")
        choice = body.get("tool_choice")
        if not isinstance(tools, list) or not tools or choice == "none":
            return None
        functions = {
            t["function"]["name"]: t["function"]
            for t in tools
            if isinstance(t, dict)
            and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str)
        }
        if not functions:
            return None
        name: str | None = None
        requested, given = "", None
        if isinstance(choice, dict):
            fn = choice.get("function")
            name = fn.get("name") if isinstance(fn, dict) else None
        elif choice == "required":
            name = next(iter(functions))
        else:
            last = messages[-1] if isinstance(messages[-1], dict) else {}
            if last.get("role") == "tool":
                return None  # answer the tool result instead of looping forever
            content = _text_of(last.get("content"))
            if "CALL_TOOL" in content:
                rest = content.split("CALL_TOOL", 1)[1]
                requested, given = "", None
                if rest.startswith(":"):
                    head = rest[1:].split(None, 1)
                    requested = head[0] if head else ""
                    if len(head) > 1 and head[1].startswith("{"):
                        for text in (head[1], head[1].replace('\\"', '"')):  # some clients quote the prompt
                            with contextlib.suppress(ValueError):
                                given = json.JSONDecoder().raw_decode(text)[0]
                                break
                name = requested if requested in functions else next(iter(functions))
            elif cfg.call_tools:
                name = next(iter(functions))
        if name is None:
            return None
        if isinstance(given, dict) and name == requested:
            arguments = orjson.dumps(given).decode()
        else:
            parameters = functions[name].get("parameters") if name in functions else None
            arguments = orjson.dumps(_example_arguments(parameters)).decode()
        return {
            "id": f"call_{self._id_prefix}{seq:08x}",
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }

    async def _stream(
        self,
        request: web.BaseRequest,
        body: dict[str, Any],
        state: _ModelState,
        terminal: Fault | None,
        completion_id: str,
        created: int,
        model: str,
        reply: _Text | None,
        reasoning: _Text | None,
        tool_call: dict[str, Any] | None,
        finish_reason: str,
        usage: dict[str, Any],
        prefill_s: float = 0.0,
    ) -> web.StreamResponse:
        cfg = state.config
        ttft = cfg.ttft_s + prefill_s
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        head = (
            b'data: {"id":"'
            + completion_id.encode()
            + b'","object":"chat.completion.chunk","created":'
            + str(created).encode()
            + b',"model":'
            + orjson.dumps(model)
            + b',"choices":[{"index":0,"delta":'
        )
        tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"
        middle = _NULL_TAIL + tail

        deltas: list[bytes] = [
            b'{"role":"assistant","content":null}' if tool_call else b'{"role":"assistant","content":""}'
        ]
        if reasoning is not None:
            deltas.extend(reasoning.deltas)
        if reply is not None:
            deltas.extend(reply.deltas)
        if tool_call is not None:
            fn = tool_call["function"]
            first = {
                "index": 0,
                "id": tool_call["id"],
                "type": "function",
                "function": {"name": fn["name"], "arguments": ""},
            }
            deltas.append(orjson.dumps({"tool_calls": [first]}))
            args = fn["arguments"]
            for i in range(0, len(args), _TOOL_ARGUMENT_PIECE):
                piece = {"index": 0, "function": {"arguments": args[i : i + _TOOL_ARGUMENT_PIECE]}}
                deltas.append(orjson.dumps({"tool_calls": [piece]}))
        events = [head + d + middle for d in deltas]
        events.append(head + b'{},"logprobs":null,"finish_reason":"' + finish_reason.encode() + b'"}]' + tail)
        if include_usage:
            final = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            events.append(b"data: " + orjson.dumps(final) + b"\n\n")

        if terminal is not None:
            if terminal.kind == "malformed":
                broken = events[1] if len(events) > 1 else events[0]
                events = [events[0], broken[: len(broken) // 2] + b"\n\n", _DONE]
            else:  # drop-mid-stream
                events = events[: terminal.chunks]
        else:
            events.append(_DONE)

        headers = {"Content-Type": _SSE, "Cache-Control": "no-cache"}
        if not (ttft or cfg.tokens_per_s or terminal is not None):
            return web.Response(body=b"".join(events), headers=headers)  # fast path: one write

        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        try:
            if ttft:
                await asyncio.sleep(ttft)
            if cfg.tokens_per_s:
                # Role chunk and first token go together; later chunks keep the average rate.
                start = loop.time()
                interval = 1.0 / cfg.tokens_per_s
                await response.write(b"".join(events[:2]))
                for i, event in enumerate(events[2:], start=1):
                    delay = start + i * interval - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await response.write(event)
            else:
                await response.write(b"".join(events))
            if terminal is not None and terminal.kind == "drop-mid-stream":
                _abandon(request)
            await response.write_eof()
        except ConnectionError:
            _abandon(request)
        return response

    async def _embeddings(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            body, _ = await self._admit(request)
            raw_input = body.get("input")
            if isinstance(raw_input, str) or (
                isinstance(raw_input, list) and raw_input and all(isinstance(x, int) for x in raw_input)
            ):
                items: list[Any] = [raw_input]
            elif isinstance(raw_input, list) and raw_input:
                items = raw_input
            else:
                raise _Invalid(400, "input: must be a string or a non-empty array", param="input")
            state, terminal = await self._prelude(request, body)
        except _Invalid as exc:
            return exc.response()
        cfg = state.config
        as_base64 = body.get("encoding_format") == "base64"
        dims = body.get("dimensions")
        dim = dims if isinstance(dims, int) and not isinstance(dims, bool) and dims > 0 else cfg.embedding_dim
        data = []
        tokens = 0
        for index, item in enumerate(items):
            tokens += _embedding_input_tokens(item)
            vector = _embedding(item if isinstance(item, str) else repr(item), dim)
            value: Any = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode() if as_base64 else vector
            data.append({"object": "embedding", "index": index, "embedding": value})
        state.running += 1
        try:
            if cfg.latency_s:
                await asyncio.sleep(cfg.latency_s)
        finally:
            state.running -= 1
        state.prompt_tokens += tokens
        payload = orjson.dumps(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )
        return await _json_body(request, payload, terminal)

    async def _models(self, request: web.BaseRequest) -> web.StreamResponse:
        data = [
            {"id": m.name, "object": "model", "created": 0, "owned_by": "simulator"}
            for m in self._config.models
        ]
        return _json_response({"object": "list", "data": data})

    async def _health(self, request: web.BaseRequest) -> web.StreamResponse:
        if self._all_down:
            return _error_response(503, "down (simulated)", code="service_unavailable")
        return _json_response({"status": "ok"})

    async def _metrics(self, request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(
            body=self.metrics_text().encode(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    def metrics_text(self) -> str:
        """The Prometheus text ``/metrics`` serves (vLLM metric names, one ``model_name`` label)."""
        capacity = self._config.capacity
        total_running = sum(s.running for s in self._states.values())
        live_kv = min(1.0, total_running / capacity) if capacity else 0.0
        every = self._load.get(None, {})
        rows: dict[str, list[str]] = {k: [] for k in _METRIC_HELP}
        for name, state in self._states.items():
            override = {**every, **self._load.get(name, {})}
            label = '{model_name="' + _prom_label(name) + '"}'
            kv = override.get("kv_cache", live_kv)
            values = {
                "vllm:num_requests_running": override.get("running", state.running),
                "vllm:num_requests_waiting": override.get("waiting", state.waiting),
                "vllm:kv_cache_usage_perc": kv,
                "vllm:gpu_cache_usage_perc": kv,
                "vllm:prompt_tokens_total": state.prompt_tokens,
                "vllm:generation_tokens_total": state.generation_tokens,
            }
            for metric, value in values.items():
                rows[metric].append(f"{metric}{label} {float(value)!r}")
        lines: list[str] = []
        for metric, (kind, help_text) in _METRIC_HELP.items():
            lines.append(f"# HELP {metric} {help_text}")
            lines.append(f"# TYPE {metric} {kind}")
            lines.extend(rows[metric])
        cache = self.prefix_cache
        if cache is not None:  # one cache per server: labelled with the first model
            label = '{model_name="' + _prom_label(self._default_model.name) + '"}'
            for metric, value, help_text in (
                ("vllm:prefix_cache_queries_total", cache.queries, "Prompt tokens looked up in the prefix cache."),
                ("vllm:prefix_cache_hits_total", cache.hits, "Prompt tokens found in the prefix cache."),
            ):
                lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter",
                          f"{metric}{label} {float(value)!r}"]
        return "\n".join(lines) + "\n"


_METRIC_HELP = {
    "vllm:num_requests_running": ("gauge", "Number of requests in model execution batches."),
    "vllm:num_requests_waiting": ("gauge", "Number of requests waiting to be processed."),
    "vllm:kv_cache_usage_perc": ("gauge", "KV-cache usage. 1 means 100 percent usage."),
    "vllm:gpu_cache_usage_perc": ("gauge", "GPU KV-cache usage. 1 means 100 percent usage (legacy name)."),
    "vllm:prompt_tokens_total": ("counter", "Number of prefill tokens processed."),
    "vllm:generation_tokens_total": ("counter", "Number of generation tokens processed."),
}


def _embedding(text: str, dim: int) -> list[float]:
    """A unit vector derived from the input's hash: same input, same vector."""
    if dim == 0:
        return []
    raw = hashlib.shake_128(text.encode()).digest(2 * dim)
    values = [(v / 32767.5) - 1.0 for v in struct.unpack(f"<{dim}H", raw)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


# --------------------------------------------------------------------------------------------
# Background-thread runner and CLI
# --------------------------------------------------------------------------------------------


class SimulatorThread:
    """A :class:`Simulator` served from a daemon thread; from :meth:`Simulator.start_in_thread`.

    Control methods on ``handle.sim`` (``inject``, ``set_down``, ...) are safe to call from the
    caller's thread.
    """

    def __init__(self, sim: Simulator, timeout: float = 10.0) -> None:
        self.sim = sim
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="router-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("simulator thread did not start in time")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.sim.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    @property
    def base_url(self) -> str:
        return self.sim.base_url

    @property
    def metrics_url(self) -> str:
        return self.sim.metrics_url

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and join the thread; idempotent."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.sim.stop(), self._loop).result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def __enter__(self) -> SimulatorThread:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m router.dev.simulator", description="Run a fake OpenAI-compatible provider."
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    p.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help="served model name (repeatable; default sim-model)",
    )
    p.add_argument("--latency", type=float, default=0.0, help="JSON response latency, seconds")
    p.add_argument("--ttft", type=float, default=0.0, help="streaming time to first token, seconds")
    p.add_argument("--tokens-per-s", type=float, default=0.0, help="streaming token rate (0 = unpaced)")
    p.add_argument("--reply-tokens", type=int, default=16)
    p.add_argument("--reasoning", action="store_true", help="add reasoning_content like DeepSeek R1")
    p.add_argument("--capacity", type=int, default=0, help="max running requests (0 = unbounded)")
    p.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY")
    p.add_argument("--strict-unknown-models", action="store_true", help="404 for unconfigured models")
    p.add_argument("--fault", default=None, help="persistent fault, e.g. status:503 (see docs)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: serve until interrupted. Prints ``base_url=...`` once listening."""
    args = _build_parser().parse_args(argv)
    sim = Simulator(
        SimulatorConfig(
            models=tuple(ModelConfig(name) for name in args.models or ["sim-model"]),
            serve_unknown_models=not args.strict_unknown_models,
            capacity=args.capacity,
            require_api_key=args.api_key,
            host=args.host,
            port=args.port,
        ),
        latency_s=args.latency,
        ttft_s=args.ttft,
        tokens_per_s=args.tokens_per_s,
        reply_tokens=args.reply_tokens,
        reasoning=args.reasoning,
    )
    if args.fault:
        sim.set_fault(args.fault)

    async def serve() -> None:
        async with sim:
            print(f"base_url={sim.base_url} metrics_url={sim.metrics_url}", flush=True)
            await _forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
