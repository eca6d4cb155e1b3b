"""Where the exact-match response cache keeps its answers: in this process, or in Redis for replicas.

Each route with a ``cache`` block has its own bounded space: entries expire after the route's
``ttl_s``, and beyond ``max_entries`` or ``max_bytes`` the oldest go first (in-process: the least
recently used). A value is the stored answer as bytes (see `router.engine.admission`); keys come
from `router.core.replay.cache_key` and include the tenant, so tenants never share entries.

A cache that fails (Redis down or slow) is a miss: each lookup waits at most its timeout, the
failure is counted (``router_cache_errors_total{op}``), and writes are dropped.

>>> cache = open_response_cache("redis://127.0.0.1:6379/0?prefix=router:cache")   # doctest: +SKIP
>>> await cache.get("general", key, timeout_s=0.2)                               # doctest: +SKIP
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from router.metering.redis_store import RedisStore, StoreError, split_prefix

if TYPE_CHECKING:
    from router.core.policy import RouteCache

__all__ = ["CacheMetrics", "InProcessCache", "RedisCache", "ResponseCache", "open_response_cache"]


@runtime_checkable
class CacheMetrics(Protocol):
    """What a cache backend reports (`PrometheusMeter` implements it)."""

    def cache_error(self, op: str) -> None:
        """A store call failed or timed out (`op`: get, put)."""
        ...


class ResponseCache(abc.ABC):
    """Stored answers by route and key."""

    remote = False

    def __init__(self, *, metrics: CacheMetrics | None = None):
        self.metrics = metrics

    @abc.abstractmethod
    async def get(self, route: str, key: str, timeout_s: float | None = None) -> bytes | None:
        """The stored value, or None (absent, expired, or the store failed). Never raises."""

    @abc.abstractmethod
    def put(self, route: str, key: str, value: bytes, settings: RouteCache) -> None:
        """Store `value` for the route's `ttl_s`, evicting beyond its bounds. Never blocks, never raises."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Wait for pending writes."""


class _Space:
    __slots__ = ("bytes", "entries")

    def __init__(self) -> None:
        self.entries: collections.OrderedDict[str, tuple[float, bytes]] = collections.OrderedDict()
        self.bytes = 0


class InProcessCache(ResponseCache):
    """An LRU per route in this process's memory, bounded by entries and bytes, entries expiring."""

    def __init__(self, *, metrics: CacheMetrics | None = None, clock: Callable[[], float] = time.monotonic):
        super().__init__(metrics=metrics)
        self.clock = clock
        self._lock = threading.Lock()
        self._spaces: dict[str, _Space] = {}

    async def get(self, route: str, key: str, timeout_s: float | None = None) -> bytes | None:
        with self._lock:
            space = self._spaces.get(route)
            item = space.entries.get(key) if space is not None else None
            if item is None:
                return None
            if item[0] <= self.clock():
                del space.entries[key]  # type: ignore[union-attr]
                space.bytes -= len(item[1])  # type: ignore[union-attr]
                return None
            space.entries.move_to_end(key)  # type: ignore[union-attr]
            return item[1]

    def put(self, route: str, key: str, value: bytes, settings: RouteCache) -> None:
        if settings.max_bytes is not None and len(value) > settings.max_bytes:
            return
        with self._lock:
            space = self._spaces.get(route)
            if space is None:
                space = self._spaces[route] = _Space()
            old = space.entries.pop(key, None)
            if old is not None:
                space.bytes -= len(old[1])
            space.entries[key] = (self.clock() + settings.ttl_s, value)
            space.bytes += len(value)
            while space.entries and (
                    (settings.max_entries is not None and len(space.entries) > settings.max_entries)
                    or (settings.max_bytes is not None and space.bytes > settings.max_bytes)):
                _, (_, dropped) = space.entries.popitem(last=False)
                space.bytes -= len(dropped)

    def size(self, route: str) -> tuple[int, int]:
        """(entries, bytes) held for `route` (for tests and tools)."""
        with self._lock:
            space = self._spaces.get(route)
            return (len(space.entries), space.bytes) if space is not None else (0, 0)


