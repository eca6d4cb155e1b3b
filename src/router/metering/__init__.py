"""Where finished requests and money go: the ledger (SQLite, PostgreSQL), budgets (in-process,
Redis) and Prometheus metrics. Each module owns its one dependency. May import `router.core`.
"""
