"""router.transport.http1: the lean HTTP/1.1 client, against a raw asyncio server that answers from a script."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable

import pytest

from router.core.translate import UpstreamCall
from router.transport.base import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from router.transport.http1 import Http1Transport


class _Server(asyncio.Protocol):
    """Answers each request (head + Content-Length body) with `reply(request)`: bytes, None (hang up)
    or (bytes, True) (write, then hang up)."""

    def __init__(self, reply: Callable[[bytes], object], seen: list[bytes], conns: list[object]):
        self.reply, self.seen, self.conns = reply, seen, conns
        self.buf = b""

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.t = transport
        self.conns.append(transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end]
            n = 0
            for line in head.split(b"\r\n")[1:]:
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":")[1])
            if len(self.buf) < end + 4 + n:
                return
            req, self.buf = self.buf[:end + 4 + n], self.buf[end + 4 + n:]
            self.seen.append(req)
            out = self.reply(req)
            if out is None:
                self.t.close()
                return
            if isinstance(out, tuple):  # (bytes, then hang up)
                self.t.write(out[0])
                self.t.close()
                return
            self.t.write(out)


@pytest.fixture
async def serve():
    servers = []

    async def start(reply: Callable[[bytes], object]):
        seen: list[bytes] = []
        conns: list[object] = []
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Server(reply, seen, conns), "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1", seen, conns

    yield start
    for s in servers:
        s.close()


def call(base: str, payload: dict | None = None, headers: dict | None = None) -> UpstreamCall:
    return UpstreamCall(base + "/chat/completions", {"Content-Type": "application/json", **(headers or {})},
                        payload or {"model": "m"})


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def send(t: Http1Transport, c: UpstreamCall, **kw):
    return await t.send(c, connect_s=kw.get("connect_s", 2.0), read_s=kw.get("read_s"),
                        total_s=kw.get("total_s", 5.0))


async def test_content_length_and_keep_alive(serve):
    base, seen, conns = await serve(lambda req: ok(b'{"a":1}', b"X-Thing: 1\r\n"))
    t = Http1Transport()
    for _ in range(3):
        resp = await send(t, call(base, headers={"Authorization": "Bearer k"}))
        assert resp.status == 200 and resp.headers["x-thing"] == "1" and resp.headers.get("X-Thing") == "1"
        assert await resp.read() == b'{"a":1}'
        resp.release()
    assert len(conns) == 1 and len(seen) == 3  # one connection, reused
    head = seen[0].split(b"\r\n\r\n")[0].decode()
    assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
    assert "Authorization: Bearer k" in head and "Host: 127.0.0.1:" in head
    assert seen[0].endswith(b'{"model":"m"}')
    await t.aclose()


async def test_chunked_gzip_and_sse(serve):
    events = b"data: {\"n\":1}\n\n: comment\n\ndata: {\"n\":2}\r\n\r\ndata: [DONE]\n\n"
    packed = gzip.compress(events)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(packed[i:i + 7]), packed[i:i + 7]) for i in range(0, len(packed), 7))
    reply = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n"
             + chunks + b"0\r\n\r\n")
    base, _, conns = await serve(lambda req: reply)
    t = Http1Transport()
    resp = await send(t, call(base))
    assert [d async for d in resp.sse_data()] == [b'{"n":1}', b'{"n":2}', b"[DONE]"]
    resp.release()
    resp = await send(t, call(base))
    assert await resp.read() == events
    resp.release()
    assert len(conns) == 1
    await t.aclose()


async def test_body_until_close(serve):
    base, _, conns = await serve(lambda req: None)

    async def reply_then_close(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(reply_then_close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    t = Http1Transport()
    resp = await send(t, UpstreamCall(f"http://127.0.0.1:{port}/x", {}, {}))
    assert await resp.read() == b"all of it"
    resp.release()
    server.close()
    await t.aclose()


async def test_drop_before_answer_is_a_protocol_error(serve):
    base, _, _ = await serve(lambda req: None)
    with pytest.raises(UpstreamProtocolError):
        await send(Http1Transport(), call(base))


async def test_mid_body_drop_is_a_protocol_error(serve):
    base, _, _ = await serve(lambda req: (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf", True))
    resp = await send(Http1Transport(), call(base))
    with pytest.raises(UpstreamProtocolError):
        await asyncio.wait_for(resp.read(), 0.5)


async def test_garbage_is_a_protocol_error(serve):
    base, _, _ = await serve(lambda req: b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(UpstreamProtocolError):
        await send(Http1Transport(), call(base))


async def test_timeouts(serve):
    base, _, _ = await serve(lambda req: b"")  # never answers
    t = Http1Transport()
    with pytest.raises(UpstreamTimeout):
        await send(t, call(base), total_s=0.1)
    with pytest.raises(UpstreamTimeout):
        await send(t, call(base), read_s=0.1, total_s=None)


async def test_connect_error():
    with pytest.raises(UpstreamConnectError):
        await send(Http1Transport(), call("http://127.0.0.1:1/v1"))


async def test_header_injection_is_refused(serve):
    base, seen, _ = await serve(lambda req: ok(b"{}"))
    with pytest.raises(UpstreamProtocolError):
        await send(Http1Transport(), call(base, headers={"X-Evil": "a\r\nHost: elsewhere"}))
    assert seen == []


async def test_early_release_reuses_the_connection_when_the_rest_arrives(serve):
    async def slow_tail(reader, writer):
        for _ in range(2):
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(len(b'{"model":"m"}'))
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"e\r\ndata: [DONE]\n\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        writer.close()

    opened = []
    server = await asyncio.start_server(lambda r, w: (opened.append(1), slow_tail(r, w))[1], "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    t = Http1Transport()
    for _ in range(2):
        resp = await send(t, UpstreamCall(f"http://127.0.0.1:{port}/x", {}, {"model": "m"}))
        assert [d async for d in _first(resp.sse_data())] == [b"[DONE]"]
        resp.release()  # before the terminating chunk
        await asyncio.sleep(0.1)
    assert len(opened) == 1
    server.close()
    await t.aclose()


async def _first(it):
    async for d in it:
        yield d
        return


async def test_limit_queues_callers(serve):
    base, _, conns = await serve(lambda req: ok(b"{}"))
    t = Http1Transport(limit=2)

    async def one() -> bytes:
        resp = await send(t, call(base))
        data = await resp.read()
        resp.release()
        return data

    assert await asyncio.gather(*(one() for _ in range(10))) == [b"{}"] * 10
    assert len(conns) <= 2
    await t.aclose()
