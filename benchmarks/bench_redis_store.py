"""CPU and wall time of one Redis store call: an EVALSHA through `RedisStore.call` + `RedisStore.script`,
as a rate-limit admission makes it, one at a time and many at once.

    python benchmarks/bench_redis_store.py [--redis redis://127.0.0.1:6379/0] [--calls 20000] [--rounds 3]
    PYTHONPATH=/tmp/base/src python benchmarks/bench_redis_store.py     # the same against another commit
    python benchmarks/bench_redis_store.py --router                     # per request, through router.acomplete

Prints, per mode, this process's CPU time per call (user + system, from getrusage: what the
client costs, the kernel's socket work included), the wall time per call, and calls/s: the
median of `--rounds` rounds. ``sequential``: one call after another (a round trip each);
``concurrent N``: N tasks calling at once (`--concurrency`). Redis runs elsewhere: its own CPU is
not counted. Only `RedisStore(url, name=...)`, `call`, `script` and `aclose` are used, so the
script runs against the store of any commit since they existed (an A/B: run it twice, alternating).

``--router``: per request instead, `router.acomplete` against the static upstream at concurrency
32 (bench_library's setup) with a tenant's requests, tokens and in-flight limits in memory, then in
Redis: this process's CPU and Redis's (``INFO cpu``, so keep that Redis otherwise idle) per request,
and calls/s. Redis limits cost two store calls a request (the admission and its settle).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SCRIPT = "return tonumber(ARGV[1]) + 1"


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def measure(url: str, calls: int, rounds: int, concurrency: int) -> dict[str, list[tuple[float, float]]]:
    from router.metering.redis_store import RedisStore

    store = RedisStore(url, name="bench store")

    def one():
        return store.script(SCRIPT, ["router-bench:store"], [1])

    for _ in range(200):   # connected, the script loaded
        await store.call("bench", one, 1.0)
    out: dict[str, list[tuple[float, float]]] = {"sequential": [], f"concurrent {concurrency}": []}

    async def worker(n: int) -> None:
        for _ in range(n):
            await store.call("bench", one, 1.0)

    for _ in range(rounds):
        c0, t0 = cpu_s(), time.perf_counter()
        await worker(calls)
        out["sequential"].append((cpu_s() - c0, time.perf_counter() - t0))
        c0, t0 = cpu_s(), time.perf_counter()
        await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
        out[f"concurrent {concurrency}"].append((cpu_s() - c0, time.perf_counter() - t0))
    await store.aclose()
    return out


async def through_router(url: str, calls: int, rounds: int) -> dict[str, list[tuple[float, float, float]]]:
    """(this process's CPU s, Redis's CPU s, wall s) per round, for limits in memory and in Redis."""
    import itertools

    import bench_library as bl
    import redis  # the reference client (the test extra), as bench_library clears its keys: any commit's store

    import router
    from router.core.meter import MemoryMeter
    from router.core.policy_parser import parse_policy
    from router.metering.ratelimit import RedisRateLimiter

    admin = redis.Redis.from_url(url)

    async def redis_cpu_s() -> float:
        info = admin.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    prefix = f"router-bench-store:{os.getpid()}"
    out: dict[str, list[tuple[float, float, float]]] = {"limits in memory": [], "limits in Redis": []}
    counter = itertools.count()
    with bl.static_upstream() as upstream:
        policy = bl.POLICY.format(url=upstream) + "tenants:\n  acme: {allow_hints: true" + bl._LIMITS + "}\n"
        routers = {"limits in memory": router.Router(parse_policy(policy, env={}), meters=[MemoryMeter(1000)]),
                   "limits in Redis": router.Router(parse_policy(policy, env={}), meters=[MemoryMeter(1000)],
                                                    rate_limiter=RedisRateLimiter(url, prefix=prefix + ":rl"))}

        async def worker(r, n: int) -> None:
            for _ in range(n):
                text = f"{bl.MESSAGES[0]['content']} ({next(counter)})"
                await r.acomplete([{"role": "user", "content": text}], tenant="acme", temperature=0)

        for r in routers.values():   # warm: connections, the scripts loaded
            await asyncio.gather(*(worker(r, 20) for _ in range(32)))
        for _ in range(rounds):
            for name, r in routers.items():
                c0, t0, rc0 = cpu_s(), time.perf_counter(), await redis_cpu_s()
                await asyncio.gather(*(worker(r, calls // 32) for _ in range(32)))
                rc1, c1, t1 = await redis_cpu_s(), cpu_s(), time.perf_counter()
                out[name].append((c1 - c0, rc1 - rc0, t1 - t0))
        for r in routers.values():
            await r.aclose()
    keys = list(admin.scan_iter(match=prefix + ":*", count=1000))
    for i in range(0, len(keys), 1000):
        admin.delete(*keys[i:i + 1000])
    admin.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis", default=os.environ.get("ROUTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--calls", type=int, default=20000, help="calls per mode and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--uvloop", action="store_true", help="run on uvloop (as `router serve` does when installed)")
    ap.add_argument("--router", action="store_true",
                    help="per request through router.acomplete, limits in memory and in Redis (--calls default 8000)")
    args = ap.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    import router.metering.redis_store as rs

    if args.router:
        calls = args.calls if args.calls != 20000 else 8000
        rows = asyncio.run(through_router(args.redis, calls, args.rounds))
        n = calls - calls % 32
        print(f"\nrouter.acomplete at concurrency 32, a tenant's requests, tokens and in-flight limits "
              f"({os.path.dirname(rs.__file__)}), {n} calls per round, median of {args.rounds} rounds")
        print(f"{'limits':18} {'our cpu us/req':>15} {'redis cpu us/req':>17} {'calls/s':>9}")
        for name, rs_ in rows.items():
            print(f"{name:18} {statistics.median(c for c, _, _ in rs_) / n * 1e6:15.0f} "
                  f"{statistics.median(r for _, r, _ in rs_) / n * 1e6:17.0f} "
                  f"{n / statistics.median(w for _, _, w in rs_):9.0f}")
        return
    results = asyncio.run(measure(args.redis, args.calls, args.rounds, args.concurrency))
    n = args.calls - args.calls % args.concurrency
    print(f"\nRedisStore.call(script) against {args.redis} ({os.path.dirname(rs.__file__)}), "
          f"{args.calls} calls per mode, median of {args.rounds} rounds")
    print(f"{'mode':16} {'cpu us/call':>12} {'wall us/call':>13} {'calls/s':>9}")
    for mode, rows in results.items():
        k = args.calls if mode == "sequential" else n
        cpu = statistics.median(c for c, _ in rows) / k * 1e6
        wall = statistics.median(w for _, w in rows) / k * 1e6
        print(f"{mode:16} {cpu:12.1f} {wall:13.1f} {1e6 / wall:9.0f}")


if __name__ == "__main__":
    main()
