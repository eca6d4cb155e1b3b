"""A lean asyncio client for Redis: RESP2 over one pipelined connection, asyncio only.

Three layers, each testable alone:

- `RespParser` is sans-IO: ``feed(bytes) -> [reply, ...]``, strict and bounded (a malformed or
  oversized reply raises `ProtocolError`; nothing is guessed, nothing grows without limit).
- `RespConnection` is an `asyncio.Protocol`: `request(payload)` writes one packed command and
  returns a future; replies are matched to requests in order (a FIFO of futures). A caller that
  was cancelled or timed out leaves its future behind: its reply is still read and dropped, so
  the pipeline never slips. A protocol error, a lost connection or no reply at all for
  `stall_s` closes the connection and fails every waiting request with `ConnectionLost`.
- `RedisAddress` / `parse_url` / `open_connection` read the URLs redis-py reads
  (``redis://[user:password@]host:port/db``, ``rediss://`` for TLS, ``unix:///path?db=N``) and
  connect: TCP or a Unix socket, TLS, AUTH, CLIENT SETNAME and SELECT, within a connect timeout.

Exceptions (all `RedisError`)::

    RedisError
     +-- ReplyError        Redis answered with an error reply (-ERR ..., -NOSCRIPT ...): `code`, message
     +-- ConnectionLost    no connection: refused, timed out, closed, or closed by us (stall, bad bytes)
          +-- ProtocolError  the bytes Redis sent are not valid RESP2 (or exceed a bound)

Values: simple strings and bulk strings are `bytes`, integers `int`, a null `None`, arrays
`list`; an error reply inside an array is a `ReplyError` value (at the top it is raised).

>>> conn = await open_connection(parse_url("redis://127.0.0.1:6379/0"), timeout_s=1.0)   # doctest: +SKIP
>>> await conn.request(pack_command(("INCR", "k")))                                       # doctest: +SKIP
1
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["ConnectionLost", "ProtocolError", "RedisAddress", "RedisError", "ReplyError", "RespConnection",
           "RespParser", "open_connection", "pack_command", "parse_url"]

MAX_BULK_BYTES = 64 * 1024 * 1024   # one bulk string (Redis allows 512 MB; the router stores far less)
MAX_VALUES = 1024 * 1024            # values in one reply, over all its arrays
MAX_LINE_BYTES = 64 * 1024          # a simple string, an error, or a length line
MAX_DEPTH = 32                      # arrays inside arrays

_CRLF = b"\r\n"
_INF = float("inf")
_INT64_MAX = 2 ** 63 - 1


class RedisError(Exception):
    """What this client raises."""


class ReplyError(RedisError):
    """Redis answered the command with an error: ``code`` is its first word (``ERR``, ``NOSCRIPT``)."""

    def __init__(self, message: str):
        super().__init__(message)
        word = message.split(" ", 1)[0]
        self.code = word if word.isupper() else ""


class ConnectionLost(RedisError):
    """No usable connection: it could not be made, it closed, or it was closed under a request."""


class ProtocolError(ConnectionLost):
    """Redis sent bytes that are not RESP2, or a reply beyond the parser's bounds; the connection is closed.
    `replies`: the complete replies that came before the bad bytes in the same feed (still theirs)."""

    def __init__(self, message: str, replies: list[Any] | None = None):
        super().__init__(message)
        self.replies = replies or []


# ----------------------------------------------------------------------------- commands


def pack_command(args: tuple[Any, ...] | list[Any]) -> bytes:
    """One command as RESP2 (an array of bulk strings); values as redis-py sends them.

    >>> pack_command(("SET", "k", 1.5))
    b'*3\\r\\n$3\\r\\nSET\\r\\n$1\\r\\nk\\r\\n$3\\r\\n1.5\\r\\n'
    """
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        t = type(a)
        if t is bytes:
            b = a
        elif t is str:
            b = a.encode()
        elif t is int or t is float:
            b = repr(a).encode()
        elif isinstance(a, (bytes, bytearray, memoryview)):
            b = bytes(a)
        elif isinstance(a, str):
            b = str(a).encode()
        elif isinstance(a, (int, float)) and not isinstance(a, bool):
            b = repr(a).encode()
        else:
            raise TypeError(f"a Redis command argument must be bytes, str, int or float, not {t.__name__}")
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


# ----------------------------------------------------------------------------- the parser


class _Incomplete(Exception):  # noqa: N818 - internal signal, never raised to callers
    """The reply is not all here yet: parsing resumes when at least `need` bytes are buffered."""

    def __init__(self, need: int):
        self.need = need


def _excerpt(data: bytes) -> str:
    return repr(data[:20]) + ("..." if len(data) > 20 else "")


def _integer(line: bytes) -> int:
    """A RESP integer: an optional minus and ASCII digits, no leading zeros, within a signed 64 bits."""
    negative = line[:1] == b"-"
    digits = line[1:] if negative else line
    if not digits.isdigit() or (digits[0] == 48 and (len(digits) > 1 or negative)):  # 0, never 00 or -0
        raise ProtocolError(f"not a RESP integer: {_excerpt(line)}")
    value = int(line) if len(digits) <= 19 else _INT64_MAX + 1
    if len(digits) > 18 and not -_INT64_MAX - 1 <= value <= _INT64_MAX:
        raise ProtocolError(f"integer out of the 64-bit range: {_excerpt(line)}")
    return value


def _length(line: bytes, bound: int, what: str) -> int:
    """A length: ASCII digits, no leading zeros, at most `bound`."""
    if not line.isdigit() or (line[0] == 48 and len(line) > 1):
        raise ProtocolError(f"invalid {what} length: {_excerpt(line)}")
    if len(line) > 19:
        raise ProtocolError(f"{what} of {len(line)} digits exceeds the bound of {bound}")
    n = int(line)
    if n > bound:
        raise ProtocolError(f"{what} of {n} exceeds the bound of {bound}")
    return n


_ARRAY = object()   # `_one` opened an array whose items follow


class RespParser:
    """Replies from bytes, fed as they arrive in any fragments (sans-IO).

    >>> RespParser().feed(b"+OK\\r\\n:42\\r\\n*2\\r\\n$1\\r\\na\\r\\n$-1\\r\\n")
    [b'OK', 42, [b'a', None]]

    Strict: a type byte other than ``+ - : $ *``, a length or integer that is not canonical
    ASCII digits, a missing CRLF, a line over `max_line` bytes, a bulk string over `max_bulk`
    bytes, a reply of more than `max_values` values or arrays nested deeper than `max_depth`
    raise `ProtocolError`, after which the parser is unusable (the connection must close).
    A reply cut across fragments resumes where it stopped: the arrays being filled are kept, and a
    bulk string is parsed once all its bytes are in (each byte is read a bounded number of times).
    """

    __slots__ = ("_chunks", "_dead", "_need", "_size", "_stack", "_values", "max_bulk", "max_depth", "max_line",
                 "max_values")

    def __init__(self, *, max_bulk: int = MAX_BULK_BYTES, max_values: int = MAX_VALUES,
                 max_line: int = MAX_LINE_BYTES, max_depth: int = MAX_DEPTH):
        self.max_bulk, self.max_values, self.max_line, self.max_depth = max_bulk, max_values, max_line, max_depth
        self._chunks: list[bytes] = []   # bytes not yet parsed, as received
        self._size = 0                   # their total length
        self._need = 0                   # parse again only once this many bytes are buffered
        self._stack: list[tuple[list[Any], int]] = []   # the arrays being filled: (items so far, length)
        self._values = 0                 # values the current reply may still hold
        self._dead: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete reply (arrays being filled aside)."""
        return self._size

    def feed(self, data: bytes) -> list[Any]:
        """The replies `data` completes (maybe none), in order; raises `ProtocolError` on bad input
        (its `replies` holds those completed before it)."""
        if self._dead is not None:
            raise ProtocolError(f"the parser stopped at an earlier error: {self._dead}")
        if self._chunks:
            self._chunks.append(data)
            self._size += len(data)
            if self._size < self._need:
                return []
            buf = b"".join(self._chunks)
        else:
            buf = data
        out: list[Any] = []
        stack = self._stack
        pos = start = 0
        n = len(buf)
        try:
            while pos < n:
                if not stack:
                    self._values = self.max_values   # a reply begins
                start = pos
                value, pos = self._one(buf, pos, len(stack))
                if value is _ARRAY:
                    continue
                while stack:   # the value fills its array, which may complete the one around it
                    items, length = stack[-1]
                    items.append(value)
                    if len(items) < length:
                        break
                    stack.pop()
                    value = items
                else:
                    out.append(value)
        except _Incomplete as e:
            self._need = e.need - start
            pos = start
        except ProtocolError as e:
            self._dead = e
            self._chunks, self._size, self._stack = [], 0, []
            e.replies = out
            raise
        if pos < n:
            rest = buf[pos:] if pos else buf
            self._chunks, self._size = [rest], len(rest)
        else:
            self._chunks, self._size, self._need = [], 0, 0
        return out

    def _one(self, buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
        """The value at `pos` and where it ends; for a non-empty array, `_ARRAY` (its items follow)."""
        end = buf.find(_CRLF, pos)
        if end < 0:
            if len(buf) - pos > self.max_line + 1:
                raise ProtocolError(f"a reply line longer than {self.max_line} bytes")
            raise _Incomplete(len(buf) + 1)
        if end - pos > self.max_line + 1:
            raise ProtocolError(f"a reply line longer than {self.max_line} bytes")
        kind = buf[pos]
        line = buf[pos + 1:end]
        end += 2
        if kind == 36:      # $: a bulk string, or null
            if line == b"-1":
                return None, end
            stop = end + _length(line, self.max_bulk, "bulk string")
            if len(buf) < stop + 2:
                raise _Incomplete(stop + 2)
            if buf[stop:stop + 2] != _CRLF:
                raise ProtocolError(f"a bulk string of {stop - end} bytes not followed by CRLF")
            return buf[end:stop], stop + 2
        if kind == 58:      # : an integer
            return _integer(line), end
        if kind == 42:      # * an array, or null
            if line == b"-1":
                return None, end
            count = _length(line, self.max_values, "array")
            self._values -= count
            if self._values < 0:
                raise ProtocolError(f"a reply of more than {self.max_values} values")
            if depth >= self.max_depth:
                raise ProtocolError(f"arrays nested more than {self.max_depth} deep")
            if count == 0:
                return [], end
            self._stack.append(([], count))
            return _ARRAY, end
        if kind == 43 or kind == 45:   # + a simple string, - an error: one line, no CR or LF in it
            if 13 in line or 10 in line:
                raise ProtocolError(f"CR or LF inside a status or error line: {_excerpt(line)}")
            if kind == 43:
                return line, end
            return ReplyError(line.decode("utf-8", "replace")), end
        raise ProtocolError(f"unknown reply type byte {buf[pos:pos + 1]!r}")


# ----------------------------------------------------------------------------- the connection


class RespConnection(asyncio.Protocol):
    """One pipelined connection: `request` writes a command, its future gets the reply in turn.

    A request may carry a deadline (loop time): past it, its future fails with `TimeoutError`
    and its reply, when it comes, is dropped. One timer serves every deadline, armed for the
    earliest one (requests of one timeout arrive in deadline order, so it rarely moves).
    `stall_s` bounds how long requests may wait with no byte coming back (a dead or blackholed
    server): then the connection closes and they fail; None waits forever. With `coalesce`, a
    command sent while others are in flight is written with the rest of its loop iteration's
    (one send for many callers); one sent alone goes at once.
    """

    def __init__(self, *, stall_s: float | None = None, coalesce: bool = True, parser: RespParser | None = None):
        self._parser = parser or RespParser()
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._deadlines: collections.deque[float] = collections.deque()   # beside `_waiting`, one each
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stall_s, self.coalesce = stall_s, coalesce
        self.lost: ConnectionLost | None = None   # set once the connection cannot be used any more
        self._progress = 0.0      # loop time of the last reply (or of the first request after a quiet spell)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = _INF
        self._out: list[bytes] = []
        self._soon = False        # a flush of `_out` is due this loop iteration
        self._late: asyncio.TimerHandle | None = None   # a later flush, for background commands only
        self._closed: asyncio.Future[None] | None = None
        self.description = "Redis"

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()
        self._closed = self._loop.create_future()

    def data_received(self, data: bytes) -> None:
        try:
            replies = self._parser.feed(data)
        except ProtocolError as e:
            self._deliver(e.replies)
            self.abort(ProtocolError(f"{self.description} sent an invalid reply ({e}); connection closed"))
            return
        except Exception as e:  # a bug of ours: never leave the connection wedged with callers waiting
            self.abort(ProtocolError(f"a reply of {self.description} could not be read ({type(e).__name__}: {e}); "
                                     "connection closed"))
            return
        if replies:
            self._deliver(replies)

    def _deliver(self, replies: list[Any]) -> None:
        waiting, deadlines = self._waiting, self._deadlines
        for reply in replies:
            if not waiting:
                self.abort(ProtocolError(f"{self.description} sent a reply no request waits for; connection closed"))
                return
            fut = waiting.popleft()
            deadlines.popleft()
            if not fut.done():   # done: its caller was cancelled or timed out; the reply is dropped
                if type(reply) is ReplyError:
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)
        if self.stall_s is not None:
            self._progress = self._loop.time()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        return False   # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if self.lost is None:
            why = f": {exc}" if exc is not None else ""
            self.lost = ConnectionLost(f"{self.description} closed the connection{why}")
        self._fail_waiting()

    # -- requests
    def request(self, payload: bytes, deadline: float = _INF, *, later_s: float = 0.0) -> asyncio.Future[Any]:
        """Send one packed command (`pack_command`); the future gets its reply or its error, or
        `TimeoutError` at `deadline` (the loop's time).

        `later_s` > 0 (a background command nobody waits for: a settle) may wait that long to go
        out with the next write, so that many share one send and their replies one read."""
        if self.lost is not None:
            raise ConnectionLost(str(self.lost))
        loop = self._loop
        fut = loop.create_future()  # type: ignore[union-attr]
        waiting = self._waiting
        if later_s > 0:          # joins whatever goes next, at the latest in `later_s`
            self._out.append(payload)
            if not self._soon and self._late is None:
                self._late = loop.call_later(later_s, self._flush)  # type: ignore[union-attr]
        elif self._out:          # commands are queued: this one joins them, this iteration
            self._out.append(payload)
            if not self._soon:   # they were background ones, waiting for a later flush
                self._soon = True
                loop.call_soon(self._flush)  # type: ignore[union-attr]
        elif waiting and self.coalesce:   # others in flight: more commands may come this iteration
            self._out.append(payload)
            self._soon = True
            loop.call_soon(self._flush)  # type: ignore[union-attr]
        else:                    # alone: send at once
            self._transport.write(payload)  # type: ignore[union-attr]
        if not waiting and self.stall_s is not None:   # the stall clock starts with the first request
            self._progress = loop.time()  # type: ignore[union-attr]
            if self._progress + self.stall_s < self._timer_at:
                self._arm(self._progress + self.stall_s)
        if deadline < self._timer_at:
            self._arm(deadline)
        waiting.append(fut)
        self._deadlines.append(deadline)
        return fut

    def flush(self) -> None:
        """Write the queued commands now (those waiting for a later write included)."""
        if self._out:
            self._flush()

    def _flush(self) -> None:
        self._soon = False
        if self._late is not None:
            self._late.cancel()
            self._late = None
        out, self._out = self._out, []
        if out and self.lost is None:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))  # type: ignore[union-attr]

    @property
    def pending(self) -> int:
        """Requests sent whose replies have not arrived (cancelled callers' included)."""
        return len(self._waiting)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._check)  # type: ignore[union-attr]

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = _INF

    def _check(self) -> None:
        """The timer: fail the requests past their deadline, close a stalled connection, re-arm."""
        self._timer, self._timer_at = None, _INF
        if not self._waiting or self.lost is not None:
            return
        now = self._loop.time()  # type: ignore[union-attr]
        following = _INF
        if self.stall_s is not None:
            if now - self._progress >= self.stall_s:
                self.abort(ConnectionLost(f"no reply from {self.description} in {self.stall_s:g} s; "
                                          "connection closed"))
                return
            following = self._progress + self.stall_s
        for fut, deadline in zip(self._waiting, self._deadlines, strict=True):
            if deadline < following and not fut.done():
                if deadline <= now:
                    fut.set_exception(TimeoutError(f"no reply from {self.description} by the deadline"))
                else:
                    following = deadline
        if following < _INF:
            self._arm(following)

    def abort(self, why: ConnectionLost) -> None:
        """Close now and fail every waiting request with `why`'s message."""
        if self.lost is None:
            self.lost = why
        if self._transport is not None:
            self._transport.abort()
        self._fail_waiting()

    def close(self) -> None:
        """Close after pending writes; requests still waiting fail."""
        if self.lost is None:
            self.lost = ConnectionLost(f"the connection to {self.description} was closed")
        if self._late is not None:
            self._late.cancel()
            self._late = None
        out, self._out = self._out, []
        if self._transport is not None:
            if out:
                self._transport.write(b"".join(out))
            self._transport.close()
        self._fail_waiting()

    async def wait_closed(self, timeout_s: float = 1.0) -> None:
        """Wait until the transport has closed; after `timeout_s` (a peer not reading) abort it."""
        if self._closed is None or self._closed.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), timeout_s)
        except TimeoutError:
            if self._transport is not None:
                self._transport.abort()

    def _fail_waiting(self) -> None:
        self._disarm()
        lost = self.lost
        cls = type(lost) if lost is not None else ConnectionLost
        self._deadlines.clear()
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(cls(str(lost)))


