"""One Redis connection per event loop, with the failure handling the rate limiter and the response
cache share: every call has a timeout, a failure is counted and logged once per outage, and after
two failures in a row calls fail fast for `retry_s` instead of each waiting for its timeout.

>>> store = RedisStore("redis://127.0.0.1:6379/0", name="rate limit store")   # doctest: +SKIP
>>> await store.call("admit", lambda: store.script(SCRIPT, ["k"], []), timeout_s=0.5)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

from router.core.errors import redact

__all__ = ["RedisStore", "StoreError", "split_prefix"]

log = logging.getLogger("router.metering.redis")

T = TypeVar("T")
_SHAS: dict[str, str] = {}   # Lua source -> its SHA1, as Redis names a loaded script


class StoreError(Exception):
    """The store did not answer: an error, a timeout, or failing fast during an outage."""


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
    """Redis clients (one per event loop) and a guard around each call.

    `on_error(op)` is told of every failed or timed-out call (a metric). Background calls (settles,
    writes) go through `spawn`, and `aclose()` waits up to `close_timeout_s` for them. At most
    `max_connections` calls per loop at once, each on its own connection; further calls wait their
    turn, first come first served, within their own timeout.
    """

    def __init__(self, url: str, *, name: str, on_error: Callable[[str], None] | None = None,
                 connect_timeout_s: float = 1.0, op_timeout_s: float = 1.0, retry_s: float = 1.0,
                 close_timeout_s: float = 5.0, max_connections: int = 32):
        self.url, self.name = url, name
        self.max_connections = max_connections   # per event loop; more calls at once wait their turn
        self.on_error = on_error
        self.connect_timeout_s, self.op_timeout_s = connect_timeout_s, op_timeout_s
        self.retry_s, self.close_timeout_s = retry_s, close_timeout_s
        self.errors = 0
        self._consecutive = 0
        self._down_until = 0.0
        self._down_since: float | None = None
        self._last_error = ""
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary())   # one per loop: a call holds one while it uses a connection
        self._tasks: set[asyncio.Task[Any]] = set()

    def client(self) -> Any:
        import redis.asyncio as aioredis  # redis is imported only where it is used

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            # No retries inside the client: the caller's timeout is the only one. Calls take turns for
            # the pool's connections in `call` (first come, first served), so the pool is never asked
            # for more than it has (redis-py's fails such a call at once: MaxConnectionsError).
            pool = aioredis.ConnectionPool.from_url(
                self.url, max_connections=self.max_connections, socket_timeout=self.op_timeout_s,
                socket_connect_timeout=self.connect_timeout_s, retry=Retry(NoBackoff(), 0))
            client = aioredis.Redis.from_pool(pool)
            self._clients[loop] = client
            self._turns[loop] = asyncio.Semaphore(self.max_connections)
        return client

    def turn(self) -> asyncio.Semaphore:
        """This loop's turns for the pool's connections: hold one while a call uses a connection."""
        self.client()
        return self._turns[asyncio.get_running_loop()]

    @property
    def failing_fast(self) -> bool:
        return time.monotonic() < self._down_until

    async def call(self, op: str, make: Callable[[], Awaitable[T]], timeout_s: float | None) -> T:
        """Run ``make()`` with a timeout; a failure (or failing fast) raises `StoreError`."""
        if self.failing_fast:
            raise StoreError(f"{self.name} unreachable: {self._last_error}")
        try:
            async with asyncio.timeout(max(timeout_s, 0.0) if timeout_s is not None else None):
                async with self.turn():   # FIFO: no call waits behind later ones
                    result = await make()
        except TimeoutError:
            why = f"no answer within {timeout_s:.3g} s"
        except asyncio.CancelledError:
            raise
        except Exception as e:
            why = redact(f"{type(e).__name__}: {e}")[:300]
        else:
            self._consecutive = 0
            if self._down_since is not None:
                log.warning("%s answers again (after %.1f s)", self.name, time.monotonic() - self._down_since)
                self._down_since = None
            return result
        self._failed(op, why)
        raise StoreError(why)

    def _failed(self, op: str, why: str) -> None:
        self.errors += 1
        self._consecutive += 1
        self._last_error = why
        now = time.monotonic()
        if self._consecutive >= 2:  # one slow answer on a busy loop is not an outage; two in a row are
            self._down_until = now + self.retry_s
        if self._down_since is None:
            self._down_since = now
            log.error("%s failed during %s: %s (failing fast for %g s at a time until it answers)",
                      self.name, op, why, self.retry_s)
        if self.on_error is not None:
            try:
                self.on_error(op)
            except Exception:  # metrics must not break the caller
                log.exception("%s metrics failed", self.name)

    async def script(self, source: str, keys: list[str], args: list[Any]) -> Any:
        """Run the Lua `source` by its SHA1 (EVALSHA: a few bytes on the wire instead of the script),
        loading it with EVAL when this Redis does not know it yet (a restart, a new server)."""
        from redis.exceptions import NoScriptError

        client = self.client()
        sha = _SHAS.get(source)
        if sha is None:
            sha = _SHAS[source] = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        try:
            return await client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(source, len(keys), *keys, *args)

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run `coro` in the background on the running loop (kept until done, awaited by `aclose`)."""
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Wait up to `close_timeout_s` for background calls, then close this loop's client."""
        tasks = [t for t in self._tasks if t.get_loop() is asyncio.get_running_loop()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.close_timeout_s)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(RuntimeError):
            client = self._clients.pop(asyncio.get_running_loop(), None)
            if client is not None:
                await client.aclose()
