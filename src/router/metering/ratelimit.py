"""Rate limits: requests per minute, tokens per minute and requests in flight, per tenant, per key,
and per route or model, checked before a request is sent and settled when it ends.

A request counts against *scopes*: its tenant, the API key it used (when the tenant sets
``per_key``), and its route or model alias (when the tenant's ``routes`` names it). `admit` checks
every scope and, only if each has room, records the request in all of them at once:

- **requests**: a sliding window of one minute; a request counts from the moment it is admitted.
- **tokens**: input + output, a sliding window of one minute. The request's estimate (prompt
  estimate + ``max_tokens``, else the expected output) is reserved at admission; `settle` replaces
  it with the actual tokens, counted at the time the request ended.
- **concurrent**: requests admitted and not yet settled (a lease that a crashed replica never
  settled expires after `lease_s`).

Two backends behind one interface: `InProcessRateLimiter` (one process) and `RedisRateLimiter`
(one Lua script per check, atomic in Redis, so replicas sharing a Redis share the limits
exactly). A store that does not answer follows the policy's ``metering.rate_limit_unavailable``:
``fail_open`` (default) admits the request unlimited, ``fail_closed`` refuses it with a 503.

>>> limiter = open_rate_limiter("redis://127.0.0.1:6379/0?prefix=router:rl")    # doctest: +SKIP
>>> lease = await limiter.admit(policy, "acme", None, ["general"], 1200, timeout_s=0.5)  # doctest: +SKIP
>>> limiter.settle(lease, 950)                                                  # doctest: +SKIP

`usage` reads a scope's counts in the current window without counting anything (the status page
shows them): ``await limiter.tenant_usage(policy, "acme")``.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from router.core.errors import RateLimited, RateLimitUnavailable
from router.core.policy import key_id_of
from router.metering.redis_store import RedisStore, StoreError, split_prefix

if TYPE_CHECKING:
    from router.core.policy import Policy, RateLimit

__all__ = ["InProcessRateLimiter", "Lease", "RateLimitMetrics", "RateLimiter", "RedisRateLimiter", "Scope",
           "ScopeUsage", "Usage", "format_reset", "open_rate_limiter", "ratelimit_headers", "scopes_for",
           "tightest"]

log = logging.getLogger("router.metering.ratelimit")

WINDOW_S = 60.0   # the limits are per minute


@runtime_checkable
class RateLimitMetrics(Protocol):
    """What a rate limiter reports (`PrometheusMeter` implements it)."""

    def rate_limited(self, tenant: str, kind: str) -> None:
        """A request was refused by a `kind` limit: requests, tokens or concurrent."""
        ...

    def rate_limit_error(self, op: str) -> None:
        """A store call failed or timed out (`op`: admit, settle)."""
        ...


@dataclass(frozen=True, slots=True)
class Scope:
    """One set of limits a request counts against; `key` names the tenant and what is limited."""

    key: str
    what: str              # for messages: "tenant acme", "route reasoning of tenant acme", ...
    limit: RateLimit
    label: str = "tenant"  # for the status page: "tenant", "key <id>", or the route or model's name


@dataclass(slots=True)
class Lease:
    """An admitted request: what it reserved, and each scope's counts after its admission."""

    id: str
    tenant: str
    scopes: tuple[Scope, ...]
    tokens: int
    numbers: Sequence[_Numbers] = ()

    @property
    def settles(self) -> bool:
        """Whether settling changes anything: a scope limits tokens (the estimate is replaced) or
        requests in flight (the slot is freed)."""
        return any(s.limit.tokens_per_minute is not None or s.limit.concurrent is not None for s in self.scopes)

    @property
    def headers(self) -> dict[str, str]:
        """The x-ratelimit-* headers of the admission (the tightest scope of each kind)."""
        return _headers(self.scopes, self.numbers) if self.numbers else {}

    @property
    def state(self) -> dict[str, tuple[int, int, float]]:
        """`tightest` at admission: ``{"requests": (limit, remaining, reset_s), "tokens": (...)}``."""
        return tightest(self.scopes, self.numbers) if self.numbers else {}


