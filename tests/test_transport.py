"""ProviderTransport picks the client per call: litellm by kind, aiohttp for https, the lean client for http."""

from __future__ import annotations

import pytest

from router.core.translate import UpstreamCall
from router.transport.aiohttp_client import AiohttpTransport
from router.transport.base import Transport
from router.transport.chooser import ProviderTransport
from router.transport.http1 import Http1Transport


class Recorder(Transport):
    def __init__(self, name: str):
        self.name, self.calls = name, []

    async def send(self, call, *, connect_s, read_s, total_s):
        self.calls.append(call.url)
        return self.name


async def test_scheme_picks_the_client():
    http, https = Recorder("http"), Recorder("https")
    t = ProviderTransport(http=http, https=https)
    assert await t.send(UpstreamCall("http://gpu:8000/v1/chat/completions", {}, {}), connect_s=1, read_s=None,
                        total_s=1) == "http"
    assert await t.send(UpstreamCall("https://api.deepseek.com/v1/chat/completions", {}, {}), connect_s=1,
                        read_s=None, total_s=1) == "https"
    assert http.calls == ["http://gpu:8000/v1/chat/completions"]
    assert https.calls == ["https://api.deepseek.com/v1/chat/completions"]


@pytest.mark.parametrize("env,expected", [(None, Http1Transport), ("aiohttp", AiohttpTransport)])
def test_defaults_and_the_aiohttp_switch(monkeypatch, env, expected):
    if env is None:
        monkeypatch.delenv("ROUTER_HTTP_CLIENT", raising=False)
    else:
        monkeypatch.setenv("ROUTER_HTTP_CLIENT", env)
    t = ProviderTransport()
    assert isinstance(t.https, AiohttpTransport) and isinstance(t.http, expected)
