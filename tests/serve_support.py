"""`router serve` as a real process, for the serve and chaos suites: start it, wait for /readyz,
read its stderr, stop it (whatever happens, at the end of the test)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A running `router serve`: its process, base URL and stderr."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, stderr_path: Path):
        self.proc, self.url, self.stderr_path = proc, url, stderr_path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return await asyncio.to_thread(self.proc.wait, timeout)


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not met within {timeout} s")


class ServeProcesses:
    """Starts `router serve` processes and stops every one on exit (SIGTERM, then SIGKILL).

    >>> @pytest.fixture                                      # doctest: +SKIP
    ... def serve(tmp_path):
    ...     with ServeProcesses(tmp_path) as procs:
    ...         yield procs.start
    """

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []

    async def start(self, policy_path: os.PathLike[str] | str, *args: str, env: dict[str, str] | None = None,
                    port: int | None = None) -> Served:
        """Start `router serve --policy policy_path --port PORT *args` and wait until /readyz is 200."""
        port = port or free_port()
        err = self.tmp_path / f"serve-{port}-{len(self.procs)}.log"
        full_env = {**os.environ, "ROUTER_LEDGER": str(self.tmp_path / f"ledger-{port}.db"), **(env or {})}
        with open(err, "wb") as f:
            proc = subprocess.Popen([sys.executable, "-m", "router.cli", "serve", "--policy", str(policy_path),
                                     "--port", str(port), *args], stdout=subprocess.DEVNULL, stderr=f, env=full_env)
        self.procs.append(proc)
        served = Served(proc, f"http://127.0.0.1:{port}", err)
        async with aiohttp.ClientSession() as http:
            for _ in range(400):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(served.url + "/readyz") as r:
                        if r.status == 200:
                            return served
                assert proc.poll() is None, served.stderr()
                await asyncio.sleep(0.05)
        raise AssertionError(f"router serve did not become ready:\n{served.stderr()}")

    def __enter__(self) -> ServeProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
