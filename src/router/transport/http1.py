"""A lean HTTP/1.1 keep-alive client on raw asyncio protocols: the default for ``http://`` upstreams.

`Http1Transport` implements `Transport.send(call) -> UpstreamResponse` with nothing but asyncio:
one connection pool per (event loop, scheme, host, port), requests written in one call,
responses parsed by `ResponseParser` as bytes arrive (Content-Length, chunked, or read-until-close
bodies; gzip/deflate decoded), server-sent events decoded as they arrive (`router.core.sse`).
Errors become `UpstreamConnectError` (could not connect), `UpstreamTimeout` (no free connection
in time, connect, total or read timeout) and `UpstreamProtocolError` (the upstream closed early or
sent something that is not HTTP/1.x as h11 reads it) at this boundary.

What it leaves out, on purpose: redirects (never followed on the data path), proxies from the
environment, cookies, request pipelining, HTTP/2. `AiohttpTransport` (router.transport.aiohttp_client)
remains available for anything this does not cover:
``Router(policy, transport=ProviderTransport(AiohttpTransport()))``.

>>> transport = Http1Transport()                                          # doctest: +SKIP
>>> resp = await transport.send(call, connect_s=5, read_s=None, total_s=60)  # doctest: +SKIP
>>> data = await resp.read(); resp.release()                              # doctest: +SKIP

Invariants:

- The parser accepts a response only if h11 (the reference, sans-IO parser) accepts it too, with the
  same status, fields, body and keep-alive verdict; it is stricter than h11 in three places, each a
  request-smuggling or resource shape: line ends must be CRLF (h11 also takes a bare LF), a
  response with both Content-Length and Transfer-Encoding is refused (h11 lets Transfer-Encoding
  win), and a head over 64 KB is refused however it arrives. tests/test_http1_differential.py
  checks this against h11 on generated response streams.
- A connection is owned by at most one response at a time; it goes back to the pool only when its
  response was read to the end, nothing followed it, the upstream did not ask to close, and
  nothing failed; any error, timeout or cancel aborts the connection (which also cancels the
  upstream's work). An idle connection that receives anything, or whose peer closed, is never
  handed out again: checked with a zero-timeout poll of its socket before each reuse.
- Backpressure: while more than 256 KB of body is buffered and nobody is reading (`read()` in
  progress, or `sse_data()` asking for more), the socket is paused, so a slow consumer slows the
  upstream (TCP flow control) instead of growing memory.
- Waiting for a free connection (the pool's `limit`) counts against the connect timeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import select
import ssl as _ssl
import weakref
import zlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import orjson

from router.core.sse import SSEDecoder, SSEEventTooLarge
from router.transport.base import (
    Transport,
    TransportError,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
)

__all__ = ["Http1Transport", "ResponseParser"]

_MAX_HEAD = 64 * 1024           # a response head (status line and fields through the blank line); trailers too
_MAX_CHUNK_LINE = 4096
MAX_BODY = 128 * 1024 * 1024   # decoded body bytes held at once (a whole JSON answer; a stream's unread part)
_HIGH_WATER = 256 * 1024        # buffered body bytes without a reader: pause the socket
_DRAIN_S = 5.0                  # how long a released-early response may take to finish before we give up on it
_MAX_DRAIN = 64 * 1024          # ... and how many bytes it may still send
_UA = "router"

# body modes
_NONE, _LENGTH, _CHUNKED, _CLOSE = 0, 1, 2, 3
# chunked sub-states
_C_SIZE, _C_DATA, _C_CRLF, _C_TRAILER = 0, 1, 2, 3

# The grammar h11 enforces (its _abnf.py: RFC 7230 with its documented leniencies).
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_FIELD_VCHAR = rb"[^\x00\s]"      # visible or obs-text; no NUL, no whitespace
_STATUS_LINE = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: [^\x00\n\r\x0b\x0c]*)?").fullmatch
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*((?:" + _FIELD_VCHAR + rb"+(?:[ \t]+" + _FIELD_VCHAR
                    + rb"+)*)?)[ \t]*").fullmatch
_TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_CTL = re.compile(rb"[\x00\x0b\x0c]").search   # never in a head: NUL, vertical tab, form feed
_CTL_OR_FOLD = re.compile(rb"[\x00\x0b\x0c]|\n[ \t]").search   # ... or an obsolete line fold (slow path)
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\n]*)?[ \t]*").fullmatch
_DIGITS = re.compile(r"[0-9]{1,20}").fullmatch


class _Headers(dict):  # type: ignore[type-arg]
    """Response headers: lower-cased names, case-insensitive lookups; repeated fields joined by ", "."""

    __slots__ = ()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return dict.get(self, key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.lower())


def _bad(what: str) -> UpstreamProtocolError:
    return UpstreamProtocolError(f"upstream protocol error: {what}")


def _closed_early() -> UpstreamProtocolError:
    return UpstreamProtocolError("upstream closed the connection early")


def _unfold(lines: list[bytes]) -> list[bytes]:
    """Obsolete line folding (a field line starting with SP or HTAB continues the previous one),
    replaced by one space, as RFC 9112 5.2 asks of a user agent and h11 does."""
    out: list[bytes] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not out:
                raise _bad("continuation line at start of fields")
            out[-1] = out[-1] + b" " + line.lstrip(b" \t")
        else:
            out.append(line)
    return out


def _fields(lines: list[bytes], into: _Headers) -> None:
    """Field lines into `into`, each checked as h11's ``header_field`` rule does: a token name, a
    colon (no space before it), optional whitespace around a value without NUL or other
    whitespace than SP and HTAB (the caller has checked the whole head for those bytes).
    The same rule as h11's regular expression, in cheaper steps."""
    get, put = dict.get, dict.__setitem__
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name.translate(None, _TCHAR):
            raise _bad("bad header line")
        key = name.lower().decode("ascii")
        val = value.strip(b" \t").decode("latin-1")
        prev = get(into, key)
        put(into, key, val if prev is None else prev + ", " + val)


