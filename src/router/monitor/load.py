"""Load: vLLM /metrics samples and saturation with hysteresis, as plain state.

All pure: `parse_vllm_metrics` reads a scrape, `SaturationGate` holds one deployment's hysteresis,
and `LoadMonitor` keeps the latest sample per deployment and decides saturation. The scrapes
themselves (httpx) are in `router.monitor.probes`; `router.monitor.monitor.Monitor` joins it all.

Saturation of a deployment (a provider with a `saturation:` block and a `metrics_url`)::

    not saturated --(waiting > max_waiting, or kv_cache > max_kv_cache)--> saturated
    saturated --(waiting <= recover_waiting and kv_cache <= recover_kv_cache)--> not saturated

A sample older than `stale_after_s` (or a scrape that fails) is ignored: the deployment is then
judged only by this process's in-flight count against `max_concurrency`.

>>> parse_vllm_metrics('vllm:num_requests_waiting{model_name="q"} 3.0')["q"].waiting
3.0
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from router.core.policy import Policy, SaturationSettings

__all__ = ["LoadMonitor", "LoadSample", "SaturationGate", "parse_vllm_metrics"]

_WAITING = "vllm:num_requests_waiting"
_RUNNING = "vllm:num_requests_running"
_KV = "vllm:kv_cache_usage_perc"
_KV_LEGACY = "vllm:gpu_cache_usage_perc"
_WANTED = frozenset({_WAITING, _RUNNING, _KV, _KV_LEGACY})
_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_MODEL_LABEL = re.compile(r'model_name="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class LoadSample:
    """One deployment's load as vLLM reports it."""

    waiting: float = 0.0
    running: float = 0.0
    kv_cache: float | None = None   # 0..1; None when the server reports neither KV-cache metric


def _unescape(v: str) -> str:
    return v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")


def parse_vllm_metrics(text: str) -> dict[str, LoadSample]:
    """The load per served model name, from vLLM's Prometheus text.

    Requests waiting and running are summed over label sets (one per engine in data-parallel
    deployments); KV-cache usage, a fraction per engine, is averaged. `kv_cache_usage_perc` wins
    over the legacy `gpu_cache_usage_perc` when a server reports both.
    """
    sums: dict[str, dict[str, list[float]]] = {}
    for line in text.splitlines():
        if not line or line[0] == "#" or not line.startswith("vllm:"):
            continue
        m = _LINE.match(line)
        if m is None or m.group(1) not in _WANTED:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        if math.isnan(value):
            continue
        lm = _MODEL_LABEL.search(m.group(2) or "")
        model = _unescape(lm.group(1)) if lm else ""
        sums.setdefault(model, {}).setdefault(m.group(1), []).append(value)
    out = {}
    for model, metrics in sums.items():
        kv_values = metrics.get(_KV) or metrics.get(_KV_LEGACY)
        out[model] = LoadSample(sum(metrics.get(_WAITING, ())), sum(metrics.get(_RUNNING, ())),
                                sum(kv_values) / len(kv_values) if kv_values else None)
    return out


class SaturationGate:
    """Hysteresis for one deployment: enter above the thresholds, leave only below the lower ones.

    >>> g = SaturationGate(SaturationSettings(max_waiting=10, recover_waiting=2))
    >>> [g.update(LoadSample(waiting=w)) for w in (5, 11, 5, 2)]
    [False, True, True, False]
    """

    __slots__ = ("saturated", "settings")

    def __init__(self, settings: SaturationSettings):
        self.settings = settings
        self.saturated = False

    def update(self, sample: LoadSample) -> bool:
        s = self.settings
        kv = sample.kv_cache
        if not self.saturated:
            self.saturated = ((s.max_waiting is not None and sample.waiting > s.max_waiting) or
                              (s.max_kv_cache is not None and kv is not None and kv > s.max_kv_cache))
        else:
            waiting_ok = s.recover_waiting is None or sample.waiting <= s.recover_waiting
            kv_ok = s.recover_kv_cache is None or kv is None or kv <= s.recover_kv_cache
            self.saturated = not (waiting_ok and kv_ok)
        return self.saturated


