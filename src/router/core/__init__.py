"""The pure core: policy model and parser, prices, the routing decision, provider translation,
retry verdicts, SSE decoding, errors, responses and the meter interface.

Plain data in, plain data out: no network, no database, no clock or randomness it is not given.
May import: the standard library, PyYAML and orjson (parsing), and `router.classify`.
"""
