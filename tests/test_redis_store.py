"""The Redis store over real sockets: the lean RESP client against the real Redis
(``ROUTER_TEST_REDIS_URL``), private redis-servers (AUTH, ACL users, TLS, a Unix socket), a TCP
link this test controls (delays replies, cuts connections mid-pipeline) and scripted fake servers
(garbage, unsolicited replies, silence). Each test writes under its own key prefix, deleted at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from router.metering.redis_store import RedisStore, ReplyError, StoreError
from router.metering.resp import ConnectionLost, ProtocolError, open_connection, pack_command, parse_url
from tests.metering_support import service_url
from tests.reliability_support import dead_port


@pytest.fixture
def url() -> str:
    return service_url("ROUTER_TEST_REDIS_URL")


@pytest.fixture
def prefix(url):
    """This test's key prefix; its keys are deleted at the end (with redis-py, the reference client)."""
    import redis

    p = f"router-test:store:{uuid.uuid4().hex[:10]}"
    yield p
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=p + ":*"))
    if keys:
        client.delete(*keys)
    client.close()


def reference(url: str):
    import redis

    return redis.Redis.from_url(url)


class Link:
    """A TCP link to 127.0.0.1:`target` this test controls: replies after `delay` seconds,
    `cut()` resets every connection through it (Redis killed mid-pipeline, as clients see it)."""

    def __init__(self, target: int, delay: float = 0.0):
        self.target, self.delay = target, delay
        self.server: asyncio.Server | None = None
        self.port = 0
        self.accepted = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Link:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self.server is not None
        self.server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut(self) -> None:
        for w in self._writers:
            w.transport.abort()
        self._writers.clear()

    def _accept(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.get_running_loop().create_task(self._serve(cr, cw))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers += [cw, uw]

        async def up() -> None:
            while data := await cr.read(65536):
                uw.write(data)

        async def down() -> None:
            while data := await ur.read(65536):
                if self.delay:
                    await asyncio.sleep(self.delay)
                cw.write(data)

        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.gather(up(), down())
        for w in (uw, cw):
            w.transport.abort()


async def fake_server(handle: Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
                      ) -> tuple[asyncio.Server, str]:
    """A scripted server: `handle(n, reader, writer)` serves its n-th connection (from 0)."""
    count = 0

    async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal count
        n, count = count, count + 1
        with contextlib.suppress(Exception):
            await handle(n, r, w)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    return server, f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"


async def pong_per_command(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Answer +PONG to each command (every command this test sends is a PING)."""
    while data := await r.read(65536):
        w.write(b"+PONG\r\n" * data.count(b"PING"))


# ----------------------------------------------------------------------------- the real Redis


async def test_hundreds_of_concurrent_calls_each_get_their_own_reply(url, prefix):
    store = RedisStore(url, name="test store")
    try:
        results = await asyncio.gather(*(store.call("incr", lambda i=i: store.command(
            "INCRBY", f"{prefix}:n{i}", i + 1), 5) for i in range(600)))
        assert results == list(range(1, 601))
        got = await asyncio.gather(*(store.command("GET", f"{prefix}:n{i}") for i in range(600)))
        assert got == [str(i + 1).encode() for i in range(600)]
        conn = store.connection()
        assert conn is not None and conn.pending == 0 and len(store._conns) == 1 and store.errors == 0
    finally:
        await store.aclose()


async def test_set_with_expiry_get_and_large_values(url, prefix):
    store = RedisStore(url, name="test store")
    big = os.urandom(3 * 1024 * 1024) + b"\r\n$5\r\n"   # protocol bytes inside the value are data
    try:
        assert await store.command("SET", f"{prefix}:px", b"v1", "PX", 60000) == b"OK"
        assert await store.command("SET", f"{prefix}:ex", "v2", "EX", 60) == b"OK"
        assert 0 < await store.command("PTTL", f"{prefix}:px") <= 60000
        assert 0 < await store.command("TTL", f"{prefix}:ex") <= 60
        assert await store.command("SET", f"{prefix}:big", big) == b"OK"
        assert await store.call("get", lambda: store.command("GET", f"{prefix}:big"), 5) == big
        assert await store.command("GET", f"{prefix}:absent") is None
        assert await store.command("MGET", f"{prefix}:px", f"{prefix}:absent") == [b"v1", None]
        with pytest.raises(ReplyError, match="WRONGTYPE"):
            await store.command("HGET", f"{prefix}:px", "f")
        assert reference(url).get(f"{prefix}:big") == big   # what redis-py reads is what we wrote
    finally:
        await store.aclose()


async def test_scripts_load_themselves_again_after_a_script_flush(url, prefix):
    store = RedisStore(url, name="test store")
    source = f"-- {uuid.uuid4().hex}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])"
    ref = reference(url)
    try:
        assert await store.script(source, [f"{prefix}:s"], [2]) == 2     # EVALSHA: NOSCRIPT, then EVAL
        assert await store.script(source, [f"{prefix}:s"], [3]) == 5     # EVALSHA
        ref.script_flush()                                               # a restart, as Redis sees it
        assert await store.script(source, [f"{prefix}:s"], [1]) == 6
        with pytest.raises(ReplyError, match="ERR") as e:                # an error of the script itself
            await store.script("return redis.call('INCR')", [], [])
        assert e.value.code == "ERR"
        assert await store.script(source, [f"{prefix}:s"], [1]) == 7     # the connection is still fine
    finally:
        ref.close()
        await store.aclose()


# ----------------------------------------------------------------------------- background sends (settles)


class Counting(Link):
    """A `Link` that counts the chunks it forwards to Redis (each client send arrives as one here)."""

    def __init__(self, target: int):
        super().__init__(target)
        self.chunks: list[bytes] = []

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers += [cw, uw]

        async def up() -> None:
            while data := await cr.read(65536):
                self.chunks.append(data)
                uw.write(data)

        async def down() -> None:
            while data := await ur.read(65536):
                cw.write(data)

        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.gather(up(), down())


async def test_background_sends_share_one_write_and_need_no_task(url, prefix):
    """Settles of 50 requests ending together: one EVALSHA each, written together within `later_s`,
    each reply handed to its callback, and no task made for any of them."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    source = f"-- {uuid.uuid4().hex}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])"
    async with Counting(port) as link:
        store = RedisStore(link.url, name="test store")
        try:
            assert await store.script(source, [f"{prefix}:n"], [0]) == 0   # connected, the script known
            before = len(link.chunks)
            replies: list[int] = []

            async def never() -> None:
                raise AssertionError("no fallback expected")

            for _ in range(50):
                store.send(source, [f"{prefix}:n"], [1], 5.0, fallback=never, on_reply=replies.append, later_s=0.05)
            assert not store._tasks and len(store._sending) == 50
            await asyncio.sleep(0.01)
            assert len(link.chunks) == before          # nothing written yet: they wait to share a write
            assert await store.drain(5)
            assert sorted(replies) == list(range(1, 51)) and not store._sending
            assert len(link.chunks) - before <= 2      # one send for all fifty (the link may read it in two)
            assert await store.script(source, [f"{prefix}:n"], [0]) == 50
        finally:
            await store.aclose()


