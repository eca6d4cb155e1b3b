"""HTTP transports for the hot path. A transport is one method: `send(call) -> UpstreamResponse`.

aiohttp is imported here and nowhere else in the data path; its exceptions are mapped to
`UpstreamConnectError`, `UpstreamTimeout` and `UpstreamProtocolError` at this boundary, so the
engine never sees a third-party exception type.
"""

from __future__ import annotations

import abc
import asyncio
import os
import weakref
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from .translate import UpstreamCall

__all__ = [
    "AiohttpTransport",
    "ProviderTransport",
    "Transport",
    "TransportError",
    "UpstreamConnectError",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeout",
]


class TransportError(Exception):
    outcome = "transport_error"


class UpstreamConnectError(TransportError):
    outcome = "connect_error"


class UpstreamTimeout(TransportError):
    outcome = "timeout"


class UpstreamProtocolError(TransportError):
    """The upstream closed the connection early or sent something that is not HTTP/JSON/SSE."""

    outcome = "protocol_error"


class UpstreamResponse(abc.ABC):
    status: int
    headers: Mapping[str, str]

    @abc.abstractmethod
    async def read(self) -> bytes: ...

    @abc.abstractmethod
    def sse_data(self) -> AsyncIterator[bytes]:
        """The payload of each ``data:`` line of a server-sent event stream, in order."""

    @abc.abstractmethod
    def close(self) -> None:
        """Abort the exchange (closes the connection, which cancels the upstream's work)."""

    @abc.abstractmethod
    def release(self) -> None:
        """Return a fully read connection to the pool."""


class Transport(abc.ABC):
    @abc.abstractmethod
    async def send(self, call: UpstreamCall, *, connect_s: float, read_s: float | None,
                   total_s: float | None) -> UpstreamResponse:
        """Send `call`; return once the status line and headers arrived."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        pass


def _map(exc: BaseException) -> TransportError:
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamTimeout("upstream timed out")
    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ClientOSError)) and not isinstance(
            exc, aiohttp.ServerDisconnectedError):
        return UpstreamConnectError(f"cannot connect: {type(exc).__name__}")
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
        return UpstreamProtocolError("upstream closed the connection early")
    return UpstreamProtocolError(f"upstream protocol error: {type(exc).__name__}")


_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


class _AiohttpResponse(UpstreamResponse):
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse):
        self._resp = resp
        self.status = resp.status
        self.headers = resp.headers

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except _ERRORS as e:
            raise _map(e) from None

    async def sse_data(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        try:
            while True:
                line = await content.readline()
                if not line:
                    return
                if line.startswith(b"data:"):
                    yield line[5:].strip()
        except _ERRORS as e:
            raise _map(e) from None

    def close(self) -> None:
        self._resp.close()

    def release(self) -> None:
        self._resp.release()


class AiohttpTransport(Transport):
    """Pooled aiohttp transport; one session (and connection pool) per event loop."""

    def __init__(self, *, limit: int = 1000, keepalive_s: float = 30.0):
        self._limit = limit
        self._keepalive_s = keepalive_s
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
            weakref.WeakKeyDictionary())

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=0, ttl_dns_cache=300,
                                             keepalive_timeout=self._keepalive_s)
            session = aiohttp.ClientSession(connector=connector, json_serialize=lambda o: orjson.dumps(o).decode(),
                                            auto_decompress=True, trust_env=False)
            self._sessions[loop] = session
        return session

    async def send(self, call: UpstreamCall, *, connect_s: float, read_s: float | None,
                   total_s: float | None) -> UpstreamResponse:
        timeout = aiohttp.ClientTimeout(total=total_s, sock_connect=connect_s, sock_read=read_s)
        try:
            resp = await self._session().post(call.url, data=orjson.dumps(call.payload), headers=call.headers,
                                              timeout=timeout, allow_redirects=False)
        except _ERRORS as e:
            raise _map(e) from None
        return _AiohttpResponse(resp)

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        session = self._sessions.pop(loop, None)
        if session is not None:
            await session.close()

    def sessions(self) -> list[Any]:
        return list(self._sessions.values())


class ProviderTransport(Transport):
    """The default transport: picks a client per call.

    - ``kind: litellm`` providers: litellm, imported on first use.
    - ``https://`` upstreams (public APIs): aiohttp's client: TLS, proxies and the long tail of
      HTTP behaviour, where the network round trip dwarfs the client's own cost anyway.
    - ``http://`` upstreams (self-hosted vLLM inside your network, loopback sidecars): the lean
      HTTP/1.1 client in `router.http1`, which costs about half of aiohttp's per call
      (benchmarks/README.md). ``ROUTER_HTTP_CLIENT=aiohttp`` uses aiohttp for these too.

    Pass `http` / `https` to choose explicitly.
    """

    def __init__(self, http: Transport | None = None, https: Transport | None = None):
        self.https = https or AiohttpTransport()
        if http is None:
            if os.environ.get("ROUTER_HTTP_CLIENT", "").lower() == "aiohttp":
                http = self.https
            else:
                from .http1 import Http1Transport

                http = Http1Transport()
        self.http = http
        self._litellm: Transport | None = None

    async def send(self, call: UpstreamCall, *, connect_s: float, read_s: float | None,
                   total_s: float | None) -> UpstreamResponse:
        if call.kind == "litellm":
            if self._litellm is None:
                from .litellm_transport import LitellmTransport

                self._litellm = LitellmTransport()
            return await self._litellm.send(call, connect_s=connect_s, read_s=read_s, total_s=total_s)
        client = self.https if call.url.startswith("https:") else self.http
        return await client.send(call, connect_s=connect_s, read_s=read_s, total_s=total_s)

    async def aclose(self) -> None:
        await self.http.aclose()
        if self.https is not self.http:
            await self.https.aclose()
