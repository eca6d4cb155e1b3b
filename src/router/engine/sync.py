"""Run the async core from synchronous code, even where an event loop is already running.

One private event loop runs in a daemon thread; sync calls submit coroutines to it and wait.
That works the same in a script, in a thread pool and inside Jupyter (whose own loop is busy
running the cell), and it keeps one connection pool for all sync callers.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

__all__ = ["SyncIterator", "run"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="router-sync-loop", daemon=True)
            thread.start()
            _loop = loop
            atexit.register(_shutdown, loop, thread)
        return _loop


def _shutdown(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    if loop.is_running():
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=2)


def call_soon(fn: Any) -> None:
    """Schedule `fn()` on the background loop if it is running; safe from finalizers (never blocks)."""
    loop = _loop
    if loop is not None and not loop.is_closed():
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the background loop and return its result (or raise its exception)."""
    return asyncio.run_coroutine_threadsafe(coro, _background_loop()).result()


async def _anext(it: AsyncIterator[T]) -> T:
    return await it.__anext__()


class SyncIterator(Iterator[T]):
    """A blocking iterator over an async iterator that lives on the background loop."""

    def __init__(self, aiter: AsyncIterator[T]):
        self._aiter = aiter
        self._done = False

    def __iter__(self) -> SyncIterator[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        try:
            return run(_anext(self._aiter))
        except StopAsyncIteration:
            self._done = True
            raise StopIteration from None

    def close(self) -> None:
        """Stop early: aborts the upstream request and meters what was used."""
        if not self._done:
            self._done = True
            aclose = getattr(self._aiter, "aclose", None)
            if aclose is not None:
                run(aclose())

    def __enter__(self) -> SyncIterator[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        aclose = getattr(self._aiter, "aclose", None)
        if not self._done and aclose is not None:
            call_soon(lambda: asyncio.ensure_future(aclose()))
