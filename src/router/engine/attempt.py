"""What one upstream attempt hands back to the engine's loop: a failure with its verdict inputs, or
a stream that has opened (its first chunk read, nothing committed yet).

Shared by the loop (`router.engine.engine`), hedging (`router.engine.hedge`) and recovery after
the first byte (`router.engine.recovery`), which all run attempts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from router.core.policy import Model, Provider
    from router.transport.base import UpstreamResponse

__all__ = ["AttemptFailed", "Leg", "Opened"]


class AttemptFailed(Exception):
    """An attempt failed; carries what the retry verdict needs and what the caller is told.

    `recorded`: the attempt is already in ``RouterInfo.attempts`` and its in-flight counts are given
    back (a hedge race did both), so the loop only decides what comes next.
    """

    def __init__(self, outcome: str, status: int | None, message: str, retry_after: float | None = None):
        self.outcome, self.status, self.message, self.retry_after = outcome, status, message, retry_after
        self.recorded = False


@dataclass(slots=True)
class Opened:
    """A stream whose first chunk has arrived: not yet committed to (`ChunkStream` commits the winner)."""

    resp: UpstreamResponse
    it: AsyncIterator[bytes]
    first: dict[str, Any] | None
    secrets: tuple[str, ...]
    model: Model
    provider: Provider
    latency_s: float            # attempt start to first chunk
    attempt: Any = None         # its `Attempt`, once committed

    def close(self) -> None:
        """Abort it (closes the upstream connection, which cancels the upstream's work)."""
        self.resp.close()


@dataclass(slots=True)
class Leg:
    """Where an attempt goes: the model, the provider (a replica for a replicated model), its call
    and its deployment key (`Model.key`)."""

    model: Model
    provider: Provider
    call: Any
    key: str
    how: str | None = None      # how the replica was picked (router.engine.replicas), None: one provider