def scopes_for(policy: Policy, tenant: str | None, key_id: str | None, targets: Sequence[str] = ()
               ) -> tuple[Scope, ...]:
    """The scopes a request of `tenant` counts against: the tenant's, its key's (`key_id`), and those
    of the route and the model alias it goes to (`targets`) that the tenant's ``routes`` names."""
    ten = policy.tenants.get(tenant or "")
    limits = ten.rate_limits if ten is not None else None
    if limits is None:
        return ()
    out = []
    if limits.tenant.limited:
        out.append(Scope(ten.name, f"tenant '{ten.name}'", limits.tenant))
    if limits.per_key is not None and limits.per_key.limited and key_id:
        out.append(_key_scope(ten.name, key_id, limits.per_key, f"this API key of tenant '{ten.name}'"))
    for name in dict.fromkeys(targets):
        rl = limits.routes.get(name)
        if rl is not None and rl.limited:
            out.append(Scope(f"{ten.name}:r:{name}", f"'{name}' for tenant '{ten.name}'", rl, name))
    return tuple(out)


def _key_scope(tenant: str, key_id: str, limit: RateLimit, what: str) -> Scope:
    return Scope(f"{tenant}:k:{key_id}", what, limit, f"key {key_id}")


@dataclass(frozen=True, slots=True)
class Usage:
    """One scope's counts in the current window (the last minute), as `RateLimiter.usage` reads them."""

    requests: int               # requests admitted in the window
    tokens: int                 # tokens counted in it: reservations of requests in flight, actual tokens of ended ones
    concurrent: int             # requests admitted and not yet settled
    requests_reset_s: float     # until the oldest counted request leaves the window (0: none counted)
    tokens_reset_s: float       # until the oldest counted tokens leave it


@dataclass(frozen=True, slots=True)
class ScopeUsage:
    """A scope with its limits and its live counts (`RateLimiter.tenant_usage`)."""

    scope: Scope
    usage: Usage


def format_reset(seconds: float) -> str:
    """A duration as OpenAI writes ``x-ratelimit-reset-*``: ``20ms``, ``1.5s``, ``6m0s``.

    >>> format_reset(0.02), format_reset(1.5), format_reset(59.99), format_reset(360), format_reset(0)
    ('20ms', '1.5s', '1m0s', '6m0s', '0s')
    """
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    tenths = math.ceil(seconds * 10) / 10
    if tenths < 60:
        return f"{tenths:g}s"
    whole = math.ceil(seconds)
    return f"{whole // 60}m{whole % 60}s"


@dataclass(slots=True)
class _Numbers:
    """One scope's state after a check: used counts and when the oldest entries leave the window."""

    requests: int
    tokens: int
    concurrent: int
    requests_reset_s: float     # until the oldest counted request leaves the window
    tokens_reset_s: float       # until the oldest counted tokens leave it
    wait_s: float | None = None  # refused: until the request would fit (None: never, or unknown)


def tightest(scopes: Sequence[Scope], numbers: Sequence[_Numbers]) -> dict[str, tuple[int, int, float]]:
    """For requests and for tokens per minute, the scope with the least left: ``{"requests": (limit,
    remaining, seconds until the oldest counted entry leaves the window), "tokens": (...)}``; a kind
    no scope limits is absent."""
    out: dict[str, tuple[int, int, float]] = {}
    req = [(s.limit.requests_per_minute - n.requests, s.limit.requests_per_minute, n.requests_reset_s)
           for s, n in zip(scopes, numbers, strict=True) if s.limit.requests_per_minute is not None]
    if req:
        left, limit, reset = min(req, key=lambda t: t[0])
        out["requests"] = (limit, max(0, left), reset)
    tok = [(s.limit.tokens_per_minute - n.tokens, s.limit.tokens_per_minute, n.tokens_reset_s)
           for s, n in zip(scopes, numbers, strict=True) if s.limit.tokens_per_minute is not None]
    if tok:
        left, limit, reset = min(tok, key=lambda t: t[0])
        out["tokens"] = (limit, max(0, left), reset)
    return out


def ratelimit_headers(state: Mapping[str, tuple[int, int, float]]) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for `tightest`'s result: limit, remaining and reset (``1.5s``,
    ``6m0s``) for requests and for tokens."""
    h: dict[str, str] = {}
    for kind, (limit, left, reset) in state.items():
        h[f"x-ratelimit-limit-{kind}"] = str(limit)
        h[f"x-ratelimit-remaining-{kind}"] = str(left)
        h[f"x-ratelimit-reset-{kind}"] = format_reset(reset)
    return h


def _headers(scopes: Sequence[Scope], numbers: Sequence[_Numbers]) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the tightest scope of each kind."""
    return ratelimit_headers(tightest(scopes, numbers))


