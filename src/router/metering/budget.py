"""Tenant budgets: reserve the estimated cost before the call, settle the actual cost after.

A request's budget is a set of *scopes*: the tenant's day and month (UTC), and the day and
month of its route when the policy sets per-route limits. `reserve` checks every scope and
adds the estimate to each one's `reserved` atomically, so concurrent requests can overspend a
limit only by what the requests already admitted cost beyond their estimates. `settle` moves
the request from `reserved` to `spent` with its actual cost.

Two backends behind one interface:

- `InProcessBudget` (the default): a dict under a lock; one process.
- `RedisBudget`: Lua scripts, each one atomic in Redis; for many replicas. `remaining()` (read
  on the hot path before `decide`) serves a per-tenant value at most `refresh_s` old (refreshed in
  the background, and by every reserve and settle); an older or unknown value reads as "no
  limit known" and the atomic reserve alone decides. So the cache can only change *where* an
  exhausted budget is noticed (decide or reserve), never how much is spent.

A store that does not answer (Redis down, blackholed or slow) is bounded: every call has a timeout
inside the request's deadline, a failure is counted (`BudgetMetrics.budget_error`, the metric
``router_budget_errors_total``) and logged once per outage, and the policy's
``metering.budget_unavailable`` decides: ``fail_closed`` (the default) refuses the tenant's requests
with a 503 `BudgetUnavailable`, ``fail_open`` serves them unreserved and records their spend when
the store answers again. A reservation whose call was cancelled or timed out after the script may
have run is released in the background; a settle is retried for a few seconds and, if the store
never answers, counted and logged as lost (its hold expires after `reservation_ttl_s`).

>>> budget = InProcessBudget()                                # doctest: +SKIP
>>> Router(policy, budget=budget)                              # doctest: +SKIP
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from router.core.errors import BudgetExceeded, BudgetUnavailable, redact
from router.metering.redis_store import RedisStore, StoreError

if TYPE_CHECKING:
    from router.core.decision import Candidate, Decision
    from router.core.policy import Budget, Policy

__all__ = ["BudgetBackend", "BudgetMetrics", "BudgetStoreError", "InProcessBudget", "RedisBudget", "Reservation",
           "Scope", "open_budget"]

log = logging.getLogger("router.metering.budget")

T = TypeVar("T")


class BudgetStoreError(Exception):
    """The budget store did not answer (error or timeout). `may_have_run`: the call reached the
    store, so a reservation it made may exist and must be released."""

    def __init__(self, message: str, *, may_have_run: bool = False):
        super().__init__(message)
        self.may_have_run = may_have_run


@dataclass(frozen=True, slots=True)
class Scope:
    """One limit a request counts against: `key` names the tenant, route and period."""

    key: str
    limit_usd: float
    tenant_wide: bool   # counts toward `remaining(tenant)` (route scopes do not)


@dataclass(slots=True)
class Reservation:
    id: str
    tenant: str
    scopes: tuple[Scope, ...]
    amount_usd: float


def _periods(now: float) -> tuple[str, str]:
    t = time.gmtime(now)
    return time.strftime("%Y%m%d", t), time.strftime("%Y%m", t)


def scopes_for(tenant: str, budget: Budget, route: str | None, now: float) -> tuple[Scope, ...]:
    """The scopes a request of `tenant` on `route` counts against at time `now`."""
    day, month = _periods(now)
    out = []
    if budget.daily_usd is not None:
        out.append(Scope(f"{tenant}:d:{day}", budget.daily_usd, True))
    if budget.monthly_usd is not None:
        out.append(Scope(f"{tenant}:m:{month}", budget.monthly_usd, True))
    rb = budget.routes.get(route) if route is not None else None
    if rb is not None:
        if rb.daily_usd is not None:
            out.append(Scope(f"{tenant}:r:{route}:d:{day}", rb.daily_usd, False))
        if rb.monthly_usd is not None:
            out.append(Scope(f"{tenant}:r:{route}:m:{month}", rb.monthly_usd, False))
    return tuple(out)


@runtime_checkable
class BudgetMetrics(Protocol):
    """What a budget backend reports (`PrometheusMeter` implements it)."""

    def budget_remaining(self, tenant: str, usd: float) -> None: ...

    def budget_error(self, op: str) -> None:
        """A store call failed (`op`: reserve, settle, refresh), or a settle was given up (settle_lost)."""
        ...


class BudgetBackend(abc.ABC):
    """Where budgets are kept. The engine calls `remaining` before deciding, `reserve` after, `settle` at the end.

    `metrics`, when given, is told each tenant's remaining USD (`budget_remaining(tenant, usd)`);
    `PrometheusMeter` implements it.
    """

    #: whether calls leave the process (and so need a timeout); an in-process store answers at once
    remote = False

    def __init__(self, *, metrics: BudgetMetrics | None = None, wall: Callable[[], float] = time.time):
        self.metrics = metrics
        self.wall = wall
        self.lost_settles = 0             # settles given up: spend not recorded
        self._errors = 0

    @property
    def errors(self) -> int:
        """Failed store calls."""
        return self._errors

    # -- what the engine calls
    def remaining(self, policy: Policy, tenant: str) -> float | None:
        """USD the tenant has left (the tightest of its day and month), or None without a budget. Cheap."""
        ten = policy.tenants.get(tenant)
        if ten is None or ten.budget is None:
            return None
        scopes = tuple(s for s in scopes_for(tenant, ten.budget, None, self.wall()) if s.tenant_wide)
        if not scopes:
            return None
        return self._remaining(tenant, scopes)

    async def reserve(self, policy: Policy, decision: Decision, candidates: list[Candidate], *,
                      timeout_s: float | None = None) -> tuple[Reservation | None, list[Candidate]]:
        """Reserve the largest estimate among `candidates`; on an exhausted budget reject or downgrade.

        `timeout_s` bounds each store call. A store that fails or does not answer in time follows the
        policy's ``metering.budget_unavailable``: raise `BudgetUnavailable` (fail_closed), or return
        an empty reservation so the request runs and its spend is settled later (fail_open).
        """
        ten = policy.tenants.get(decision.tenant or "")
        if ten is None or ten.budget is None or not candidates:
            return None, candidates
        scopes = scopes_for(ten.name, ten.budget, decision.route, self.wall())
        if not scopes:
            return None, candidates
        rid = os.urandom(8).hex()
        amount = max(c.estimated_cost_usd for c in candidates)
        try:
            ok, left = await self._guarded("reserve", self._reserve(ten.name, scopes, amount, rid, force=False),
                                           timeout_s, tenant=ten.name, scopes=scopes, rid=rid)
            if ok:
                return Reservation(rid, ten.name, scopes, amount), candidates
            if ten.budget.on_exhausted != "downgrade":
                raise BudgetExceeded(f"tenant '{ten.name}' has no budget left for this request "
                                     f"(estimated ${amount:.6f}, ${max(left, 0.0):.6f} left)")
            cheapest = min(candidates, key=lambda c: c.estimated_cost_usd)
            # downgrade: the cheapest allowed candidate runs even when it does not fit (as decide() does)
            await self._guarded("reserve", self._reserve(ten.name, scopes, cheapest.estimated_cost_usd, rid,
                                                         force=cheapest.estimated_cost_usd > left),
                                timeout_s, tenant=ten.name, scopes=scopes, rid=rid)
            return Reservation(rid, ten.name, scopes, cheapest.estimated_cost_usd), [cheapest]
        except BudgetStoreError as e:
            if policy.metering.budget_unavailable == "fail_open":
                return Reservation(rid, ten.name, scopes, 0.0), candidates  # settled (spend only) at the end
            raise BudgetUnavailable(f"the budget store did not answer ({e}); requests of tenants with a budget "
                                    "are refused until it does (policy: metering.budget_unavailable: "
                                    "fail_closed)") from None

    async def _guarded(self, op: str, call: Awaitable[T], timeout_s: float | None, *, tenant: str = "",
                       scopes: Sequence[Scope] = (), rid: str | None = None) -> T:
        """Run one store call; a failure becomes `BudgetStoreError`, counted and logged.

        The in-process store answers at once and fails only by a bug; the Redis backend adds the
        timeout, the fail-fast and the release of a reservation `rid` whose call was cut short."""
        try:
            return await call
        except Exception as e:
            why = redact(f"{type(e).__name__}: {e}")[:300]
        self._errors += 1
        log.error("budget store failed during %s: %s", op, why)
        self._count(op)
        raise BudgetStoreError(why, may_have_run=True)

    def _count(self, op: str) -> None:
        if self.metrics is not None:
            try:
                self.metrics.budget_error(op)
            except Exception:  # metrics must not break budgets
                log.exception("budget metrics failed")

    def _lost(self, reservation: Reservation, actual_usd: float, why: str) -> None:
        self.lost_settles += 1
        log.error("budget settle lost for tenant %s (reservation %s): $%.8f of spend not recorded (%s); "
                  "its hold of $%.8f expires on its own", reservation.tenant, reservation.id, actual_usd, why,
                  reservation.amount_usd)
        self._count("settle_lost")

    @abc.abstractmethod
    def settle(self, reservation: Reservation, actual_usd: float) -> None:
        """Replace the reservation with the actual cost. Never blocks; never raises."""

    def release(self, reservation: Reservation) -> None:
        """Drop the reservation's hold without recording spend (when settling itself failed)."""
        self._release_id(reservation.tenant, reservation.scopes, reservation.id)

    @abc.abstractmethod
    def _release_id(self, tenant: str, scopes: Sequence[Scope], rid: str) -> None:
        """Drop reservation `rid` if it exists; never raises, never blocks."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Wait for pending settlements."""

    # -- what a backend implements
    @abc.abstractmethod
    def _remaining(self, tenant: str, scopes: Sequence[Scope]) -> float | None: ...

    @abc.abstractmethod
    async def _reserve(self, tenant: str, scopes: Sequence[Scope], amount: float, rid: str, *,
                       force: bool) -> tuple[bool, float]:
        """Reserve `amount` in every scope if each has that much left (or `force`); return (ok, left)."""

    def _report(self, tenant: str, left: float | None) -> None:
        if self.metrics is not None and left is not None:
            try:
                self.metrics.budget_remaining(tenant, left)
            except Exception:  # metrics must not break budgets
                log.exception("budget metrics failed")


