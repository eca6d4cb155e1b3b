"""The proxy's connections: malformed HTTP refused without echoing it, idle and stalled ones closed.

aiohttp answers a request its parser refuses (a bare LF, an oversized header, a bad
Content-Length) with a text/plain 400 that quotes the offending bytes, and logs them with a
traceback: an ``Authorization`` header next to the error ends up in the response and the log.
`GuardedServer` is aiohttp's low-level `web.Server` whose connections answer instead in the error
shape of the API the request was for (``bad_request(path, error)``, provided by the proxy), with a
fixed description of what was wrong and never a byte of the request, and log one line without it.

Timeouts, set by the proxy (`ProxyOptions`):

- ``keepalive_timeout`` (``--idle-timeout-s``): a connection must deliver a complete request head
  within this long of opening, or of its previous response; else it is closed. That closes idle
  keep-alive connections and half-sent heads (slowloris) alike: the clock is not reset by partial
  data.
- ``lingering_time``: after answering a request whose body did not fully arrive (e.g. a 408 from
  the body timeout, `router.server.proxy`), how long the rest may still be read before the
  connection is closed.

>>> server = GuardedServer(handler, bad_request=shape, keepalive_timeout=20)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong

from router.core.errors import InvalidRequest, RequestError

__all__ = ["GuardedServer", "describe"]

log = logging.getLogger("router.server.connections")

_REQUEST_LINE = re.compile(rb"[A-Z]{1,16} (/[^ ?#\r\n]{0,512})")
_SAFE = re.compile(r"[A-Za-z][A-Za-z0-9 ,.()-]{0,79}")


def describe(exc: BaseException | None) -> tuple[int, str]:
    """The status and a fixed description of a parse error: the start of aiohttp's message up to
    the first character that could begin quoted request bytes, never the bytes themselves.

    >>> describe(HttpProcessingError(code=400, message="Invalid character in Content-Length:\\n  b'1_0'"))
    (400, 'malformed HTTP request: Invalid character in Content-Length')
    """
    if isinstance(exc, LineTooLong):
        return 431, "request header fields too large: a line is over the proxy's limit (8190 bytes)"
    text = getattr(exc, "message", None) or ""
    m = _SAFE.match(text.splitlines()[0] if text else "")
    what = m.group(0).rstrip(" ,.(-") if m else type(exc).__name__ if exc is not None else "unreadable"
    return 400, f"malformed HTTP request: {what}"


class _GuardedHandler(web.RequestHandler):
    """One connection of a `GuardedServer`."""

    def __init__(self, manager: GuardedServer, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._last_data = b""

    def data_received(self, data: bytes) -> None:
        self._last_data = data  # a reference, no copy: read only to name the path of a refused request
        super().data_received(data)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):  # a handler's 500 or 504: aiohttp's, which quotes nothing
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        status, text = describe(exc)
        m = _REQUEST_LINE.match(self._last_data)
        path = m.group(1).decode("ascii", "replace") if m else "/"
        remote = request.remote
        if isinstance(exc, BadHttpMethod) and getattr(self, "_request_count", 1) == 1:  # not HTTP: scanners, TLS
            log.debug("refused a request that is not HTTP from %s", remote)
        else:
            log.warning("refused a malformed HTTP request from %s: %d %s", remote, status, text)
        err: RequestError = InvalidRequest(text, code="request_header_fields_too_large" if status == 431
                                           else "malformed_http_request", status=status)
        resp = self._guard.bad_request(path, err)
        resp.force_close()
        return resp


class GuardedServer(web.Server):
    """`web.Server` whose connections refuse malformed HTTP with `bad_request(path, error)`, a
    response in the API shape of `path`, and never echo or log the request's bytes."""

    def __init__(self, handler: Any, *, bad_request: Callable[[str, RequestError], web.Response],
                 **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.bad_request = bad_request

    def __call__(self) -> web.RequestHandler:
        return _GuardedHandler(self, loop=self._loop, **self._kwargs)
