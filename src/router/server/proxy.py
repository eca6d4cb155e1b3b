"""The OpenAI-compatible HTTP proxy: a thin aiohttp shell over `Engine`.

Every routing decision, retry, fallback and meter record happens in the engine, exactly as in
the library; this module only maps HTTP to engine calls and engine results (and `RequestError`)
back to HTTP. Process concerns (workers, signals, reload) live in `router.server.serve`.

>>> engine = Engine(load_policy("policy.yaml"), AiohttpTransport())   # doctest: +SKIP
>>> proxy = Proxy(engine)                                              # doctest: +SKIP
>>> runner = web.ServerRunner(proxy.server())                          # doctest: +SKIP

Endpoints: ``POST /v1/chat/completions`` (JSON and SSE), ``POST /v1/messages`` and
``/v1/messages/count_tokens`` (Anthropic), ``POST /v1/responses`` (OpenAI Responses),
``POST /v1/embeddings``, ``GET /v1/models`` and ``/v1/models/{id}``, ``GET /healthz``,
``GET /readyz``, ``GET /metrics``, ``HEAD`` or ``GET /``. See docs/proxy.md and docs/agents.md.
The Messages and Responses APIs are translations (`anthropic_messages`, `openai_responses`) in
front of the same engine calls chat uses: one path for sending, routing and metering.

The hot path is deliberately plain: one low-level ``web.Server`` with a dict dispatch (no
router, no middleware), the body read once and parsed with orjson, no per-request logging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from router.core.errors import (
    AuthenticationError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestError,
)
from router.core.policy import Policy, Tenant, hash_key, key_id_of
from router.core.response import ChatCompletion, Embeddings, RouterInfo
from router.engine.engine import ChunkStream, Engine, new_request_id
from router.engine.replicas import session_from_headers
from router.metering.ratelimit import ratelimit_headers
from router.server import anthropic_messages as messages_api
from router.server import openai_responses as responses_api
from router.server.connections import GuardedServer
from router.server.openai_chat import ChatStream, StreamTranslator
from router.server.status import StatusPage

__all__ = ["Proxy", "ProxyOptions", "usable_providers"]

log = logging.getLogger("router.server.proxy")
access_log = logging.getLogger("router.access")

_JSON = "application/json"
_KEEPALIVE = b": keep-alive\n\n"
_SERVICE = b"router: an LLM router and metering proxy (OpenAI chat, Anthropic Messages, OpenAI Responses)\n"
# the request's RouterInfo, for the access log (aiohttp >= 3.12 wants typed keys)
_INFO: Any = web.RequestKey("router", RouterInfo) if hasattr(web, "RequestKey") else "router"
_KEYLESS_KINDS = frozenset({"vllm", "litellm"})  # may run without an API key
_MAX_REQUEST_ID = 200


@dataclass(frozen=True, slots=True)
class ProxyOptions:
    """HTTP-level knobs; routing knobs live in the policy."""

    max_body_bytes: int = 10 * 1024 * 1024   # larger bodies get a 413
    keepalive_s: float = 10.0                # SSE comment after this long without a byte to the client
    access_log: bool = False                 # one line per request on the `router.access` logger
    idle_timeout_s: float = 20.0             # no complete request head this long after connecting or answering: close
    body_timeout_s: float = 10.0             # a request body that stops arriving this long: 408, close


class Internal(RequestError):
    status = 500
    type = "server_error"
    code = "internal_error"


def usable_providers(policy: Policy, circuit_open: frozenset[str] = frozenset()) -> list[str]:
    """Providers a route can reach that have what they need to answer (a key, unless self-hosted)."""
    used: dict[str, None] = {}
    for route in policy.routes.values():
        for alias in route.targets:
            if alias in circuit_open:
                continue
            provider = policy.providers[policy.models[alias].provider]
            if provider.api_key is not None or provider.kind in _KEYLESS_KINDS or provider.self_hosted:
                used[provider.name] = None
    return list(used)


def _error(err: RequestError, rid: str, headers: dict[str, str] | None = None) -> web.Response:
    h = {"Content-Type": _JSON, "x-request-id": rid}
    if err.status == 429:
        h["x-should-retry"] = "false"  # a spent budget does not come back in a second: stop SDK retries
    if isinstance(err, RateLimited):
        h.update(err.headers)  # retry-after, x-ratelimit-*: a rate limit does come back; SDKs wait and retry
    if headers:
        h.update(headers)
    return web.Response(status=err.status, body=orjson.dumps(err.to_openai()), headers=h)


def _anthropic_error(err: RequestError, rid: str, headers: dict[str, str] | None = None) -> web.Response:
    """`err` in Anthropic's error shape (``/v1/messages``), with the same router headers."""
    status, body = messages_api.error_body(err, rid)
    h = {"Content-Type": _JSON, "x-request-id": rid, "request-id": rid}
    if 400 <= status < 500 and status not in (408, 409):
        h["x-should-retry"] = "false"  # Claude Code retries even a 401 ten times unless told not to
    if isinstance(err, RateLimited):
        h.update(err.headers)
    if headers:
        h.update(headers)
    return web.Response(status=status, body=orjson.dumps(body), headers=h)