class ResponseParser:
    """Sans-IO parser of one HTTP/1.x response at a time (h11's grammar, a little stricter: see the
    module's docstring). Feed it bytes; it raises `UpstreamProtocolError` on anything malformed.

    >>> p = ResponseParser()
    >>> p.feed(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nhi")
    >>> (p.status, p.headers["content-length"], p.take_body(), p.eof, p.keep_alive)
    (200, '2', b'hi', True, True)
    >>> ResponseParser().feed(b"HTTP/1.1 200 OK\\r\\nContent-Length: 1_0\\r\\n\\r\\n")
    Traceback (most recent call last):
    ...
    router.transport.base.UpstreamProtocolError: upstream protocol error: bad content-length
    """

    __slots__ = ("_buf", "_c_left", "_c_state", "_decoder", "_left", "_mode", "_t_bytes", "_t_field", "body", "eof",
                 "head_done", "headers", "keep_alive", "size", "status")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Ready for the next response on the same connection."""
        self._buf = b""
        self.head_done = False
        self.status = 0
        self.headers: _Headers = _Headers()
        self.keep_alive = True      # false once anything says the connection must not be reused
        self._mode = _NONE
        self._left = 0
        self._c_state = _C_SIZE
        self._c_left = 0
        self._t_bytes = 0           # trailer bytes so far
        self._t_field = False       # a trailer field line was seen (so a folded line may continue it)
        self._decoder: Any = None
        self.body: list[bytes] = []
        self.size = 0               # bytes in `body`
        self.eof = False            # the whole message arrived

    @property
    def mode(self) -> int:
        return self._mode

    def feed(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        if not self.head_done:
            data = self._head(data)
            if not self.head_done:
                self._buf = data
                return
        if data:
            if self.eof:  # bytes past the end of the message: never trust this connection again
                self.keep_alive = False
                return
            self._body(data)

    def feed_eof(self) -> None:
        """The peer closed: the end of a read-until-close body, else (if incomplete) an error."""
        if self.eof:
            return
        if self.head_done and self._mode == _CLOSE:
            self.keep_alive = False
            self._end_body()
            return
        raise _closed_early()

    def take_body(self) -> bytes:
        body = self.body
        if not body:
            return b""
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self.size = 0
        return data

    # -- the head
    def _head(self, data: bytes) -> bytes:
        while True:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > _MAX_HEAD:
                    raise _bad("response head too large")
                return data
            if end + 4 > _MAX_HEAD:
                raise _bad("response head too large")
            head = data[:end]
            data = data[end + 4:]
            lines = head.split(b"\r\n")
            crlf = len(lines) - 1   # any other CR or LF is a bare one
            if head.count(b"\r") != crlf or head.count(b"\n") != crlf:
                raise _bad("a bare CR or LF in the response head")
            fields = lines[1:]
            if _CTL_OR_FOLD(head) is not None:
                if _CTL(head) is not None:
                    raise _bad("NUL, vertical tab or form feed in the response head")
                fields = _unfold(fields)
            m = _STATUS_LINE(lines[0])
            if m is None:
                raise _bad("not an HTTP/1.x response" if lines[0][:5] != b"HTTP/" else "bad status line")
            status = int(m.group(2))
            headers = _Headers()
            _fields(fields, headers)
            chunked, length = _framing(headers)
            if status < 200:
                if status < 100 or status == 101:  # 101: we never asked to switch protocols
                    raise _bad(f"unexpected status {status}")
                continue  # 100 Continue, 103 Early Hints: the real answer follows
            self.status = status
            self.headers = headers
            self.head_done = True
            conn = dict.get(headers, "connection")
            if m.group(1) < b"1.1" or (conn is not None and "close" in _tokens(conn)):
                self.keep_alive = False
            encoding = dict.get(headers, "content-encoding")
            if encoding:
                encoding = encoding.strip().lower()
                if encoding in ("gzip", "x-gzip"):
                    self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
                elif encoding == "deflate":
                    self._decoder = zlib.decompressobj()
                elif encoding != "identity":
                    raise _bad(f"unsupported content-encoding {encoding}")
            if status in (204, 304):
                self._mode = _NONE
                self.eof = True
            elif chunked:
                self._mode = _CHUNKED
            elif length is not None:
                if length == 0:
                    self._mode = _NONE
                    self._end_body()
                else:
                    self._mode, self._left = _LENGTH, length
            else:
                self._mode = _CLOSE
                self.keep_alive = False
            return data

    # -- the body
    def _add(self, data: bytes) -> None:
        if self._decoder is not None:
            room = MAX_BODY - self.size
            try:   # never inflate past the limit: a small compressed body can decode to gigabytes
                data = self._decoder.decompress(data, room + 1)
            except zlib.error:
                raise _bad("bad compressed body") from None
            if not data:
                return
        self.body.append(data)
        self.size += len(data)
        if self.size > MAX_BODY:
            raise _bad(f"response body larger than {MAX_BODY} bytes")

    def _end_body(self) -> None:
        if self._decoder is not None:
            try:
                rest = self._decoder.flush(MAX_BODY - self.size + 1)
            except zlib.error:
                raise _bad("bad compressed body") from None
            if rest:
                self.body.append(rest)
                self.size += len(rest)
                if self.size > MAX_BODY:
                    raise _bad(f"response body larger than {MAX_BODY} bytes")
        self.eof = True

    def _body(self, data: bytes) -> None:
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
            self._chunked(data)
        elif mode == _CLOSE:
            self._add(data)
        else:  # a body where none was announced
            self.keep_alive = False

    def _chunked(self, data: bytes) -> None:
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
                    if data[pos:] != b"\r":
                        raise _bad("bad chunk terminator")
                    self._buf = data[pos:]
                    return
                if data[pos:pos + 2] != b"\r\n":
                    raise _bad("bad chunk terminator")
                pos += 2
                self._c_state = _C_SIZE
            else:  # _C_SIZE or _C_TRAILER: line based
                end = data.find(b"\r\n", pos)
                if end < 0:
                    limit = _MAX_CHUNK_LINE if state == _C_SIZE else _MAX_HEAD - self._t_bytes
                    if n - pos > limit:
                        raise _bad("chunk line too long" if state == _C_SIZE else "trailers too large")
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
                    self._trailer_line(line)
                    continue
                m = _CHUNK_SIZE(line)
                if m is None:
                    raise _bad("bad chunk size")
                size = int(m.group(1), 16)
                if size == 0:
                    self._c_state = _C_TRAILER
                else:
                    self._c_state, self._c_left = _C_DATA, size

    def _trailer_line(self, line: bytes) -> None:
        """Trailer fields are checked like header fields, then dropped (nothing here reads them)."""
        self._t_bytes += len(line) + 2
        if self._t_bytes > _MAX_HEAD:
            raise _bad("trailers too large")
        if line[:1] in (b" ", b"\t"):
            if not self._t_field:  # no field line yet to continue
                raise _bad("continuation line at start of fields")
            line = b"x:" + line  # a continuation is field content: check it as such
        if _FIELD(line) is None or b"\r" in line or _CTL(line) is not None:
            raise _bad("bad trailer line")
        self._t_field = True


def _tokens(value: str) -> set[str]:
    return {t.strip(" \t") for t in value.lower().split(",")}


def _framing(headers: _Headers) -> tuple[bool, int | None]:
    """(chunked, content length) from the framing fields, checked (and normalised) as h11 does, and
    refused together (RFC 9112 6.3: a response with both "ought to be handled as an error")."""
    te = dict.get(headers, "transfer-encoding")
    cl = dict.get(headers, "content-length")
    length = None
    if cl is not None and cl.isdigit() and cl.isascii() and len(cl) <= 20:
        length = int(cl)  # the usual case, in one step
    elif cl is not None:
        values = {v.strip(" \t") for v in cl.split(",")}
        if len(values) != 1:
            raise _bad("conflicting content-length")
        value = values.pop()
        if _DIGITS(value) is None:
            raise _bad("bad content-length")
        length = int(value)
        dict.__setitem__(headers, "content-length", value)  # one value, as h11 keeps it
    if te is not None:
        if te.lower() != "chunked":
            raise _bad("unsupported transfer-encoding")
        if cl is not None:
            raise _bad("both content-length and transfer-encoding")
        dict.__setitem__(headers, "transfer-encoding", "chunked")
        return True, None
    return False, length


class _Conn(asyncio.Protocol):
    """One connection, and the response being read on it."""

    __slots__ = ("_drain_timer", "_drained", "_fd", "_paused", "_pool", "_waiter", "closed", "collecting",
                 "counted", "error", "idle", "loop", "p", "releasing", "transport")

    def __init__(self, pool: _Pool):
        self._pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self._fd = -1               # the socket, for the idle check (plain TCP only)
        self.closed = False
        self.error: TransportError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._drained = 0
        self._paused = False
        self.releasing = False
        self.collecting = False     # `read()` wants the whole body: never pause
        self.idle = False           # in the pool: nothing may arrive
        self.counted = True         # in the pool's count of open connections until _gone()
        self.p = ResponseParser()

    def reuse(self) -> None:
        self.idle = False
        self.collecting = False
        self.p.reset()

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self._pool.ssl is None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                self._fd = sock.fileno()

    def data_received(self, data: bytes) -> None:
        if self.idle:  # nothing was asked (a 408 before closing, stray bytes): drop the connection
            self.abort()
            return
        p = self.p
        try:
            p.feed(data)
        except TransportError as e:
            self._fail(e)
            return
        if self.releasing:
            self._drained += p.size
            p.take_body()
            if p.eof:
                self._finish_release()
            elif self._drained > _MAX_DRAIN:
                self.abort()
            return
        if p.size > _HIGH_WATER and not self.collecting and not self._paused and not p.eof:
            self._paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.error is None and not self.p.eof:
            try:
                self.p.feed_eof()
            except TransportError as e:
                self.error = e
        self._gone()
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- control
    def usable(self) -> bool:
        """An idle connection may be reused: open, and nothing (data or the peer's FIN) waiting on it."""
        t = self.transport
        if self.closed or t is None or t.is_closing():
            return False
        if self._fd >= 0:
            poller = self._pool.poller
            poller.register(self._fd, select.POLLIN)
            try:
                ready = poller.poll(0)  # readable while idle: the peer closed, or sent something unasked
            finally:
                poller.unregister(self._fd)
            if ready:
                return False
        return True

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

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
        if self.counted:
            self.counted = False
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
        data = self.p.take_body()
        self.resume()
        return data

    def release(self) -> None:
        """Back to the pool once the response is read to its end; else drop the connection."""
        p = self.p
        if self.closed or self.error is not None or not p.keep_alive:
            self.abort()
        elif p.eof:
            self._pool.put(self)
        elif p.mode in (_LENGTH, _CHUNKED):  # the rest (e.g. a chunked terminator) is probably in flight
            self.releasing = True
            self._drained = p.size
            p.take_body()
            self.resume()
            self._drain_timer = self.loop.call_later(_DRAIN_S, self.abort)
        else:
            self.abort()

    def _finish_release(self) -> None:
        self.releasing = False
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        if self.p.keep_alive and self.error is None and not self.closed:
            self._pool.put(self)
        else:
            self.abort()


def _expire(fut: asyncio.Future[None], waited: float, limit: int) -> None:
    if not fut.done():
        fut.set_exception(UpstreamTimeout(
            f"upstream timed out: no free connection within {waited:g} s (pool limit {limit})"))


class _Pool:
    """Connections to one (scheme, host, port) on one event loop: idle ones LIFO, a cap on open ones."""

    __slots__ = ("count", "host", "idle", "keepalive_s", "limit", "loop", "poller", "port", "server_hostname",
                 "ssl", "waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int, ssl: _ssl.SSLContext | None,
                 limit: int, keepalive_s: float):
        self.loop, self.host, self.port, self.ssl = loop, host, port, ssl
        self.server_hostname = host if ssl is not None else None
        self.limit, self.keepalive_s = limit, keepalive_s
        self.idle: collections.deque[tuple[_Conn, float]] = collections.deque()
        self.count = 0                 # open connections, idle or busy
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.poller = select.poll()    # the idle check; one per pool, so per loop and thread

    def _idle_conn(self) -> _Conn | None:
        idle = self.idle
        now = self.loop.time()
        while idle:
            conn, since = idle.pop()
            if now - since < self.keepalive_s and conn.usable():
                conn.reuse()
                return conn
            conn.abort()
        return None

    async def acquire(self, timeout: float) -> _Conn:
        """An idle connection, else a new one; waiting for a free slot and connecting share `timeout`."""
        if self.idle:
            conn = self._idle_conn()
            if conn is not None:
                return conn
        loop = self.loop
        end = loop.time() + timeout
        while self.count >= self.limit:
            await self._wait(end, timeout)
            if self.idle:
                conn = self._idle_conn()
                if conn is not None:
                    return conn
        self.count += 1
        conn = _Conn(self)
        try:
            await asyncio.wait_for(loop.create_connection(
                lambda: conn, self.host, self.port, ssl=self.ssl, server_hostname=self.server_hostname),
                timeout=max(0.0, end - loop.time()))
        except BaseException as e:
            conn.abort()
            if isinstance(e, asyncio.TimeoutError):
                raise UpstreamTimeout("upstream timed out") from None
            if isinstance(e, OSError):
                raise UpstreamConnectError(f"cannot connect: {type(e).__name__}") from None
            raise
        return conn

    async def _wait(self, end: float, timeout: float) -> None:
        fut = self.loop.create_future()
        self.waiters.append(fut)
        timer = self.loop.call_at(end, _expire, fut, timeout, self.limit)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._wake()  # woken, then cancelled: hand the free slot to the next waiter
            raise
        finally:
            timer.cancel()
            with contextlib.suppress(ValueError):  # still queued: not woken
                self.waiters.remove(fut)

    def put(self, conn: _Conn) -> None:
        conn.idle = True
        conn.resume()  # an idle connection must see its peer's FIN
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
        self.status = conn.p.status
        self.headers = conn.p.headers

    async def read(self) -> bytes:
        conn = self._conn
        conn.collecting = True
        conn.resume()
        p = conn.p
        while not p.eof:
            await conn.wait(self._deadline, self._read_s)
        return p.take_body()

    async def sse_data(self) -> AsyncIterator[bytes]:
        conn = self._conn
        p = conn.p
        decoder = SSEDecoder()
        while True:
            data = conn.take_body()
            if data:
                try:
                    events = decoder.feed(data)
                except SSEEventTooLarge as e:
                    raise _bad(str(e)) from None
                for event in events:
                    yield event
            elif p.eof:
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

    `limit`: open connections per upstream host and loop (callers beyond it wait for one, within
    their connect timeout); `keepalive_s`: an idle connection older than this is not reused; `ssl`:
    the TLS context for ``https://`` (default: the system's trust store, hostname checked).
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
            while not conn.p.head_done:
                await conn.wait(deadline, read_s)
        except BaseException:
            conn.abort()
            raise
        return _Http1Response(conn, deadline, read_s)

    async def aclose(self) -> None:
        pools = self._loops.pop(asyncio.get_running_loop(), None)
        for pool in (pools or {}).values():
            pool.close()