class InProcessBudget(BudgetBackend):
    """Budgets in this process's memory. Spend is lost on restart; use `RedisBudget` to share or keep it."""

    def __init__(self, *, metrics: BudgetMetrics | None = None, wall: Callable[[], float] = time.time):
        super().__init__(metrics=metrics, wall=wall)
        self._lock = threading.RLock()
        self._spent: dict[str, float] = {}
        self._reserved: dict[str, float] = {}
        self._holds: dict[str, float] = {}   # reservation id -> amount (same in each of its scopes)

    def _left(self, scope: Scope) -> float:
        return scope.limit_usd - self._spent.get(scope.key, 0.0) - self._reserved.get(scope.key, 0.0)

    def _remaining(self, tenant: str, scopes: Sequence[Scope]) -> float | None:
        with self._lock:
            return min(self._left(s) for s in scopes)

    def _tenant_left(self, scopes: Sequence[Scope]) -> float | None:
        wide = [self._left(s) for s in scopes if s.tenant_wide]
        return min(wide) if wide else None

    async def _reserve(self, tenant: str, scopes: Sequence[Scope], amount: float, rid: str, *,
                       force: bool) -> tuple[bool, float]:
        with self._lock:
            left = min(self._left(s) for s in scopes)
            if left < amount and not force:
                return False, left
            for s in scopes:
                self._reserved[s.key] = self._reserved.get(s.key, 0.0) + amount
            self._holds[rid] = amount
            tenant_left = self._tenant_left(scopes)
        self._report(tenant, tenant_left)
        return True, left - amount

    def settle(self, reservation: Reservation, actual_usd: float) -> None:
        with self._lock:
            held = self._holds.pop(reservation.id, 0.0)
            for s in reservation.scopes:
                self._reserved[s.key] = self._reserved.get(s.key, 0.0) - held
                self._spent[s.key] = self._spent.get(s.key, 0.0) + actual_usd
            tenant_left = self._tenant_left(reservation.scopes)
        self._report(reservation.tenant, tenant_left)

    def _release_id(self, tenant: str, scopes: Sequence[Scope], rid: str) -> None:
        with self._lock:
            held = self._holds.pop(rid, None)
            if held is None:
                return
            for s in scopes:
                self._reserved[s.key] = self._reserved.get(s.key, 0.0) - held

    def spent(self, key: str) -> float:
        with self._lock:
            return self._spent.get(key, 0.0)

    def reserved(self) -> float:
        """USD held by reservations not yet settled, over every scope (for tests and tools)."""
        with self._lock:
            return sum(self._holds.values())