def _responses_error(err: RequestError, rid: str, headers: dict[str, str] | None = None) -> web.Response:
    """`err` as the Responses API reports it (OpenAI's shape; a spent budget is ``insufficient_quota``)."""
    status, body = responses_api.error_body(err)
    h = {"Content-Type": _JSON, "x-request-id": rid}
    if status == 429:
        h["x-should-retry"] = "false"
    if isinstance(err, RateLimited):
        h.update(err.headers)
    if headers:
        h.update(headers)
    return web.Response(status=status, body=orjson.dumps(body), headers=h)


_Shape = Callable[[RequestError, str, "dict[str, str] | None"], web.Response]


def _shape_for(path: str) -> _Shape:
    """The error shape a path speaks: Anthropic's under /v1/messages, OpenAI's elsewhere."""
    if path.startswith(("/v1/messages", "/anthropic/")):
        return _anthropic_error
    return _responses_error if path.startswith(("/v1/responses", "/responses")) else _error


def _routed_headers(info: RouterInfo, rid: str, content_type: str) -> dict[str, str]:
    h = {"Content-Type": content_type, "x-request-id": rid, "x-router-task": info.task,
         "x-router-route": info.route, "x-router-attempts": str(len(info.attempts))}
    if info.client_request_id is not None:
        h["x-client-request-id"] = info.client_request_id
    if info.model is not None:
        h["x-router-model"] = info.model
    if info.provider is not None:
        h["x-router-provider"] = info.provider
    if info.response_cache is not None:
        h["x-router-cache"] = info.response_cache
    if info.rate_limit:   # the tenant's limits: what is left, as OpenAI (and for Messages, Anthropic) send it
        h.update(ratelimit_headers(info.rate_limit))
        if info.api == messages_api.API:
            h.update(messages_api.ratelimit_headers(info.rate_limit, time.time()))
    return h


def _with_cost(body: dict[str, Any], info: RouterInfo) -> dict[str, Any]:
    """`body` with ``usage.cost`` (USD, as ``x-router-cost-usd``: 10 decimals), OpenRouter's convention;
    a body without usage gets the tokens router metered."""
    usage = body.get("usage")
    if type(usage) is not dict:
        usage = body["usage"] = {"prompt_tokens": info.prompt_tokens, "completion_tokens": info.completion_tokens,
                                 "total_tokens": info.prompt_tokens + info.completion_tokens}
    usage["cost"] = round(info.cost_usd, 10)
    return body


def _routed_json(result: ChatCompletion | Embeddings, rid: str) -> web.Response:
    """A routed JSON answer with its router headers, cost included (header and ``usage.cost``)."""
    info = result.router
    h = _routed_headers(info, rid, _JSON)
    h["x-router-cost-usd"] = f"{info.cost_usd:.10f}"
    return web.Response(body=orjson.dumps(_with_cost(result.to_dict(), info)), headers=h)


def _partial_headers(info: RouterInfo) -> dict[str, str]:
    """What is known about a request that failed: enough to find it in the ledger."""
    h = {"x-router-attempts": str(len(info.attempts))}
    if info.task:
        h["x-router-task"] = info.task
    if info.route:
        h["x-router-route"] = info.route
    return h


