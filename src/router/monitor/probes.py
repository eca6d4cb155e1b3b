"""The monitors' I/O: active health probes and vLLM ``/metrics`` scrapes, over httpx.

Low-rate control-plane traffic, so httpx (and respx in the tests) rather than the hot path's
aiohttp. httpx is imported on the first probe or scrape, not with this module (it costs ~60 ms).
Each feeds plain state: a probe calls `HealthTracker.set_probe`, a scrape `LoadMonitor.observe`
or `LoadMonitor.failed`. A loop (`run`) never dies of one bad answer: whatever a probe or scrape
raises counts as a failure, is logged once per kind, and the loop goes on.

>>> prober = Prober(tracker)                  # doctest: +SKIP
>>> await prober.probe(policy.providers["gpu"])   # doctest: +SKIP
True
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from router.core.policy import Provider
from router.monitor.health import HealthTracker
from router.monitor.load import LoadMonitor, parse_vllm_metrics

if TYPE_CHECKING:
    import httpx

__all__ = ["Prober", "Scraper", "probe_url"]

log = logging.getLogger("router.monitor")


def probe_url(provider: Provider) -> str | None:
    """The URL an active probe GETs: `probe.path` appended to base_url, or itself when a full URL."""
    probe = provider.health.probe
    if probe is None:
        return None
    if probe.path.startswith(("http://", "https://")):
        return probe.path
    return provider.base_url + "/" + probe.path.lstrip("/")


class _HttpxUser:
    """An httpx client made on first use (or given, and then not closed here)."""

    def __init__(self, client: httpx.AsyncClient | None):
        self._client = client
        self._own_client = client is None
        self._logged: set[str] = set()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient()
        return self._client

    def _unexpected(self, what: str, exc: BaseException) -> None:
        kind = f"{what}:{type(exc).__name__}"
        if kind not in self._logged:  # once per kind: a broken endpoint must not flood the log
            self._logged.add(kind)
            log.warning("%s failed unexpectedly: %s: %s (counted as a failure; the loop goes on)",
                        what, type(exc).__name__, exc)

    async def aclose(self) -> None:
        if self._client is not None and self._own_client:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None


class Prober(_HttpxUser):
    """Active probes: GET each provider's health or models endpoint on its interval.

    A probe fails on a transport error, a timeout or a status other than 2xx; the provider is then
    marked down in the tracker until a probe succeeds.
    """

    def __init__(self, tracker: HealthTracker, client: httpx.AsyncClient | None = None):
        super().__init__(client)
        self.tracker = tracker

    async def probe(self, provider: Provider) -> bool:
        """Probe once and tell the tracker; returns whether the probe passed."""
        import httpx

        url = probe_url(provider)
        if url is None:
            return True
        assert provider.health.probe is not None
        headers = dict(provider.headers)
        if provider.api_key is not None:
            headers["Authorization"] = f"Bearer {provider.api_key.reveal()}"
        started = self.tracker.clock()
        try:
            resp = await self.client.get(url, headers=headers, timeout=provider.health.probe.timeout_s)
            ok = 200 <= resp.status_code < 300
        except httpx.HTTPError:
            ok = False
        except Exception as e:  # e.g. an invalid URL: still a failed probe, never a dead loop
            self._unexpected(f"probe of {provider.name}", e)
            ok = False
        self.tracker.set_probe(provider.name, ok, started)
        return ok

    async def run(self, provider: Provider, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        """Probe `provider` forever, every `probe.interval_s`."""
        assert provider.health.probe is not None
        while True:
            await self.probe(provider)
            await sleep(provider.health.probe.interval_s)


class Scraper(_HttpxUser):
    """vLLM ``/metrics`` scrapes of the providers the load monitor watches."""

    def __init__(self, load: LoadMonitor, client: httpx.AsyncClient | None = None):
        super().__init__(client)
        self.load = load

    async def scrape(self, provider: Provider) -> bool:
        """Scrape one provider's /metrics once; True on success."""
        import httpx

        assert provider.metrics_url is not None and provider.saturation is not None
        try:
            resp = await self.client.get(provider.metrics_url, timeout=max(0.5, provider.saturation.scrape_interval_s))
            if resp.status_code != 200:
                self.load.failed(provider.name, f"HTTP {resp.status_code}")
                return False
            samples = parse_vllm_metrics(resp.text)
        except httpx.HTTPError as e:
            self.load.failed(provider.name, f"{type(e).__name__}: {e}")
            return False
        except Exception as e:  # a body that is not text, an invalid URL: a failed scrape
            self._unexpected(f"scrape of {provider.name}", e)
            self.load.failed(provider.name, f"{type(e).__name__}: {e}")
            return False
        self.load.observe(provider.name, samples)
        return True

    async def run(self, provider: Provider, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        """Scrape `provider` forever, every `saturation.scrape_interval_s`."""
        assert provider.saturation is not None
        while True:
            await self.scrape(provider)
            await sleep(provider.saturation.scrape_interval_s)
