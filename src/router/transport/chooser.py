"""`ProviderTransport`: the default transport, which picks a client per call."""

from __future__ import annotations

import os

from router.core.translate import UpstreamCall
from router.transport.aiohttp_client import AiohttpTransport
from router.transport.base import Transport, UpstreamResponse
from router.transport.http1 import Http1Transport
from router.transport.litellm_client import LitellmTransport

__all__ = ["ProviderTransport"]


class ProviderTransport(Transport):
    """The default transport: picks a client per call.

    - ``kind: litellm`` providers: litellm, imported on first use.
    - ``https://`` upstreams (public APIs): aiohttp's client: TLS, proxies and the long tail of
      HTTP behaviour, where the network round trip dwarfs the client's own cost anyway.
    - ``http://`` upstreams (self-hosted vLLM inside your network, loopback sidecars): the lean
      HTTP/1.1 client in `router.transport.http1`, which costs about half of aiohttp's per call
      (benchmarks/README.md). ``ROUTER_HTTP_CLIENT=aiohttp`` uses aiohttp for these too.

    Pass `http` / `https` to choose explicitly.
    """

    def __init__(self, http: Transport | None = None, https: Transport | None = None):
        self.https = https or AiohttpTransport()
        if http is None:
            if os.environ.get("ROUTER_HTTP_CLIENT", "").lower() == "aiohttp":
                http = self.https
            else:
                http = Http1Transport()
        self.http = http
        self._litellm: Transport | None = None

    async def send(self, call: UpstreamCall, *, connect_s: float, read_s: float | None,
                   total_s: float | None) -> UpstreamResponse:
        if call.kind == "litellm":
            if self._litellm is None:  # imports litellm itself only on its first call
                self._litellm = LitellmTransport()
            return await self._litellm.send(call, connect_s=connect_s, read_s=read_s, total_s=total_s)
        client = self.https if call.url.startswith("https:") else self.http
        return await client.send(call, connect_s=connect_s, read_s=read_s, total_s=total_s)

    async def aclose(self) -> None:
        await self.http.aclose()
        if self.https is not self.http:
            await self.https.aclose()