def _failed(request: web.BaseRequest, err: RequestError, rid: str, shape: _Shape) -> web.Response:
    """A request that failed in the engine, in `shape`, with what routing knew (task, route, attempts)."""
    info = err.router
    if info is None:
        attempts = getattr(err, "attempts", None)
        return shape(err, rid, {"x-router-attempts": str(len(attempts))} if attempts is not None else None)
    request[_INFO] = info
    return shape(err, rid, _partial_headers(info))


def _routed_body(body: dict[str, Any], info: RouterInfo, rid: str) -> web.Response:
    """A translated JSON answer with its router headers, cost included (header and ``usage.cost``)."""
    h = _routed_headers(info, rid, _JSON)
    h["x-router-cost-usd"] = f"{info.cost_usd:.10f}"
    return web.Response(body=orjson.dumps(_with_cost(body, info)), headers=h)


def _key_id(request: web.BaseRequest) -> str | None:
    """Which API key sent the request, for per-key rate limits: the start of its hash, never the key."""
    auth = request.headers.get("Authorization")
    key = auth.partition(" ")[2].strip() if auth else request.headers.get("x-api-key", "").strip()
    return key_id_of(hash_key(key)) if key else None


def _admission(request: web.BaseRequest, tenant: Tenant | None) -> dict[str, Any]:
    """What the response cache (the client's Cache-Control) and per-key rate limits need from a request."""
    kw: dict[str, Any] = {"cache_control": request.headers.get("Cache-Control")}
    if tenant is not None and tenant.rate_limits is not None and tenant.rate_limits.per_key is not None:
        kw["key_id"] = _key_id(request)
    return kw


def _request_id(request: web.BaseRequest) -> str:
    """Router's own id for this request: fresh and unguessable, the ledger's key. Never the client's
    X-Request-Id (which could collide with, or claim, another request's row): see `_client_request_id`."""
    return new_request_id()


def _client_request_id(request: web.BaseRequest) -> str | None:
    """The client's own id (`X-Client-Request-Id`, else `X-Request-Id`; at most 200 printable
    characters), kept beside router's for correlation."""
    headers = request.headers
    cid = headers.get("X-Client-Request-Id") or headers.get("X-Request-Id")
    if cid and len(cid) <= _MAX_REQUEST_ID and cid.isprintable():
        return cid
    return None


class _SSE:
    """One SSE response, prepared lazily: on the first chunk, or on the first keep-alive tick.

    Preparing late keeps failover before the first chunk invisible (and lets the headers name
    the model that answered). While nothing is written for `interval` seconds, a timer writes an
    SSE comment, so proxies and clients do not time out on a slow first token.
    """

    __slots__ = ("_pending", "_timer", "info", "interval", "keepalive", "last", "loop", "request", "resp", "rid")

    def __init__(self, request: web.BaseRequest, info: RouterInfo, rid: str, interval: float,
                 keepalive: Callable[[], bytes] = lambda: _KEEPALIVE):
        self.request, self.info, self.rid, self.interval = request, info, rid, interval
        self.keepalive = keepalive  # what to send: called when due, so it is ordered before later writes
        self.resp: web.StreamResponse | None = None
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()
        self._pending: asyncio.Task[None] | None = None
        self._timer = self.loop.call_later(interval, self._tick) if interval > 0 else None

    def _tick(self) -> None:
        now = self.loop.time()
        due = self.last + self.interval
        if now >= due - 1e-3:
            if self._pending is None:
                self._pending = self.loop.create_task(self._keepalive(self.keepalive()))
            due = now + self.interval
        self._timer = self.loop.call_later(due - now, self._tick)

    async def _keepalive(self, data: bytes) -> None:
        try:
            if self.resp is None:
                await self._prepare()
            await self.resp.write(data)  # type: ignore[union-attr]
            self.last = self.loop.time()
        except Exception:  # noqa: S110 - the client left; the handler sees it on its next write or cancel
            pass
        finally:
            self._pending = None

    async def _prepare(self) -> None:
        resp = web.StreamResponse(headers=_routed_headers(self.info, self.rid, "text/event-stream"))
        resp.headers["Cache-Control"] = "no-cache"
        self.resp = resp
        await resp.prepare(self.request)

    async def write(self, data: bytes) -> None:
        if self._pending is not None:
            await self._pending
        if self.resp is None:
            await self._prepare()
        await self.resp.write(data)  # type: ignore[union-attr]
        self.last = self.loop.time()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending is not None:
            self._pending.cancel()