def _refusal(tenant: str, scopes: Sequence[Scope], numbers: Sequence[_Numbers], index: int, kind: str,
             tokens: int) -> RateLimited:
    scope, n = scopes[index], numbers[index]
    headers = _headers(scopes, numbers)
    limit = scope.limit
    retry = True
    if kind == "requests":
        what = f"{limit.requests_per_minute} requests per minute"
    elif kind == "tokens":
        what = f"{limit.tokens_per_minute} tokens per minute"
        if n.wait_s is None:  # larger than the whole limit: waiting cannot help
            retry = False
            what += f"; this request alone is estimated at {tokens} tokens (lower max_tokens)"
    else:
        what = f"{limit.concurrent} requests in flight"
    wait = n.wait_s if n.wait_s is not None else (1.0 if kind == "concurrent" else None)
    if wait is not None:
        headers["retry-after"] = str(max(1, math.ceil(wait)))
        headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
        what += f"; try again in {format_reset(wait)}"
    headers["x-should-retry"] = "true" if retry else "false"
    return RateLimited(f"rate limit reached for {scope.what}: {what}", kind=kind, headers=headers, tenant=tenant)


class RateLimiter(abc.ABC):
    """Where rate-limit counters live. The engine calls `admit` before a request is sent and
    `settle` when it ends, whatever ended it.

    `metrics` (e.g. a `PrometheusMeter`) is told of every refusal and store failure; `wall` is
    the clock (Unix seconds), injectable for tests.
    """

    remote = False

    def __init__(self, *, metrics: RateLimitMetrics | None = None, wall: Callable[[], float] = time.time,
                 lease_s: float = 900.0):
        self.metrics = metrics
        self.wall = wall
        self.lease_s = lease_s   # an unsettled in-flight slot is freed after this long (crashed replica)
        self._scopes: tuple[Any, dict[Any, tuple[Scope, ...]]] = (None, {})   # (policy, remembered scopes)

    def scopes(self, policy: Policy, tenant: str | None, key_id: str | None, targets: Sequence[str]
               ) -> tuple[Scope, ...]:
        """`scopes_for`, remembered per policy (a reload starts afresh)."""
        known, cache = self._scopes
        if known is not policy:
            cache = {}
            self._scopes = (policy, cache)
        key = (tenant, key_id, tuple(targets))
        found = cache.get(key)
        if found is None:
            if len(cache) > 10_000:   # keys and routes are bounded by the policy; this only guards surprises
                cache.clear()
            found = cache[key] = scopes_for(policy, tenant, key_id, targets)
        return found

    async def usage(self, scopes: Sequence[Scope], *, timeout_s: float | None = None) -> list[Usage]:
        """Each scope's counts in the current window, read without admitting or counting anything.
        Raises `StoreError` when the store does not answer (within `timeout_s`)."""
        if not scopes:
            return []
        return await self._usage(scopes, timeout_s)

    async def tenant_usage(self, policy: Policy, tenant: str, *, timeout_s: float | None = None
                           ) -> list[ScopeUsage]:
        """The live counts of every scope of `tenant` the policy limits: the tenant's own, each of its
        configured keys' (per ``per_key``), each route or model its ``routes`` names."""
        ten = policy.tenants.get(tenant)
        limits = ten.rate_limits if ten is not None else None
        if ten is None or limits is None:
            return []
        scopes = list(scopes_for(policy, tenant, None, list(limits.routes)))
        if limits.per_key is not None and limits.per_key.limited:
            # the proxy's key id of each configured key: the start of its hash (never the key)
            at = 1 if scopes and scopes[0].key == ten.name else 0
            scopes[at:at] = [_key_scope(ten.name, kid, limits.per_key, f"key {kid} of tenant '{ten.name}'")
                             for kid in map(key_id_of, ten.keys)]
        found = await self.usage(scopes, timeout_s=timeout_s)
        return [ScopeUsage(s, u) for s, u in zip(scopes, found, strict=True)]

    @abc.abstractmethod
    async def _usage(self, scopes: Sequence[Scope], timeout_s: float | None) -> list[Usage]:
        """Read each scope's counts, changing nothing but expired entries."""

    async def admit(self, policy: Policy, tenant: str | None, key_id: str | None, targets: Sequence[str],
                    tokens: int, *, count_request: bool = True, timeout_s: float | None = None) -> Lease | None:
        """Admit a request estimated at `tokens` (input + output); None when no limit applies or the
        store is down and the policy fails open. Raises `RateLimited` (429) when a limit is reached,
        `RateLimitUnavailable` (503) when the store is down and the policy fails closed.

        `count_request=False` (a cache hit the policy does not count) checks and counts nothing."""
        scopes = self.scopes(policy, tenant, key_id, targets)
        if not scopes or not count_request:
            return None
        rid = os.urandom(8).hex()
        tokens = max(0, int(tokens))
        try:
            ok, index, kind, numbers = await self._admit(scopes, rid, tokens, timeout_s)
        except StoreError as e:
            if policy.metering.rate_limit_unavailable == "fail_closed":
                raise RateLimitUnavailable(f"the rate-limit store did not answer ({e}); requests of tenants with "
                                           "rate limits are refused until it does (policy: "
                                           "metering.rate_limit_unavailable: fail_closed)") from None
            return None
        name = tenant or ""
        if not ok:
            self._tell(name, kind)
            raise _refusal(name, scopes, numbers, index, kind, tokens)
        return Lease(rid, name, scopes, tokens, numbers)

    def _tell(self, tenant: str, kind: str) -> None:
        if self.metrics is not None:
            try:
                self.metrics.rate_limited(tenant, kind)
            except Exception:  # metrics must not break limits
                log.exception("rate-limit metrics failed")

    @abc.abstractmethod
    async def _admit(self, scopes: Sequence[Scope], rid: str, tokens: int, timeout_s: float | None
                     ) -> tuple[bool, int, str, list[_Numbers]]:
        """Check and record atomically: (admitted, refusing scope's index, kind, numbers per scope)."""

    @abc.abstractmethod
    def settle(self, lease: Lease, tokens: int) -> None:
        """The request ended having used `tokens`: replace its reservation, free its slot. Never raises."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Wait for pending settlements."""


