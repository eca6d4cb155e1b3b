"""The HTTP shell over the engine: `proxy` (request reading, auth, dispatch to the API
translators, responses), `serve` (processes, workers, reload, drain). Thin: every routing,
retry and metering rule lives in the engine. May import the engine and everything below it.
"""
