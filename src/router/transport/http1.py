"""A lean HTTP/1.1 keep-alive client on raw asyncio protocols: the default hot-path transport.

`Http1Transport` implements `Transport.send(call) -> UpstreamResponse` with nothing but asyncio:
one connection pool per (event loop, scheme, host, port), requests written in one call,
responses parsed in ``data_received`` (Content-Length, chunked, or read-until-close bodies;
gzip/deflate decoded), server-sent events decoded as bytes arrive (`router.core.sse`), TLS through
``loop.create_connection(ssl=...)``. Errors become `UpstreamConnectError` (could not connect),
`UpstreamTimeout` (connect, total or read timeout) and `UpstreamProtocolError` (the upstream
closed early or sent something that is not HTTP/1.x) at this boundary.

What it leaves out, on purpose: redirects (never followed on the data path), proxies from the
environment, cookies, request pipelining, HTTP/2. `AiohttpTransport` (router.transport.aiohttp_client) remains
available for anything this does not cover:
``Router(policy, transport=ProviderTransport(AiohttpTransport()))``.

>>> transport = Http1Transport()                                          # doctest: +SKIP
>>> resp = await transport.send(call, connect_s=5, read_s=None, total_s=60)  # doctest: +SKIP
>>> data = await resp.read(); resp.release()                              # doctest: +SKIP

Invariants: a connection is owned by at most one response at a time; it goes back to the pool
only when its response was read to the end, the upstream did not ask to close, and nothing
failed; any error, timeout or cancel aborts the connection (which also cancels the upstream's
work).
"""

from __future__ import annotations

import asyncio
import collections
import ssl as _ssl
import weakref
import zlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import orjson

from router.core.sse import SSEDecoder
from router.transport.base import (
    Transport,
    TransportError,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
)

__all__ = ["Http1Transport"]

_MAX_HEAD = 64 * 1024           # status line + headers
_MAX_CHUNK_LINE = 4096
_DRAIN_S = 5.0                  # how long a released-early response may take to finish before we give up on it
_UA = "router"

# body modes
_NONE, _LENGTH, _CHUNKED, _CLOSE = 0, 1, 2, 3
# chunked sub-states
_C_SIZE, _C_DATA, _C_CRLF, _C_TRAILER = 0, 1, 2, 3


class _Headers(dict):  # type: ignore[type-arg]
    """Response headers: lower-cased names, case-insensitive lookups."""

    __slots__ = ()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return dict.get(self, key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.lower())


def _closed_early() -> UpstreamProtocolError:
    return UpstreamProtocolError("upstream closed the connection early")


