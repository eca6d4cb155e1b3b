"""Shared pieces of the reliability suites: a proxy over a Router, scripted upstreams, a private
redis-server that can be paused, killed and restarted, and a TCP link that delays replies."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from router import Router
from router.core.meter import MemoryMeter
from router.metering.budget import InProcessBudget
from router.monitor.monitor import Monitor
from router.server.proxy import Proxy, ProxyOptions


def dead_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_proxy(policy, *, budget=None, meters=None, monitor: bool = True) -> SimpleNamespace:
    """A real proxy (aiohttp server on an ephemeral port) over `Router(policy)`; `.stop()` closes both."""
    mem = MemoryMeter()
    mon = Monitor(policy, background=False) if monitor else False
    r = Router(policy, meters=[mem, *(meters or [])], budget=budget or InProcessBudget(), monitor=mon)
    proxy = Proxy(r.engine, ProxyOptions(max_body_bytes=4 * 1024 * 1024, keepalive_s=0.5))
    runner = web.ServerRunner(proxy.server(), handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()

    async def stop() -> None:
        await runner.cleanup()
        await r.aclose()

    return SimpleNamespace(url=f"http://127.0.0.1:{runner.addresses[0][1]}", mem=mem, router=r,
                           health=mon.health if mon else None, stop=stop)


async def scripted_upstream(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                            ) -> tuple[web.AppRunner, str]:
    """An upstream whose /v1/chat/completions is `handler`; returns its runner and base URL."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/v1"


async def post(url: str, body: dict | bytes, headers: dict[str, str] | None = None
               ) -> tuple[int, CIMultiDict[str], dict]:
    """POST a JSON body (or raw bytes); returns the status, the headers and the decoded JSON answer."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with aiohttp.ClientSession() as http, http.post(
            url, data=data, headers={"Content-Type": "application/json", **(headers or {})}) as r:
        return r.status, CIMultiDict(r.headers), orjson.loads(await r.read())


class Url:
    """Stands in for a Simulator where a policy only needs `base_url`."""

    def __init__(self, base_url: str):
        self.base_url = base_url


class OwnRedis:
    """A private redis-server on its own port: pause (SIGSTOP: connections hang, a blackhole),
    resume, kill (connections refused) and restart on the same port."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise FileNotFoundError("redis-server")
        self.exe, self.port = exe, dead_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class DelayLink:
    """A TCP link to `port` that forwards requests at once and replies after `delay` seconds."""

    def __init__(self, port: int, delay: float):
        self.target, self.delay = port, delay
        self.server: asyncio.Server | None = None
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> DelayLink:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def _accept(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(cr, cw))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target)

        async def up() -> None:
            while data := await cr.read(65536):
                uw.write(data)
                await uw.drain()

        async def down() -> None:
            while data := await ur.read(65536):
                await asyncio.sleep(self.delay)
                cw.write(data)
                await cw.drain()

        try:
            await asyncio.gather(up(), down())
        except (Exception, asyncio.CancelledError):  # noqa: S110 - either side hung up
            pass
        finally:
            for w in (uw, cw):
                w.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