# ----------------------------------------------------------------------------- in-process


class _Counters:
    """One scope's counters in memory: request times, token entries, leases in flight."""

    __slots__ = ("inflight", "requests", "tokens", "token_log", "token_sum")

    def __init__(self) -> None:
        self.requests: collections.deque[float] = collections.deque()
        self.token_log: collections.deque[tuple[float, str]] = collections.deque()  # (time, id), oldest first
        self.tokens: dict[str, tuple[float, int]] = {}   # id -> (time counted, tokens)
        self.token_sum = 0
        self.inflight: set[str] = set()

    def purge(self, cutoff: float) -> None:
        """Forget what left the window; entries a settle moved (stale) are dropped as they reach the front."""
        requests = self.requests
        while requests and requests[0] <= cutoff:
            requests.popleft()
        log_, tokens = self.token_log, self.tokens
        while log_:
            t, rid = log_[0]
            entry = tokens.get(rid)
            if entry is not None and entry[0] == t:
                if t > cutoff:
                    break
                self.token_sum -= entry[1]
                del tokens[rid]
            log_.popleft()

    def oldest_tokens(self) -> float | None:
        """When the oldest tokens still counted were counted (after a purge, the front is never stale)."""
        return self.token_log[0][0] if self.token_log else None

    def token_wait(self, limit: int, want: int, now: float, window: float) -> float | None:
        """Seconds until `want` more tokens fit under `limit`, or None when they never can."""
        if want > limit:
            return None
        excess = self.token_sum + want - limit
        for t, rid in self.token_log:
            entry = self.tokens.get(rid)
            if entry is None or entry[0] != t:
                continue
            excess -= entry[1]
            if excess <= 0:
                return max(0.0, t + window - now)
        return window