class _Conn(asyncio.Protocol):
    """One connection and the response being read on it (parser state lives here)."""

    __slots__ = ("_buf", "_c_left", "_c_state", "_counted", "_decoder", "_drain_timer", "_left", "_mode", "_pool",
                 "_waiter", "body", "closed", "eof", "error", "head_done", "headers", "keep_alive", "loop",
                 "releasing", "status", "transport")

    def __init__(self, pool: _Pool):
        self._pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.error: TransportError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self.releasing = False
        self._counted = True       # in the pool's count of open connections until _gone()
        self._reset()

    def _reset(self) -> None:
        self._buf = b""
        self.head_done = False
        self.status = 0
        self.headers: _Headers = _Headers()
        self.keep_alive = True
        self._mode = _NONE
        self._left = 0
        self._c_state = _C_SIZE
        self._c_left = 0
        self._decoder: Any = None
        self.body: list[bytes] = []
        self.eof = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        try:
            if not self.head_done:
                data = self._parse_head(data)
                if not self.head_done:
                    self._buf = data
                    return
            if data:
                self._parse_body(data)
        except TransportError as e:
            self._fail(e)
            return
        if self.eof and self.releasing:
            self._finish_release()
            return
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head_done and self._mode == _CLOSE and not self.eof and self.error is None:
            self.keep_alive = False
            try:
                self._end_body()  # a read-until-close body ends here
            except TransportError as e:
                self.error = e
        elif self.error is None and not self.eof:
            self.error = _closed_early()
        self._gone()
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- parsing
    def _parse_head(self, data: bytes) -> bytes:
        while True:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > _MAX_HEAD:
                    raise UpstreamProtocolError("upstream protocol error: response head too large")
                return data
            lines = data[:end].split(b"\r\n")
            data = data[end + 4:]
            first = lines[0]
            if first[:7] != b"HTTP/1." or len(first) < 12:
                raise UpstreamProtocolError("upstream protocol error: not an HTTP/1.x response")
            try:
                status = int(first[9:12])
            except ValueError:
                raise UpstreamProtocolError("upstream protocol error: bad status line") from None
            if 100 <= status < 200:
                continue  # 100 Continue, 103 Early Hints: the real answer follows
            headers = self.headers
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                if not sep:
                    raise UpstreamProtocolError("upstream protocol error: bad header line")
                key = name.strip().lower().decode("latin-1")
                val = value.strip().decode("latin-1")
                prev = dict.get(headers, key)
                dict.__setitem__(headers, key, val if prev is None else prev + ", " + val)
            self.status = status
            self.head_done = True
            conn_hdr = dict.get(headers, "connection", "").lower()
            if first[7:8] == b"0":
                self.keep_alive = "keep-alive" in conn_hdr
            elif "close" in conn_hdr:
                self.keep_alive = False
            encoding = dict.get(headers, "content-encoding")
            if encoding:
                encoding = encoding.strip().lower()
                if encoding in ("gzip", "x-gzip"):
                    self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
                elif encoding == "deflate":
                    self._decoder = zlib.decompressobj()
                elif encoding != "identity":
                    raise UpstreamProtocolError(f"upstream protocol error: unsupported content-encoding {encoding}")
            te = dict.get(headers, "transfer-encoding")
            if status in (204, 304):
                self._mode = _NONE
                self.eof = True
            elif te is not None and "chunked" in te.lower():
                self._mode = _CHUNKED
            elif (cl := dict.get(headers, "content-length")) is not None:
                try:
                    n = int(cl)
                    if n < 0:
                        raise ValueError
                except ValueError:
                    raise UpstreamProtocolError("upstream protocol error: bad content-length") from None
                if n == 0:
                    self._mode = _NONE
                    self._end_body()
                else:
                    self._mode, self._left = _LENGTH, n
            else:
                self._mode = _CLOSE
                self.keep_alive = False
            return data

    def _add(self, data: bytes) -> None:
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error:
                raise UpstreamProtocolError("upstream protocol error: bad compressed body") from None
            if not data:
                return
        self.body.append(data)

    def _end_body(self) -> None:
        if self._decoder is not None:
            try:
                rest = self._decoder.flush()
            except zlib.error:
                raise UpstreamProtocolError("upstream protocol error: bad compressed body") from None
            if rest:
                self.body.append(rest)
        self.eof = True

    def _parse_body(self, data: bytes) -> None:
        mode = self._mode
        if mode == _LENGTH:
            n = len(data)
            if n < self._left:
                self._left -= n
                self._add(data)
                return
            if n > self._left:  # bytes past the announced body: do not trust this connection again
                self.keep_alive = False
                data = data[:self._left]
            self._left = 0
            self._add(data)
            self._end_body()
        elif mode == _CHUNKED:
            self._parse_chunked(data)
        elif mode == _CLOSE:
            self._add(data)
        elif data:  # a body where none was announced
            self.keep_alive = False

    def _parse_chunked(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n:
            state = self._c_state
            if state == _C_DATA:
                take = min(self._c_left, n - pos)
                self._add(data[pos:pos + take])
                pos += take
                self._c_left -= take
                if self._c_left == 0:
                    self._c_state = _C_CRLF
            elif state == _C_CRLF:
                if n - pos < 2:
                    self._buf = data[pos:]
                    return
                if data[pos:pos + 2] != b"\r\n":
                    raise UpstreamProtocolError("upstream protocol error: bad chunk terminator")
                pos += 2
                self._c_state = _C_SIZE
            else:  # _C_SIZE or _C_TRAILER: line based
                end = data.find(b"\r\n", pos)
                if end < 0:
                    if n - pos > _MAX_CHUNK_LINE:
                        raise UpstreamProtocolError("upstream protocol error: chunk line too long")
                    self._buf = data[pos:]
                    return
                line = data[pos:end]
                pos = end + 2
                if state == _C_TRAILER:
                    if not line:
                        self._end_body()
                        if pos < n:
                            self.keep_alive = False
                        return
                    continue
                try:
                    size = int(line.split(b";", 1)[0], 16)
                    if size < 0:
                        raise ValueError
                except ValueError:
                    raise UpstreamProtocolError("upstream protocol error: bad chunk size") from None
                if size == 0:
                    self._c_state = _C_TRAILER
                else:
                    self._c_state, self._c_left = _C_DATA, size

    # -- control
    def _fail(self, err: TransportError) -> None:
        if self.error is None:
            self.error = err
        self.abort()
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
        self._gone()

    def _gone(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        if self._counted:
            self._counted = False
            self._pool.lost(self)

    async def wait(self, deadline: float | None, read_s: float | None) -> None:
        """Wait for the parser to make progress; raise on error or timeout."""
        if self.error is not None:
            raise self.error
        loop = self.loop
        timeout = read_s
        if deadline is not None:
            left = deadline - loop.time()
            timeout = left if timeout is None or left < timeout else timeout
        fut = loop.create_future()
        self._waiter = fut
        timer = loop.call_later(max(timeout, 0.0), self._timed_out) if timeout is not None else None
        try:
            await fut
        except BaseException:  # cancelled: the exchange is in an unknown state
            self.abort()
            raise
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        if self.error is not None:
            raise self.error

    def _timed_out(self) -> None:
        self._fail(UpstreamTimeout("upstream timed out"))

    def take_body(self) -> bytes:
        body = self.body
        if not body:
            return b""
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        return data

    def release(self) -> None:
        """Back to the pool once the response is read to its end; else drop the connection."""
        if self.closed or self.error is not None or not self.keep_alive:
            self.abort()
        elif self.eof:
            self._pool.put(self)
        elif self._mode in (_LENGTH, _CHUNKED):  # the rest (e.g. a chunked terminator) is probably in flight
            self.releasing = True
            self.body.clear()
            self._drain_timer = self.loop.call_later(_DRAIN_S, self.abort)
        else:
            self.abort()

    def _finish_release(self) -> None:
        self.releasing = False
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        if self.keep_alive and self.error is None and not self.closed:
            self._pool.put(self)
        else:
            self.abort()


class _Pool:
    """Connections to one (scheme, host, port) on one event loop: idle ones LIFO, a cap on open ones."""

    __slots__ = ("count", "host", "idle", "keepalive_s", "limit", "loop", "port", "server_hostname", "ssl",
                 "waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int, ssl: _ssl.SSLContext | None,
                 limit: int, keepalive_s: float):
        self.loop, self.host, self.port, self.ssl = loop, host, port, ssl
        self.server_hostname = host if ssl is not None else None
        self.limit, self.keepalive_s = limit, keepalive_s
        self.idle: collections.deque[tuple[_Conn, float]] = collections.deque()
        self.count = 0                 # open connections, idle or busy
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self, connect_s: float) -> _Conn:
        idle = self.idle
        if idle:
            now = self.loop.time()
            while idle:
                conn, since = idle.pop()
                if not conn.closed and now - since < self.keepalive_s:
                    conn._reset()
                    return conn
                conn.abort()
        while self.count >= self.limit:
            fut = self.loop.create_future()
            self.waiters.append(fut)
            try:
                await fut
            finally:
                if fut in self.waiters:
                    self.waiters.remove(fut)
            if idle:
                conn, _ = idle.pop()
                if not conn.closed:
                    conn._reset()
                    return conn
        self.count += 1
        conn = _Conn(self)
        try:
            await asyncio.wait_for(self.loop.create_connection(
                lambda: conn, self.host, self.port, ssl=self.ssl, server_hostname=self.server_hostname),
                timeout=connect_s)
        except BaseException as e:
            conn.abort()
            if isinstance(e, asyncio.TimeoutError):
                raise UpstreamTimeout("upstream timed out") from None
            if isinstance(e, OSError):
                raise UpstreamConnectError(f"cannot connect: {type(e).__name__}") from None
            raise
        return conn

    def put(self, conn: _Conn) -> None:
        self.idle.append((conn, self.loop.time()))
        self._wake()

    def lost(self, conn: _Conn) -> None:
        """`conn` closed (idle or busy): it no longer counts."""
        self.count -= 1
        if self.idle:
            for i, (c, _) in enumerate(self.idle):
                if c is conn:
                    del self.idle[i]
                    break
        self._wake()

    def _wake(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def close(self) -> None:
        while self.idle:
            conn, _ = self.idle.pop()
            conn.abort()


class _Http1Response(UpstreamResponse):
    __slots__ = ("_conn", "_deadline", "_done", "_read_s", "headers", "status")

    def __init__(self, conn: _Conn, deadline: float | None, read_s: float | None):
        self._conn, self._deadline, self._read_s = conn, deadline, read_s
        self._done = False   # released or closed: the connection belongs to someone else now
        self.status = conn.status
        self.headers = conn.headers

    async def read(self) -> bytes:
        conn = self._conn
        while not conn.eof:
            await conn.wait(self._deadline, self._read_s)
        return conn.take_body()

    async def sse_data(self) -> AsyncIterator[bytes]:
        conn = self._conn
        decoder = SSEDecoder()
        while True:
            data = conn.take_body()
            if data:
                for event in decoder.feed(data):
                    yield event
            elif conn.eof:
                for event in decoder.close():
                    yield event
                return
            else:
                await conn.wait(self._deadline, self._read_s)

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._conn.abort()

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._conn.release()


class Http1Transport(Transport):
    """Pooled HTTP/1.1 keep-alive transport: one pool per (event loop, scheme, host, port).

    `limit`: open connections per upstream host and loop (callers beyond it wait for one);
    `keepalive_s`: an idle connection older than this is not reused; `ssl`: the TLS context for
    ``https://`` (default: the system's trust store, hostname checked).
    """

    def __init__(self, *, limit: int = 1000, keepalive_s: float = 30.0, ssl: _ssl.SSLContext | None = None):
        self._limit = limit
        self._keepalive_s = keepalive_s
        self._ssl = ssl
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str, int], _Pool]] = (
            weakref.WeakKeyDictionary())
        self._urls: dict[str, tuple[tuple[str, str, int], bytes]] = {}

    def _ssl_context(self) -> _ssl.SSLContext:
        if self._ssl is None:
            self._ssl = _ssl.create_default_context()
        return self._ssl

    def _target(self, url: str) -> tuple[tuple[str, str, int], bytes]:
        """(pool key, request-line + Host prefix) for `url`, cached."""
        hit = self._urls.get(url)
        if hit is not None:
            return hit
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamConnectError(f"cannot connect: unsupported URL scheme '{scheme}'")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise UpstreamConnectError("cannot connect: bad port in URL") from None
        netloc = parts.netloc.rpartition("@")[2]
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        prefix = f"POST {path} HTTP/1.1\r\nHost: {netloc}\r\nUser-Agent: {_UA}\r\n".encode("latin-1")
        hit = ((scheme, parts.hostname, port), prefix)
        if len(self._urls) > 1024:
            self._urls.clear()
        self._urls[url] = hit
        return hit

    def _pool(self, key: tuple[str, str, int]) -> _Pool:
        loop = asyncio.get_running_loop()
        pools = self._loops.get(loop)
        if pools is None:
            pools = self._loops[loop] = {}
        pool = pools.get(key)
        if pool is None:
            ssl = self._ssl_context() if key[0] == "https" else None
            pool = pools[key] = _Pool(loop, key[1], key[2], ssl, self._limit, self._keepalive_s)
        return pool

    async def send(self, call: Any, *, connect_s: float, read_s: float | None,
                   total_s: float | None) -> UpstreamResponse:
        key, prefix = self._target(call.url)
        pool = self._pool(key)
        loop = pool.loop
        deadline = loop.time() + total_s if total_s is not None else None
        body = orjson.dumps(call.payload)
        headers = call.headers
        block = "".join([f"{k}: {v}\r\n" for k, v in headers.items()])
        if block.count("\n") != len(headers) or block.count("\r") != len(headers):
            raise UpstreamProtocolError("upstream protocol error: a header contains a line break")
        request = b"".join((prefix, block.encode("latin-1"), b"Content-Length: ", str(len(body)).encode(),
                            b"\r\n\r\n", body))
        connect_timeout = connect_s if deadline is None else min(connect_s, max(0.0, deadline - loop.time()))
        conn = await pool.acquire(connect_timeout)
        try:
            conn.transport.write(request)  # type: ignore[union-attr]
            while not conn.head_done:
                await conn.wait(deadline, read_s)
        except BaseException:
            conn.abort()
            raise
        return _Http1Response(conn, deadline, read_s)

    async def aclose(self) -> None:
        pools = self._loops.pop(asyncio.get_running_loop(), None)
        for pool in (pools or {}).values():
            pool.close()
