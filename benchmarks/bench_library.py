"""Library overhead: `router.acomplete` against raw aiohttp, same static upstream, same run.

    python benchmarks/bench_library.py [--calls 3000] [--rounds 6] [--concurrency 32] [--litellm] [--tensorzero]

Prints, per client: mean and p50/p99 latency per call at concurrency 1, calls/s at the given
concurrency, and each as a ratio to raw aiohttp measured in the same run (these machines are
noisy: compare ratios, not absolute figures). The clients are measured in interleaved rounds, each
round in a rotated order, so drift in the machine's speed hits all of them alike; means and calls/s
are medians over rounds, and router's own cost is the median of its per-round difference from raw
aiohttp, printed with its spread. The upstream runs in its own process.

``--money`` adds, in the same rounds, the money features through `router.acomplete` for a tenant,
each request numbered so that no two are alike (``temperature: 0``): features off, and off with
the engine's admission hook removed (what the features cost when off); rate limits (requests,
tokens and in flight, too high to refuse) in memory and in Redis (``--redis``), and requests per
minute alone in Redis (no settle: one round trip); the response cache in memory, every call a
miss; and the cache in memory and in Redis with 8 distinct requests, so every call after the first
8 is a hit. Its table gives each against features off.

Peers, in the same run and against the same upstream: ``--litellm`` (litellm.Router, which
``pip install litellm`` provides) and ``--tensorzero`` (TensorZero's gateway embedded in Python,
``pip install tensorzero``: its Rust gateway behind a Python client, observability off).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import pct, static_upstream  # noqa: E402

MESSAGES = [{"role": "user", "content": "Write a Python function that reverses a linked list."}]

POLICY = """
version: 1
providers:
  up: {{kind: openai, base_url: "{url}", api_key: "bench", region: eu}}
models:
  static: {{provider: up, model: static, price: {{input_per_mtok: 0.1, output_per_mtok: 0.2}}}}
routes:
  coding: {{targets: [static]}}
  general: {{targets: [static]}}
  reasoning: {{targets: [static]}}
rules:
  - {{if: {{task: coding}}, route: coding}}
  - {{if: {{task: reasoning}}, route: reasoning}}
  - {{route: general}}
"""


async def warm(call) -> None:
    for _ in range(200):  # connections, caches, lazy loads
        await call()


async def one_round(call, calls: int, concurrency: int) -> tuple[list[float], float]:
    """Sequential latencies of ``calls`` calls, then calls/s for as many at ``concurrency``."""
    gc.collect()
    lat = []
    for _ in range(calls):
        t0 = time.perf_counter()
        await call()
        lat.append(time.perf_counter() - t0)
    done = 0

    async def worker() -> None:
        nonlocal done
        while done < calls:
            done += 1
            await call()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat, calls / (time.perf_counter() - t0)


async def measure_all(clients: dict, calls: int, rounds: int, concurrency: int) -> dict[str, dict]:
    for call in clients.values():
        await warm(call)
    names = list(clients)
    per_round: dict[str, list[tuple[list[float], float]]] = {n: [] for n in names}
    per_call = max(50, calls // rounds)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            per_round[name].append(await one_round(clients[name], per_call, concurrency))
    out = {}
    for name, runs in per_round.items():
        lat = [x for run, _ in runs for x in run]
        out[name] = {"mean_ms": statistics.median(statistics.fmean(run) for run, _ in runs) * 1e3,
                     "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3,
                     "rps": statistics.median(rps for _, rps in runs),
                     "round_means_ms": [statistics.fmean(run) * 1e3 for run, _ in runs]}
    return out


TENSORZERO_CONFIG = """
[gateway.observability]
enabled = false

[models.static]
routing = ["up"]

