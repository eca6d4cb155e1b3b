"""Streaming: chunks as the OpenAI SDK yields them; cost is exact once the stream ends."""

import router
from router.dev.demo import simulated_providers

with simulated_providers():
    stream = router.complete(messages=[{"role": "user", "content": "Write a haiku about queues"}], stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print(f"\n{stream.router.provider}/{stream.router.model} cost ${stream.router.cost_usd:.7f}")
