"""Where finished requests go: the `Meter` interface and the in-memory meter.

The engine hands every request's `RouterInfo` to each meter exactly once, when the request
ends: success, failure or cancel. A meter must be quick and must not raise; durable ledgers
batch off the hot path.
"""

from __future__ import annotations

import abc
import collections
import logging
from collections.abc import Iterable

from .response import RouterInfo

__all__ = ["MemoryMeter", "Meter", "record_all"]

log = logging.getLogger("router.metering")


class Meter(abc.ABC):
    @abc.abstractmethod
    def record(self, info: RouterInfo) -> None:
        """Take one finished request. Called on the event loop: never block."""

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
