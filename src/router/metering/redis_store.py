"""One pipelined Redis connection per event loop, with the failure handling budgets, rate limits and
the response cache share: every call has a timeout, a failure is counted and logged once per
outage, and after two failures in a row calls fail fast for `retry_s` instead of each waiting for
its timeout.

The connection is `router.metering.resp`'s (asyncio only, no redis-py): every call on a loop
shares it, each command written at once and its reply matched in order, so calls never wait for
a connection, and one cut short by its timeout or a cancellation leaves the connection usable.

>>> store = RedisStore("redis://127.0.0.1:6379/0", name="rate limit store")   # doctest: +SKIP
>>> await store.call("admit", lambda: store.script(SCRIPT, ["k"], []), timeout_s=0.5)  # doctest: +SKIP
>>> await store.call("get", lambda: store.command("GET", "k"), timeout_s=0.5)          # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

from router.core.errors import redact
from router.metering.resp import (
    RedisError,
    ReplyError,
    RespConnection,
    open_connection,
    pack_command,
    parse_url,
)

__all__ = ["RedisError", "RedisStore", "ReplyError", "StoreError", "split_prefix"]

log = logging.getLogger("router.metering.redis")

T = TypeVar("T")
_INF = float("inf")
# the loop time by which the current `RedisStore.call` must be answered: its commands carry it to the
# connection, whose one timer fails them then (cheaper than a timer per call; see RespConnection)
_DEADLINE: contextvars.ContextVar[float] = contextvars.ContextVar("router_redis_deadline", default=_INF)
_SHAS: dict[str, str] = {}   # Lua source -> its SHA1, as Redis names a loaded script
# how long a background `send` may wait to share a write with others (a settle: nobody waits for it)
SEND_LATER_S = 0.002


class StoreError(Exception):
    """The store did not answer: an error, a timeout, or failing fast during an outage.
    `started`: the call was made (so its effect may have happened), not refused by failing fast."""

    def __init__(self, message: str, *, started: bool = True):
        super().__init__(message)
        self.started = started


def split_prefix(url: str, default: str) -> tuple[str, str]:
    """(url without its ``prefix`` query parameter, the prefix): ``redis://h:6379/0?prefix=staging:rl``.

    >>> split_prefix("redis://h:6379/0?prefix=x:rl", "router:rl")
    ('redis://h:6379/0', 'x:rl')
    """
    base, _, qs = url.partition("?")
    query = parse_qsl(qs, keep_blank_values=True)
    prefixes = [v for k, v in query if k == "prefix"]
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return base + ("?" + rest if rest else ""), (prefixes[-1] if prefixes else default)


class RedisStore:
    """A Redis connection per event loop and a guard around each call.

    The URL is read at once (`router.metering.resp.parse_url`: a bad one raises ValueError here);
    its ``socket_timeout`` and ``socket_connect_timeout`` options override `op_timeout_s` and
    `connect_timeout_s`. A connection is opened on a loop's first call, within
    `connect_timeout_s`, and again on the call after it failed. Requests waiting `op_timeout_s`
    with no reply at all (a dead or blackholed server) close the connection and fail.

    `on_error(op)` is told of every failed or timed-out call (a metric); `hint` ends the outage's
    log line. Background calls (settles, writes) go through `spawn`, and `aclose()` waits up to
    `close_timeout_s` for them.
    """

    def __init__(self, url: str, *, name: str, on_error: Callable[[str], None] | None = None,
                 connect_timeout_s: float = 1.0, op_timeout_s: float = 1.0, retry_s: float = 1.0,
                 close_timeout_s: float = 5.0, hint: str = "", logger: logging.Logger | None = None):
        self.url, self.name = url, name
        self.address = parse_url(url)
        self.on_error = on_error
        self.connect_timeout_s = self.address.socket_connect_timeout_s or connect_timeout_s
        self.op_timeout_s = self.address.socket_timeout_s or op_timeout_s
        self.retry_s, self.close_timeout_s = retry_s, close_timeout_s
        self.hint = hint or f"failing fast for {retry_s:g} s at a time until it answers"
        self.log = logger or log
        self.errors = 0
        self._consecutive = 0
        self._down_until = 0.0
        self._down_since: float | None = None
        self._last_error = ""
        self._conns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RespConnection] = (
            weakref.WeakKeyDictionary())
        self._connecting: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[RespConnection]] = (
            weakref.WeakKeyDictionary())
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sending: set[asyncio.Future[Any]] = set()   # `send`s awaiting their reply

    # -- commands
    async def command(self, *args: Any) -> Any:
        """One command on this loop's connection: ``await store.command("GET", key)``.

        Raises `ReplyError` when Redis answers with an error, `RedisError` without an answer."""
        loop = asyncio.get_running_loop()
        deadline = _DEADLINE.get()
        conn = self._conns.get(loop)
        if conn is None or conn.lost is not None:
            if deadline < _INF:
                async with asyncio.timeout_at(deadline):
                    conn = await self._connect(loop)
            else:
                conn = await self._connect(loop)
        return await conn.request(pack_command(args), deadline)

    async def script(self, source: str, keys: list[str], args: list[Any]) -> Any:
        """Run the Lua `source` by its SHA1 (EVALSHA: a few bytes on the wire instead of the script),
        loading it with EVAL when this Redis does not know it yet (a restart, a new server)."""
        sha = _SHAS.get(source)
        if sha is None:
            sha = _SHAS[source] = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        try:
            return await self.command("EVALSHA", sha, len(keys), *keys, *args)
        except ReplyError as e:
            if e.code != "NOSCRIPT":
                raise
        return await self.command("EVAL", source, len(keys), *keys, *args)

    def connection(self) -> RespConnection | None:
        """This loop's connection, if one is open (for tests and tools)."""
        conn = self._conns.get(asyncio.get_running_loop())
        return conn if conn is not None and conn.lost is None else None

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> RespConnection:
        task = self._connecting.get(loop)
        if task is None:   # one connect per loop at a time; the calls meanwhile wait for it
            task = loop.create_task(open_connection(self.address, timeout_s=self.connect_timeout_s,
                                                    stall_s=self.op_timeout_s))
            self._connecting[loop] = task
            task.add_done_callback(functools.partial(self._connected, loop))
        return await asyncio.shield(task)

    def _connected(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[RespConnection]) -> None:
        if self._connecting.get(loop) is task:
            del self._connecting[loop]
        if not task.cancelled() and task.exception() is None:   # retrieved either way: no stray warnings
            old = self._conns.get(loop)
            self._conns[loop] = task.result()
            if old is not None:
                old.close()

    # -- the guard
    @property
    def failing_fast(self) -> bool:
        return time.monotonic() < self._down_until

    async def call(self, op: str, make: Callable[[], Awaitable[T]], timeout_s: float | None) -> T:
        """Run ``make()``, whose store commands (`command`, `script`) must be answered within
        `timeout_s` (None: no bound but the connection's); a failure (or failing fast) raises `StoreError`."""
        if self.failing_fast:
            raise StoreError(f"{self.name} unreachable: {self._last_error}", started=False)
        token = None if timeout_s is None else _DEADLINE.set(
            asyncio.get_running_loop().time() + max(timeout_s, 0.0))
        try:
            result = await make()
        except TimeoutError:
            why = f"no answer within {timeout_s:.3g} s" if timeout_s is not None else "timed out"
        except asyncio.CancelledError:
            raise
        except Exception as e:
            why = redact(f"{type(e).__name__}: {e}")[:300]
        else:
            if self._consecutive or self._down_since is not None:
                self._answered()
            return result
        finally:
            if token is not None:
                _DEADLINE.reset(token)
        self._failed(op, why)
        raise StoreError(why)

    def _answered(self) -> None:
        self._consecutive = 0
        if self._down_since is not None:
            self.log.warning("%s answers again (after %.1f s)", self.name, time.monotonic() - self._down_since)
            self._down_since = None

    def _failed(self, op: str, why: str) -> None:
        self.errors += 1
        self._consecutive += 1
        self._last_error = why
        now = time.monotonic()
        if self._consecutive >= 2:  # one slow answer on a busy loop is not an outage; two in a row are
            self._down_until = now + self.retry_s
        if self._down_since is None:
            self._down_since = now
            self.log.error("%s failed during %s: %s (%s)", self.name, op, why, self.hint)
        if self.on_error is not None:
            try:
                self.on_error(op)
            except Exception:  # metrics must not break the caller
                self.log.exception("%s metrics failed", self.name)

    # -- background calls and closing
    def send(self, source: str, keys: list[str], args: list[Any], timeout_s: float, *,
             fallback: Callable[[], Awaitable[Any]], on_reply: Callable[[Any], None] | None = None,
             on_lost: Callable[[], None] | None = None, later_s: float = SEND_LATER_S) -> None:
        """Run the Lua `source` in the background with no task of its own (a settle, on every request).

        The EVALSHA joins this loop's next write, at most `later_s` from now (settles of many
        requests share a send, their replies a read); `on_reply` gets the answer. Where that can't
        be done (no connection yet, a script this process has not run, failing fast) or fails (an
        error, no answer in `timeout_s`, a Redis that lost the script), `fallback()` runs instead, as
        a background task: the caller's own retries, counted and logged. A send still unanswered
        when `aclose` gives up calls `on_lost`."""
        loop = asyncio.get_running_loop()
        conn = self._conns.get(loop)
        sha = _SHAS.get(source)
        if conn is None or conn.lost is not None or sha is None or self.failing_fast:
            self.spawn(fallback())
            return
        fut = conn.request(pack_command(("EVALSHA", sha, len(keys), *keys, *args)), loop.time() + timeout_s,
                           later_s=later_s)
        self._sending.add(fut)
        fut.add_done_callback(functools.partial(self._sent, fallback, on_reply, on_lost))

    def _sent(self, fallback: Callable[[], Awaitable[Any]], on_reply: Callable[[Any], None] | None,
              on_lost: Callable[[], None] | None, fut: asyncio.Future[Any]) -> None:
        self._sending.discard(fut)
        try:
            if fut.cancelled():   # `aclose` gave up on it
                if on_lost is not None:
                    on_lost()
            elif fut.exception() is not None:   # retrieved: no stray warning; the fallback sees its own
                self.spawn(fallback())
            else:
                if self._consecutive or self._down_since is not None:
                    self._answered()
                if on_reply is not None:
                    on_reply(fut.result())
        except Exception:   # a caller's callback must not break the loop's other callbacks
            self.log.exception("%s: a background call's callback failed", self.name)

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run `coro` in the background on the running loop (kept until done, awaited by `aclose`)."""
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout_s: float | None = None, *, cancel: bool = False) -> bool:
        """Wait for this loop's background calls (`send`s, their fallbacks, `spawn`ed tasks) for at
        most `timeout_s`; True when none is left. With `cancel`, the ones still running then are
        cancelled (a send's `on_lost` is called)."""
        loop = asyncio.get_running_loop()
        deadline = _INF if timeout_s is None else loop.time() + timeout_s
        conn = self._conns.get(loop)
        if conn is not None:
            conn.flush()   # background sends waiting for a later write go now
        while True:   # a send that fails starts its fallback task: wait for those too
            waits: list[asyncio.Future[Any]] = [t for t in self._tasks if t.get_loop() is loop and not t.done()]
            waits += [f for f in self._sending if f.get_loop() is loop]
            if not waits:
                return True
            _, pending = await asyncio.wait(waits, timeout=None if deadline == _INF else max(0.0, deadline - loop.time()))
            await asyncio.sleep(0)   # the done sends' callbacks run (and may spawn a fallback)
            if pending:
                if cancel:
                    for t in pending:
                        t.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
                    await asyncio.sleep(0)   # the cancelled sends' callbacks (`on_lost`) run
                return False

    async def aclose(self) -> None:
        """Wait up to `close_timeout_s` for background calls, then close this loop's connection."""
        loop = asyncio.get_running_loop()
        await self.drain(self.close_timeout_s, cancel=True)
        connecting = self._connecting.pop(loop, None)
        if connecting is not None:
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
        conn = self._conns.pop(loop, None)
        if conn is not None:
            conn.close()
            await conn.wait_closed()
