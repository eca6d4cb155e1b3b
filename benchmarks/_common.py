"""Shared benchmark helpers: free ports, a static upstream subprocess, percentiles."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return time.perf_counter() - t0
        time.sleep(0.01)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@contextlib.contextmanager
def static_upstream() -> Iterator[str]:
    """Start benchmarks/static_upstream.py in its own process; yield its base URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "static_upstream.py"), str(port)])
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(5)


def pct(values: Sequence[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, int(p / 100 * len(s)))]
