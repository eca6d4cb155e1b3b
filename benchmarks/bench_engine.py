"""The engine's own cost per request, without sockets: `Engine.complete` / `Engine.stream` against an
in-process transport that answers at once, with the meters `router serve` uses (Prometheus, lock-free)
and, in one variant, a tenant budget (reserve + settle). The ``+ratelimit`` and ``cache-*`` variants
switch on rate limits (in-process: requests, tokens and in-flight limits of one tenant) and the
response cache (in-process; ``cache-hit`` answers every call from it, ``cache-miss`` sends a new
prompt each call and stores it). The fleet variants (docs/routing.md) stream from a policy that also
has a replicated model, a hedged and a resumable route: ``fleet-off`` uses none of them (compare it
with ``stream``), ``replicas`` and ``stream+replicas`` pick one of two replicas (least loaded, prefix
affinity), ``stream+hedge`` races the first chunk against a 30 s hedge delay (set up, never fired)
and ``stream+resume`` keeps the text streamed so far. ``pinned+trace``, ``auto+trace``, ``auto+traceparent`` (a client's
W3C traceparent continued, as the proxy does) and ``stream+trace`` are ``auto`` and ``stream`` with
OpenTelemetry tracing on, exporting to an OTLP/HTTP sink (benchmarks/otlp_sink.py, in a process of its
own, as a collector would be), each timed loop ending with a flush so the export is counted; they use
the default export queue (the C sender where it builds), and ``pinned+trace(py)`` and ``stream+trace(py)``
the same requests through the Python one (``ROUTER_OTLP_SENDER=python``), in the same process and run.
A checkout without those features skips them.

    python benchmarks/bench_engine.py [--calls 4000] [--rounds 8]
    python benchmarks/bench_engine.py --against /tmp/base/src     # A/B against another checkout's src
    python benchmarks/bench_engine.py --cpu                       # CPU time of the process, not wall time
    python benchmarks/bench_engine.py --switches                  # context switches, not time

``--switches`` counts the process's voluntary context switches (every thread) per 1000 calls instead:
how often a thread waited (for the GIL, for a lock), the cost the C trace export removes.

``--cpu`` times each loop with the process's CPU time (every thread: the tracer's export thread and
the OTLP sink count too) instead of the wall clock, so other processes on a shared machine do not
inflate it (they still disturb caches).

With ``--against``, rounds alternate between this checkout and the other one, each round in a fresh
interpreter, so both see the same machine drift; per variant it prints the median microseconds per
call of each and their difference. CPU-bound: no network, no upstream process, which makes it far
less noisy than bench_library on a shared machine (still compare within one run only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

POLICY = """
version: 1
providers:
  up: {kind: vllm, base_url: "http://127.0.0.1:9/v1", region: eu}
models:
  m: {provider: up, model: m, price: {input_per_mtok: 0.1, output_per_mtok: 0.2}}
  n: {provider: up, model: n, price: {input_per_mtok: 0.3, output_per_mtok: 0.6}}
routes:
  coding: {targets: [m, n]}
  general: {targets: [n, m]}
rules:
  - {if: {task: coding}, route: coding}
  - {route: general}
tenants:
  acme: {budget: {daily_usd: 1000000}}
"""

BODY_JSON = (b'{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
             b'"message":{"role":"assistant","content":"The quick brown fox."},"finish_reason":"stop"}],'
             b'"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}')
CHUNKS = [b'{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"'
          + w.encode() + b' "},"finish_reason":null}]}' for w in ("The", "quick", "brown", "fox.")]
CHUNKS += [b'{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{},'
           b'"finish_reason":"stop"}]}',
           b'{"id":"c","object":"chat.completion.chunk","model":"m","choices":[],"usage":'
           b'{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}', b"[DONE]"]
MESSAGES = [{"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": "Write a Rust function that parses ISO 8601 dates and explain it."}]
# the same, plus a tenant with rate limits and a route with a response cache
MONEY = POLICY.replace("  general: {targets: [n, m]}", "  general: {targets: [n, m]}\n"
                       "  cached: {targets: [m], cache: {ttl_s: 600, max_entries: 1000}}") + """\
  plain: {}
  limited: {rate_limits: {requests_per_minute: 100000000, tokens_per_minute: 100000000000, concurrent: 1000}}