# ----------------------------------------------------------------------------- addresses and connecting


_FALSE = ("0", "F", "FALSE", "N", "NO", "OFF")
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
# query options redis-py reads that mean nothing for one pipelined connection without retries:
# accepted so that URLs written for redis-py keep working, and ignored
_IGNORED = frozenset({"max_connections", "health_check_interval", "retry_on_timeout", "retry_on_error",
                      "socket_read_size", "timeout", "legacy_responses"})
_OPTIONS = ("db", "socket_timeout", "socket_connect_timeout", "socket_keepalive", "client_name", "protocol",
            "ssl_cert_reqs", "ssl_check_hostname", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile",
            "ssl_ciphers")


@dataclass(frozen=True)
class RedisAddress:
    """Where a Redis is and how to greet it; `str()` names it without its credentials."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None          # a Unix socket instead of host:port
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    cert_reqs: ssl.VerifyMode = ssl.CERT_REQUIRED
    check_hostname: bool = True
    ca_certs: str | None = None
    ca_path: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    ciphers: str | None = None
    client_name: str | None = None
    keepalive: bool = False
    socket_timeout_s: float | None = None          # from the URL: overrides the store's op timeout
    socket_connect_timeout_s: float | None = None  # from the URL: overrides the store's connect timeout

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix://{self.path}?db={self.db}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{host}:{self.port}/{self.db}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context()
        ctx.check_hostname = self.check_hostname and self.cert_reqs != ssl.CERT_NONE
        ctx.verify_mode = self.cert_reqs
        if self.certfile or self.keyfile:
            ctx.load_cert_chain(certfile=self.certfile, keyfile=self.keyfile)  # type: ignore[arg-type]
        if self.ca_certs or self.ca_path:
            ctx.load_verify_locations(cafile=self.ca_certs, capath=self.ca_path)
        if self.ciphers:
            ctx.set_ciphers(self.ciphers)
        return ctx


def _bool(name: str, value: str) -> bool:
    if value == "":
        raise ValueError(f"Redis URL option '{name}' needs a value")
    return value.upper() not in _FALSE


def parse_url(url: str) -> RedisAddress:
    """A `RedisAddress` from ``redis://[[user]:password@]host[:port][/db][?option=value...]``,
    ``rediss://...`` (TLS) or ``unix://[[user]:password@]/path/to/socket[?db=N]``.

    Options, as redis-py reads them: ``db``, ``socket_timeout``, ``socket_connect_timeout``,
    ``socket_keepalive``, ``client_name``, ``protocol`` (2 only), and for TLS ``ssl_cert_reqs``
    (none, optional, required), ``ssl_check_hostname``, ``ssl_ca_certs``, ``ssl_ca_path``,
    ``ssl_certfile``, ``ssl_keyfile``, ``ssl_ciphers``. redis-py's pool and retry options
    (``max_connections``, ``health_check_interval``, ``retry_on_timeout``...) are accepted and
    ignored; any other option is an error, as is a value that does not parse.

    >>> str(parse_url("redis://:secret@cache.internal:6380/2"))
    'redis://cache.internal:6380/2'
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError("a Redis URL starts with redis://, rediss:// or unix://")
    parts = urlsplit(url)
    kw: dict[str, Any] = {"tls": scheme == "rediss"}
    try:
        if parts.username:
            kw["username"] = unquote(parts.username)
        if parts.password is not None:
            kw["password"] = unquote(parts.password)
        if scheme == "unix":
            if not parts.path:
                raise ValueError("a unix:// Redis URL needs the socket's path: unix:///run/redis.sock")
            kw["path"] = unquote(parts.path)
        else:
            if parts.hostname:
                kw["host"] = unquote(parts.hostname)
            if parts.port is not None:
                kw["port"] = parts.port
            db = unquote(parts.path).strip("/")
            if db:
                kw["db"] = int(db)
    except ValueError as e:
        raise ValueError(f"invalid Redis URL: {e}") from None
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        try:
            if name == "db":
                kw["db"] = int(value)
            elif name in ("socket_timeout", "socket_connect_timeout"):
                seconds = float(value)
                if not seconds > 0:
                    raise ValueError("must be above 0")
                kw[name + "_s"] = seconds
            elif name == "socket_keepalive":
                kw["keepalive"] = _bool(name, value)
            elif name == "client_name":
                kw["client_name"] = value
            elif name == "protocol":
                if value != "2":
                    raise ValueError("this client speaks RESP2 only (protocol=2)")
            elif name == "ssl_cert_reqs":
                if value.lower() not in _CERT_REQS:
                    raise ValueError("use none, optional or required")
                kw["cert_reqs"] = _CERT_REQS[value.lower()]
            elif name == "ssl_check_hostname":
                kw["check_hostname"] = _bool(name, value)
            elif name in ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_ciphers"):
                kw[name[4:]] = value
            elif name not in _IGNORED:
                raise ValueError(f"not an option this client knows (known: {', '.join(_OPTIONS)})")
        except ValueError as e:
            raise ValueError(f"invalid Redis URL option '{name}': {e}") from None
    if kw.get("db", 0) < 0:
        raise ValueError("invalid Redis URL: the database number must be 0 or more")
    if kw.get("username") and kw.get("password") is None:
        raise ValueError("invalid Redis URL: a user name needs a password (redis://user:password@host)")
    return RedisAddress(**kw)


