"""Both transports refuse an upstream body that would take unbounded memory, over real sockets:
a gzip bomb, a plain body past the limit, and a stream event that never ends."""

from __future__ import annotations

import asyncio
import gzip
import resource
import zlib

import pytest

from router.core.translate import UpstreamCall
from router.transport import aiohttp_client, http1
from router.transport.aiohttp_client import AiohttpTransport
from router.transport.base import UpstreamProtocolError
from router.transport.http1 import Http1Transport

CLIENTS = [AiohttpTransport, Http1Transport]


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """320 MiB of zeros, gzipped to about 320 KiB: past the 128 MiB limit."""
    z = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1024 * 1024)
    return b"".join(z.compress(block) for _ in range(320)) + z.flush()


async def serve(head: bytes, body_pieces):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            req = await reader.readuntil(b"\r\n\r\n")
            n = next(int(x.split(b":")[1]) for x in req.split(b"\r\n") if x.lower().startswith(b"content-length"))
            await reader.readexactly(n)
            writer.write(head)
            for piece in body_pieces():
                writer.write(piece)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"


async def send(client, url: str, *, stream: bool = False):
    t = client()
    try:
        resp = await t.send(UpstreamCall(url, {"Content-Type": "application/json"}, {"stream": stream}),
                            connect_s=2, read_s=5, total_s=20)
        try:
            if stream:
                return [e async for e in resp.sse_data()]
            return await resp.read()
        finally:
            resp.close()
    finally:
        await t.aclose()


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_gzip_bomb_is_refused_without_inflating_it(client, bomb: bytes) -> None:
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: %d\r\n\r\n" % len(bomb))
    server, url = await serve(head, lambda: [bomb[i:i + 65536] for i in range(0, len(bomb), 65536)])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        with pytest.raises(UpstreamProtocolError, match="larger than"):
            await send(client, url)
    finally:
        server.close()
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 300, f"peak memory grew {grown_mib:.0f} MiB for a 320 MiB bomb"


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_plain_body_past_the_limit_is_refused(client, monkeypatch) -> None:
    monkeypatch.setattr(http1, "MAX_BODY", 1024 * 1024)
    monkeypatch.setattr(aiohttp_client, "MAX_BODY", 1024 * 1024)
    body = b"x" * (3 * 1024 * 1024)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    server, url = await serve(head, lambda: [body])
    try:
        with pytest.raises(UpstreamProtocolError, match="larger than"):
            await send(client, url)
    finally:
        server.close()


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_body_at_the_limit_is_read_whole(client, monkeypatch) -> None:
    monkeypatch.setattr(http1, "MAX_BODY", 1024 * 1024)
    monkeypatch.setattr(aiohttp_client, "MAX_BODY", 1024 * 1024)
    body = b"y" * (1024 * 1024)
    zipped = gzip.compress(body)
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: %d\r\n\r\n" % len(zipped))
    server, url = await serve(head, lambda: [zipped])
    try:
        assert await send(client, url) == body
    finally:
        server.close()


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_stream_event_that_never_ends_is_refused(client) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"

    def pieces():
        yield b"6\r\ndata: \r\n"
        chunk = b"z" * 65536
        for _ in range(17 * 16 + 1):   # past 16 MiB without a line break
            yield b"%x\r\n%s\r\n" % (len(chunk), chunk)

    server, url = await serve(head, pieces)
    try:
        with pytest.raises(UpstreamProtocolError, match="longer than"):
            await send(client, url, stream=True)
    finally:
        server.close()
