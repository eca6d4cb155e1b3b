"""Shared pieces of the money suites (prices, rate limits, the response cache): a proxy on a real
socket in front of a `Router` built as `router serve` builds it, and SSE parsing."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
from aiohttp import web

from router import Router
from router.core.policy_parser import parse_policy
from router.server.proxy import Proxy, ProxyOptions


async def start_proxy(policy_text: str, *, meters: list[Any] | None = None, **router_kwargs: Any) -> SimpleNamespace:
    """`router serve`'s construction (a `Router` with these meters) behind a `Proxy` on 127.0.0.1."""
    policy = parse_policy(policy_text, env={})
    router = Router(policy, meters=meters or [], monitor=False, **router_kwargs)
    render = next((m.render for m in meters or [] if hasattr(m, "render")), None)
    proxy = Proxy(router.engine, ProxyOptions(keepalive_s=5), metrics=render)
    runner = web.ServerRunner(proxy.server(), handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def stop() -> None:
        await runner.cleanup()
        await router.aclose()

    return SimpleNamespace(url=url, router=router, engine=router.engine, proxy=proxy, stop=stop)


def sse_events(raw: bytes) -> list[tuple[str | None, Any]]:
    """(event name, decoded data) of each server-sent event; ``[DONE]`` stays a string."""
    out = []
    for block in raw.decode().split("\n\n"):
        name, data = None, []
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            text = "\n".join(data)
            out.append((name, text if text == "[DONE]" else orjson.loads(text)))
    return out
