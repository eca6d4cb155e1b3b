"""The transport interface: one method, `send(call) -> UpstreamResponse`, and its errors.

Each client module (`aiohttp_client`, `http1`, `litellm_client`) implements `Transport` and maps
its own library's exceptions to these at its boundary, so the engine never sees a third-party
exception type::

    TransportError
     ├── UpstreamConnectError    could not connect (refused, DNS, TLS handshake)
     ├── UpstreamTimeout         connect, first-byte, read or total timeout
     └── UpstreamProtocolError   closed early, or not HTTP / JSON / SSE

>>> resp = await transport.send(call, connect_s=5, read_s=None, total_s=60)   # doctest: +SKIP
>>> data = await resp.read(); resp.release()                                  # doctest: +SKIP
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping

from router.core.translate import UpstreamCall

__all__ = [
    "Transport",
    "TransportError",
    "UpstreamConnectError",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeout",
]


class TransportError(Exception):
    outcome = "transport_error"


class UpstreamConnectError(TransportError):
    outcome = "connect_error"


class UpstreamTimeout(TransportError):
    outcome = "timeout"


class UpstreamProtocolError(TransportError):
    """The upstream closed the connection early or sent something that is not HTTP/JSON/SSE."""

    outcome = "protocol_error"


class UpstreamResponse(abc.ABC):
    status: int
    headers: Mapping[str, str]

    @abc.abstractmethod
    async def read(self) -> bytes: ...

    @abc.abstractmethod
    def sse_data(self) -> AsyncIterator[bytes]:
        """The payload of each ``data:`` line of a server-sent event stream, in order."""

    @abc.abstractmethod
    def close(self) -> None:
        """Abort the exchange (closes the connection, which cancels the upstream's work)."""

    @abc.abstractmethod
    def release(self) -> None:
        """Return a fully read connection to the pool."""


class Transport(abc.ABC):
    @abc.abstractmethod
    async def send(self, call: UpstreamCall, *, connect_s: float, read_s: float | None,
                   total_s: float | None) -> UpstreamResponse:
        """Send `call`; return once the status line and headers arrived."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        pass
