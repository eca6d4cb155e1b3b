"""A minimal OTLP/HTTP trace receiver for benchmarks: accepts ``POST /v1/traces``, answers 200, and
counts the exports and bytes it took (printed on exit). Tracing overhead is measured against it:

    python benchmarks/otlp_sink.py 4318 &
    python benchmarks/bench_proxy.py --connections 1,64 --variant off ROUTER_BENCH_NOOP=1 \\
        --variant otel OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318
"""

from __future__ import annotations

import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

received = {"exports": 0, "bytes": 0}


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        n = int(self.headers.get("Content-Length") or 0)
        received["bytes"] += len(self.rfile.read(n))
        received["exports"] += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 4318), Sink)

    def stop(*_: object) -> None:
        print(f"otlp sink: {received['exports']} exports, {received['bytes']} bytes", flush=True)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
