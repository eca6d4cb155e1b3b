"""A task hint: you know better than the classifier, so say it (`task=`; `X-Router-Task` in the proxy)."""

import router
from router.dev.demo import simulated_providers

with simulated_providers():
    resp = router.complete(messages=[{"role": "user", "content": "Plan the database migration."}], task="reasoning")
    print(resp.router.task, resp.router.task_source, resp.router.route, resp.router.model)
    # Or name a route or a model alias directly; residency still applies.
    resp = router.complete(messages=[{"role": "user", "content": "hi"}], model="gpt-4.1-mini")
    print(resp.router.route, resp.router.provider)
