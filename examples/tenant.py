"""Tenants: a tenant's residency and budget apply to every request it makes, and metering records it."""

import router
from router.dev.demo import simulated_providers

with simulated_providers():
    # acme-eu is bound to EU residency in policies/demo.yaml: it cannot route around it.
    resp = router.complete(messages=[{"role": "user", "content": "Write a SQL query for monthly revenue"}],
                           tenant="acme-eu")
    print(resp.router.tenant, resp.router.route, resp.router.provider, resp.router.region)
