"""Where finished requests go: the `Meter` interface and the in-memory meter.

The engine hands every request's `RouterInfo` to each meter exactly once, when the request
ends: success, failure or cancel. A meter must be quick and must not raise; durable ledgers
batch off the hot path.

A meter may also declare what else it wants from the engine, as typed parts of this interface
rather than methods the engine goes looking for:

- ``tracks_inflight = True``: the engine calls `track_inflight(provider, +1 / -1)` around every
  upstream attempt (a gauge of calls in flight);
- `bind(view)`: called once by the engine that meters through it, with a `LiveView` the meter
  may read when it exports (the policy, and each deployment's health state).

>>> meter = MemoryMeter()
>>> meter.tracks_inflight
False
"""

from __future__ import annotations

import abc
import collections
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar, Protocol

from router.core.response import RouterInfo

if TYPE_CHECKING:
    from router.core.policy import Policy

__all__ = ["LiveView", "MemoryMeter", "Meter", "record_all"]

log = logging.getLogger("router.metering")


class LiveView(Protocol):
    """What a meter may read of the engine it is bound to (the engine implements it)."""

    @property
    def policy(self) -> Policy: ...

    def provider_states(self) -> dict[tuple[str, str], int]:
        """``{(provider, model alias): 0 healthy | 1 degraded | 2 down}``."""
        ...


class Meter(abc.ABC):
    tracks_inflight: ClassVar[bool] = False

    @abc.abstractmethod
    def record(self, info: RouterInfo) -> None:
        """Take one finished request. Called on the event loop: never block."""

    def bind(self, view: LiveView) -> None:  # noqa: B027 - optional hook
        """The engine that meters through this meter; read it at export time, not per request."""

    def track_inflight(self, provider: str, delta: int) -> None:  # noqa: B027 - optional hook
        """Upstream calls in flight to `provider` changed by `delta`; called only when `tracks_inflight`."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Flush what is pending."""


class MemoryMeter(Meter):
    """Keeps the last `maxlen` requests in memory; for tests, the demo and `router explain`."""

    def __init__(self, maxlen: int = 10_000):
        self.records: collections.deque[RouterInfo] = collections.deque(maxlen=maxlen)

    def record(self, info: RouterInfo) -> None:
        self.records.append(info)


def record_all(meters: Iterable[Meter], info: RouterInfo) -> None:
    for meter in meters:
        try:
            meter.record(info)
        except Exception:  # a broken sink must not break the request
            log.exception("meter %s failed to record request %s", type(meter).__name__, info.request_id)
