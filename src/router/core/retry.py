"""Retry policy: which failures are retried, moved past, or returned; and how long to wait.

Deciding is separate from doing: `verdict()` and `RetryPolicy.wait()` are pure, the engine
sleeps. A wait is exponential backoff with additive jitter, capped, as docs/policy.md states:
``min(max_backoff_s, backoff_s * 2**(n-1) + uniform(0, backoff_s))`` before retry n+1. These few
lines are owned here rather than borrowed from tenacity, whose strategies expect its own call
state; the random source is injected so tests can pin it.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from router.core.policy import Retry

__all__ = ["FATAL", "NEXT", "RETRY", "RetryPolicy", "parse_retry_after", "verdict"]

RETRY = "retry"   # try the same candidate again after a wait
NEXT = "next"     # move on to the next candidate now
FATAL = "fatal"   # the request itself is wrong: return the error to the caller

_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
_FATAL_STATUS = frozenset({400, 422})


def verdict(status: int | None) -> str:
    """What to do after an attempt that ended with HTTP `status` (None: a transport failure).

    >>> verdict(None), verdict(429), verdict(400), verdict(401)
    ('retry', 'retry', 'fatal', 'next')
    """
    if status is None or status in _RETRY_STATUS or status >= 500:
        return RETRY
    if status in _FATAL_STATUS:
        return FATAL
    return NEXT


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` (seconds or HTTP date) or ``retry-after-ms`` header."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("Retry-After") or headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


@dataclass(frozen=True)
class RetryPolicy:
    """The policy's `retry:` block as behaviour: attempts per candidate and the wait between them.

    >>> r = RetryPolicy(attempts=3, backoff_s=0.2, max_backoff_s=2.0, retry_after_max_s=5, random=lambda: 0.5)
    >>> r.wait(1, None), r.wait(2, None), r.wait(3, None)
    (0.30000000000000004, 0.5, None)
    >>> r.wait(1, 4.0), r.wait(1, 60.0)
    (4.0, None)
    """

    attempts: int
    backoff_s: float
    max_backoff_s: float
    retry_after_max_s: float
    random: Callable[[], float] = random.random

    @classmethod
    def from_policy(cls, retry: Retry) -> RetryPolicy:
        return cls(retry.attempts, retry.backoff_s, retry.max_backoff_s, retry.retry_after_max_s)

    def wait(self, attempt_number: int, retry_after: float | None) -> float | None:
        """Seconds to wait before attempt `attempt_number + 1`; None: do not retry this candidate.

        A ``Retry-After`` is honoured when it is at most `retry_after_max_s`; a longer one moves
        on to the next candidate instead of holding the request.
        """
        if attempt_number >= self.attempts:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.retry_after_max_s else None
        backoff = self.backoff_s * 2 ** (attempt_number - 1) + self.random() * self.backoff_s
        return max(0.0, min(self.max_backoff_s, backoff))