# KEYS: entry, index (zset key -> stored ms), sizes (hash key -> bytes, `__sum`). ARGV: value, now_ms, ttl_ms,
# max_entries (-1: none), max_bytes (-1: none)
_LUA_PUT = """
local entry, idx, sizes = KEYS[1], KEYS[2], KEYS[3]
local value, now, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local max_entries, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[5])
local base = string.sub(entry, 1, #entry - #ARGV[6])
local function drop(members)
  if #members == 0 then return end
  local amounts = redis.call('HMGET', sizes, unpack(members))
  local total = 0
  for _, a in ipairs(amounts) do total = total + (tonumber(a) or 0) end
  redis.call('HDEL', sizes, unpack(members))
  if total ~= 0 then redis.call('HINCRBY', sizes, '__sum', 0 - total) end
  redis.call('ZREM', idx, unpack(members))
  local keys = {}
  for i, m in ipairs(members) do keys[i] = base .. m end
  redis.call('DEL', unpack(keys))
end
while true do
  local old = redis.call('ZRANGEBYSCORE', idx, '-inf', now - ttl, 'LIMIT', 0, 200)
  if #old == 0 then break end
  drop(old)
end
drop({ARGV[6]})
redis.call('SET', entry, value, 'PX', ttl)
redis.call('ZADD', idx, now, ARGV[6])
redis.call('HSET', sizes, ARGV[6], #value)
redis.call('HINCRBY', sizes, '__sum', #value)
while true do
  local n = redis.call('ZCARD', idx)
  local total = tonumber(redis.call('HGET', sizes, '__sum') or '0')
  if not ((max_entries >= 0 and n > max_entries) or (max_bytes >= 0 and total > max_bytes)) then break end
  drop(redis.call('ZRANGE', idx, 0, 0))
end
redis.call('PEXPIRE', idx, ttl + 60000)
redis.call('PEXPIRE', sizes, ttl + 60000)
return 1
"""


class RedisCache(ResponseCache):
    """Answers in Redis, shared by every replica. Keys: ``{prefix}:{<route>}:e:<tenant>:<model>:<digest>``,
    with an index per route (``:idx``, stored times; ``:sizes``, bytes) that enforces the route's
    ``max_entries`` and ``max_bytes`` atomically on every write (oldest stored first out).

    >>> cache = RedisCache("redis://127.0.0.1:6379/0", prefix="router:cache")   # doctest: +SKIP
    """

    remote = True

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "router:cache",
                 metrics: CacheMetrics | None = None, wall: Callable[[], float] = time.time,
                 connect_timeout_s: float = 1.0, op_timeout_s: float = 1.0, retry_s: float = 1.0,
                 background_timeout_s: float = 5.0):
        super().__init__(metrics=metrics)
        self.url, self.prefix, self.wall = url, prefix, wall
        self.background_timeout_s = background_timeout_s
        self.store = RedisStore(url, name="response cache store", on_error=self._error,
                                connect_timeout_s=connect_timeout_s, op_timeout_s=op_timeout_s, retry_s=retry_s)

    def _error(self, op: str) -> None:
        if self.metrics is not None:
            self.metrics.cache_error(op)

    def _base(self, route: str) -> str:
        return f"{self.prefix}:{{{route}}}"

    async def get(self, route: str, key: str, timeout_s: float | None = None) -> bytes | None:
        name = self._base(route) + ":e:" + key
        try:
            return await self.store.call("get", lambda: self.store.command("GET", name), timeout_s)
        except StoreError:
            return None

    def put(self, route: str, key: str, value: bytes, settings: RouteCache) -> None:
        if settings.max_bytes is not None and len(value) > settings.max_bytes:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        base = self._base(route)
        keys = [base + ":e:" + key, base + ":idx", base + ":sizes"]
        args = [value, int(self.wall() * 1000), max(1, int(settings.ttl_s * 1000)),
                -1 if settings.max_entries is None else settings.max_entries,
                -1 if settings.max_bytes is None else settings.max_bytes, key]
        # one EVALSHA sharing a write with others, no task; where it can't go or fails, `_put` tries once
        self.store.send(_LUA_PUT, keys, args, self.background_timeout_s, fallback=lambda: self._put(keys, args))

    async def _put(self, keys: list[str], args: list[object]) -> None:
        with contextlib.suppress(StoreError):   # counted by the store; the answer is simply not cached
            await self.store.call("put", lambda: self.store.script(_LUA_PUT, keys, args), self.background_timeout_s)

    async def aclose(self) -> None:
        await self.store.aclose()


def open_response_cache(url: str | None, **kwargs: object) -> ResponseCache:
    """``redis://...`` (``?prefix=`` sets the key prefix, default ``router:cache``) gives a `RedisCache`;
    None or ``memory`` the in-process one."""
    if url and url.startswith(("redis://", "rediss://", "unix://")):
        base, prefix = split_prefix(url, "router:cache")
        return RedisCache(base, prefix=prefix, **kwargs)  # type: ignore[arg-type]
    if url in (None, "", "memory"):
        return InProcessCache(**kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unknown response cache backend '{url}': use memory or redis://host:port/db")