"""


# the fleet features (docs/routing.md): a model on two replicas (least loaded + prefix affinity), and
# routes that hedge (a delay never reached here: the race is set up, the hedge never fires) or resume
FLEET = POLICY.replace("  up: {kind: vllm, base_url: \"http://127.0.0.1:9/v1\", region: eu}",
                       "  up: {kind: vllm, base_url: \"http://127.0.0.1:9/v1\", region: eu}\n"
                       "  up2: {kind: vllm, base_url: \"http://127.0.0.1:10/v1\", region: eu}").replace(
    "  n: {provider: up,", "  r: {replicas: [up, up2], model: r, price: {input_per_mtok: 0.1, output_per_mtok: 0.2}}\n"
    "  n: {provider: up,").replace("  general: {targets: [n, m]}", "  general: {targets: [n, m]}\n"
                                   "  hedged: {targets: [m, n], hedge: {delay_s: 30, max_share: 1}}\n"
                                   "  resumed: {targets: [m, n], resume: true}\n"
                                   "  plain: {targets: [m, n]}\n"
                                   "  fleet: {targets: [r]}")


def one_round(calls: int, cpu: bool = False, swap: bool = False, switches: bool = False) -> dict[str, float]:
    from router import Router
    from router.core.policy_parser import parse_policy
    from router.metering.budget import InProcessBudget
    from router.metering.prometheus import PrometheusMeter
    from router.transport.base import Transport, UpstreamResponse

    class Resp(UpstreamResponse):
        status, headers = 200, {}

        async def read(self) -> bytes:
            return BODY_JSON

        async def sse_data(self):
            for c in CHUNKS:
                yield c

        def close(self) -> None:
            pass

        def release(self) -> None:
            pass

    class Instant(Transport):
        async def send(self, call, *, connect_s, read_s, total_s):
            return Resp()

    policy = parse_policy(POLICY, env={})
    router = Router(policy, transport=Instant(), meters=[PrometheusMeter(lock_free=True)], budget=InProcessBudget(),
                    monitor=True)
    engine = router.engine

    async def pinned() -> None:
        await engine.complete({"model": "m", "messages": MESSAGES, "max_tokens": 64}, task="coding")

    async def auto() -> None:
        await engine.complete({"model": "auto", "messages": MESSAGES, "max_tokens": 64})

    async def budgeted() -> None:
        await engine.complete({"model": "auto", "messages": MESSAGES, "max_tokens": 64}, tenant="acme")

    async def stream() -> None:
        async for _ in engine.stream({"model": "m", "messages": MESSAGES, "stream": True}, task="coding"):
            pass

    variants = [("pinned", pinned), ("auto", auto), ("auto+budget", budgeted), ("stream", stream)]
    try:
        money = Router(parse_policy(MONEY, env={}), transport=Instant(), meters=[PrometheusMeter(lock_free=True)],
                       budget=InProcessBudget(), monitor=True).engine
    except Exception:   # a checkout without rate limits and the response cache
        money = None
    if money is not None:
        seq = iter(range(10**9))

        async def tenant() -> None:   # the same tenant lookup as `limited`, without limits: its baseline
            await money.complete({"model": "auto", "messages": MESSAGES, "max_tokens": 64}, tenant="plain")

        async def limited() -> None:
            await money.complete({"model": "auto", "messages": MESSAGES, "max_tokens": 64}, tenant="limited")

        async def hit() -> None:
            await money.complete({"model": "cached", "messages": MESSAGES, "max_tokens": 64, "temperature": 0})

        async def miss() -> None:
            fresh = [*MESSAGES[:-1], {"role": "user", "content": f"{MESSAGES[-1]['content']} #{next(seq)}"}]
            await money.complete({"model": "cached", "messages": fresh, "max_tokens": 64, "temperature": 0})

        async def stream_hit() -> None:
            async for _ in money.stream({"model": "cached", "messages": MESSAGES, "stream": True, "temperature": 0}):
                pass

        variants += [("auto+tenant", tenant), ("auto+ratelimit", limited), ("cache-hit", hit), ("cache-miss", miss), ("stream-hit", stream_hit)]

    try:
        fleet = Router(parse_policy(FLEET, env={}), transport=Instant(), meters=[PrometheusMeter(lock_free=True)],
                       budget=InProcessBudget(), monitor=True).engine
    except Exception:   # a checkout without replicas, hedging and resuming
        fleet = None
    if fleet is not None:
        async def replicas() -> None:
            await fleet.complete({"model": "r", "messages": MESSAGES, "max_tokens": 64}, task="coding")

        async def stream_replicas() -> None:
            async for _ in fleet.stream({"model": "r", "messages": MESSAGES, "stream": True}, task="coding"):
                pass

        async def stream_hedge() -> None:
            async for _ in fleet.stream({"model": "hedged", "messages": MESSAGES, "stream": True}):
                pass

        async def stream_resume() -> None:
            async for _ in fleet.stream({"model": "resumed", "messages": MESSAGES, "stream": True}):
                pass

        async def stream_off() -> None:   # the same policy, a route without hedge or resume
            async for _ in fleet.stream({"model": "plain", "messages": MESSAGES, "stream": True}):
                pass

        variants += [("fleet-off", stream_off), ("replicas", replicas), ("stream+replicas", stream_replicas),
                     ("stream+hedge", stream_hedge), ("stream+resume", stream_resume)]

    # OpenTelemetry traces (docs/observability.md): the same requests with a tracer exporting over OTLP/HTTP
    # to a sink in another process (as a collector is); each timed loop ends with a flush, so the encoding
    # and the export thread's POSTs are inside the time (the GIL makes them the event loop's cost).
    # Compare with `auto`, `stream`.
    flushes: dict[str, object] = {}
    sink = None
    try:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        sink = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                              "otlp_sink.py"), str(port)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        def traced_engine(sender: str | None):   # ROUTER_OTLP_SENDER=python: the Python export queue and thread
            before = os.environ.get("ROUTER_OTLP_SENDER")
            if sender is not None:   # else as the environment says
                os.environ["ROUTER_OTLP_SENDER"] = sender
            try:
                return Router(parse_policy(POLICY + f"telemetry: {{endpoint: 'http://127.0.0.1:{port}'}}\n",
                                           env={}), transport=Instant(), meters=[PrometheusMeter(lock_free=True)],
                              budget=InProcessBudget(), monitor=True).engine
            finally:
                os.environ.pop("ROUTER_OTLP_SENDER", None)
                if before is not None:
                    os.environ["ROUTER_OTLP_SENDER"] = before

        traced = traced_engine(None)
        traced_py = traced_engine("python")
    except Exception:   # a checkout without tracing
        traced = traced_py = None
    if traced is not None and traced.tracer is not None:
        carrier = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}

        async def pinned_traced() -> None:   # no classifier: tracing's cost alone
            await traced.complete({"model": "m", "messages": MESSAGES, "max_tokens": 64}, task="coding")

        async def auto_traced() -> None:
            await traced.complete({"model": "auto", "messages": MESSAGES, "max_tokens": 64})

        async def auto_traceparent() -> None:   # the proxy's case: the client's traceparent continued
            await traced.complete({"model": "auto", "messages": MESSAGES, "max_tokens": 64}, trace_context=carrier)

        async def stream_traced() -> None:
            async for _ in traced.stream({"model": "m", "messages": MESSAGES, "stream": True}, task="coding"):
                pass

        async def pinned_traced_py() -> None:
            await traced_py.complete({"model": "m", "messages": MESSAGES, "max_tokens": 64}, task="coding")

        async def stream_traced_py() -> None:
            async for _ in traced_py.stream({"model": "m", "messages": MESSAGES, "stream": True}, task="coding"):
                pass

        # the C and Python export queues side by side, which runs first alternating from round to round
        # (a variant that runs later in a round costs a few us more, whatever it is)
        pairs = [[("pinned+trace", pinned_traced), ("pinned+trace(py)", pinned_traced_py)],
                 [("stream+trace", stream_traced), ("stream+trace(py)", stream_traced_py)]]
        if swap:
            pairs = [pair[::-1] for pair in pairs]
        variants += [*pairs[0], ("auto+trace", auto_traced), ("auto+traceparent", auto_traceparent), *pairs[1]]
        for name in ("pinned+trace", "auto+trace", "auto+traceparent", "stream+trace"):
            flushes[name] = traced.tracer
        for name in ("pinned+trace(py)", "stream+trace(py)"):
            flushes[name] = traced_py.tracer

    clock = time.process_time if cpu else time.perf_counter
    scale = 1e6
    if switches:   # the process's voluntary context switches (every thread: waits for the GIL, for a lock)
        import resource

        def clock() -> float:
            return float(resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw)

        scale = 1e3

    async def run() -> dict[str, float]:
        out = {}
        for name, fn in variants:
            tracer = flushes.get(name)
            for _ in range(200):
                await fn()
            if tracer is not None:
                tracer.force_flush()   # type: ignore[attr-defined]
            t0 = clock()
            for _ in range(calls):
                await fn()
            if tracer is not None:
                tracer.force_flush()   # type: ignore[attr-defined]
            out[name] = (clock() - t0) / calls * scale
        await router.aclose()
        return out

    try:
        return asyncio.run(run())
    finally:
        if sink is not None:
            sink.terminate()
            sink.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=4000)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--against", help="another checkout's src directory: alternate rounds between the two")
    p.add_argument("--cpu", action="store_true", help="time with the process's CPU time instead of the wall clock")
    p.add_argument("--one-round", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--swap", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--switches", action="store_true",
                   help="count the process's voluntary context switches per 1000 calls instead of time")
    args = p.parse_args()
    if args.one_round:
        print(json.dumps(one_round(args.calls, args.cpu, args.swap, args.switches)))
        return
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    sides = {"this": os.path.abspath(here)}
    if args.against:
        sides["against"] = os.path.abspath(args.against)
    results: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for side in order:
            env = {**os.environ, "PYTHONPATH": sides[side]}
            out = subprocess.run([sys.executable, __file__, "--one-round", "--calls", str(args.calls),
                                  *(["--swap"] if r % 2 else []),
                                  *(["--cpu"] if args.cpu else []), *(["--switches"] if args.switches else [])],
                                 env=env,
                                 capture_output=True, text=True, check=True)
            results[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
    names = list(results["this"][0])
    what = ("voluntary context switches per 1000 calls" if args.switches
            else f"engine cost per call, us of {'CPU' if args.cpu else 'wall'} time")
    print(f"{what} (median of {args.rounds} rounds of {args.calls} calls; min in brackets)")
    header = f"{'variant':<17}" + "".join(f"{s:>22}" for s in sides) + ("   difference" if args.against else "")
    print(header)
    for n in names:
        ran = [s for s in sides if n in results[s][0]]   # a variant the other checkout cannot run: "-"
        med = {s: statistics.median(x[n] for x in results[s]) for s in ran}
        low = {s: min(x[n] for x in results[s]) for s in ran}
        row = f"{n:<17}" + "".join(f"{med[s]:>13.1f} [{low[s]:>6.1f}]" if s in ran else f"{'-':>22}" for s in sides)
        if args.against and len(ran) == 2:
            row += f"   {med['this'] - med['against']:+8.1f}"
        print(row)


if __name__ == "__main__":
    main()
