"""router.transport.http1's parser against h11 as the oracle, on generated response streams.

The generator builds responses from parts that each come in valid and broken forms (status lines,
field lines with odd names, separators and values, Content-Length forms such as ``1_0``, ``+5`` and
duplicates, Transfer-Encoding forms such as ``gzip, chunked`` and ``xchunkedx``, chunk sizes such as
``0x5``, bare LF line ends, obsolete line folding, oversized heads, trailers, a second response
behind the first), delivers them in random pieces, with or without the peer closing. For each:

- whatever `ResponseParser` accepts, h11 accepts too, with the same status, fields, body and
  keep-alive verdict (never reused where h11 would not reuse);
- whatever h11 accepts, `ResponseParser` accepts too, unless the stream has one of the three
  shapes it refuses on purpose (bare LF line ends, Content-Length with Transfer-Encoding, a head
  over 64 KB).

``ROUTER_CHAOS=long`` runs 25 times as many examples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.transport.base import UpstreamProtocolError
from router.transport.http1 import _MAX_HEAD, ResponseParser

LONG = os.environ.get("ROUTER_CHAOS", "").lower() == "long"
EXAMPLES = 50_000 if LONG else 1_500


@dataclass
class Outcome:
    kind: str                      # "done", "partial" (head, part of the body), "pending", "error"
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    reusable: bool = False


def pieces(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(stream)), len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def ours(stream: bytes, cuts: list[int], eof: bool) -> Outcome:
    p = ResponseParser()
    body = b""
    try:
        for piece in pieces(stream, cuts):
            p.feed(piece)
            body += p.take_body()
        reusable = p.eof and p.keep_alive
        if eof:
            p.feed_eof()
            body += p.take_body()
    except UpstreamProtocolError:
        return Outcome("error")
    if not p.head_done:
        return Outcome("pending")
    return Outcome("done" if p.eof else "partial", p.status, dict(p.headers), body, reusable)


def oracle(stream: bytes, cuts: list[int], eof: bool) -> Outcome:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)
    conn.send(h11.Request(method="POST", target="/v1/chat/completions",
                          headers=[("Host", "upstream"), ("Content-Length", "2")]))
    conn.send(h11.Data(data=b"{}"))
    conn.send(h11.EndOfMessage())
    status, headers, body, done, reusable = 0, {}, b"", False, False

    def drain() -> None:
        nonlocal status, headers, body, done
        while not done:
            event = conn.next_event()
            if event in (h11.NEED_DATA, h11.PAUSED) or isinstance(event, h11.ConnectionClosed):
                return
            if isinstance(event, h11.Response):
                status = event.status_code
                joined: dict[str, str] = {}
                for name, value in event.headers:
                    key, val = name.decode("ascii"), value.decode("latin-1")
                    joined[key] = val if key not in joined else joined[key] + ", " + val
                headers = joined
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                done = True

    try:
        for piece in pieces(stream, cuts):
            conn.receive_data(piece)
            drain()
        # reusable: the exchange ended cleanly for both sides and nothing followed the response
        reusable = (done and conn.our_state is h11.DONE and conn.their_state is h11.DONE
                    and not conn.trailing_data[0])
        if eof:
            conn.receive_data(b"")
            drain()
    except h11.RemoteProtocolError:
        return Outcome("error")
    if not status:
        return Outcome("pending")
    return Outcome("done" if done else "partial", status, headers, body, reusable)


# ---------------------------------------------------------------------------- the generator
# Each part of a response has valid forms and broken ones. A stream is all valid, or valid but for
# one part, or broken anywhere (one third each), so most examples differ from a good response in
# one place and the interesting verdicts (one bad field among good ones) are common. Strategies
# are built once: building them per draw costs more than the parsing.


def one_of(*values: object) -> st.SearchStrategy:
    return st.sampled_from(values)


def part(valid: tuple, broken: tuple) -> tuple[st.SearchStrategy, st.SearchStrategy]:
    return one_of(*valid), one_of(*valid, *broken)


PARTS = {
    "eol": part((b"\r\n",), (b"\n", b"\r\n", b"\r\n")),
    "informational": part((b"", b"", b"", b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"),
                          (b"HTTP/1.1 101 Switching\r\n\r\n", b"HTTP/1.1 199 X\r\n\r\n", b"HTTP/1.1 100 Continue\r\n")),
    "version": part((b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"),
                    (b"HTTP/2.0", b"http/1.1", b"HTTP/1", b"HTTP/1.1.1", b"HTTP/11", b"HTTP/0.9")),
    "code": part((b"200", b"200", b"204", b"304", b"404", b"500", b"999"),
                 (b"000", b"099", b"101", b"20", b"2000", b"2x0", b" 200")),
    "reason": part((b" OK", b"", b" ", b" Not Found", b" a\tb", b" \xff\xfe"), (b" \x00", b"OK", b" \x0b", b" \r")),
    "name": part((b"X-A", b"Server", b"content-type", b"Set-Cookie", b"x_y~z", b"Keep-Alive"),
                 (b"X A", b"", b"X(A)", b"X-\xff", b"X:Y", b" X-Lead")),
    "sep": part((b": ", b":", b":\t", b": \t "), (b" : ", b"\t:", b"::")),
    "value": part((b"v", b"", b"a b", b"a\tb", b"\x01ctl", b"\xff obs", b"trailing  ", b"=?utf-8?x?="),
                  (b"nul\x00", b"a\rb", b"a\x0bb", b"a\x0cb", b"a\nb")),
    "connection": part((b"close", b"keep-alive", b"Close", b"keep-alive, close", b"closed", b"upgrade", b" close "), ()),
    "framing": part(("length", "length", "chunked", "chunked", "none", "dup-length"), ("both",)),
    "cl": part((b"5", b"05", b"5, 5", b"00000000000000000005", b"2", b"0", b"24"),
               (b"+5", b"1_0", b"0x5", b" 5", b"5,6", b"", b"-1", b"5 5", "５".encode(), b"\xb2",
                b"999999999999999999999")),
    "te": part((b"chunked", b"Chunked", b"CHUNKED", b"chunked "),
               (b"chunked, chunked", b"gzip, chunked", b"xchunkedx", b"chunked;x", b"identity", b"")),
    "fold": part((b"", b"", b"", b" folded", b"\tfolded more", b"  "), ()),
    "size": part((b"%x", b"%x", b"%X", b"0%x", b"%x;ext=1", b"%x;", b"%x\t", b"%x;a\rb"),
                 (b"0x%x", b"+%x", b" %x", b"-%x", b"%x_")),
    "chunk_end": part((b"\r\n",), (b"\n", b"", b"XX", b"\r")),
    "last_chunk": part((b"\r\n", b";x\r\n"), (b"\n",)),
    "trailer": part((b"Trailer-A: 1\r\n", b"Expires: 0\r\n"), (b"X : y\r\n", b" fold\r\n", b"T: a\x00b\r\n")),
    "end": part((b"\r\n",), (b"\n", b"")),
    "after": part((b"",), (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"x", b"\r\n")),
    "big": part((0, 0, 0, _MAX_HEAD - 400), (_MAX_HEAD + 10, 3 * _MAX_HEAD)),
}
NAMES = tuple(PARTS)
LEVEL = one_of("valid", "one", "any")
PICK_PART = one_of(*NAMES)


@dataclass
class Generated:
    stream: bytes
    cuts: list[int]
    eof: bool
    strict: set[str]      # shapes `ResponseParser` refuses on purpose where h11 may accept


@st.composite
def responses(draw: st.DrawFn) -> Generated:
    strict: set[str] = set()
    level = draw(LEVEL)
    target = draw(PICK_PART)

    def pick(name: str) -> object:
        valid, anything = PARTS[name]
        return draw(anything if level == "any" or (level == "one" and name == target) else valid)

    eol_style = pick("eol")

    def eol() -> bytes:  # one style per stream, or (broken) mixed line by line
        e = eol_style if level != "any" or draw(st.booleans()) else pick("eol")
        if e == b"\n":
            strict.add("bare_lf")
        return e  # type: ignore[return-value]

    out = pick("informational")
    out += pick("version") + b" " + pick("code") + pick("reason") + eol()
    fields = [pick("name") + pick("sep") + pick("value") for _ in range(draw(st.integers(0, 3)))]
    if draw(st.booleans()):
        fields.append(b"Connection: " + pick("connection"))
    framing = pick("framing")
    if framing in ("length", "both", "dup-length"):
        fields.append(b"Content-Length: " + pick("cl"))
    if framing == "dup-length":
        fields.append(b"content-length: " + pick("cl"))
    if framing in ("chunked", "both"):
        fields.append(b"Transfer-Encoding: " + pick("te"))
    if framing == "both":
        strict.add("cl_and_te")
    fields = draw(st.permutations(fields))
    fold = pick("fold")
    if fold:  # obsolete line folding, anywhere (at the start: refused by both)
        fields.insert(draw(st.integers(0, len(fields))), fold)
    big = pick("big")
    if big:
        fields.append(b"X-Big: " + b"a" * big)
    for f in fields:
        out += f + eol()
    out += eol()
    if len(out) > _MAX_HEAD - 4:
        strict.add("huge_head")

    payload = draw(st.binary(max_size=24))
    if framing in ("chunked", "both") if draw(st.integers(0, 4)) else draw(st.booleans()):
        form = pick("size")
        size = max(1, len(payload) // draw(st.integers(1, 3))) if payload else 1
        for i in range(0, len(payload), size):
            piece = payload[i:i + size]
            out += (form % len(piece)) + b"\r\n" + piece + pick("chunk_end")
        out += b"0" + pick("last_chunk")
        for _ in range(draw(st.integers(0, 2))):
            out += pick("trailer")
        end = pick("end")
        if end == b"\n":  # h11 takes a bare LF as the end of the trailers
            strict.add("bare_lf")
        out += end
    else:
        out += payload
    out += pick("after")
    if draw(st.integers(0, 5)) == 0:
        out = out[:draw(st.integers(0, len(out)))]  # cut short anywhere
    cuts = draw(st.lists(st.integers(0, len(out)), max_size=4))
    return Generated(out, cuts, draw(st.booleans()), strict)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # hypothesis' own, when it reports a failure
@pytest.mark.timeout(1800 if LONG else 120)
@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not LONG,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(g=responses())
def test_the_parser_accepts_only_what_h11_accepts_and_reads_it_alike(g: Generated) -> None:
    mine = ours(g.stream, g.cuts, g.eof)
    ref = oracle(g.stream, g.cuts, g.eof)
    if mine.kind in ("done", "partial"):
        if mine.kind == "partial" and ref.kind == "done" and g.strict:  # still waiting for a CRLF h11 did not need
            assert (mine.status, mine.headers) == (ref.status, ref.headers), g
            return
        assert ref.kind == mine.kind, (g, mine, ref)
        assert (mine.status, mine.headers, mine.body) == (ref.status, ref.headers, ref.body), g
        assert not mine.reusable or ref.reusable, g  # never reused where h11 would not reuse
        if not g.strict and ref.reusable:
            assert mine.reusable, g
    elif ref.kind in ("done", "partial"):
        assert g.strict, ("h11 accepts what router refuses", g, mine, ref)


# ---------------------------------------------------------------------------- the named cases

BASE = b"HTTP/1.1 200 OK\r\n"


@pytest.mark.parametrize("stream", [
    BASE + b"Content-Length: 1_0\r\n\r\n0123456789",
    BASE + b"Content-Length: +5\r\n\r\nhello",
    BASE + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    BASE + b"Content-Length: 5, 6\r\n\r\nhello!",
    BASE + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    BASE + b"Transfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
    BASE + b"Transfer-Encoding: xchunkedx\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    BASE + b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    BASE + b"Content-Length : 5\r\n\r\nhello",
    BASE + b" X: 1\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
], ids=["cl-underscore", "cl-plus", "cl-duplicates-differ", "cl-list-differs", "chunk-0x", "chunk-plus",
        "te-substring", "te-list", "space-before-colon", "fold-at-start", "status-099", "status-101"])
def test_loose_framing_is_refused_as_h11_refuses_it(stream: bytes) -> None:
    assert oracle(stream, [], True).kind == "error"
    assert ours(stream, [], True).kind == "error"


@pytest.mark.parametrize("stream", [
    BASE + b"Content-Length: 5\nX: 1\r\n\r\nhello",                                              # bare LF
    BASE + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n",  # CL + TE
    BASE + b"X-Big: " + b"a" * _MAX_HEAD + b"\r\nContent-Length: 0\r\n\r\n",                     # oversized head
], ids=["bare-lf", "cl-and-te", "oversized-head"])
def test_stricter_than_h11_where_it_is_a_smuggling_or_resource_shape(stream: bytes) -> None:
    assert ours(stream, [], False).kind == "error"


def test_accepted_forms_match_h11() -> None:
    for stream in [BASE + b"Content-Length: 5, 5\r\nContent-Length: 5\r\n\r\nhello",
                   BASE + b"Content-Length: 005\r\n\r\nhello",
                   BASE + b"Transfer-Encoding: Chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nT: 1\r\n\r\n",
                   BASE + b"X: a\r\n  folded\r\nContent-Length: 0\r\n\r\n",
                   b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
                   b"HTTP/1.1 200\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n"]:
        mine, ref = ours(stream, [], False), oracle(stream, [], False)
        assert mine.kind == ref.kind == "done" and mine == ref, (stream, mine, ref)
