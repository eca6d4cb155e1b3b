"""Library overhead: `router.acomplete` against raw aiohttp, same static upstream, same run.

    python benchmarks/bench_library.py [--calls 3000] [--concurrency 32] [--litellm]

Prints, per client: mean and p50/p99 latency per call at concurrency 1, calls/s at the given
concurrency, and each as a ratio to raw aiohttp measured in the same run (these machines are
noisy: compare ratios, not absolute figures). The upstream runs in its own process.
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


async def measure(call, calls: int, concurrency: int) -> dict[str, float]:
    for _ in range(200):  # warm up: connections, caches, lazy loads
        await call()
    gc.collect()
    lat = []
    for _ in range(calls // 3):
        t0 = time.perf_counter()
        await call()
        lat.append(time.perf_counter() - t0)
    n = calls
    done = 0

    async def worker() -> None:
        nonlocal done
        while done < n:
            done += 1
            await call()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    return {"mean_ms": statistics.fmean(lat) * 1e3, "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3,
            "rps": n / elapsed}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--litellm", action="store_true", help="also measure litellm.Router (slow to import)")
    args = ap.parse_args()

    import aiohttp
    import orjson

    import router
    from router.metering import MemoryMeter
    from router.policy import parse_policy

    results: dict[str, dict[str, float]] = {}
    with static_upstream() as url:
        body = orjson.dumps({"model": "static", "messages": MESSAGES})
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000)) as session:
            async def raw() -> None:
                async with session.post(url + "/chat/completions", data=body,
                                        headers={"Content-Type": "application/json",
                                                 "Authorization": "Bearer bench"}) as resp:
                    orjson.loads(await resp.read())

            results["raw aiohttp"] = await measure(raw, args.calls, args.concurrency)

        r = router.Router(parse_policy(POLICY.format(url=url), env={}), meters=[MemoryMeter(1000)])

        async def pinned() -> None:
            await r.acomplete(MESSAGES, model="static")

        async def auto() -> None:
            await r.acomplete(MESSAGES)

        results["router.acomplete (pinned alias)"] = await measure(pinned, args.calls, args.concurrency)
        results["router.acomplete (auto: classify + route)"] = await measure(auto, args.calls, args.concurrency)
        await r.aclose()

        # The same, over aiohttp's client (as for https:// upstreams): router's own logic, client held equal.
        from router.transport import AiohttpTransport, ProviderTransport

        r = router.Router(parse_policy(POLICY.format(url=url), env={}), meters=[MemoryMeter(1000)],
                          transport=ProviderTransport(AiohttpTransport()))
        results["router.acomplete (auto, aiohttp client)"] = await measure(auto, args.calls, args.concurrency)
        await r.aclose()

        if args.litellm:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            import litellm

            lr = litellm.Router(model_list=[{"model_name": "static", "litellm_params": {
                "model": "openai/static", "api_base": url, "api_key": "bench"}}])

            async def lite() -> None:
                await lr.acompletion(model="static", messages=MESSAGES)

            results["litellm.Router.acompletion"] = await measure(lite, max(300, args.calls // 5), args.concurrency)

    base = results["raw aiohttp"]
    print(f"\nLibrary call cost against a static upstream (calls={args.calls}, concurrency={args.concurrency})")
    print(f"{'client':44} {'mean ms':>8} {'p50 ms':>8} {'p99 ms':>8} {'x raw':>6} {'calls/s':>9} {'x raw':>6}")
    for name, m in results.items():
        print(f"{name:44} {m['mean_ms']:8.3f} {m['p50_ms']:8.3f} {m['p99_ms']:8.3f} "
              f"{m['mean_ms'] / base['mean_ms']:6.2f} {m['rps']:9.0f} {m['rps'] / base['rps']:6.2f}")
    added = results["router.acomplete (auto, aiohttp client)"]["mean_ms"] - base["mean_ms"]
    total = results["router.acomplete (auto: classify + route)"]["mean_ms"] - base["mean_ms"]
    print(f"\nrouter's logic (classify, decide, translate, meter) costs {added * 1000:.0f} us per call over raw "
          f"aiohttp with the same client; with its lean client for http:// upstreams the whole call costs "
          f"{total * 1000:+.0f} us against raw aiohttp.")


if __name__ == "__main__":
    asyncio.run(main())
