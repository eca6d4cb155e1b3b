"""router.core.sse: one SSE decoder, right by the event-stream rules, under both HTTP clients."""

from __future__ import annotations

import asyncio

import pytest

from router.core.sse import SSEDecoder, SSEEventTooLarge
from router.core.translate import UpstreamCall
from router.transport.aiohttp_client import AiohttpTransport
from router.transport.http1 import Http1Transport

# (stream bytes, the data of each event in order)
CASES = [
    (b'data: {"a":1}\n\ndata: [DONE]\n\n', [b'{"a":1}', b"[DONE]"]),
    (b"data: one\ndata: two\n\n", [b"one\ntwo"]),                          # multi-line data joins with \n
    (b"data: x\r\n\r\ndata: y\r\r", [b"x", b"y"]),                          # CRLF and CR line ends
    (b": keep-alive\n\n:comment\ndata: z\n\n", [b"z"]),                     # comments are no events
    (b"event: ping\nid: 7\nretry: 100\ndata: w\n\n", [b"w"]),              # other fields ignored
    (b"event: ping\n\n", []),                                               # an event without data
    (b"data:no-space\ndata:  two-spaces\n\n", [b"no-space\n two-spaces"]),  # only one space is dropped
    (b"data\ndata: after-empty\n\n", [b"\nafter-empty"]),                   # `data` alone is an empty line
    (b"data: last-without-blank-line", [b"last-without-blank-line"]),     # delivered at the end
    (b'data: {"text":"a\\nb"}\n\n', [b'{"text":"a\\nb"}']),                 # an escaped newline is data
]


@pytest.mark.parametrize("raw,events", CASES)
def test_decoder_in_one_read(raw: bytes, events: list[bytes]) -> None:
    d = SSEDecoder()
    assert d.feed(raw) + d.close() == events


@pytest.mark.parametrize("raw,events", CASES)
def test_decoder_in_every_split(raw: bytes, events: list[bytes]) -> None:
    """However the bytes are cut into reads (a CRLF included), the events are the same."""
    for i in range(len(raw) + 1):
        for j in range(i, len(raw) + 1):
            d = SSEDecoder()
            assert d.feed(raw[:i]) + d.feed(raw[i:j]) + d.feed(raw[j:]) + d.close() == events, (i, j)


def test_decoder_byte_by_byte() -> None:
    raw = b"".join(r for r, _ in CASES[:-2]) + b"\n"
    expected = [e for _, evs in CASES[:-2] for e in evs]
    d = SSEDecoder()
    got: list[bytes] = []
    for b in raw:
        got += d.feed(bytes([b]))
    assert got + d.close() == expected


# -- both transports, against a raw server that writes the stream in awkward pieces

STREAM = [b"data: fir", b"st\r", b"\ndata: line2\r\n", b"\r\n: keep-alive\n\n", b"data: {\"b\":", b"2}\n\n",
          b"data: [DONE]\r\r"]


@pytest.fixture
async def upstream():
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        n = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        await reader.readexactly(n)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in STREAM:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.005)   # separate reads on the client side
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("client", [AiohttpTransport, Http1Transport])
async def test_both_transports_decode_the_same_events(upstream: str, client) -> None:
    t = client()
    try:
        resp = await t.send(UpstreamCall(upstream + "/v1/chat/completions", {"Content-Type": "application/json"},
                                         {"stream": True}), connect_s=2, read_s=2, total_s=5)
        got = [data async for data in resp.sse_data()]
        resp.release()
    finally:
        await t.aclose()
    assert got == [b"first\nline2", b'{"b":2}', b"[DONE]"]


def test_an_event_without_end_is_refused_past_the_limit_not_buffered_forever():
    d = SSEDecoder(max_event=100_000)
    d.feed(b"data: ")
    with pytest.raises(SSEEventTooLarge):
        for _ in range(100):
            d.feed(b"x" * 4096)


def test_a_long_line_gathered_over_many_reads_decodes_as_one_event():
    d = SSEDecoder()
    line = b"y" * 300_000
    out = d.feed(b"data: ")
    for i in range(0, len(line), 1000):
        out += d.feed(line[i:i + 1000])
    out += d.feed(b"\r")
    out += d.feed(b"\n\r\ndata: z\n\n")
    assert out == [line, b"z"]


def test_a_held_cr_before_a_read_without_line_break_still_ends_the_line():
    d = SSEDecoder()
    assert d.feed(b"data: a\r") == []
    assert d.feed(b"\rdata: b") == [b"a"]
    assert d.close() == [b"b"]


def test_many_data_lines_adding_up_past_the_limit_are_refused():
    d = SSEDecoder(max_event=1000)
    with pytest.raises(SSEEventTooLarge):
        for _ in range(20):
            d.feed(b"data: " + b"q" * 100 + b"\n")