class Proxy:
    """Maps HTTP requests onto `engine`. `metrics` renders the /metrics body and content type."""

    def __init__(self, engine: Engine, options: ProxyOptions = ProxyOptions(), *,
                 metrics: Callable[[], tuple[bytes, str]] | None = None, status: StatusPage | None = None):
        self.engine = engine
        self.options = options
        self.metrics = metrics
        self.status = status    # GET /status and /status.json (router.server.status); None: not served
        self.draining = False
        self._models_cache: tuple[Policy, list[dict[str, Any]]] | None = None
        self._routes: dict[tuple[str, str], Callable[[web.BaseRequest], Any]] = {
            ("POST", "/v1/chat/completions"): self.chat_completions,
            ("POST", "/chat/completions"): self.chat_completions,
            ("POST", "/v1/embeddings"): self.embeddings,
            ("POST", "/embeddings"): self.embeddings,
            ("GET", "/v1/models"): self.models,
            ("GET", "/models"): self.models,
            ("POST", "/v1/messages"): self.messages,
            ("POST", "/v1/messages/count_tokens"): self.count_tokens,
            ("POST", "/v1/responses"): self.responses,
            ("POST", "/responses"): self.responses,
            ("GET", "/"): self.root,
            ("HEAD", "/"): self.root,
            ("HEAD", "/api/hello"): self.root,  # Claude Code's connectivity check
            ("GET", "/healthz"): self.healthz,
            ("GET", "/readyz"): self.readyz,
            ("GET", "/metrics"): self.metrics_endpoint,
            ("GET", "/status"): self.status_page,
            ("GET", "/status.json"): self.status_json,
        }

    # ------------------------------------------------------------------ server plumbing

    def server(self, **kwargs: Any) -> web.Server:
        """A low-level aiohttp server for this proxy (handlers are cancelled when clients leave)."""
        limit = self.options.max_body_bytes
        loop = asyncio.get_running_loop()

        def request_factory(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
            return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=limit)

        handler = self.logged_dispatch if self.options.access_log else self.dispatch  # no cost when off
        # malformed HTTP answered in the path's API shape, never echoed; idle and half-sent connections
        # closed (router.server.connections)
        kwargs = {"keepalive_timeout": self.options.idle_timeout_s, "lingering_time": 2.0, **kwargs}
        return GuardedServer(handler, bad_request=lambda path, err: _shape_for(path)(err, new_request_id(), None),
                             request_factory=request_factory, handler_cancellation=True, access_log=None, **kwargs)

    async def dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            if request.method == "GET" and request.path.startswith(("/v1/models/", "/models/")):
                handler = self.model
            else:
                return self.no_endpoint(request)
        try:
            return await handler(request)
        except RequestError as e:
            return _shape_for(request.path)(e, _request_id(request), None)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return _shape_for(request.path)(Internal("internal error in router; see the proxy's log"),
                                            _request_id(request), None)

    def no_endpoint(self, request: web.BaseRequest) -> web.Response:
        """404 (405 for a known path): after authentication, so a wrong key on any /v1/ path is a 401."""
        rid, path = _request_id(request), request.path
        shape = _shape_for(path)
        if path.startswith("/v1/"):
            try:
                self.authenticate(request, self.engine.policy)
            except RequestError as e:
                return shape(e, rid, None)
        if any(known == path for _, known in self._routes):
            err: RequestError = InvalidRequest(f"method {request.method} not allowed on {path}",
                                               code="method_not_allowed", status=405)
        else:
            err = NotFound(f"no endpoint {path}", code="unknown_url")
        return shape(err, rid, None)

    async def logged_dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        """`dispatch`, then one access-log line (`router serve --access-log`)."""
        started = time.perf_counter()
        status = 499  # the client went away before an answer
        try:
            resp = await self.dispatch(request)
            status = resp.status
            return resp
        finally:
            self._log_access(request, status, time.perf_counter() - started)

    def _log_access(self, request: web.BaseRequest, status: int, latency_s: float) -> None:
        """time, request id, tenant, API, route, provider, model, status, latency, tokens, cost; never
        prompt text or keys."""
        info: RouterInfo | None = request.get(_INFO)
        if info is None:
            access_log.info("%s %s %s status=%d latency_ms=%.1f", time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            request.method, request.path, status, latency_s * 1000)
            return
        access_log.info("%s %s %s rid=%s tenant=%s api=%s route=%s provider=%s model=%s status=%d latency_ms=%.1f "
                        "prompt_tokens=%d completion_tokens=%d cost_usd=%.8f",
                        time.strftime("%Y-%m-%dT%H:%M:%S%z"), request.method, request.path, info.request_id,
                        info.tenant or "-", info.api, info.route or "-", info.provider or "-", info.model or "-",
                        status, latency_s * 1000, info.prompt_tokens, info.completion_tokens, info.cost_usd)

    # ------------------------------------------------------------------ request reading

    def authenticate(self, request: web.BaseRequest, policy: Policy) -> Tenant | None:
        """The tenant for the request's key: ``Authorization: Bearer <key>``, else ``x-api-key: <key>``
        (Anthropic's header); None when the policy has no tenants (no auth)."""
        if not policy.tenants:
            return None
        auth = request.headers.get("Authorization")
        if not auth:
            key = request.headers.get("x-api-key", "").strip()
            if not key:
                raise AuthenticationError("missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`")
            tenant = policy.tenant_for_key(key)
            if tenant is None:
                raise AuthenticationError("invalid API key")
            return tenant
        scheme, _, key = auth.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise AuthenticationError("malformed Authorization header: send `Authorization: Bearer <key>`")
        tenant = policy.tenant_for_key(key)
        if tenant is None:
            raise AuthenticationError("invalid API key")
        return tenant

    async def read_request(self, request: web.BaseRequest, rid: str, *, chat: bool, api: str = "chat",
                           shape: _Shape = _error) -> tuple[Tenant | None, dict[str, Any]] | web.Response:
        """The tenant and the JSON body; or the error response (in `shape`) for a request refused
        before routing, which still leaves its one ledger record."""
        tenant = None
        try:
            tenant = self.authenticate(request, self.engine.policy)
            body = await self.read_json(request)
            if chat:
                model = body.get("model")
                if model is not None and type(model) is not str:
                    raise InvalidRequest("`model` must be a string: auto, a route or a model alias", param="model")
                stream = body.get("stream")
                if stream is not None and type(stream) is not bool:
                    raise InvalidRequest("`stream` must be true or false", param="stream")
        except RequestError as e:
            self.engine.record_rejected(rid, e, tenant=tenant.name if tenant is not None else None,
                                        client_request_id=_client_request_id(request), api=api)
            return shape(e, rid, None)
        return tenant, body

    async def read_json(self, request: web.BaseRequest) -> dict[str, Any]:
        try:
            # usually the whole body came with the head; else it must keep arriving (body_timeout_s)
            raw = await request.read() if request.content.is_eof() else await self._read_slowly(request)
        except web.HTTPRequestEntityTooLarge:
            mb = self.options.max_body_bytes / (1024 * 1024)
            raise PayloadTooLarge(f"request body is larger than the {mb:g} MB limit (--max-body-mb)") from None
        if not raw:
            raise InvalidRequest("the request has no body: send a JSON object")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise InvalidRequest(f"the request body is not valid JSON: {e}", code="invalid_json") from None
        if type(body) is not dict:
            raise InvalidRequest("the request body must be a JSON object")
        return body

    async def _read_slowly(self, request: web.BaseRequest) -> bytes:
        """The body of a request still arriving: 408 once nothing came for `body_timeout_s` (the
        connection then closes, after `lingering_time`)."""
        content, limit, wait = request.content, self.options.max_body_bytes, self.options.body_timeout_s
        body = bytearray()
        while True:
            try:
                async with asyncio.timeout(wait):
                    chunk = await content.readany()
            except TimeoutError:
                raise InvalidRequest(f"the request body stopped arriving for {wait:g} s (--body-timeout-s)",
                                     code="request_timeout", status=408) from None
            if not chunk:
                return bytes(body)
            body += chunk
            if len(body) > limit:
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))

    # ------------------------------------------------------------------ chat completions

    async def chat_completions(self, request: web.BaseRequest) -> web.StreamResponse:
        rid = _request_id(request)
        engine = self.engine
        read = await self.read_request(request, rid, chat=True)
        if isinstance(read, web.Response):
            return read
        tenant, body = read
        stream = body.get("stream")
        try:
            headers = request.headers
            task = headers.get("X-Router-Task") or None
            residency = headers.get("X-Router-Residency") or None
            name = tenant.name if tenant is not None else None
            cid = _client_request_id(request)
            if stream:
                chunks = engine.stream(body, task=task, residency=residency, tenant=name, request_id=rid,
                                       client_request_id=cid, session=session_from_headers(headers),
                                       trace_context=headers, **_admission(request, tenant))
                return await self._stream(request, chunks, rid)
            result = await engine.complete(body, task=task, residency=residency, tenant=name, request_id=rid,
                                           client_request_id=cid, session=session_from_headers(headers),
                                           trace_context=headers, **_admission(request, tenant))
        except RequestError as e:
            return _failed(request, e, rid, _error)
        request[_INFO] = result.router
        return _routed_json(result, rid)

    async def _stream(self, request: web.BaseRequest, chunks: ChunkStream, rid: str,
                      out: StreamTranslator | None = None, shape: _Shape = _error) -> web.StreamResponse:
        """Write `chunks` as server-sent events, translated by `out` (chat's own by default).

        A failure before anything was sent is an ordinary HTTP error in `shape`; after that there
        is no failing over (the client has part of an answer): the API's error event ends it.
        """
        out = out or ChatStream(chunks.router)
        request[_INFO] = chunks.router
        sse = _SSE(request, chunks.router, rid, self.options.keepalive_s, out.keepalive)
        it = chunks.__aiter__()
        feed = out.feed
        try:
            try:
                chunk: dict[str, Any] | None = await it.__anext__()
            except StopAsyncIteration:
                chunk = None
            except RequestError as e:
                if sse.resp is None:  # nothing sent yet: an ordinary HTTP error
                    sse.close()
                    return shape(e, rid, _partial_headers(chunks.router))
                await sse.write(out.fail(e))
                return sse.resp  # type: ignore[return-value]
            while chunk is not None:
                data = feed(chunk)
                if data:
                    await sse.write(data)
                try:
                    chunk = await it.__anext__()
                except StopAsyncIteration:
                    break
            await sse.write(out.finish())
        except RequestError as e:
            with contextlib.suppress(ConnectionError):
                await sse.write(out.fail(e))
        except ConnectionError:
            pass  # the client left; closing the stream below aborts the upstream and meters it
        finally:
            sse.close()
            await chunks.aclose()
        return sse.resp  # type: ignore[return-value]

    # ------------------------------------------------------------------ Anthropic Messages, OpenAI Responses

    async def messages(self, request: web.BaseRequest) -> web.StreamResponse:
        """``POST /v1/messages``: Anthropic's Messages API, translated to chat for the engine."""
        rid = _request_id(request)
        read = await self._translated(request, rid, messages_api.API, _anthropic_error, messages_api.to_chat)
        if isinstance(read, web.StreamResponse):
            return read
        tenant, chat, reply = read
        message_id = "msg_" + rid.removeprefix("req_")
        try:
            if reply.stream:
                chunks = self._engine_stream(request, rid, tenant, chat, messages_api.API)
                out = messages_api.MessagesStream(reply, message_id, chunks.decision.prompt_tokens, chunks.router)
                return await self._stream(request, chunks, rid, out, _anthropic_error)
            result = await self._engine_complete(request, rid, tenant, chat, messages_api.API)
        except RequestError as e:
            return _failed(request, e, rid, _anthropic_error)
        info = result.router
        message = messages_api.from_chat(result.to_dict(), reply, message_id,
                                         (info.prompt_tokens, info.completion_tokens))
        return _routed_body(message, info, rid)

    async def count_tokens(self, request: web.BaseRequest) -> web.StreamResponse:
        """``POST /v1/messages/count_tokens``: router's own estimate; no upstream call, no ledger row."""
        rid = _request_id(request)
        try:
            self.authenticate(request, self.engine.policy)
            body = await self.read_json(request)
            counted = messages_api.count_tokens(body)
        except RequestError as e:
            return _anthropic_error(e, rid)
        return web.Response(body=orjson.dumps(counted), headers={"Content-Type": _JSON, "x-request-id": rid})

    async def responses(self, request: web.BaseRequest) -> web.StreamResponse:
        """``POST /v1/responses``: OpenAI's Responses API (stateless), translated to chat for the engine."""
        rid = _request_id(request)
        read = await self._translated(request, rid, responses_api.API, _responses_error, responses_api.to_chat)
        if isinstance(read, web.StreamResponse):
            return read
        tenant, chat, reply = read
        response_id = "resp_" + rid.removeprefix("req_")
        created = int(time.time())
        try:
            if reply.stream:
                chunks = self._engine_stream(request, rid, tenant, chat, responses_api.API)
                out = responses_api.ResponsesStream(reply, response_id, created, chunks.decision.prompt_tokens,
                                                    chunks.router)
                return await self._stream(request, chunks, rid, out, _responses_error)
            result = await self._engine_complete(request, rid, tenant, chat, responses_api.API)
        except RequestError as e:
            return _failed(request, e, rid, _responses_error)
        info = result.router
        response = responses_api.from_chat(result.to_dict(), reply, response_id, created,
                                           (info.prompt_tokens, info.completion_tokens))
        return _routed_body(response, info, rid)

    async def _translated(self, request: web.BaseRequest, rid: str, api: str, shape: _Shape,
                          to_chat: Callable[[dict[str, Any]], tuple[dict[str, Any], Any]]
                          ) -> tuple[Tenant | None, dict[str, Any], Any] | web.StreamResponse:
        """Authenticate, read and translate a request of another API; a refusal is metered once."""
        read = await self.read_request(request, rid, chat=False, api=api, shape=shape)
        if isinstance(read, web.StreamResponse):
            return read
        tenant, body = read
        try:
            chat, reply = to_chat(body)
        except RequestError as e:
            self.engine.record_rejected(rid, e, tenant=tenant.name if tenant is not None else None,
                                        client_request_id=_client_request_id(request), api=api)
            return shape(e, rid, None)
        return tenant, chat, reply

    def _engine_stream(self, request: web.BaseRequest, rid: str, tenant: Tenant | None, chat: dict[str, Any],
                       api: str) -> ChunkStream:
        headers = request.headers
        return self.engine.stream(chat, task=headers.get("X-Router-Task") or None,
                                  residency=headers.get("X-Router-Residency") or None,
                                  tenant=tenant.name if tenant is not None else None, request_id=rid,
                                  client_request_id=_client_request_id(request), api=api,
                                  session=session_from_headers(headers), trace_context=headers,
                                  **_admission(request, tenant))

    async def _engine_complete(self, request: web.BaseRequest, rid: str, tenant: Tenant | None,
                               chat: dict[str, Any], api: str) -> ChatCompletion:
        headers = request.headers
        result = await self.engine.complete(chat, task=headers.get("X-Router-Task") or None,
                                            residency=headers.get("X-Router-Residency") or None,
                                            tenant=tenant.name if tenant is not None else None, request_id=rid,
                                            client_request_id=_client_request_id(request), api=api,
                                            session=session_from_headers(headers), trace_context=headers,
                                            **_admission(request, tenant))
        request[_INFO] = result.router
        return result

    # ------------------------------------------------------------------ embeddings

    async def embeddings(self, request: web.BaseRequest) -> web.StreamResponse:
        """Embeddings by model alias: no classification; retries, residency, budgets and metering as for chat."""
        rid = _request_id(request)
        engine = self.engine
        read = await self.read_request(request, rid, chat=False)
        if isinstance(read, web.Response):
            return read
        tenant, body = read
        try:
            key_id = _admission(request, tenant).get("key_id")
            result = await engine.embed(body, residency=request.headers.get("X-Router-Residency") or None,
                                        tenant=tenant.name if tenant is not None else None, request_id=rid,
                                        client_request_id=_client_request_id(request), key_id=key_id,
                                        trace_context=request.headers)
        except RequestError as e:
            return _failed(request, e, rid, _error)
        request[_INFO] = result.router
        return _routed_json(result, rid)

    # ------------------------------------------------------------------ models, health, metrics

    def _model_list(self, policy: Policy) -> list[dict[str, Any]]:
        cached = self._models_cache
        if cached is not None and cached[0] is policy:
            return cached[1]
        data = [{"id": "auto", "object": "model", "created": 0, "owned_by": "router", "router_kind": "auto"}]
        data += [{"id": name, "object": "model", "created": 0, "owned_by": "router", "router_kind": "route"}
                 for name in policy.routes]
        data += [{"id": alias, "object": "model", "created": 0, "owned_by": m.provider, "router_kind": "model"}
                 for alias, m in policy.models.items() if alias not in policy.routes]
        self._models_cache = (policy, data)
        return data

    async def models(self, request: web.BaseRequest) -> web.StreamResponse:
        rid = _request_id(request)
        policy = self.engine.policy
        try:
            tenant = self.authenticate(request, policy)
        except RequestError as e:
            return _error(e, rid)
        data = self._model_list(policy)
        if tenant is not None and tenant.routes is not None:
            allowed = set(tenant.routes)
            data = [m for m in data if m["id"] == "auto" or m["id"] in allowed]
        return web.Response(body=orjson.dumps({"object": "list", "data": data}),
                            headers={"Content-Type": _JSON, "x-request-id": rid})

    async def model(self, request: web.BaseRequest) -> web.StreamResponse:
        """``GET /v1/models/{id}``: auto, a route, an alias, or a name the policy's client_models maps."""
        rid = _request_id(request)
        policy = self.engine.policy
        try:
            tenant = self.authenticate(request, policy)
        except RequestError as e:
            return _error(e, rid)
        name = request.path.split("/models/", 1)[1]
        found = next((m for m in self._model_list(policy) if m["id"] == name), None)
        if found is None and name:
            target = policy.client_model(name)
            if target is not None:
                found = {"id": name, "object": "model", "created": 0, "owned_by": "router",
                         "router_kind": "client_model", "router_target": target}
        allowed = tenant is None or tenant.routes is None or name == "auto" or (
            (found or {}).get("router_target", name) in tenant.routes)
        if found is None or not allowed:
            names = ", ".join(m["id"] for m in self._model_list(policy))
            return _error(NotFound(f"unknown model '{name}': use one of {names}", param="model"), rid)
        return web.Response(body=orjson.dumps(found), headers={"Content-Type": _JSON, "x-request-id": rid})

    async def root(self, request: web.BaseRequest) -> web.StreamResponse:
        """``HEAD /`` and ``GET /`` (and Claude Code's ``HEAD /api/hello``): 200 with the service name."""
        return web.Response(body=_SERVICE, headers={"Content-Type": "text/plain; charset=utf-8"})

    async def healthz(self, request: web.BaseRequest) -> web.StreamResponse:
        pid = str(os.getpid())  # which worker answered: handy with --workers
        return web.Response(body=b'{"status":"ok"}', headers={"Content-Type": _JSON, "x-router-worker": pid})

    async def readyz(self, request: web.BaseRequest) -> web.StreamResponse:
        policy = self.engine.policy
        if self.draining:
            body: dict[str, Any] = {"status": "draining"}
            return web.Response(status=503, body=orjson.dumps(body), content_type=_JSON)
        state = self.engine.state() if self.engine.state is not None else None
        usable = usable_providers(policy, state.circuit_open if state is not None else frozenset())
        body = {"status": "ready" if usable else "no usable provider", "policy": policy.source,
                "digest": policy.digest, "providers": usable}
        return web.Response(status=200 if usable else 503, body=orjson.dumps(body), content_type=_JSON)

    async def status_page(self, request: web.BaseRequest) -> web.StreamResponse:
        """``GET /status``: this worker's state as HTML (router.server.status); the same access as /metrics."""
        if self.status is None:
            return _error(NotFound("the status page is not enabled", code="unknown_url"), _request_id(request))
        return web.Response(body=await self.status.ahtml(), headers={"Content-Type": "text/html; charset=utf-8",
                                                              "Cache-Control": "no-store"})

    async def status_json(self, request: web.BaseRequest) -> web.StreamResponse:
        """``GET /status.json``: the status page's data."""
        if self.status is None:
            return _error(NotFound("the status page is not enabled", code="unknown_url"), _request_id(request))
        return web.Response(body=orjson.dumps(await self.status.asnapshot()),
                            headers={"Content-Type": _JSON, "Cache-Control": "no-store"})

    async def metrics_endpoint(self, request: web.BaseRequest) -> web.StreamResponse:
        if self.metrics is None:
            return _error(NotFound("metrics are not enabled", code="unknown_url"), _request_id(request))
        body, content_type = self.metrics()
        return web.Response(body=body, headers={"Content-Type": content_type})