async def test_a_call_waiting_behind_background_sends_goes_out_at_once(url, prefix):
    """A background send waits up to `later_s` for company; a caller's command queued after it
    must not wait that long: both go with the caller's write."""
    store = RedisStore(url, name="test store")
    source = f"-- {uuid.uuid4().hex}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])"
    try:
        await store.script(source, [f"{prefix}:n"], [0])
        replies: list[int] = []
        store.send(source, [f"{prefix}:n"], [5], 5.0, fallback=None, on_reply=replies.append,  # type: ignore[arg-type]
                   later_s=30.0)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await store.call("get", lambda: store.command("GET", f"{prefix}:n"), 5.0) == b"5"
        assert loop.time() - t0 < 1.0
        await asyncio.sleep(0)
        assert replies == [5]
    finally:
        await store.aclose()


async def test_background_sends_fall_back_to_the_callers_retries(url, prefix):
    """The fallback runs where the send cannot go or does not land: before the first connection,
    for a script this process never ran, and when Redis has forgotten it (SCRIPT FLUSH)."""
    store = RedisStore(url, name="test store")
    source = f"-- {uuid.uuid4().hex}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])"
    ran: list[str] = []
    replies: list[int] = []

    def send(why: str) -> None:
        async def fallback() -> None:
            ran.append(why)
            replies.append(await store.call("retry", lambda: store.script(source, [f"{prefix}:n"], [1]), 5.0))
        store.send(source, [f"{prefix}:n"], [1], 5.0, fallback=fallback, on_reply=replies.append)

    ref = reference(url)
    try:
        send("no connection")
        assert await store.drain(5)
        send("unknown script")        # connected by now, but the script never ran here
        assert await store.drain(5)
        assert ran == ["no connection"] and replies == [1, 2]   # the fallback's EVAL made it known
        ref.script_flush()
        send("flushed")
        assert await store.drain(5)
        assert ran == ["no connection", "flushed"] and replies == [1, 2, 3]
        assert store.errors == 0      # NOSCRIPT is not an outage
    finally:
        ref.close()
        await store.aclose()