class InProcessRateLimiter(RateLimiter):
    """Rate limits in this process's memory: exact for one process (one worker of `router serve`)."""

    def __init__(self, *, metrics: RateLimitMetrics | None = None, wall: Callable[[], float] = time.time,
                 window_s: float = WINDOW_S):
        super().__init__(metrics=metrics, wall=wall)
        self.window_s = window_s
        self._lock = threading.Lock()
        self._counters: dict[str, _Counters] = {}

    def _numbers(self, c: _Counters, now: float, wait: float | None = None) -> _Numbers:
        w = self.window_s
        req_reset = c.requests[0] + w - now if c.requests else 0.0
        oldest = c.oldest_tokens()
        tok_reset = oldest + w - now if oldest is not None else 0.0
        return _Numbers(len(c.requests), c.token_sum, len(c.inflight), max(0.0, req_reset), max(0.0, tok_reset), wait)

    async def _admit(self, scopes: Sequence[Scope], rid: str, tokens: int, timeout_s: float | None
                     ) -> tuple[bool, int, str, list[_Numbers]]:
        now = self.wall()
        w = self.window_s
        with self._lock:
            counters = []
            for s in scopes:
                c = self._counters.get(s.key)
                if c is None:
                    c = self._counters[s.key] = _Counters()
                c.purge(now - w)
                counters.append(c)
            for i, (s, c) in enumerate(zip(scopes, counters, strict=True)):
                lim = s.limit
                kind, wait = "", None
                if lim.requests_per_minute is not None and len(c.requests) + 1 > lim.requests_per_minute:
                    kind = "requests"
                    n = len(c.requests) - lim.requests_per_minute   # this many must leave first
                    wait = c.requests[n] + w - now if 0 <= n < len(c.requests) else w
                elif (lim.tokens_per_minute is not None and tokens > 0
                      and c.token_sum + tokens > lim.tokens_per_minute):
                    kind = "tokens"
                    wait = c.token_wait(lim.tokens_per_minute, tokens, now, w)
                elif lim.concurrent is not None and len(c.inflight) + 1 > lim.concurrent:
                    kind = "concurrent"
                if kind:
                    numbers = [self._numbers(x, now, wait if j == i else None) for j, x in enumerate(counters)]
                    return False, i, kind, numbers
            for s, c in zip(scopes, counters, strict=True):
                lim = s.limit
                if lim.requests_per_minute is not None:
                    c.requests.append(now)
                if lim.tokens_per_minute is not None:
                    c.tokens[rid] = (now, tokens)
                    c.token_log.append((now, rid))
                    c.token_sum += tokens
                if lim.concurrent is not None:
                    c.inflight.add(rid)
            return True, -1, "", [self._numbers(c, now) for c in counters]

    async def _usage(self, scopes: Sequence[Scope], timeout_s: float | None) -> list[Usage]:
        now = self.wall()
        out = []
        with self._lock:
            for s in scopes:
                c = self._counters.get(s.key)
                if c is None:
                    out.append(Usage(0, 0, 0, 0.0, 0.0))
                    continue
                c.purge(now - self.window_s)   # only what left the window: what admit would forget too
                n = self._numbers(c, now)
                out.append(Usage(n.requests, n.tokens, n.concurrent, n.requests_reset_s, n.tokens_reset_s))
        return out

    def settle(self, lease: Lease, tokens: int) -> None:
        now = self.wall()
        tokens = max(0, int(tokens))
        with self._lock:
            for s in lease.scopes:
                c = self._counters.get(s.key)
                if c is None:
                    continue
                c.inflight.discard(lease.id)
                if s.limit.tokens_per_minute is None:
                    continue
                old = c.tokens.pop(lease.id, None)
                if old is not None:
                    c.token_sum -= old[1]
                if tokens:   # counted when the request ended
                    c.tokens[lease.id] = (now, tokens)
                    c.token_log.append((now, lease.id))
                    c.token_sum += tokens


# ----------------------------------------------------------------------------- Redis

# Per scope, four keys: requests (zset id -> ms), tokens (zset id -> ms), token amounts (hash id ->
# tokens, plus `__sum`), leases in flight (zset id -> expiry ms). Scores are integer milliseconds.
_LUA_COMMON = """
local function purge_tokens(tz, th, cutoff)
  while true do
    local old = redis.call('ZRANGEBYSCORE', tz, '-inf', cutoff, 'LIMIT', 0, 500)
    if #old == 0 then return end
    local amounts = redis.call('HMGET', th, unpack(old))
    local total = 0
    for _, a in ipairs(amounts) do total = total + (tonumber(a) or 0) end
    redis.call('HDEL', th, unpack(old))
    if total ~= 0 then redis.call('HINCRBY', th, '__sum', 0 - total) end
    redis.call('ZREM', tz, unpack(old))
  end
end
local function oldest(z)
  local o = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  if #o == 0 then return nil end
  return tonumber(o[2])
end
"""

