"""One Redis connection per event loop, with the failure handling the rate limiter and the response
cache share: every call has a timeout, a failure is counted and logged once per outage, and after
two failures in a row calls fail fast for `retry_s` instead of each waiting for its timeout.

>>> store = RedisStore("redis://127.0.0.1:6379/0", name="rate limit store")   # doctest: +SKIP
>>> await store.call("admit", store.client().eval(SCRIPT, 1, "k"), timeout_s=0.5)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
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
    writes) go through `spawn`, and `aclose()` waits up to `close_timeout_s` for them.
    """

    def __init__(self, url: str, *, name: str, on_error: Callable[[str], None] | None = None,
                 connect_timeout_s: float = 1.0, op_timeout_s: float = 1.0, retry_s: float = 1.0,
                 close_timeout_s: float = 5.0):
        self.url, self.name = url, name
        self.on_error = on_error
        self.connect_timeout_s, self.op_timeout_s = connect_timeout_s, op_timeout_s
        self.retry_s, self.close_timeout_s = retry_s, close_timeout_s
        self.errors = 0
        self._consecutive = 0
        self._down_until = 0.0
        self._down_since: float | None = None
        self._last_error = ""
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._tasks: set[asyncio.Task[Any]] = set()

    def client(self) -> Any:
        import redis.asyncio as aioredis  # redis is imported only where it is used

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            # no retries inside the client: the caller's timeout is the only one
            client = aioredis.Redis.from_url(self.url, socket_timeout=self.op_timeout_s,
                                             socket_connect_timeout=self.connect_timeout_s,
                                             retry=Retry(NoBackoff(), 0))
            self._clients[loop] = client
        return client

    @property
    def failing_fast(self) -> bool:
        return time.monotonic() < self._down_until

    async def call(self, op: str, make: Callable[[], Awaitable[T]], timeout_s: float | None) -> T:
        """Run ``make()`` with a timeout; a failure (or failing fast) raises `StoreError`."""
        if self.failing_fast:
            raise StoreError(f"{self.name} unreachable: {self._last_error}")
        try:
            async with asyncio.timeout(max(timeout_s, 0.0) if timeout_s is not None else None):
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