async def test_a_send_unanswered_at_close_is_reported_lost(url):
    """A Redis that never answers: `aclose` waits `close_timeout_s`, then tells each send's
    `on_lost` (a budget counts the settle as lost), and nothing is left running."""
    async def silent(n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await r.read(65536):
            pass

    server, fake = await fake_server(silent)
    store = RedisStore(fake, name="test store", close_timeout_s=0.2, op_timeout_s=30)
    source = "return 1"
    lost: list[int] = []
    try:
        from router.metering import redis_store

        redis_store._SHAS[source] = hashlib.sha1(source.encode()).hexdigest()   # as if it had run before
        await store._connect(asyncio.get_running_loop())
        for i in range(3):
            store.send(source, [], [], 30.0, fallback=None, on_lost=lambda i=i: lost.append(i))  # type: ignore[arg-type]
        t0 = asyncio.get_running_loop().time()
        await store.aclose()
        assert asyncio.get_running_loop().time() - t0 < 2
        assert sorted(lost) == [0, 1, 2] and not store._sending and not store._tasks
    finally:
        server.close()


# ----------------------------------------------------------------------------- timeouts and cancellation


async def test_a_timed_out_call_leaves_the_pipeline_in_step(url, prefix):
    """The reply of a call cut by its timeout still arrives: it is read and dropped, and the next
    call, on the same connection, gets its own reply, not the late one."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    async with Link(port, delay=0.3) as link:
        store = RedisStore(link.url, name="test store")
        try:
            assert await store.command("PING") == b"PONG"
            conn = store.connection()
            with pytest.raises(StoreError, match="no answer within 0.05 s"):
                await store.call("incr", lambda: store.command("INCRBY", f"{prefix}:a", 10), 0.05)
            assert await store.call("incr", lambda: store.command("INCRBY", f"{prefix}:b", 3), 2) == 3
            assert await store.call("incr", lambda: store.command("INCRBY", f"{prefix}:a", 1), 2) == 11
            assert store.connection() is conn and conn.pending == 0 and link.accepted == 1
            assert store.errors == 1 and not store.failing_fast
        finally:
            await store.aclose()


async def test_timeouts_of_different_lengths_each_fire_at_their_own_time(url, prefix):
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    async with Link(port, delay=0.4) as link:
        store = RedisStore(link.url, name="test store", retry_s=0)
        try:
            await store.command("PING")
            t0 = time.monotonic()

            async def timed(timeout: float) -> tuple[float, str]:
                try:
                    await store.call("ping", lambda: store.command("PING"), timeout)
                    return time.monotonic() - t0, "ok"
                except StoreError:
                    return time.monotonic() - t0, "timeout"

            got = await asyncio.gather(timed(2.0), timed(0.1), timed(1.0), timed(0.2))
            assert [how for _, how in got] == ["ok", "timeout", "ok", "timeout"]
            assert 0.09 <= got[1][0] < 0.3 and 0.19 <= got[3][0] < 0.38 and got[0][0] >= 0.39
        finally:
            await store.aclose()


async def test_cancelled_calls_leave_the_pipeline_in_step(url, prefix):
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    async with Link(port, delay=0.2) as link:
        store = RedisStore(link.url, name="test store")
        try:
            await store.command("PING")
            tasks = [asyncio.create_task(store.call("incr", lambda i=i: store.command(
                "INCRBY", f"{prefix}:c{i}", i + 1), 5)) for i in range(60)]
            await asyncio.sleep(0.05)   # all sent, no reply yet
            for t in tasks[::2]:
                t.cancel()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(d, asyncio.CancelledError) for d in done[::2])
            assert done[1::2] == [i + 1 for i in range(1, 60, 2)]
            # the cancelled commands ran too; every later call reads its own reply
            again = await asyncio.gather(*(store.call("get", lambda i=i: store.command(
                "INCRBY", f"{prefix}:c{i}", 1000), 5) for i in range(60)))
            assert again == [i + 1 + 1000 for i in range(60)]
            assert store.errors == 0 and store.connection().pending == 0 and link.accepted == 1
        finally:
            await store.aclose()


# ----------------------------------------------------------------------------- outages


async def test_redis_cut_mid_pipeline_fails_the_calls_in_flight_then_the_next_call_reconnects(url, prefix, caplog):
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    async with Link(port, delay=0.2) as link:
        ops: list[str] = []
        store = RedisStore(link.url, name="test store", on_error=ops.append, retry_s=0.3)
        try:
            await store.command("PING")
            with caplog.at_level(logging.WARNING, logger="router.metering.redis"):
                calls = [asyncio.create_task(store.call("incr", lambda i=i: store.command(
                    "INCR", f"{prefix}:k{i}"), 5)) for i in range(40)]
                await asyncio.sleep(0.05)
                link.cut()
                done = await asyncio.gather(*calls, return_exceptions=True)
                assert all(isinstance(d, StoreError) and "closed the connection" in str(d) for d in done), done[:3]
                assert store.failing_fast and len(ops) == 40 and store.errors == 40
                with pytest.raises(StoreError, match="unreachable") as e:   # fails fast: not even sent
                    await store.call("incr", lambda: store.command("INCR", f"{prefix}:x"), 5)
                assert not e.value.started
                await asyncio.sleep(0.35)
                assert await store.call("incr", lambda: store.command("INCR", f"{prefix}:x"), 5) == 1
            assert link.accepted == 2
            records = [r.getMessage() for r in caplog.records if r.name == "router.metering.redis"]
            assert sum("failed during incr" in m for m in records) == 1            # logged once per outage
            assert sum("answers again" in m for m in records) == 1
        finally:
            await store.aclose()


async def test_redis_down_fails_fast_after_two_failures_and_logs_once(caplog):
    ops: list[str] = []
    store = RedisStore(f"redis://:hunter2@127.0.0.1:{dead_port()}/0", name="test store", on_error=ops.append,
                       retry_s=5)
    try:
        with caplog.at_level(logging.ERROR, logger="router.metering.redis"):
            for _ in range(2):
                with pytest.raises(StoreError, match="cannot connect to redis://127.0.0.1:") as e:
                    await store.call("get", lambda: store.command("GET", "k"), 1)
                assert e.value.started and "hunter2" not in str(e.value)
            t0 = time.monotonic()
            with pytest.raises(StoreError, match="unreachable"):
                await store.call("get", lambda: store.command("GET", "k"), 1)
            assert time.monotonic() - t0 < 0.05
        assert ops == ["get", "get"] and store.errors == 2
        assert len([r for r in caplog.records if r.name == "router.metering.redis"]) == 1
        assert "hunter2" not in caplog.text
    finally:
        await store.aclose()


async def test_a_server_that_never_answers_is_given_up_after_op_timeout_s():
    async def silent(n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await r.read(65536):
            pass

    server, fake = await fake_server(silent)
    store = RedisStore(fake, name="test store", op_timeout_s=0.3)
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreError, match=r"no reply from Redis at .* in 0.3 s; connection closed"):
            await store.call("get", lambda: store.command("GET", "k"), None)   # no timeout of its own
        assert 0.28 <= time.monotonic() - t0 < 0.8
        assert store.connection() is None
    finally:
        await store.aclose()
        server.close()


async def test_a_connection_whose_greeting_gets_no_answer_times_out_without_showing_the_password():
    async def silent(n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await r.read(65536):
            pass

    server, fake = await fake_server(silent)
    store = RedisStore(fake.replace("redis://", "redis://:s3cret@"), name="test store", connect_timeout_s=0.2)
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreError, match=r"no connection to redis://127.0.0.1:\d+/0 within 0.2 s") as e:
            await store.call("get", lambda: store.command("GET", "k"), 3)
        assert time.monotonic() - t0 < 0.6 and "s3cret" not in str(e.value)
    finally:
        await store.aclose()
        server.close()


async def test_a_malformed_reply_closes_the_connection_and_the_next_call_reconnects():
    async def handle(n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if n == 0:
            await r.read(65536)
            w.write(b"+PONG\r\n")
            seen = b""
            while seen.count(b"PING") < 2:
                seen += await r.read(65536)
            w.write(b"+PONG\r\n$3\r\nabcXY")     # one good reply, then a bulk string without its CRLF
            await w.drain()
            await r.read(65536)
        else:
            await pong_per_command(r, w)

    server, fake = await fake_server(handle)
    store = RedisStore(fake, name="test store", retry_s=0)
    try:
        await store.command("PING")   # connected
        first, second = await asyncio.gather(store.command("PING"), store.command("PING"), return_exceptions=True)
        assert first == b"PONG"       # the reply before the bad bytes still reaches its caller
        assert isinstance(second, ProtocolError) and "invalid reply (a bulk string of 3 bytes not followed by CRLF)" \
            in str(second)
        assert store.connection() is None
        assert await store.call("ping", lambda: store.command("PING"), 2) == b"PONG"
    finally:
        await store.aclose()
        server.close()


async def test_a_reply_nobody_asked_for_closes_the_connection():
    async def handle(n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if n == 0:
            await r.read(65536)
            w.write(b"+PONG\r\n+PONG\r\n")   # two replies to one command: the stream is out of step
            await w.drain()
            await r.read(65536)
        else:
            await pong_per_command(r, w)

    server, fake = await fake_server(handle)
    store = RedisStore(fake, name="test store")
    try:
        assert await store.command("PING") == b"PONG"
        await asyncio.sleep(0.05)
        assert store.connection() is None
        assert await store.command("PING") == b"PONG"   # a new connection
    finally:
        await store.aclose()
        server.close()


async def test_an_oversized_reply_is_refused_before_it_is_read():
    async def handle(n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(65536)
        w.write(b"$999999999999\r\n")
        await w.drain()
        await r.read(65536)

    server, fake = await fake_server(handle)
    store = RedisStore(fake, name="test store")
    try:
        with pytest.raises(StoreError, match="bulk string of 999999999999 exceeds the bound"):
            await store.call("get", lambda: store.command("GET", "k"), 2)
    finally:
        await store.aclose()
        server.close()


# ----------------------------------------------------------------------------- private servers


class PrivateRedis:
    """A redis-server of this test's own (`args` added), on a port or a Unix socket."""

    def __init__(self, tmp_path, *args: str, port: int | None = None):
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed")
        self.port = dead_port() if port is None else port
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(tmp_path), *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def ready(self, url: str) -> None:
        deadline = time.monotonic() + 10
        address = parse_url(url)
        while time.monotonic() < deadline:
            try:
                conn = await open_connection(address, timeout_s=1)
            except ConnectionLost:
                await asyncio.sleep(0.05)
                continue
            conn.close()
            await conn.wait_closed()
            return
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


async def test_auth_with_a_password_or_a_user_and_select(tmp_path):
    server = PrivateRedis(tmp_path, "--requirepass", "pw-one")
    base = f"127.0.0.1:{server.port}"
    try:
        await server.ready(f"redis://:pw-one@{base}/0")
        store = RedisStore(f"redis://:pw-one@{base}/3", name="test store")
        assert await store.command("SET", "k", "in-three") == b"OK"
        assert await store.command("ACL", "SETUSER", "alice", "on", ">alice-pw", "~*", "+@all") == b"OK"
        await store.aclose()
        import redis

        for db, want in ((3, b"in-three"), (0, None)):
            ref = redis.Redis(host="127.0.0.1", port=server.port, db=db, password="pw-one")
            assert ref.get("k") == want
            ref.close()
        user = RedisStore(f"redis://alice:alice-pw@{base}/3?client_name=router-test", name="test store")
        assert await user.command("GET", "k") == b"in-three"
        assert await user.command("ACL", "WHOAMI") == b"alice"
        assert await user.command("CLIENT", "GETNAME") == b"router-test"
        await user.aclose()
        for bad, why in ((f"redis://:wrong-pw@{base}/0", "WRONGPASS"), (f"redis://alice:nope-pw@{base}/0", "WRONGPASS"),
                         (f"redis://{base}/0", "NOAUTH")):
            store = RedisStore(bad, name="test store")
            with pytest.raises(StoreError, match=why) as e:
                await store.call("get", lambda s=store: s.command("GET", "k"), 2)
            assert "wrong-pw" not in str(e.value) and "nope-pw" not in str(e.value)
            await store.aclose()
    finally:
        server.stop()


async def test_a_unix_socket(tmp_path):
    path = tmp_path / "redis.sock"
    server = PrivateRedis(tmp_path, "--unixsocket", str(path), "--unixsocketperm", "700", port=0)
    try:
        await server.ready(f"unix://{path}")
        store = RedisStore(f"unix://{path}?db=2", name="test store")
        assert await store.command("SET", "k", "v") == b"OK"
        assert await store.command("CLIENT", "INFO") is not None
        assert await store.command("SELECT", 2) == b"OK" and await store.command("GET", "k") == b"v"
        await store.aclose()
    finally:
        server.stop()


def make_certificates(tmp_path) -> tuple[str, str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    ca_key, ca, key, csr, cert = (str(tmp_path / n) for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem"))
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
        "-subj", "/CN=router test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2",
        "-extfile", str(ext))
    return ca, cert, key


async def test_tls_verifies_the_server_unless_told_not_to(tmp_path):
    ca, cert, key = make_certificates(tmp_path)
    tls_port = dead_port()
    server = PrivateRedis(tmp_path, "--tls-port", str(tls_port), "--tls-cert-file", cert, "--tls-key-file", key,
                          "--tls-ca-cert-file", ca, "--tls-auth-clients", "no", port=0)
    try:
        good = f"rediss://localhost:{tls_port}/1?ssl_ca_certs={ca}"
        await server.ready(good)
        store = RedisStore(good, name="test store")
        assert await store.command("SET", "k", "over tls") == b"OK"
        assert await store.command("GET", "k") == b"over tls"
        await store.aclose()
        unverified = RedisStore(f"rediss://127.0.0.1:{tls_port}/1", name="test store")   # the system's CAs
        with pytest.raises(StoreError, match="CERTIFICATE_VERIFY_FAILED"):
            await unverified.call("get", lambda: unverified.command("GET", "k"), 3)
        await unverified.aclose()
        trusting = RedisStore(f"rediss://127.0.0.1:{tls_port}/1?ssl_cert_reqs=none", name="test store")
        assert await trusting.command("GET", "k") == b"over tls"
        await trusting.aclose()
        plain = RedisStore(f"redis://127.0.0.1:{tls_port}/1", name="test store", op_timeout_s=0.5)
        with pytest.raises(StoreError):   # plain text to a TLS port: the server drops it
            await plain.call("get", lambda: plain.command("GET", "k"), 2)
        await plain.aclose()
    finally:
        server.stop()


async def test_a_closed_store_closes_its_connection(url):
    store = RedisStore(url, name="test store")
    await store.command("PING")
    conn = store.connection()
    await store.aclose()
    assert conn.lost is not None and store.connection() is None
    with pytest.raises(ConnectionLost):
        conn.request(pack_command(("PING",)))
    assert await store.command("PING") == b"PONG"   # a later call opens another
    await store.aclose()


# ----------------------------------------------------------------------------- without redis-py

BLOCK_REDIS_PY = """
import importlib.abc, os, sys
class _NoRedisPy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "redis" or name.startswith("redis."):
            with open(os.environ["ROUTER_TEST_REDIS_PY_MARK"], "a") as f:
                f.write(name + "\\n")
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None
sys.meta_path.insert(0, _NoRedisPy())
"""


async def test_router_serve_with_redis_needs_no_redis_py(url, prefix, tmp_path):
    """Rate limits, the response cache and budgets in Redis through `router serve`, with redis-py
    made unimportable in that process."""
    from router.core.policy import hash_key
    from router.dev.simulator import Simulator

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_REDIS_PY)
    mark = tmp_path / "imports.txt"
    key = "sk-no-redis-py"
    async with Simulator(models=["model-one"]) as sim:
        policy = tmp_path / "policy.yaml"
        policy.write_text(textwrap.dedent(f"""\
            version: 1
            providers:
              a: {{kind: vllm, base_url: "{sim.base_url}", region: eu}}
            models:
              one: {{provider: a, model: model-one, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
            routes:
              general: {{targets: [one], cache: {{ttl_s: 60, max_entries: 100}}}}
            rules:
              - {{route: general}}
            tenants:
              acme: {{keys: ["{hash_key(key)}"], budget: {{daily_usd: 100}},
                      rate_limits: {{requests_per_minute: 1000, tokens_per_minute: 1000000}}}}
            """))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
               "ROUTER_TEST_REDIS_PY_MARK": str(mark), "ROUTER_LEDGER": str(tmp_path / "ledger.db"),
               "ROUTER_RATE_LIMITS": f"{url}?prefix={prefix}:rl", "ROUTER_RESPONSE_CACHE": f"{url}?prefix={prefix}:cache"}
        err = tmp_path / "stderr.log"
        with open(err, "w") as errf:
            proc = subprocess.Popen([sys.executable, "-m", "router.cli", "serve", "--policy", str(policy), "--port",
                                     str(port), "--budgets", f"{url}?prefix={prefix}:budget"],
                                    stdout=subprocess.DEVNULL, stderr=errf, env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
                for _ in range(200):
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(base + "/readyz") as r:
                            if r.status == 200:
                                break
                    assert proc.poll() is None, err.read_text()
                    await asyncio.sleep(0.05)
                body = {"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": "hi there"}]}
                seen = []
                deadline = time.monotonic() + 5
                while not seen or (seen[-1][1] == "miss" and time.monotonic() < deadline):
                    async with http.post(base + "/v1/chat/completions", json=body) as r:
                        seen.append((r.status, r.headers.get("x-router-cache"),
                                     r.headers.get("x-ratelimit-remaining-requests")))
                        await r.read()
                    await asyncio.sleep(0.05)   # the cache write and the settles run in the background
                await asyncio.sleep(0.3)
                async with http.get(base + "/metrics") as r:
                    metrics = await r.text()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
    assert seen[0][:2] == (200, "miss") and seen[-1][:2] == (200, "hit"), (seen, err.read_text()[-2000:])
    assert all(status == 200 for status, _, _ in seen)
    assert seen[0][2] is not None
    assert not mark.exists(), mark.read_text()   # nothing tried to import redis-py
    assert "router_rate_limit_errors_total{" not in metrics and "router_budget_errors_total{" not in metrics
    ref = reference(url)
    try:
        kinds = {k.decode().split(":")[3] for k in ref.scan_iter(match=prefix + ":*")}
    finally:
        ref.close()
    assert kinds == {"rl", "cache", "budget"}