# KEYS: 4 per scope. ARGV: now_ms, window_ms, id, tokens, lease_ms, ttl_s, then per scope rpm, tpm, conc (-1: none).
# Returns {ok, index, kind, wait_ms, then per scope: requests, tokens, concurrent, requests_reset_ms, tokens_reset_ms}
_LUA_ADMIT = _LUA_COMMON + """
local now, window, id, want = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local lease, ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
local n = #KEYS / 4
local cutoff = now - window
local state = {}
local fail, kind, wait = 0, '', -1
for i = 1, n do
  local rz, tz, th, cz = KEYS[4*i-3], KEYS[4*i-2], KEYS[4*i-1], KEYS[4*i]
  local rpm, tpm, cmax = tonumber(ARGV[4+3*i]), tonumber(ARGV[5+3*i]), tonumber(ARGV[6+3*i])
  redis.call('ZREMRANGEBYSCORE', rz, '-inf', cutoff)
  purge_tokens(tz, th, cutoff)
  redis.call('ZREMRANGEBYSCORE', cz, '-inf', now)
  local reqs = redis.call('ZCARD', rz)
  local toks = tonumber(redis.call('HGET', th, '__sum') or '0')
  local conc = redis.call('ZCARD', cz)
  state[i] = {reqs, toks, conc}
  if fail == 0 then
    if rpm >= 0 and reqs + 1 > rpm then
      fail, kind = i, 'requests'
      local k = reqs - rpm
      local o = redis.call('ZRANGE', rz, k, k, 'WITHSCORES')
      if #o > 0 then wait = tonumber(o[2]) + window - now else wait = window end
    elseif tpm >= 0 and want > 0 and toks + want > tpm then
      fail, kind = i, 'tokens'
      if want <= tpm then
        local excess = toks + want - tpm
        wait = window
        local ids = redis.call('ZRANGE', tz, 0, -1, 'WITHSCORES')
        for j = 1, #ids, 2 do
          excess = excess - (tonumber(redis.call('HGET', th, ids[j]) or '0'))
          if excess <= 0 then wait = tonumber(ids[j+1]) + window - now break end
        end
      end
    elseif cmax >= 0 and conc + 1 > cmax then
      fail, kind = i, 'concurrent'
    end
  end
end
if fail == 0 then
  for i = 1, n do
    local rz, tz, th, cz = KEYS[4*i-3], KEYS[4*i-2], KEYS[4*i-1], KEYS[4*i]
    local rpm, tpm, cmax = tonumber(ARGV[4+3*i]), tonumber(ARGV[5+3*i]), tonumber(ARGV[6+3*i])
    if rpm >= 0 then
      redis.call('ZADD', rz, now, id)
      redis.call('EXPIRE', rz, ttl)
      state[i][1] = state[i][1] + 1
    end
    if tpm >= 0 then
      redis.call('ZADD', tz, now, id)
      redis.call('HSET', th, id, want)
      redis.call('HINCRBY', th, '__sum', want)
      redis.call('EXPIRE', tz, ttl)
      redis.call('EXPIRE', th, ttl)
      state[i][2] = state[i][2] + want
    end
    if cmax >= 0 then
      redis.call('ZADD', cz, now + lease, id)
      redis.call('EXPIRE', cz, ttl)
      state[i][3] = state[i][3] + 1
    end
  end
end
local out = {fail == 0 and 1 or 0, fail, kind, tostring(wait)}
for i = 1, n do
  local rz, tz = KEYS[4*i-3], KEYS[4*i-2]
  local ro, to = oldest(rz), oldest(tz)
  out[#out+1] = state[i][1]
  out[#out+1] = state[i][2]
  out[#out+1] = state[i][3]
  out[#out+1] = ro and (ro + window - now) or 0
  out[#out+1] = to and (to + window - now) or 0
end
return out
"""