async def open_connection(address: RedisAddress, *, timeout_s: float | None, stall_s: float | None = None,
                          coalesce: bool = True, parser: RespParser | None = None) -> RespConnection:
    """Connect, authenticate, name the client and select the database, all within `timeout_s`.

    Raises `ConnectionLost` (refused, timed out, or the greeting refused: a wrong password)."""
    loop = asyncio.get_running_loop()
    transport: asyncio.BaseTransport | None = None

    def factory() -> RespConnection:
        conn = RespConnection(stall_s=stall_s, coalesce=coalesce, parser=parser)
        conn.description = f"Redis at {address}"
        return conn

    try:
        async with asyncio.timeout(timeout_s):
            if address.path is not None:
                transport, conn = await loop.create_unix_connection(factory, address.path)
            else:
                transport, conn = await loop.create_connection(factory, address.host, address.port,
                                                               ssl=address.ssl_context())
            if address.keepalive:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            greeting: list[tuple[Any, ...]] = []
            if address.password is not None:
                greeting.append(("AUTH", address.username, address.password) if address.username
                                else ("AUTH", address.password))
            if address.client_name:
                greeting.append(("CLIENT", "SETNAME", address.client_name))
            if address.db:
                greeting.append(("SELECT", address.db))
            if greeting:
                answers = await asyncio.gather(*(conn.request(pack_command(g)) for g in greeting),
                                               return_exceptions=True)
                for g, answer in zip(greeting, answers, strict=True):
                    if isinstance(answer, BaseException):
                        raise ConnectionLost(f"{address} refused {g[0]} when connecting: {answer}")
    except TimeoutError:
        if transport is not None:
            transport.abort()
        raise ConnectionLost(f"no connection to {address} within {timeout_s:g} s") from None
    except ConnectionLost:
        if transport is not None:
            transport.abort()
        raise
    except (OSError, ssl.SSLError) as e:
        if transport is not None:
            transport.abort()
        raise ConnectionLost(f"cannot connect to {address}: {e}") from None
    except BaseException:
        if transport is not None:
            transport.abort()
        raise
    return conn
