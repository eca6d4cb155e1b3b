"""Async: `acomplete` on your event loop, many requests concurrently over one connection pool."""

import asyncio

import router
from router.dev.demo import simulated_providers


async def main() -> None:
    prompts = ["Fix: TypeError: 'NoneType' object is not subscriptable", "What is 17 * 23 + 4?", "Tell me a joke"]
    results = await asyncio.gather(*(router.acomplete(messages=[{"role": "user", "content": p}]) for p in prompts))
    for p, r in zip(prompts, results, strict=False):
        print(f"{r.router.task:9} {r.router.model:16} {p}")
    stream = await router.acomplete(messages=[{"role": "user", "content": "Count to five"}], stream=True)
    async for _chunk in stream:
        pass
    print("streamed via", stream.router.model)
    await router.aclose()  # close this loop's connection pool before asyncio.run closes the loop


with simulated_providers():
    asyncio.run(main())
