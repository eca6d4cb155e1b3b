"""Providers that are not OpenAI-compatible, through litellm (`kind: litellm`).

litellm is imported on the first call to such a provider, never on `import router` nor for
policies without one (importing it takes seconds). The transport speaks the same small
interface as the HTTP one: litellm's responses are turned back into OpenAI JSON bytes and SSE
``data:`` payloads, and its exceptions into HTTP statuses or transport errors, so retries,
fallback and metering treat these providers like any other.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from router.core.translate import UpstreamCall
from router.transport.base import Transport, UpstreamConnectError, UpstreamResponse, UpstreamTimeout

__all__ = ["LitellmTransport"]


class _Static(UpstreamResponse):
    def __init__(self, status: int, body: bytes, headers: Mapping[str, str] | None = None):
        self.status, self._body, self.headers = status, body, dict(headers or {})

    async def read(self) -> bytes:
        return self._body

    async def sse_data(self) -> AsyncIterator[bytes]:  # pragma: no cover - errors are not streamed
        if False:
            yield b""

    def close(self) -> None:
        pass

    def release(self) -> None:
        pass


class _Stream(UpstreamResponse):
    status = 200
    headers: Mapping[str, str] = {}

    def __init__(self, stream: Any):
        self._stream = stream

    async def read(self) -> bytes:  # pragma: no cover - a stream is read with sse_data
        raise NotImplementedError

    async def sse_data(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield orjson.dumps(chunk.model_dump(exclude_none=True))
        except Exception as e:  # litellm raises its own types mid-stream
            raise _map(e) from None
        yield b"[DONE]"

    def close(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            asyncio.ensure_future(aclose())

    def release(self) -> None:
        pass


def _map(exc: BaseException) -> Exception:
    name = type(exc).__name__
    if "Timeout" in name or isinstance(exc, asyncio.TimeoutError):
        return UpstreamTimeout("upstream timed out")
    return UpstreamConnectError(f"cannot reach the provider: {name}")


class LitellmTransport(Transport):
    def __init__(self) -> None:
        self._litellm: Any = None

    def _lib(self) -> Any:
        if self._litellm is None:
            import litellm

            litellm.suppress_debug_info = True
            self._litellm = litellm
        return self._litellm

    async def send(self, call: UpstreamCall, *, connect_s: float, read_s: float | None,
                   total_s: float | None) -> UpstreamResponse:
        litellm = self._lib()
        payload = dict(call.payload)
        model = payload.pop("model")
        stream = bool(payload.pop("stream", False))
        auth = call.headers.get("Authorization", "")
        kwargs: dict[str, Any] = {"model": model, "stream": stream, "num_retries": 0, "timeout": total_s, **payload}
        if auth.startswith("Bearer "):
            kwargs["api_key"] = auth[7:]
        if call.base_url:
            kwargs["api_base"] = call.base_url
        try:
            result = await litellm.acompletion(**kwargs)
        except Exception as e:
            status = getattr(e, "status_code", None)
            if isinstance(status, int) and 400 <= status < 600 and "Timeout" not in type(e).__name__:
                message = getattr(e, "message", None) or str(e)
                body = orjson.dumps({"error": {"message": str(message)[:500], "type": type(e).__name__}})
                return _Static(status, body)
            raise _map(e) from None
        if stream:
            return _Stream(result)
        return _Static(200, orjson.dumps(result.model_dump(exclude_none=True)))
