"""A near-zero-cost OpenAI-compatible upstream for benchmarks: a fixed response, HTTP/1.1 keep-alive.

Raw asyncio (no framework) so the upstream costs as little as possible and the benchmark
measures the client side. `python benchmarks/static_upstream.py PORT` serves until killed.
Answers every POST with a fixed chat.completion (or, when the body asks for `"stream": true`,
a fixed SSE stream with usage) and every GET with 200.
"""

from __future__ import annotations

import asyncio
import sys

BODY = (b'{"id":"chatcmpl-static","object":"chat.completion","created":1700000000,"model":"static",'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}')
JSON_RESP = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY)) + BODY
_chunk = (b'data: {"id":"c","object":"chat.completion.chunk","created":1700000000,"model":"static",'
          b'"choices":[{"index":0,"delta":{"role":"assistant","content":"ok"},"finish_reason":null}]}\n\n'
          b'data: {"id":"c","object":"chat.completion.chunk","created":1700000000,"model":"static",'
          b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
          b'data: {"id":"c","object":"chat.completion.chunk","created":1700000000,"model":"static",'
          b'"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}\n\n'
          b"data: [DONE]\n\n")
SSE_RESP = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n" % len(_chunk)) + _chunk
GET_RESP = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


class _Proto(asyncio.Protocol):
    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.t = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            total = head_end + 4 + length
            if len(self.buf) < total:
                return
            body = self.buf[head_end + 4:total]
            self.buf = self.buf[total:]
            if head.startswith(b"GET"):
                self.t.write(GET_RESP)
            elif b'"stream":true' in body or b'"stream": true' in body:
                self.t.write(SSE_RESP)
            else:
                self.t.write(JSON_RESP)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Proto, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(int(sys.argv[1])))
