"""The OpenAI-compatible HTTP proxy: a thin aiohttp shell over `Engine`.

Every routing decision, retry, fallback and meter record happens in the engine, exactly as in
the library; this module only maps HTTP to engine calls and engine results (and `RequestError`)
back to HTTP. Process concerns (workers, signals, reload) live in `router.server.serve`.

>>> engine = Engine(load_policy("policy.yaml"), AiohttpTransport())   # doctest: +SKIP
>>> proxy = Proxy(engine)                                              # doctest: +SKIP
>>> runner = web.ServerRunner(proxy.server())                          # doctest: +SKIP

Endpoints: ``POST /v1/chat/completions`` (JSON and SSE), ``POST /v1/embeddings``,
``GET /v1/models``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``. See docs/proxy.md.

The hot path is deliberately plain: one low-level ``web.Server`` with a dict dispatch (no
router, no middleware), the body read once and parsed with orjson, no per-request logging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from router.core.errors import (
    AuthenticationError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RequestError,
    UpstreamFailed,
)
from router.core.policy import Policy, Tenant
from router.core.response import ChatCompletion, Embeddings, RouterInfo
from router.engine.engine import ChunkStream, Engine, new_request_id

__all__ = ["Proxy", "ProxyOptions", "usable_providers"]

log = logging.getLogger("router.server.proxy")

_JSON = "application/json"
_DONE = b"data: [DONE]\n\n"
_KEEPALIVE = b": keep-alive\n\n"
_KEYLESS_KINDS = frozenset({"vllm", "litellm"})  # may run without an API key
_MAX_REQUEST_ID = 200


@dataclass(frozen=True, slots=True)
class ProxyOptions:
    """HTTP-level knobs; routing knobs live in the policy."""

    max_body_bytes: int = 10 * 1024 * 1024   # larger bodies get a 413
    keepalive_s: float = 10.0                # SSE comment after this long without a byte to the client


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
    if headers:
        h.update(headers)
    return web.Response(status=err.status, body=orjson.dumps(err.to_openai()), headers=h)


def _routed_headers(info: RouterInfo, rid: str, content_type: str) -> dict[str, str]:
    h = {"Content-Type": content_type, "x-request-id": rid, "x-router-task": info.task,
         "x-router-route": info.route, "x-router-attempts": str(len(info.attempts))}
    if info.model is not None:
        h["x-router-model"] = info.model
    if info.provider is not None:
        h["x-router-provider"] = info.provider
    return h


def _routed_json(result: ChatCompletion | Embeddings, rid: str) -> web.Response:
    """A routed JSON answer with its router headers, cost included."""
    info = result.router
    h = _routed_headers(info, rid, _JSON)
    h["x-router-cost-usd"] = f"{info.cost_usd:.10f}"
    return web.Response(body=orjson.dumps(result.to_dict()), headers=h)


def _partial_headers(info: RouterInfo) -> dict[str, str]:
    """What is known about a request that failed: enough to find it in the ledger."""
    h = {"x-router-attempts": str(len(info.attempts))}
    if info.task:
        h["x-router-task"] = info.task
    if info.route:
        h["x-router-route"] = info.route
    return h


def _request_id(request: web.BaseRequest) -> str:
    rid = request.headers.get("X-Request-Id")
    if rid and len(rid) <= _MAX_REQUEST_ID and rid.isprintable():
        return rid
    return new_request_id()


class _SSE:
    """One SSE response, prepared lazily: on the first chunk, or on the first keep-alive tick.

    Preparing late keeps failover before the first chunk invisible (and lets the headers name
    the model that answered). While nothing is written for `interval` seconds, a timer writes an
    SSE comment, so proxies and clients do not time out on a slow first token.
    """

    __slots__ = ("_pending", "_timer", "info", "interval", "last", "loop", "request", "resp", "rid")

    def __init__(self, request: web.BaseRequest, info: RouterInfo, rid: str, interval: float):
        self.request, self.info, self.rid, self.interval = request, info, rid, interval
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
                self._pending = self.loop.create_task(self._keepalive())
            due = now + self.interval
        self._timer = self.loop.call_later(due - now, self._tick)

    async def _keepalive(self) -> None:
        try:
            if self.resp is None:
                await self._prepare()
            await self.resp.write(_KEEPALIVE)  # type: ignore[union-attr]
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
                 metrics: Callable[[], tuple[bytes, str]] | None = None):
        self.engine = engine
        self.options = options
        self.metrics = metrics
        self.draining = False
        self._models_cache: tuple[Policy, list[dict[str, Any]]] | None = None
        self._routes: dict[tuple[str, str], Callable[[web.BaseRequest], Any]] = {
            ("POST", "/v1/chat/completions"): self.chat_completions,
            ("POST", "/chat/completions"): self.chat_completions,
            ("POST", "/v1/embeddings"): self.embeddings,
            ("POST", "/embeddings"): self.embeddings,
            ("GET", "/v1/models"): self.models,
            ("GET", "/models"): self.models,
            ("GET", "/healthz"): self.healthz,
            ("GET", "/readyz"): self.readyz,
            ("GET", "/metrics"): self.metrics_endpoint,
        }

    # ------------------------------------------------------------------ server plumbing

    def server(self, **kwargs: Any) -> web.Server:
        """A low-level aiohttp server for this proxy (handlers are cancelled when clients leave)."""
        limit = self.options.max_body_bytes
        loop = asyncio.get_running_loop()

        def request_factory(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
            return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=limit)

        return web.Server(self.dispatch, request_factory=request_factory, handler_cancellation=True,
                          access_log=None, **kwargs)

    async def dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            rid = _request_id(request)
            if any(path == request.path for _, path in self._routes):
                err: RequestError = InvalidRequest(f"method {request.method} not allowed on {request.path}",
                                                   code="method_not_allowed", status=405)
            else:
                err = NotFound(f"no endpoint {request.path}", code="unknown_url")
            return _error(err, rid)
        try:
            return await handler(request)
        except RequestError as e:
            return _error(e, _request_id(request))
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return _error(Internal("internal error in router; see the proxy's log"), _request_id(request))

    # ------------------------------------------------------------------ request reading

    def authenticate(self, request: web.BaseRequest, policy: Policy) -> Tenant | None:
        """The tenant for the request's bearer key; None when the policy has no tenants (no auth)."""
        if not policy.tenants:
            return None
        auth = request.headers.get("Authorization")
        if not auth:
            raise AuthenticationError("missing API key: send `Authorization: Bearer <key>`")
        scheme, _, key = auth.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise AuthenticationError("malformed Authorization header: send `Authorization: Bearer <key>`")
        tenant = policy.tenant_for_key(key)
        if tenant is None:
            raise AuthenticationError("invalid API key")
        return tenant

    async def read_request(self, request: web.BaseRequest, rid: str, *, chat: bool
                           ) -> tuple[Tenant | None, dict[str, Any]] | web.Response:
        """The tenant and the JSON body; or the error response for a request refused before routing,
        which still leaves its one ledger record."""
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
            self.engine.record_rejected(rid, e, tenant=tenant.name if tenant is not None else None)
            return _error(e, rid)
        return tenant, body

    async def read_json(self, request: web.BaseRequest) -> dict[str, Any]:
        try:
            raw = await request.read()
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
            if stream:
                chunks = engine.stream(body, task=task, residency=residency, tenant=name, request_id=rid)
                return await self._stream(request, chunks, rid)
            result = await engine.complete(body, task=task, residency=residency, tenant=name, request_id=rid)
        except UpstreamFailed as e:
            return _error(e, rid, {"x-router-attempts": str(len(e.attempts))})
        except RequestError as e:
            return _error(e, rid)
        return _routed_json(result, rid)

    async def _stream(self, request: web.BaseRequest, chunks: ChunkStream, rid: str) -> web.StreamResponse:
        sse = _SSE(request, chunks.router, rid, self.options.keepalive_s)
        it = chunks.__aiter__()
        dumps = orjson.dumps
        try:
            try:
                chunk: dict[str, Any] | None = await it.__anext__()
            except StopAsyncIteration:
                chunk = None
            except RequestError as e:
                if sse.resp is None:  # nothing sent yet: an ordinary HTTP error
                    sse.close()
                    return _error(e, rid, _partial_headers(chunks.router))
                await sse.write(b"data: " + dumps(e.to_openai()) + b"\n\n")
                return sse.resp  # type: ignore[return-value]
            while chunk is not None:
                await sse.write(b"data: " + dumps(chunk) + b"\n\n")
                try:
                    chunk = await it.__anext__()
                except StopAsyncIteration:
                    break
            await sse.write(_DONE)
        except RequestError as e:
            # After the first chunk there is no failing over (the client has part of an answer):
            # an OpenAI-style error event, then the stream ends without [DONE].
            with contextlib.suppress(ConnectionError):
                await sse.write(b"data: " + dumps(e.to_openai()) + b"\n\n")
        except ConnectionError:
            pass  # the client left; closing the stream below aborts the upstream and meters it
        finally:
            sse.close()
            await chunks.aclose()
        return sse.resp  # type: ignore[return-value]

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
            result = await engine.embed(body, residency=request.headers.get("X-Router-Residency") or None,
                                        tenant=tenant.name if tenant is not None else None, request_id=rid)
        except UpstreamFailed as e:
            return _error(e, rid, {"x-router-attempts": str(len(e.attempts))})
        except RequestError as e:
            return _error(e, rid)
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

    async def metrics_endpoint(self, request: web.BaseRequest) -> web.StreamResponse:
        if self.metrics is None:
            return _error(NotFound("metrics are not enabled", code="unknown_url"), _request_id(request))
        body, content_type = self.metrics()
        return web.Response(body=body, headers={"Content-Type": content_type})


def _upstream_message(raw: bytes) -> str:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:200].decode("utf-8", "replace")
    err = data.get("error") if isinstance(data, Mapping) else None
    msg = err.get("message") if isinstance(err, Mapping) else err
    return str(msg)[:500] if msg else "no message"
