"""Live upstream state: circuit breakers and TTFT (`health`), vLLM saturation (`load`) as plain
state; probes and scrapes as I/O over httpx (`probes`); `monitor.Monitor` joins them for the
engine. May import `router.core`.
"""
