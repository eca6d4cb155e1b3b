"""What the engine calls on the live-state monitor, as a typed protocol.

`router.monitor.monitor.Monitor` implements it; a test or an embedding application may pass any
object that does. (What the engine calls on meters is the `router.core.meter.Meter` interface.)

>>> from router.monitor.monitor import Monitor
>>> isinstance(Monitor.__new__(Monitor), MonitorHooks)
True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from router.core.decision import LiveState
    from router.core.policy import Policy

__all__ = ["MonitorHooks"]


@runtime_checkable
class MonitorHooks(Protocol):
    def overlay(self, state: LiveState, policy: Policy) -> LiveState:
        """`state` plus open circuits, saturated deployments and TTFT estimates; called before each decision."""
        ...

    def begin(self, request: object, alias: str) -> None:
        """An attempt of `request` on deployment `alias` starts (counts it in flight)."""
        ...

    def end(self, request: object) -> None:
        """The attempt of `request` in flight, if any, is over. Idempotent."""
        ...

    def record(self, attempts: Iterable[Any]) -> None:
        """Every attempt of a finished request, for the circuit breakers."""
        ...

    def states(self) -> dict[tuple[str, str], int]:
        """``{(provider, alias): 0 healthy | 1 degraded | 2 down}``."""
        ...

    def replica_load(self, key: str) -> float | None:
        """Outstanding work on deployment `key` (a `Model.key`), or None when it is out; for picking replicas."""
        ...

    def ttft_quantile(self, key: str, q: float) -> float | None:
        """A measured time-to-first-token quantile of `key`, or None; for hedge delays."""
        ...
