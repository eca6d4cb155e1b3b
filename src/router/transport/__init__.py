"""Sending one upstream call: the `Transport` interface and its clients.

`base` (the interface and its errors), one module per client (`aiohttp_client`, `http1`,
`litellm_client`), and `chooser` (`ProviderTransport`, which picks one per call). Each client
module imports its own library and maps its exceptions at that boundary. May import `router.core`.
"""