# ----------------------------------------------------------------------------- Redis

_LUA_COMMON = """
local function purge(k, now)
  local dead = redis.call('ZRANGEBYSCORE', k .. ':exp', '-inf', now)
  for _, m in ipairs(dead) do
    local a = tonumber(redis.call('HGET', k .. ':res', m) or '0')
    redis.call('HINCRBYFLOAT', k, 'reserved', -a)
    redis.call('HDEL', k .. ':res', m)
    redis.call('ZREM', k .. ':exp', m)
  end
end
local function left(k, limit)
  local v = redis.call('HMGET', k, 'spent', 'reserved')
  return limit - (tonumber(v[1]) or 0) - (tonumber(v[2]) or 0)
end
"""

# KEYS: scope keys. ARGV: amount, id, now, expiry, ttl, force, ntenant, limit_1..limit_n
_LUA_RESERVE = _LUA_COMMON + """
local amount, id, now, expiry, ttl = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local force, ntenant = ARGV[6] == '1', tonumber(ARGV[7])
local worst, tworst = nil, nil
for i, k in ipairs(KEYS) do
  purge(k, now)
  local l = left(k, tonumber(ARGV[7 + i]))
  if worst == nil or l < worst then worst = l end
  if i <= ntenant and (tworst == nil or l < tworst) then tworst = l end
end
if (not force) and worst < amount then
  return {0, tostring(worst), tostring(tworst or '')}
end
for i, k in ipairs(KEYS) do
  redis.call('HINCRBYFLOAT', k, 'reserved', amount)
  redis.call('HSET', k .. ':res', id, amount)
  redis.call('ZADD', k .. ':exp', expiry, id)
  redis.call('EXPIRE', k, ttl)
  redis.call('EXPIRE', k .. ':res', ttl)
  redis.call('EXPIRE', k .. ':exp', ttl)
end
if tworst ~= nil then tworst = tworst - amount end
return {1, tostring(worst - amount), tostring(tworst or '')}
"""