# Read-only: each scope's counts in the window, nothing written (expired entries are skipped, not purged).
# KEYS: 4 per scope. ARGV: now_ms, window_ms. Returns per scope: requests, tokens, concurrent,
# requests_reset_ms, tokens_reset_ms.
_LUA_USAGE = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local cutoff = now - window
local out = {}
for i = 1, #KEYS / 4 do
  local rz, tz, th, cz = KEYS[4*i-3], KEYS[4*i-2], KEYS[4*i-1], KEYS[4*i]
  local reqs = redis.call('ZCOUNT', rz, '(' .. cutoff, '+inf')
  local ids = redis.call('ZRANGEBYSCORE', tz, '(' .. cutoff, '+inf', 'WITHSCORES')
  local toks = 0
  for j = 1, #ids, 2 do toks = toks + (tonumber(redis.call('HGET', th, ids[j]) or '0')) end
  local conc = redis.call('ZCOUNT', cz, '(' .. now, '+inf')
  local ro = redis.call('ZRANGEBYSCORE', rz, '(' .. cutoff, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  out[#out+1] = reqs
  out[#out+1] = toks
  out[#out+1] = conc
  out[#out+1] = #ro > 0 and (tonumber(ro[2]) + window - now) or 0
  out[#out+1] = #ids > 0 and (tonumber(ids[2]) + window - now) or 0
end
return out
"""

# KEYS: 4 per scope. ARGV: now_ms, id, tokens, ttl_s, then per scope: 1 when it limits tokens, else 0.
_LUA_SETTLE = """
local now, id, used, ttl = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 1, #KEYS / 4 do
  local tz, th, cz = KEYS[4*i-2], KEYS[4*i-1], KEYS[4*i]
  redis.call('ZREM', cz, id)
  if ARGV[4+i] == '1' then
    local old = redis.call('HGET', th, id)
    if old then
      if tonumber(old) ~= 0 then redis.call('HINCRBY', th, '__sum', 0 - tonumber(old)) end
      redis.call('HDEL', th, id)
      redis.call('ZREM', tz, id)
    end
    if used > 0 then
      redis.call('ZADD', tz, now, id)
      redis.call('HSET', th, id, used)
      redis.call('HINCRBY', th, '__sum', used)
      redis.call('EXPIRE', tz, ttl)
      redis.call('EXPIRE', th, ttl)
    end
  end
end
return 1
"""


class RedisRateLimiter(RateLimiter):
    """Rate limits in Redis, shared by every replica: each admission is one atomic Lua script.

    Keys: ``{prefix}:{<tenant>}:<scope>:req`` / ``:tok`` / ``:amt`` / ``:inflight``; the tenant in
    braces keeps a tenant's keys in one Redis Cluster slot. Keys expire a little after the window
    (or a lease) ends. Clock: each replica's wall clock, so keep them in sync (NTP).

    >>> limiter = RedisRateLimiter("redis://127.0.0.1:6379/0", prefix="router:rl")   # doctest: +SKIP
    """

    remote = True

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "router:rl",
                 metrics: RateLimitMetrics | None = None, wall: Callable[[], float] = time.time,
                 window_s: float = WINDOW_S, lease_s: float = 900.0, connect_timeout_s: float = 1.0,
                 op_timeout_s: float = 1.0, retry_s: float = 1.0, settle_attempts: int = 5,
                 background_timeout_s: float = 5.0):
        super().__init__(metrics=metrics, wall=wall, lease_s=lease_s)
        self.url, self.prefix, self.window_s = url, prefix, window_s
        self.settle_attempts, self.background_timeout_s = settle_attempts, background_timeout_s
        self.store = RedisStore(url, name="rate-limit store", on_error=self._error,
                                connect_timeout_s=connect_timeout_s, op_timeout_s=op_timeout_s, retry_s=retry_s)

    def _error(self, op: str) -> None:
        if self.metrics is not None:
            self.metrics.rate_limit_error(op)

    def _keys(self, scopes: Sequence[Scope]) -> list[str]:
        out = []
        for s in scopes:
            tenant, _, rest = s.key.partition(":")
            base = f"{self.prefix}:{{{tenant}}}" + (":" + rest if rest else "")
            out += [base + ":req", base + ":tok", base + ":amt", base + ":inflight"]
        return out

    def _ttl(self) -> int:
        return int(max(self.window_s, self.lease_s)) + 5

    async def _admit(self, scopes: Sequence[Scope], rid: str, tokens: int, timeout_s: float | None
                     ) -> tuple[bool, int, str, list[_Numbers]]:
        now_ms = int(self.wall() * 1000)
        args: list[int | str] = [now_ms, int(self.window_s * 1000), rid, tokens, int(self.lease_s * 1000), self._ttl()]
        for s in scopes:
            lim = s.limit
            args += [-1 if v is None else v for v in (lim.requests_per_minute, lim.tokens_per_minute, lim.concurrent)]
        keys = self._keys(scopes)
        try:
            out = await self.store.call("admit", lambda: self.store.script(_LUA_ADMIT, keys, args), timeout_s)
        except asyncio.CancelledError:
            # the script may have run: give the slot back in the background
            self.settle(Lease(rid, "", tuple(scopes), tokens), 0)
            raise
        except StoreError as e:
            if e.started:   # it may have run before the timeout (failing fast, it was never sent)
                self.settle(Lease(rid, "", tuple(scopes), tokens), 0)
            raise
        ok, index, kind, wait_ms = int(out[0]), int(out[1]) - 1, _text(out[2]), float(_text(out[3]))
        numbers = []
        for i in range(len(scopes)):
            r, t, c, rr, tr = out[4 + 5 * i: 9 + 5 * i]
            wait = (wait_ms / 1000 if wait_ms >= 0 else None) if i == index else None
            numbers.append(_Numbers(int(r), int(t), int(c), max(0.0, int(rr) / 1000), max(0.0, int(tr) / 1000), wait))
        return bool(ok), index, kind, numbers

    async def _usage(self, scopes: Sequence[Scope], timeout_s: float | None) -> list[Usage]:
        keys = self._keys(scopes)
        args = [int(self.wall() * 1000), int(self.window_s * 1000)]
        out = await self.store.call("usage", lambda: self.store.script(_LUA_USAGE, keys, args), timeout_s)
        found = []
        for i in range(len(scopes)):
            r, t, c, rr, tr = (int(x) for x in out[5 * i: 5 * i + 5])
            found.append(Usage(r, t, c, max(0.0, rr / 1000), max(0.0, tr / 1000)))
        return found

    def settle(self, lease: Lease, tokens: int) -> None:
        if not lease.settles:   # requests per minute only: nothing to replace or free, no round trip
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:   # no loop to send it from: the lease and the reservation expire on their own
            return
        tokens = max(0, int(tokens))
        keys = self._keys(lease.scopes)
        flags = ["1" if s.limit.tokens_per_minute is not None else "0" for s in lease.scopes]
        # one EVALSHA sharing a write with other settles, no task; on any failure `_settle` retries
        self.store.send(_LUA_SETTLE, keys, [int(self.wall() * 1000), lease.id, tokens, self._ttl(), *flags],
                        self.background_timeout_s, fallback=lambda: self._settle(lease, tokens, keys, flags),
                        on_lost=lambda: self._lost(lease))

    async def _settle(self, lease: Lease, tokens: int, keys: list[str], flags: list[str]) -> None:
        delay = 0.1
        for attempt in range(self.settle_attempts):
            now_ms = int(self.wall() * 1000)
            try:
                await self.store.call("settle", lambda n=now_ms: self.store.script(
                    _LUA_SETTLE, keys, [n, lease.id, tokens, self._ttl(), *flags]), self.background_timeout_s)
                return
            except StoreError:
                pass
            if attempt + 1 < self.settle_attempts:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        self._lost(lease)

    def _lost(self, lease: Lease) -> None:
        log.warning("rate-limit settle of %s lost: its in-flight slot expires after %g s, its token reservation "
                    "with the window", lease.id, self.lease_s)

    async def aclose(self) -> None:
        await self.store.aclose()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def open_rate_limiter(url: str | None, **kwargs: object) -> RateLimiter:
    """``redis://...`` (``?prefix=`` sets the key prefix, default ``router:rl``) gives a
    `RedisRateLimiter`; None or ``memory`` the in-process one."""
    if url and url.startswith(("redis://", "rediss://", "unix://")):
        base, prefix = split_prefix(url, "router:rl")
        return RedisRateLimiter(base, prefix=prefix, **kwargs)  # type: ignore[arg-type]
    if url in (None, "", "memory"):
        return InProcessRateLimiter(**kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unknown rate-limit backend '{url}': use memory or redis://host:port/db")