class LoadMonitor:
    """Scraped load and saturation per deployment of the providers that have a `saturation:` block."""

    def __init__(self, policy: Policy, *, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.samples: dict[str, tuple[float, LoadSample]] = {}  # deployment key -> (when, sample)
        # this process's requests in flight to a deployment when its sample was taken (the sample counts
        # them too), read from `local` when set (the Monitor sets it to the health tracker's counts)
        self.local: Callable[[str], int] | None = None
        self.local_at_scrape: dict[str, int] = {}
        self.last_scrape: dict[str, float] = {}                 # provider -> time of the last good scrape
        self.errors: dict[str, str] = {}                        # provider -> why the last scrape failed
        self.scrapes: dict[str, int] = {}                       # provider -> successful scrapes so far
        self._gates: dict[str, SaturationGate] = {}
        self._saturated: frozenset[str] = frozenset()
        self._dirty = False
        self._next_stale = math.inf
        self.use(policy)

    def use(self, policy: Policy) -> None:
        """Follow a (re)loaded policy. Deployments are keyed by `Model.key` (``alias@provider`` for replicas)."""
        self.policy = policy
        self.watched = {n: p for n, p in policy.providers.items() if p.saturation is not None and p.metrics_url}
        old = self._gates
        self._gates = {}
        self.served: dict[str, dict[str, list[str]]] = {}  # provider -> served model name -> deployment keys
        for key, (alias, provider) in policy.deployments.items():
            p = self.watched.get(provider)
            if p is None:
                continue
            assert p.saturation is not None
            g = old.get(key)
            self._gates[key] = g if g is not None and g.settings == p.saturation else SaturationGate(p.saturation)
            self.served.setdefault(p.name, {}).setdefault(policy.models[alias].model, []).append(key)
        self._dirty = True

    def observe(self, provider: str, samples: Mapping[str, LoadSample]) -> None:
        """A successful scrape of `provider` (served model name -> sample)."""
        now = self.clock()
        self.last_scrape[provider] = now
        self.scrapes[provider] = self.scrapes.get(provider, 0) + 1
        self.errors.pop(provider, None)
        for served, aliases in self.served.get(provider, {}).items():
            sample = samples.get(served)
            if sample is None and len(samples) == 1 and len(self.served[provider]) == 1:
                sample = next(iter(samples.values()))  # one model per server: the name may be --served-model-name
            if sample is None:
                continue
            for alias in aliases:
                self.samples[alias] = (now, sample)
                if self.local is not None:  # this process's own requests, counted in the sample
                    self.local_at_scrape[alias] = self.local(alias)
                gate = self._gates[alias]
                before = gate.saturated
                if gate.update(sample) != before:
                    self._dirty = True
        p = self.watched.get(provider)
        if p is not None and p.saturation is not None:
            self._next_stale = min(self._next_stale, now + p.saturation.stale_after_s)

    def failed(self, provider: str, why: str) -> None:
        """A failed scrape: nothing changes now; the last sample goes stale on its own."""
        self.errors[provider] = why

    def fresh(self, alias: str, now: float | None = None) -> LoadSample | None:
        """The latest sample of `alias`, or None when there is none or it is stale."""
        entry = self.samples.get(alias)
        if entry is None:
            return None
        p = self.watched[self.policy.deployments[alias][1]]
        assert p.saturation is not None
        now = self.clock() if now is None else now
        return entry[1] if now - entry[0] <= p.saturation.stale_after_s else None

    def saturated(self) -> frozenset[str]:
        """Aliases saturated by fresh samples; cached, rebuilt only on change or when a sample goes stale."""
        if self._next_stale != math.inf and self.clock() >= self._next_stale:
            self._dirty = True
        if self._dirty:
            self._dirty = False
            now = self.clock()
            out, next_stale = set(), math.inf
            for alias, gate in self._gates.items():
                entry = self.samples.get(alias)
                if entry is None:
                    continue
                stale_at = entry[0] + gate.settings.stale_after_s
                if now > stale_at:
                    continue
                next_stale = min(next_stale, stale_at)
                if gate.saturated:
                    out.add(alias)
            self._next_stale = next_stale
            if out != self._saturated:
                self._saturated = frozenset(out)
        return self._saturated
