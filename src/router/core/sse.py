"""Server-sent events, sans-IO: bytes in, the ``data`` of each complete event out.

One decoder for every transport, as the WHATWG event-stream rules have it: lines end in CRLF,
LF or CR (a CRLF split across two reads is still one line break); a blank line ends an event;
several ``data:`` lines of one event are joined with ``\\n``; one space after the colon is
dropped; lines starting with ``:`` are comments (keep-alives); other fields (``event``, ``id``,
``retry``) are ignored, since OpenAI-style streams carry everything in ``data``. One deviation,
on purpose: at the end of the stream, an event whose blank line never came is still delivered
(`close`), so an upstream that ends with ``data: [DONE]\\n`` is not cut short.

An event (or a line) longer than `max_event` bytes raises `SSEEventTooLarge`: an upstream that
never ends its line cannot grow this buffer without bound.

>>> d = SSEDecoder()
>>> d.feed(b'data: {"a":1}\\n\\n: keep-alive\\n\\ndata: x\\r\\ndata:')
[b'{"a":1}']
>>> d.feed(b' y\\r\\n\\r\\ndata: [DONE]\\n')
[b'x\\ny']
>>> d.close()
[b'[DONE]']
"""

from __future__ import annotations

__all__ = ["MAX_EVENT", "SSEDecoder", "SSEEventTooLarge"]

MAX_EVENT = 16 * 1024 * 1024   # bytes in one event's data, or one unfinished line


class SSEEventTooLarge(ValueError):
    """An event, or a line still without its end, is longer than the decoder's `max_event`."""


class SSEDecoder:
    """Feed it bytes as they arrive; it returns the data of each event that completed.

    >>> SSEDecoder(max_event=8).feed(b"data: 0123456789")
    Traceback (most recent call last):
    ...
    router.core.sse.SSEEventTooLarge: a server-sent event longer than 8 bytes
    """

    __slots__ = ("_data", "_long", "_max", "_rest")

    def __init__(self, max_event: int = MAX_EVENT) -> None:
        self._rest = b""                 # an unfinished line (and a held trailing CR)
        self._data: bytes | None = None  # the data of the event being read; None: no data line yet
        self._max = max_event
        self._long: bytearray | None = None   # a line spanning many reads, gathered without re-copying

    def feed(self, chunk: bytes) -> list[bytes]:
        if b"\n" not in chunk and b"\r" not in chunk and self._rest[-1:] != b"\r":   # mid-line: gather it
            if self._long is None:
                if len(self._rest) + len(chunk) <= 65536:
                    self._rest += chunk
                    self._check(len(self._rest))
                    return []
                self._long = bytearray(self._rest)
                self._rest = b""
            self._long += chunk
            self._check(len(self._long))
            return []
        if self._long is not None:
            self._long += chunk
            data, self._long = bytes(self._long), None
        else:
            data = self._rest + chunk if self._rest else chunk
        if b"\r" in data:
            held = data[-1:] == b"\r"    # may be the first half of a CRLF: decide on the next read
            if held:
                data = data[:-1]
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            lines = data.split(b"\n")
            self._rest = lines.pop() + (b"\r" if held else b"")
        else:
            lines = data.split(b"\n")
            self._rest = lines.pop()
        self._check(len(self._rest))
        out: list[bytes] = []
        for line in lines:
            self._line(line, out)
        return out

    def close(self) -> list[bytes]:
        """The end of the stream: what is left, as a last event."""
        out: list[bytes] = []
        if self._long is not None:
            self._rest, self._long = bytes(self._long), None
        rest, self._rest = self._rest.rstrip(b"\r"), b""
        if rest:
            self._line(rest, out)
        self._line(b"", out)
        return out

    def _line(self, line: bytes, out: list[bytes]) -> None:
        if not line:  # end of event
            if self._data is not None:
                out.append(self._data)
                self._data = None
            return
        if line[:5] == b"data:":
            value = line[6:] if line[5:6] == b" " else line[5:]
        elif line == b"data":
            value = b""
        else:  # a comment, or a field other than data
            return
        self._data = value if self._data is None else self._data + b"\n" + value
        self._check(len(self._data))

    def _check(self, size: int) -> None:
        if size > self._max:
            self._rest, self._long, self._data = b"", None, None
            raise SSEEventTooLarge(f"a server-sent event longer than {self._max} bytes")
