"""`router serve`: run the proxy as a process, or as N worker processes sharing one port.

- One worker (the default) serves in this process.
- ``workers > 1``: this process becomes a supervisor. It validates the policy, creates a
  temporary ``PROMETHEUS_MULTIPROC_DIR`` (so /metrics on any worker reports all of them), warms
  the classifier, then forks the workers; each binds the same port with SO_REUSEPORT and the
  kernel spreads connections among them. A worker that dies is replaced.
- SIGHUP, or a changed file under ``watch``, reloads the policy: it is validated first and swapped
  atomically; an invalid one is reported (as `router check` reports it) and the old one keeps
  serving. With workers the supervisor validates once and then signals each worker.
- SIGTERM / SIGINT: stop accepting, let requests and streams in flight finish for up to
  ``grace_s`` seconds, flush the meters, exit 0.

>>> serve(ServeOptions(policy="policy.yaml", port=8080, workers=2))   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from router.core.errors import PolicyError
from router.core.meter import Meter
from router.core.policy import Policy
from router.core.policy_parser import load_policy

__all__ = ["ServeOptions", "policy_problems", "serve"]

_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}


@dataclass(frozen=True, slots=True)
class ServeOptions:
    policy: str
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    watch: bool = False
    watch_interval_s: float = 1.0
    grace_s: float = 30.0
    max_body_mb: float = 10.0
    keepalive_s: float = 10.0
    idle_timeout_s: float = 20.0  # close a connection with no complete request head for this long
    body_timeout_s: float = 10.0  # 408 for a request body that stops arriving for this long
    access_log: bool | None = None   # one line per request on stderr; None: $ROUTER_ACCESS_LOG, else off
    ledger: str | None = None    # SQLite path or postgresql:// URL; "none" disables; None: policy, else default
    budgets: str | None = None   # "memory" or redis://...; None: $ROUTER_BUDGETS, else memory


DEFAULT_LEDGER = "router-ledger.db"


def ledger_target(opts: ServeOptions, policy: Policy) -> str | None:
    """--ledger, else $ROUTER_LEDGER, else the policy's `metering.ledger`, else ./router-ledger.db."""
    target = opts.ledger or os.environ.get("ROUTER_LEDGER") or policy.metering.ledger or DEFAULT_LEDGER
    return None if target == "none" else target


def access_log_enabled(opts: ServeOptions) -> bool:
    """--access-log, else $ROUTER_ACCESS_LOG (1, true, yes, on), else off."""
    if opts.access_log is not None:
        return opts.access_log
    return os.environ.get("ROUTER_ACCESS_LOG", "").strip().lower() in ("1", "true", "yes", "on")


