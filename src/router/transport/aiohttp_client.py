"""`AiohttpTransport`: pooled aiohttp client, for ``https://`` upstreams (public APIs).

aiohttp is imported here and nowhere else in the data path; its exceptions are mapped to
`UpstreamConnectError`, `UpstreamTimeout` and `UpstreamProtocolError` at this boundary.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from router.core.sse import SSEDecoder, SSEEventTooLarge
from router.core.translate import UpstreamCall
from router.transport.base import (
    Transport,
    TransportError,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
)

__all__ = ["AiohttpTransport"]

MAX_BODY = 128 * 1024 * 1024   # bytes of one non-streamed answer (the lean client's limit too)


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
        content = self._resp.content
        parts: list[bytes] = []
        size = 0
        try:   # read() has no limit: a runaway (or decompression-bomb) body would take all memory
            while chunk := await content.readany():
                size += len(chunk)
                if size > MAX_BODY:
                    self._resp.close()
                    raise UpstreamProtocolError(f"upstream protocol error: response body larger than {MAX_BODY} bytes")
                parts.append(chunk)
        except _ERRORS as e:
            raise _map(e) from None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def sse_data(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        decoder = SSEDecoder()
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                for data in decoder.feed(chunk):
                    yield data
        except _ERRORS as e:
            raise _map(e) from None
        except SSEEventTooLarge as e:
            raise UpstreamProtocolError(f"upstream protocol error: {e}") from None
        for data in decoder.close():
            yield data

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