# KEYS: scope keys. ARGV: id, actual, ttl, ntenant, limit_1..limit_n
_LUA_SETTLE = _LUA_COMMON + """
local id, actual, ttl, ntenant = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tworst = nil
for i, k in ipairs(KEYS) do
  local a = redis.call('HGET', k .. ':res', id)
  if a then
    redis.call('HINCRBYFLOAT', k, 'reserved', -tonumber(a))
    redis.call('HDEL', k .. ':res', id)
    redis.call('ZREM', k .. ':exp', id)
  end
  redis.call('HINCRBYFLOAT', k, 'spent', actual)
  redis.call('EXPIRE', k, ttl)
  if i <= ntenant then
    local l = left(k, tonumber(ARGV[4 + i]))
    if tworst == nil or l < tworst then tworst = l end
  end
end
return tostring(tworst or '')
"""

# KEYS: scope keys. ARGV: now, limit_1..limit_n
_LUA_REMAINING = _LUA_COMMON + """
local now = tonumber(ARGV[1])
local worst = nil
for i, k in ipairs(KEYS) do
  purge(k, now)
  local l = left(k, tonumber(ARGV[1 + i]))
  if worst == nil or l < worst then worst = l end
end
return tostring(worst)
"""


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _float(value: Any) -> float | None:
    if isinstance(value, bytes):
        value = value.decode()
    return float(value) if value not in (None, "") else None