def _log_access_to_stderr() -> None:
    import logging

    logger = logging.getLogger("router.access")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _say(message: str) -> None:
    print(f"router[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def policy_problems(path: str, err: PolicyError) -> str:
    """The lines `router check` prints for an invalid policy."""
    n = len(err.issues)
    return "\n".join([f"{path}: {n} problem{'s' if n != 1 else ''}", *(f"  {i}" for i in err.issues)])


def _load(path: str, why: str, opts: ServeOptions | None = None) -> Policy | None:
    """The policy at `path`, or None after printing why it was rejected. Never raises: a reload
    (SIGHUP, --watch) must survive whatever the file holds."""
    try:
        policy = load_policy(path)
    except PolicyError as e:
        print(policy_problems(path, e), file=sys.stderr, flush=True)
        _say(f"{why}: the policy was rejected")
        return None
    except Exception as e:  # a bug in a parser must not take the server down with it
        print(f"{path}: cannot load the policy: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        _say(f"{why}: the policy was rejected")
        return None
    refusal = _budget_refusal(opts, policy) if opts is not None else None
    if refusal is not None:
        print(f"{path}: {refusal}", file=sys.stderr, flush=True)
        _say(f"{why}: the policy was rejected")
        return None
    return policy


def _budgets_url(opts: ServeOptions) -> str | None:
    """--budgets, else $ROUTER_BUDGETS (None: in-process)."""
    return opts.budgets or os.environ.get("ROUTER_BUDGETS") or None


def _budget_refusal(opts: ServeOptions, policy: Policy) -> str | None:
    """Why `policy` cannot be served by these options: tenant budgets in per-worker memory."""
    if opts.workers > 1 and (_budgets_url(opts) or "memory") == "memory" and any(
            t.budget is not None for t in policy.tenants.values()):
        # Each worker would keep its own budget: a tenant could spend `workers` times its limit.
        return (f"sets tenant budgets, and with --workers {opts.workers} in-process budgets are per worker "
                "(fix: --budgets redis://host:6379/0, or --workers 1)")
    return None


class _FileWatch:
    """Polls one file's identity (mtime, size, inode); `changed()` is true once per change."""

    def __init__(self, path: str):
        self.path = path
        self.sig = self._sig()

    def _sig(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def changed(self) -> bool:
        sig = self._sig()
        if sig is None or sig == self.sig:
            return False
        self.sig = sig
        return True


def _metrics(multiprocess: bool, policy: Policy) -> tuple[list[Meter], Callable[[], tuple[bytes, str]]]:
    """The meters the proxy adds to the engine and the /metrics renderer.

    `PrometheusMeter` aggregates every worker's values itself in multiprocess mode.
    """
    try:
        from router.metering.prometheus import PrometheusMeter
    except ImportError as e:
        _say(f"router.metering.prometheus is not available ({e}); /metrics serves prometheus_client's default registry only")
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        def render() -> tuple[bytes, str]:
            if not multiprocess:
                return generate_latest(), CONTENT_TYPE_LATEST
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST

        return [], render
    # one event loop per process records every request: no lock per increment
    meter = PrometheusMeter(tenant_label=policy.metering.tenant_label, lock_free=True)
    return [meter], meter.render


def _warm() -> None:
    """Load the classifier's model now, not on the first request; say so if it runs without its C
    accelerator (same results, 2-4x slower per request)."""
    from router.classify.classifier import _default_model, classify
    from router.classify.language import native_allowed

    classify([{"role": "user", "content": "warm up"}])
    if not _default_model().native:
        why = ("ROUTER_CLASSIFIER_NATIVE=0 is set" if not native_allowed() else
               "router.classify._features is not built (reinstall where a C compiler and the Python headers are present)")
        _say(f"classifier: pure-Python path, same results, 2-4x slower per request: {why}")


def _tune_gc() -> None:
    """Keep the cyclic GC off the hot path of a long-running server.

    Everything alive once the server is up (policy, classifier model, modules) is moved out of
    the collector's reach (`gc.freeze`), and a young collection runs after 20,000 net allocations
    of tracked objects instead of 700: a request allocates hundreds of them, nearly all freed by
    reference counting, so the default threshold ran a collection every few requests. Measured at
    64 connections: about 10 % more requests/s and a lower p99.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 100)


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        uvloop = None
    # outside the `except`: else every traceback the server logs carries the ImportError as context
    if uvloop is None:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def _worker(opts: ServeOptions, policy: Policy, *, reuse_port: bool, watch: bool) -> int:
    from aiohttp import web

    from router.engine.client import Router
    from router.metering.budget import open_budget
    from router.metering.ledger import LedgerMeter, open_ledger
    from router.server.proxy import Proxy, ProxyOptions
    from router.server.status import StatusPage

    meters, render = _metrics(bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR")), policy)
    prom = meters[0] if meters else None
    target = ledger_target(opts, policy)
    if target is not None:
        meters.append(LedgerMeter(open_ledger(target), metrics=prom))
    budget = None
    if any(t.budget is not None for t in policy.tenants.values()):
        budget = open_budget(_budgets_url(opts), metrics=prom)
    router = Router(policy, meters=meters, budget=budget)  # same construction as the library's
    engine = router.engine
    if budget is None:  # budgets a reload adds: the same backend --budgets names, reporting to /metrics
        engine.budget_factory = lambda: open_budget(_budgets_url(opts), metrics=prom)
    monitor = engine.monitor
    if monitor is not None:
        monitor.start()  # probes and vLLM scrapes run from start-up, not from the first request
    access = access_log_enabled(opts)
    if access:
        _log_access_to_stderr()
    options = ProxyOptions(max_body_bytes=int(opts.max_body_mb * 1024 * 1024), keepalive_s=opts.keepalive_s,
                           access_log=access, idle_timeout_s=opts.idle_timeout_s, body_timeout_s=opts.body_timeout_s)
    status = StatusPage(engine, loaded_at=lambda: router.loaded_at)   # /status, /status.json
    proxy = Proxy(engine, options, metrics=render, status=status)
    runner = web.ServerRunner(proxy.server(), handle_signals=False, shutdown_timeout=opts.grace_s)
    await runner.setup()
    site = web.TCPSite(runner, opts.host, opts.port, reuse_port=reuse_port or None, backlog=2048)
    try:
        await site.start()
    except OSError as e:
        _say(f"cannot listen on {opts.host}:{opts.port}: {e.strerror}")
        await runner.cleanup()
        return 1

    _tune_gc()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloading: set[asyncio.Task[None]] = set()

    async def reload(why: str) -> None:
        try:
            new = await asyncio.to_thread(_load, opts.policy, why, opts)
            if new is not None:
                router.reload(new)   # the policy, and its telemetry block's tracer when that changed
                if monitor is not None:
                    monitor.use(new)
                    monitor.start()
                _say(f"{why}: reloaded {opts.policy} (digest {new.digest})")
                return
        except Exception as e:  # reported here, never as "Task exception was never retrieved"
            _say(f"{why}: reload failed: {type(e).__name__}: {e}")
        _say(f"{why}: still serving digest {engine.policy.digest}")

    def on_hup() -> None:
        task = loop.create_task(reload("SIGHUP"))
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)  # blocked by a supervisor until handlers exist

    async def watch_file() -> None:
        watcher = _FileWatch(opts.policy)
        while True:
            await asyncio.sleep(opts.watch_interval_s)
            if watcher.changed():
                await reload("file changed")

    watcher = loop.create_task(watch_file()) if watch else None
    host, port = runner.addresses[0][:2]
    loop_name = type(loop).__module__.partition(".")[0]  # uvloop when installed (pip install 'router[fast]')
    _say(f"serving http://{host}:{port} with {opts.policy} (digest {policy.digest}; event loop: {loop_name})")
    await stop.wait()

    proxy.draining = True
    _say(f"stopping: draining requests in flight (up to {opts.grace_s:g} s)")
    if watcher is not None:
        watcher.cancel()
    await runner.cleanup()
    await router.aclose()  # closes the pool, flushes the ledger, stops probes and scrapes
    _say("stopped")
    return 0


def serve(opts: ServeOptions) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    if opts.workers > 1:
        return _supervise(opts)
    policy = _load(opts.policy, "start")
    if policy is None:
        return 1
    _warm()
    return _run(_worker(opts, policy, reuse_port=False, watch=opts.watch))


def _supervise(opts: ServeOptions) -> int:
    policy = _load(opts.policy, "start")
    if policy is None:
        return 1
    refusal = _budget_refusal(opts, policy)
    if refusal is not None:
        _say(f"refusing to start: {opts.policy} {refusal}")
        return 1
    own_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Before anything imports prometheus_client: it picks its value store at import time.
        own_dir = tempfile.mkdtemp(prefix="router-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir
    _warm()
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    children: dict[int, tuple[int, float]] = {}  # pid -> (slot, start time)

    def spawn(slot: int, pol: Policy) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            _die_with_parent()
            try:
                code = _run(_worker(opts, pol, reuse_port=True, watch=False))
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = (slot, time.monotonic())

    for slot in range(opts.workers):
        spawn(slot, policy)
    _say(f"supervising {opts.workers} workers on {opts.host}:{opts.port}")

    watcher = _FileWatch(opts.policy) if opts.watch else None
    stopping, failed, deadline = False, False, 0.0

    def stop_all(sig: int) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def reload(why: str) -> None:
        nonlocal policy
        new = _load(opts.policy, why, opts)
        if new is None:
            _say(f"{why}: workers keep serving digest {policy.digest}")
            return
        policy = new
        stop_all(signal.SIGHUP)

    try:
        while children:
            info = signal.sigtimedwait(_SIGNALS, opts.watch_interval_s if watcher else 1.0)
            sig = info.si_signo if info is not None else None
            if sig in (signal.SIGTERM, signal.SIGINT) and not stopping:
                stopping, deadline = True, time.monotonic() + opts.grace_s + 5
                stop_all(signal.SIGTERM)
            elif sig == signal.SIGHUP and not stopping:
                reload("SIGHUP")
            elif sig is None and watcher is not None and not stopping and watcher.changed():
                reload("file changed")
            if stopping and time.monotonic() > deadline:
                _say("workers did not stop in time: killing them")
                stop_all(signal.SIGKILL)
                failed = True
            while children:  # reap whatever ended, whichever signal woke us
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    children.clear()
                    break
                if pid == 0:
                    break
                slot, started = children.pop(pid)
                code = os.waitstatus_to_exitcode(status)
                _mark_dead(pid)
                if code != 0:
                    failed = failed or stopping
                    _say(f"worker {pid} exited with {code}")
                if not stopping:
                    if time.monotonic() - started < 2.0:
                        _say("a worker failed on start: stopping")
                        stopping, failed, deadline = True, True, time.monotonic() + opts.grace_s + 5
                        stop_all(signal.SIGTERM)
                    else:
                        spawn(slot, policy)
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
    _say("stopped")
    return 1 if failed else 0


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM when its supervisor dies, even by SIGKILL (no orphans)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _mark_dead(pid: int) -> None:
    with contextlib.suppress(Exception):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
