"""EU residency: the request only reaches EU providers, on the first try and on every fallback."""

import router
from router.dev.demo import simulated_providers

with simulated_providers() as upstreams:
    upstreams["MISTRAL"].sim.set_fault("status:503")  # Mistral's EU endpoint is down...
    resp = router.complete(messages=[{"role": "user", "content": "Summarise this contract clause."}], residency="eu")
    for a in resp.router.attempts:  # ...so router falls back to the EU vLLM, never to DeepSeek or OpenAI
        print(a.provider, a.outcome)
    print("served by", resp.router.provider, "in region", resp.router.region)
    print(router.explain(messages=[{"role": "user", "content": "hello"}], residency="eu").to_dict()["candidates"])
