"""Request hedging for streams: a second attempt when the first chunk is late; the first to stream wins.

With ``routes.NAME.hedge`` (docs/routing.md, "Hedging"), the engine sends a stream's attempt as
usual; if no first chunk has arrived after the delay (fixed, or the candidate's measured TTFT
percentile, never below `min_delay_s`) and the route's caps allow it, the same request goes to the
next allowed target (another replica of the model, else the next candidate of the decision, which
already satisfies the request's residency and capabilities). Whichever streams first is used; the
other is cancelled, which closes its connection. At most one hedge per request.

Accounting: both attempts are in ``RouterInfo.attempts`` (the loser as ``hedge_lost``); the
loser's estimated cost (its prompt at its model's price) is ``hedge_cost_usd`` and is included in
``cost_usd``; ``RouterInfo.hedge`` says ``won`` (the hedge streamed first), ``lost`` (the first
attempt did), ``failed`` (neither did) or ``capped`` (a cap said no). Each attempt's in-flight
counts are its own until the race ends; the winner's then belong to the request, which `Engine._close`
gives back as for any attempt.

The caps (`HedgeGovernor`) are per process and per route: a share of the route's streamed requests
(each one adds `max_share` of credit, late or not; a hedge spends one whole credit; credit saved up
is capped at `max(1, 10 x max_share)`, so an idle spell allows a burst of at most that many hedges)
and dollars per UTC day.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from router.core.errors import redact_cut
from router.core.policy import HedgeSettings
from router.core.pricing import usage_cost
from router.core.response import Attempt
from router.core.translate import Usage
from router.engine.attempt import AttemptFailed, Leg, Opened

if TYPE_CHECKING:
    from router.engine.hooks import MonitorHooks

__all__ = ["HedgeGovernor", "hedge_delay", "race"]

log = logging.getLogger("router.engine")


class _Side:
    """The hedge attempt's own in-flight identity (meters and monitor count it apart from the request's)."""

    __slots__ = ("upstream",)

    def __init__(self) -> None:
        self.upstream: str | None = None


def hedge_delay(settings: HedgeSettings, monitor: MonitorHooks | None, alias: str) -> float:
    """Seconds to wait for a first chunk before hedging: `delay_s`, or the model's measured TTFT
    percentile (`min_delay_s` until 20 first chunks are measured), never below `min_delay_s`.

    >>> hedge_delay(HedgeSettings(delay_s=0.8), None, "qwen")
    0.8
    """
    if settings.delay_s is not None:
        return settings.delay_s
    measured = monitor.ttft_quantile(alias, settings.percentile or 0.95) if monitor is not None else None
    return max(settings.min_delay_s, measured or 0.0)


class HedgeGovernor:
    """Per-route caps on hedging, for one process: a share of requests, and USD per UTC day.

    Every request of the route counts (`count`), a late one asks to hedge (`allow`):

    >>> g = HedgeGovernor(wall=lambda: 0.0)
    >>> s = HedgeSettings(delay_s=1, max_share=0.25)
    >>> for _ in range(3):
    ...     g.count("r", s)               # three requests whose first chunk came in time
    >>> g.count("r", s); g.allow("r", s, 0.0), g.allow("r", s, 0.0)   # a fourth, late: one hedge, not two
    (True, False)
    """

    def __init__(self, wall: Callable[[], float] = time.time):
        self.wall = wall
        self._credit: dict[str, float] = {}
        self._spent: dict[str, tuple[int, float]] = {}    # route -> (UTC day number, USD spent on losers)

    def _day(self) -> int:
        return int(self.wall() // 86400)

    def spent_today(self, route: str) -> float:
        day, usd = self._spent.get(route, (-1, 0.0))
        return usd if day == self._day() else 0.0

    def count(self, route: str, settings: HedgeSettings) -> None:
        """A request of `route` that may hedge has started: `max_share` more credit."""
        self._credit[route] = min(max(1.0, 10 * settings.max_share), self._credit.get(route, 0.0) + settings.max_share)

    def allow(self, route: str, settings: HedgeSettings, estimate_usd: float) -> bool:
        """A late request of `route` asks to hedge; True spends one credit (one hedge of the share)."""
        credit = self._credit.get(route, 0.0)
        ok = credit >= 1.0 - 1e-9
        if ok and settings.max_usd_per_day is not None:
            ok = self.spent_today(route) + estimate_usd <= settings.max_usd_per_day
        if ok:
            self._credit[route] = credit - 1.0
        return ok

    def spend(self, route: str, usd: float) -> None:
        if usd <= 0:
            return
        day = self._day()
        prev_day, prev = self._spent.get(route, (day, 0.0))
        self._spent[route] = (day, (prev if prev_day == day else 0.0) + usd)


def _loser_cost(req: Any, leg: Leg) -> float:
    """What a cancelled attempt is assumed to have cost: its prompt (the upstream may have read it)."""
    usage = Usage(req.decision.prompt_tokens, 0, 0, True)
    return usage_cost(leg.model.price, usage, req.info.created)


async def race(engine: Any, req: Any, opener: Callable[..., Awaitable[Opened]], primary: Leg, t0: float,
               delay: float, alternate: Callable[[], Leg | None], governor: HedgeGovernor,
               settings: HedgeSettings) -> tuple[Opened, Leg]:
    """Run `primary` (already counted in flight on `req` by the loop); after `delay` without a first
    chunk, hedge on `alternate()` if the caps allow. Returns the first stream to open and its leg.

    Raises `AttemptFailed` as the loop expects: unrecorded when only the primary ran (the loop
    records it), ``recorded`` when a hedge ran (both attempts are recorded here)."""
    info, monitor, clock = req.info, engine.monitor, engine.clock
    governor.count(req.decision.route, settings)
    first = asyncio.ensure_future(opener(primary.model, primary.provider, primary.call, t0))
    tasks: dict[asyncio.Future[Opened], tuple[Leg, float, Any]] = {first: (primary, t0, req)}
    side: _Side | None = None
    winner: asyncio.Future[Opened] | None = None
    try:
        done, _ = await asyncio.wait({first}, timeout=delay)
        if done:
            winner = first
            return first.result(), primary
        route = req.decision.route
        leg = alternate()
        estimate = max((c.estimated_cost_usd for c in req.candidates if leg is not None and c.model == leg.model.alias),
                       default=0.0)
        if leg is None or not governor.allow(route, settings, estimate):
            if leg is not None:
                info.hedge = "capped"
            winner = first
            return await first, primary
        info.hedge = "failed"      # until one of the two streams
        side = _Side()
        engine._track_upstream(side, leg.provider.name)
        if monitor is not None:
            monitor.begin(side, leg.key)
        t1 = clock()
        second = asyncio.ensure_future(opener(leg.model, leg.provider, leg.call, t1))
        tasks[second] = (leg, t1, side)
        pending: set[asyncio.Future[Opened]] = {first, second}
        failure: AttemptFailed | None = None
        while winner is None and pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in (first, second):       # the primary first: it wins a tie
                if task not in done:
                    continue
                exc = task.exception()
                if exc is None:
                    if winner is None:
                        winner = task
                    continue
                f_leg, f_t0, owner = tasks[task]
                if not isinstance(exc, AttemptFailed):
                    if task is first:
                        raise exc
                    # the hedge is optional: a bug in its attempt must not fail the request the first may serve
                    log.error("hedge attempt of request %s failed unexpectedly", info.request_id, exc_info=exc)
                    info.attempts.append(Attempt(f_leg.provider.name, f_leg.model.alias, "error", clock() - f_t0,
                                                 None, redact_cut(f"internal error: {type(exc).__name__}", 200)))
                    _untrack(engine, monitor, owner)
                    continue
                info.attempts.append(Attempt(f_leg.provider.name, f_leg.model.alias, exc.outcome, clock() - f_t0,
                                             exc.status, exc.message if exc.status or exc.outcome == "error_event"
                                             else None))
                _untrack(engine, monitor, owner)
                if task is first or failure is None:
                    failure = exc
        if winner is None:
            assert failure is not None    # the first attempt's unexpected errors were raised above
            failure.recorded = True
            raise failure
        loser = second if winner is first else first
        info.hedge = "lost" if winner is first else "won"
        if not loser.done() or (not loser.cancelled() and loser.exception() is None):
            l_leg, l_t0, owner = tasks[loser]
            if loser.done():
                loser.result().close()     # it opened too, a moment later: close it unused
            else:
                loser.cancel()
                with contextlib.suppress(BaseException):
                    await loser
            info.attempts.append(Attempt(l_leg.provider.name, l_leg.model.alias, "hedge_lost", clock() - l_t0))
            _untrack(engine, monitor, owner)
            cost = _loser_cost(req, l_leg)
            info.hedge_cost_usd += cost
            governor.spend(route, cost)
        w_leg, _, owner = tasks[winner]
        if owner is side:    # the hedge won: its in-flight counts become the request's
            _untrack(engine, monitor, side)
            engine._track_upstream(req, w_leg.provider.name)
            if monitor is not None:
                monitor.begin(req, w_leg.key)
        return winner.result(), w_leg
    finally:
        for task in tasks:
            if task is winner:
                continue
            if not task.done():
                task.cancel()
            elif not task.cancelled() and task.exception() is None and task.result() is not None:
                with contextlib.suppress(Exception):
                    task.result().close()
        if side is not None:
            _untrack(engine, monitor, side)


def _untrack(engine: Any, monitor: MonitorHooks | None, owner: Any) -> None:
    """The attempt counted on `owner` (the request, or a hedge's `_Side`) is over. Idempotent."""
    engine._track_upstream(owner, None)
    if monitor is not None:
        monitor.end(owner)