[models.static.providers.up]
type = "openai"
model_name = "static"
api_base = "{url}/"
api_key_location = "none"
"""


async def measure_tensorzero(url: str, args: argparse.Namespace) -> dict[str, dict]:
    """TensorZero's embedded gateway (its Rust core in this process) calling the same upstream."""
    import tempfile

    from tensorzero import AsyncTensorZeroGateway

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "tensorzero.toml")
        with open(path, "w") as f:
            f.write(TENSORZERO_CONFIG.format(url=url))
        client = await AsyncTensorZeroGateway.build_embedded(config_file=path, async_setup=True)
        tz_input = {"messages": MESSAGES}

        async def tz() -> None:
            await client.inference(model_name="static", input=tz_input)

        return await measure_all({"tensorzero (embedded gateway)": tz}, args.calls, args.rounds, args.concurrency)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=3000, help="sequential calls per client, over all rounds")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds per client")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--litellm", action="store_true", help="also measure litellm.Router (slow to import)")
    ap.add_argument("--tensorzero", action="store_true", help="also measure TensorZero's embedded gateway")
    ap.add_argument("--money", action="store_true", help="also measure rate limits and the response cache")
    ap.add_argument("--redis", default=os.environ.get("ROUTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
                    help="Redis for --money (keys under a prefix of this run, deleted at the end)")
    args = ap.parse_args()

    import aiohttp
    import orjson

    import router
    from router.core.meter import MemoryMeter
    from router.core.policy_parser import parse_policy

    results: dict[str, dict] = {}
    with static_upstream() as url:
        body = orjson.dumps({"model": "static", "messages": MESSAGES})
        from router.transport.aiohttp_client import AiohttpTransport
        from router.transport.chooser import ProviderTransport

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000)) as session:
            async def raw() -> None:
                async with session.post(url + "/chat/completions", data=body,
                                        headers={"Content-Type": "application/json",
                                                 "Authorization": "Bearer bench"}) as resp:
                    orjson.loads(await resp.read())

            lean = router.Router(parse_policy(POLICY.format(url=url), env={}), meters=[MemoryMeter(1000)])
            # The same, over aiohttp's client (as for https:// upstreams): router's own logic, client held equal.
            same = router.Router(parse_policy(POLICY.format(url=url), env={}), meters=[MemoryMeter(1000)],
                                 transport=ProviderTransport(AiohttpTransport()))

            async def pinned() -> None:
                await lean.acomplete(MESSAGES, model="static")

            async def auto() -> None:
                await lean.acomplete(MESSAGES)

            async def auto_aiohttp() -> None:
                await same.acomplete(MESSAGES)

            clients = {
                "raw aiohttp": raw,
                "router.acomplete (pinned alias)": pinned,
                "router.acomplete (auto: classify + route)": auto,
                "router.acomplete (auto, aiohttp client)": auto_aiohttp,
            }
            money = money_clients(url, args.redis) if args.money else {}
            clients.update({name: call for name, (call, _) in money.items()})
            results = await measure_all(clients, args.calls, args.rounds, args.concurrency)
            await lean.aclose()
            await same.aclose()
            for _, r in money.values():
                await r.aclose()
            if money:
                clear_redis(args.redis)

        if args.tensorzero:
            results.update(await measure_tensorzero(url, args))

        if args.litellm:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            import litellm

            lr = litellm.Router(model_list=[{"model_name": "static", "litellm_params": {
                "model": "openai/static", "api_base": url, "api_key": "bench"}}])

            async def lite() -> None:
                await lr.acompletion(model="static", messages=MESSAGES)

            results.update(await measure_all({"litellm.Router.acompletion": lite},
                                             max(300, args.calls // 5), 2, args.concurrency))

    base = results["raw aiohttp"]
    print(f"\nLibrary call cost against a static upstream (calls={args.calls}, concurrency={args.concurrency})")
    print(f"{'client':44} {'mean ms':>8} {'p50 ms':>8} {'p99 ms':>8} {'x raw':>6} {'calls/s':>9} {'x raw':>6}")
    for name, m in results.items():
        print(f"{name:44} {m['mean_ms']:8.3f} {m['p50_ms']:8.3f} {m['p99_ms']:8.3f} "
              f"{m['mean_ms'] / base['mean_ms']:6.2f} {m['rps']:9.0f} {m['rps'] / base['rps']:6.2f}")
    raw_rounds = base["round_means_ms"]

    def diff_us(name: str) -> tuple[float, float, float]:
        d = sorted((a - b) * 1000 for a, b in zip(results[name]["round_means_ms"], raw_rounds, strict=True))
        return statistics.median(d), d[0], d[-1]

    added, lo, hi = diff_us("router.acomplete (auto, aiohttp client)")
    total, tlo, thi = diff_us("router.acomplete (auto: classify + route)")
    if args.money:
        print_money(results)
    print(f"\nrouter's logic (classify, decide, translate, meter) costs {added:.0f} us per call over raw aiohttp "
          f"with the same client (median of {len(raw_rounds)} paired rounds; {lo:.0f} to {hi:.0f}); with its "
          f"lean client for http:// upstreams the whole call costs {total:+.0f} us ({tlo:+.0f} to {thi:+.0f}) "
          f"against raw aiohttp.")


MONEY_PREFIX = f"router-bench-lib:{os.getpid()}"
_LIMITS = ", rate_limits: {requests_per_minute: 100000000, tokens_per_minute: 1000000000000, concurrent: 100000}"
_RPM = ", rate_limits: {requests_per_minute: 100000000}"   # nothing to settle: one round trip a request
_CACHE = ", cache: {ttl_s: 600, max_entries: 1000000}"
MONEY = {  # name: (tenant settings, route settings, backend, distinct requests)
    "money: off (tenant, no limits, no cache)": ("", "", None, 0),
    "money: off, admission hook removed": ("", "", "no-hook", 0),
    "money: rate limits, memory": (_LIMITS, "", None, 0),
    "money: rate limits, Redis": (_LIMITS, "", "rl", 0),
    "money: requests/min only, Redis": (_RPM, "", "rl", 0),
    "money: cache miss, memory": ("", _CACHE, None, 0),
    "money: cache hit, memory": ("", _CACHE, None, 8),
    "money: cache hit, Redis": ("", _CACHE, "cache", 8),
}
MONEY_OFF = "money: off (tenant, no limits, no cache)"


def money_clients(url: str, redis_url: str) -> dict:
    """name -> (call, its Router) for each --money variant."""
    import itertools

    import router
    from router.core.meter import MemoryMeter
    from router.core.policy_parser import parse_policy
    from router.metering.ratelimit import RedisRateLimiter
    from router.metering.response_cache import RedisCache

    out = {}
    counter = itertools.count()
    for name, (tenant, route, backend, distinct) in MONEY.items():
        text = POLICY.format(url=url).replace("targets: [static]}", "targets: [static]" + route + "}")
        text += "tenants:\n  acme: {allow_hints: true" + tenant + "}\n"
        kwargs: dict = {}
        if backend == "rl":
            kwargs["rate_limiter"] = RedisRateLimiter(redis_url, prefix=MONEY_PREFIX + ":rl")
        elif backend == "cache":
            kwargs["response_cache"] = RedisCache(redis_url, prefix=MONEY_PREFIX + ":cache")
        r = router.Router(parse_policy(text, env={}), meters=[MemoryMeter(1000)], **kwargs)
        if backend == "no-hook":   # what the features cost when off: the engine's one hook, removed
            r.engine.admission.open = lambda *a, **kw: None

        def call(r=r, distinct=distinct):
            n = next(counter)
            content = f"{MESSAGES[0]['content']} ({n % distinct if distinct else n})"
            return r.acomplete([{"role": "user", "content": content}], tenant="acme", temperature=0)

        out[name] = (call, r)
    return out


def clear_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=MONEY_PREFIX + ":*", count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i:i + 1000])
    client.close()


def print_money(results: dict[str, dict]) -> None:
    off = results[MONEY_OFF]
    print("\nmoney features, against features off in the same rounds (per-call cost: median of the paired "
          "per-round differences, with their range)")
    print(f"{'client':44} {'mean ms':>8} {'x off':>6} {'calls/s':>9} {'x off':>6} {'added us':>9} {'range':>15}")
    for name in MONEY:
        m = results[name]
        d = sorted((a - b) * 1000 for a, b in zip(m["round_means_ms"], off["round_means_ms"], strict=True))
        print(f"{name:44} {m['mean_ms']:8.3f} {m['mean_ms'] / off['mean_ms']:6.2f} {m['rps']:9.0f} "
              f"{m['rps'] / off['rps']:6.2f} {statistics.median(d):+9.0f} {f'{d[0]:+.0f} to {d[-1]:+.0f}':>15}")


if __name__ == "__main__":
    asyncio.run(main())