class RedisBudget(BudgetBackend):
    """Budgets in Redis, shared by every replica; each operation is one atomic Lua script.

    Keys: ``{prefix}:{<tenant>}:d:<YYYYMMDD>`` (hash: spent, reserved) with ``:res`` (reservation
    id -> USD) and ``:exp`` (reservation id -> expiry) beside it; the tenant in braces keeps
    a tenant's keys in one Redis Cluster slot. A reservation a crashed replica never settled
    expires after `reservation_ttl_s` (make it longer than `timeouts.total_s`).

    >>> budget = RedisBudget("redis://127.0.0.1:6379/0")       # doctest: +SKIP
    """

    remote = True

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "router:budget",
                 refresh_s: float = 1.0, reservation_ttl_s: float = 900.0, key_ttl_s: int = 40 * 86400,
                 metrics: BudgetMetrics | None = None, wall: Callable[[], float] = time.time,
                 connect_timeout_s: float = 1.0, op_timeout_s: float = 1.0, retry_s: float = 1.0,
                 settle_attempts: int = 6, background_timeout_s: float = 5.0, close_timeout_s: float = 5.0):
        super().__init__(metrics=metrics, wall=wall)
        self.url, self.prefix = url, prefix
        self.refresh_s, self.reservation_ttl_s, self.key_ttl_s = refresh_s, reservation_ttl_s, key_ttl_s
        # no reply for op_timeout_s closes the connection: a blackholed Redis fails a call in that long
        self.connect_timeout_s, self.op_timeout_s, self.retry_s = connect_timeout_s, op_timeout_s, retry_s
        # settles, releases and refreshes run off the request path: each call (a new connection's
        # handshake included) may take this long; the request path is bounded by budget_timeout_s
        self.background_timeout_s = background_timeout_s
        self.settle_attempts, self.close_timeout_s = settle_attempts, close_timeout_s
        # the Redis client of rate limits and the cache too (one pipelined connection per loop), with its
        # timeouts, fail-fast and error counting; `_guarded` adds the release of cut-short reservations
        self._redis = RedisStore(url, name="budget store", on_error=self._count, connect_timeout_s=connect_timeout_s,
                                 op_timeout_s=op_timeout_s, retry_s=retry_s, close_timeout_s=close_timeout_s, logger=log,
                                 hint=f"fail fast for {retry_s:g} s at a time until it answers; "
                                      "metering.budget_unavailable decides whether requests are refused or served")
        self._cache: dict[str, tuple[float, float]] = {}   # tenant -> (remaining, monotonic time)
        self._refreshing: set[str] = set()

    @property
    def errors(self) -> int:
        return self._redis.errors

    async def _guarded(self, op: str, call: Awaitable[T], timeout_s: float | None, *, tenant: str = "",
                       scopes: Sequence[Scope] = (), rid: str | None = None) -> T:
        """Run one store call through the store's guard (timeout, fail-fast, counted and logged once
        per outage); a failure becomes `BudgetStoreError`.

        With `rid`, a call cut short after it was sent (timeout, error, or the caller's cancellation)
        releases that reservation in the background: its script may have run."""
        try:
            return await self._redis.call(op, lambda: call, timeout_s)
        except asyncio.CancelledError:
            if rid is not None:
                self._release_id(tenant, scopes, rid)
            raise
        except StoreError as e:
            if not e.started:   # failing fast: never sent
                if asyncio.iscoroutine(call):
                    call.close()
                raise BudgetStoreError(str(e)) from None
            if rid is not None:
                self._release_id(tenant, scopes, rid)
            raise BudgetStoreError(str(e), may_have_run=True) from None

    def _keys(self, scopes: Sequence[Scope], tenant: str) -> list[str]:
        out = []
        for s in scopes:
            rest = s.key[len(tenant):]  # scope keys start with the tenant name
            out.append(f"{self.prefix}:{{{tenant}}}{rest}")
        return out

    @staticmethod
    def _ordered(scopes: Sequence[Scope]) -> list[Scope]:
        return [s for s in scopes if s.tenant_wide] + [s for s in scopes if not s.tenant_wide]

    def _remaining(self, tenant: str, scopes: Sequence[Scope]) -> float | None:
        cached = self._cache.get(tenant)
        if cached is not None and time.monotonic() - cached[1] <= self.refresh_s:
            return cached[0]
        # stale or unknown: let the atomic reserve decide this request, refresh for the next ones
        if tenant not in self._refreshing:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return None
            self._refreshing.add(tenant)
            self._redis.spawn(self._refresh(tenant, tuple(scopes)))
        return None

    def _remember(self, tenant: str, left: float | None) -> None:
        if left is not None:
            self._cache[tenant] = (left, time.monotonic())
            self._report(tenant, left)

    async def _refresh(self, tenant: str, scopes: tuple[Scope, ...]) -> None:
        try:
            value = await self._guarded("refresh", self._redis.script(
                _LUA_REMAINING, self._keys(scopes, tenant), [self.wall(), *(s.limit_usd for s in scopes)]),
                self.background_timeout_s)
            self._remember(tenant, _float(value))
        except BudgetStoreError:
            pass  # counted and logged by _guarded; the atomic reserve still decides
        finally:
            self._refreshing.discard(tenant)

    async def _reserve(self, tenant: str, scopes: Sequence[Scope], amount: float, rid: str, *,
                       force: bool) -> tuple[bool, float]:
        scopes = self._ordered(scopes)
        now = self.wall()
        ntenant = sum(1 for s in scopes if s.tenant_wide)
        ok, left, tenant_left = await self._redis.script(
            _LUA_RESERVE, self._keys(scopes, tenant), [repr(amount), rid, now, now + self.reservation_ttl_s,
                                                       self.key_ttl_s, "1" if force else "0", ntenant,
                                                       *(repr(s.limit_usd) for s in scopes)])
        self._remember(tenant, _float(tenant_left))
        return bool(int(ok)), float(_float(left) or 0.0)

    def settle(self, reservation: Reservation, actual_usd: float) -> None:
        if not _loop_running():  # no loop to send it from: the reservation expires on its own
            self._lost(reservation, actual_usd, "no event loop to send it from")
            return
        # one EVALSHA sharing a write with other settles, no task; on any failure `_settle` retries
        scopes = self._ordered(reservation.scopes)
        tenant = reservation.tenant
        self._redis.send(_LUA_SETTLE, self._keys(scopes, tenant), self._settle_args(reservation, scopes, actual_usd),
                         self.background_timeout_s, fallback=lambda: self._settle(reservation, actual_usd),
                         on_reply=lambda value: self._remember(tenant, _float(value)),
                         on_lost=lambda: self._lost(reservation, actual_usd, "cancelled at shutdown"))

    def _settle_args(self, reservation: Reservation, scopes: Sequence[Scope], actual_usd: float) -> list[Any]:
        return [reservation.id, repr(actual_usd), self.key_ttl_s, sum(1 for s in scopes if s.tenant_wide),
                *(repr(s.limit_usd) for s in scopes)]

    def _release_id(self, tenant: str, scopes: Sequence[Scope], rid: str) -> None:
        # settling with 0 drops the hold if the reservation exists and adds nothing to spent otherwise
        if _loop_running():
            self._redis.spawn(self._settle(Reservation(rid, tenant, tuple(scopes), 0.0), 0.0, release=True))

    async def _settle(self, reservation: Reservation, actual_usd: float, *, release: bool = False) -> None:
        """Send one settle, retried with backoff (about 6 s over `settle_attempts` tries) while the store
        fails; then count and log it as lost. A release that fails is only logged: its hold expires."""
        scopes = self._ordered(reservation.scopes)
        delay = 0.1
        why = "not sent"
        try:
            for attempt in range(self.settle_attempts):
                try:
                    value = await self._guarded("settle", self._redis.script(
                        _LUA_SETTLE, self._keys(scopes, reservation.tenant),
                        self._settle_args(reservation, scopes, actual_usd)), self.background_timeout_s)
                    self._remember(reservation.tenant, _float(value))
                    why = ""
                    return
                except BudgetStoreError as e:
                    why = str(e)
                if attempt + 1 < self.settle_attempts:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
        except asyncio.CancelledError:
            why = "cancelled at shutdown"
            raise
        finally:
            if why:
                if release:
                    log.warning("budget release of reservation %s failed (%s); its hold expires on its own",
                                reservation.id, why)
                else:
                    self._lost(reservation, actual_usd, why)

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Wait for the settles and refreshes in flight on this loop (tests, tools); True when none is left."""
        return await self._redis.drain(timeout_s)

    async def aclose(self) -> None:
        """Wait up to `close_timeout_s` for pending settles (the store's background calls); the ones
        still failing then are cancelled and lost (logged, counted)."""
        await self._redis.aclose()

    async def spent(self, key_suffix: str, tenant: str) -> float:
        """Spent USD in one scope (for tests and tools): `key_suffix` like ``:d:20250101``."""
        value = await self._redis.command("HGET", f"{self.prefix}:{{{tenant}}}{key_suffix}", "spent")
        return float(_float(value) or 0.0)


def open_budget(url: str | None, **kwargs: Any) -> BudgetBackend:
    """`redis://...` gives a `RedisBudget`; None or ``memory`` the in-process one.

    A ``prefix`` query parameter sets the Redis key prefix and is removed from the URL
    (``redis://host:6379/0?prefix=staging:budget``): replicas sharing a prefix share budgets.
    """
    if url and url.startswith(("redis://", "rediss://", "unix://")):
        from urllib.parse import parse_qsl, urlencode

        base, _, qs = url.partition("?")
        query = parse_qsl(qs, keep_blank_values=True)
        prefixes = [v for k, v in query if k == "prefix"]
        if prefixes:
            kwargs.setdefault("prefix", prefixes[-1])
            rest = urlencode([(k, v) for k, v in query if k != "prefix"])
            url = base + ("?" + rest if rest else "")
        return RedisBudget(url, **kwargs)
    if url in (None, "", "memory"):
        return InProcessBudget(**kwargs)
    raise ValueError(f"unknown budget backend '{url}': use memory or redis://host:port/db")
