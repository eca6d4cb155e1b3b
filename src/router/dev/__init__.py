"""Development tooling, not used by a running router: the upstream simulator (tests, demo,
benchmarks), `router demo`, and the Grafana dashboard generator.
"""
