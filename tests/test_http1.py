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


# ---------------------------------------------------------------------------- pool wait, backpressure, idle check


async def test_waiting_for_a_free_connection_counts_against_the_deadline(serve):
    """A `total_s=0.2` call behind a full pool times out in about 0.2 s, not when a connection frees."""
    base, _, _ = await serve(lambda req: b"")  # never answers: the one connection stays busy
    t = Http1Transport(limit=1)
    busy = asyncio.create_task(send(t, call(base), total_s=5.0))
    await asyncio.sleep(0.05)
    t0 = asyncio.get_running_loop().time()
    with pytest.raises(UpstreamTimeout, match="no free connection"):
        await send(t, call(base), total_s=0.2)
    assert asyncio.get_running_loop().time() - t0 < 0.5
    busy.cancel()
    with pytest.raises(asyncio.CancelledError):
        await busy
    await t.aclose()


async def test_a_woken_waiter_that_was_cancelled_passes_the_slot_on(serve):
    base, _, _ = await serve(lambda req: ok(b"{}"))
    t = Http1Transport(limit=1)
    first = await send(t, call(base))
    waiting = [asyncio.create_task(send(t, call(base))) for _ in range(2)]
    await asyncio.sleep(0.02)
    await first.read()
    first.release()      # wakes the first waiter ...
    waiting[0].cancel()  # ... which is cancelled before it runs
    resp = await asyncio.wait_for(waiting[1], 1.0)
    assert await resp.read() == b"{}"
    resp.release()
    await t.aclose()


def _streaming_server(head: bytes, produce) -> tuple[asyncio.AbstractServer, list[int]]:
    written = [0]

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(len(b'{"model":"m"}'))
        writer.write(head)
        for piece in produce():
            writer.write(piece)
            await writer.drain()  # blocks while the client does not read: TCP flow control
            written[0] += len(piece)
        writer.close()

    return handle, written


async def test_a_64_mb_body_nobody_reads_is_not_buffered():
    size, piece = 64 * 1024 * 1024, b"a" * (1024 * 1024)
    handle, written = _streaming_server(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size,
                                        lambda: (piece for _ in range(size // len(piece))))
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    t = Http1Transport()
    resp = await send(t, UpstreamCall(f"http://127.0.0.1:{port}/x", {}, {"model": "m"}), total_s=30)
    await asyncio.sleep(0.5)  # the body arrives; nobody reads it
    conn = resp._conn
    assert conn._paused and conn.p.size <= 2 * 1024 * 1024, conn.p.size
    assert written[0] < 32 * 1024 * 1024  # the upstream was slowed down, not drained into memory
    data = await resp.read()  # a reader takes it all
    assert len(data) == size
    resp.release()
    server.close()
    await t.aclose()


async def test_a_slow_event_stream_consumer_keeps_memory_bounded():
    event = b"data: " + b"x" * 1000 + b"\n\n"
    n = 64 * 312   # about 20 MB of events

    def produce():
        batch = event * 64
        for _ in range(n // 64):
            yield b"%x\r\n%s\r\n" % (len(batch), batch)
        yield b"0\r\n\r\n"

    handle, written = _streaming_server(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", produce)
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    t = Http1Transport()
    resp = await send(t, UpstreamCall(f"http://127.0.0.1:{port}/x", {}, {"model": "m"}), total_s=60)
    conn, seen, peak = resp._conn, 0, 0
    async for _ in resp.sse_data():
        seen += 1
        peak = max(peak, conn.p.size)
        if seen == 1:
            await asyncio.sleep(0.5)  # the consumer lags: the stream must wait, not pile up
            assert conn._paused and written[0] < n * len(event) // 2
    assert seen == n and peak <= 2 * 1024 * 1024, peak
    resp.release()
    server.close()
    await t.aclose()


class _ThreadedServer:
    """A keep-alive server in its own thread, so it can write to an idle connection while the
    client's event loop is blocked (the bytes then sit unread in the client's socket)."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list = []
        self.threading = threading
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            self.threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c) -> None:
        buf = b""
        while True:
            try:
                data = c.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf and buf.endswith(b"}"):
                buf = b""
                c.sendall(ok(b'{"n":%d}' % len(self.conns)))

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


async def test_an_idle_connection_with_unread_bytes_is_not_reused():
    import time

    srv = _ThreadedServer()
    t = Http1Transport()
    url = f"http://127.0.0.1:{srv.port}/x"
    resp = await send(t, UpstreamCall(url, {}, {"model": "m"}))
    assert await resp.read() == b'{"n":1}'
    resp.release()
    # the upstream times the idle connection out (as nginx does: a 408, then close) while this loop is busy
    srv.conns[0].sendall(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    time.sleep(0.1)  # blocks the loop: the bytes wait in the socket, unseen by the protocol
    resp = await send(t, UpstreamCall(url, {}, {"model": "m"}))  # the idle check finds them
    assert resp.status == 200 and await resp.read() == b'{"n":2}'
    resp.release()
    assert len(srv.conns) == 2
    srv.close()
    await t.aclose()


async def test_bytes_arriving_on_an_idle_connection_drop_it_from_the_pool(serve):
    base, _, conns = await serve(lambda req: ok(b"{}"))
    t = Http1Transport()
    resp = await send(t, call(base))
    await resp.read()
    resp.release()
    conns[0].write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsmuggle")  # unasked
    await asyncio.sleep(0.05)
    resp = await send(t, call(base))
    assert await resp.read() == b"{}"
    resp.release()
    assert len(conns) == 2
    await t.aclose()


async def test_content_length_with_transfer_encoding_is_refused_and_the_connection_not_reused(serve):
    smuggled = (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nsmuggled!")
    replies = iter([smuggled, ok(b'{"honest":1}')])
    base, _, conns = await serve(lambda req: next(replies))
    t = Http1Transport()
    with pytest.raises(UpstreamProtocolError, match="both content-length and transfer-encoding"):
        await send(t, call(base))
    resp = await send(t, call(base))
    assert await resp.read() == b'{"honest":1}'
    resp.release()
    assert len(conns) == 2
    await t.aclose()
