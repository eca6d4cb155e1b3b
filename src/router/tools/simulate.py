"""`router simulate`: replay a month of synthetic traffic through the real decision engine.

A traffic spec (YAML, see ``docs/simulate.md`` and ``simulate/*.yaml``) gives the volume, a
daily curve, a task mix, token-length distributions and how each provider behaves (capacity,
latency, failure rate). Time advances in fixed steps (5 minutes by default); in each step a
representative sample of requests is drawn and each one goes through `decide()` exactly as a
live request would, with a LiveState built from the simulated deployments (saturation with the
real `SaturationGate` hysteresis). Every sample stands for `arrivals / samples` requests, so a
month takes the same few seconds at 100M or 100B tokens; the report says how many requests each
sample stood for.

Pure apart from reading the spec and drawing the optional plot (matplotlib, imported lazily).

>>> result = simulate(load_policy("simulate/policies/mixed.yaml"), load_spec("simulate/100m.yaml"))  # doctest: +SKIP
>>> round(result.monthly_cost_usd)                                                                   # doctest: +SKIP
"""

from __future__ import annotations

import collections
import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from router.core.decision import LiveState, decide
from router.core.errors import RouterError
from router.core.policy import HedgeSettings, Policy, SaturationSettings
from router.core.pricing import usage_cost
from router.core.translate import Usage
from router.monitor.load import LoadSample, SaturationGate

__all__ = ["Deployment", "SimResult", "TrafficSpec", "format_table", "load_spec", "plot", "simulate"]

HOURS_PER_MONTH = 730.0   # 365 * 24 / 12
TASKS = ("coding", "reasoning", "general")


class SpecError(ValueError):
    """A traffic spec problem, with the path inside the spec."""


@dataclass(frozen=True, slots=True)
class Deployment:
    """How one simulated provider behaves. `input_tokens_per_s`/`output_tokens_per_s` are aggregate
    throughput (None: an API, unlimited); `ttft_s` and `decode_tokens_per_s` are per request."""

    input_tokens_per_s: float | None = None
    output_tokens_per_s: float | None = None
    ttft_s: float = 0.5
    decode_tokens_per_s: float = 50.0
    failure_rate: float = 0.0
    max_utilisation: float = 0.9      # share of throughput usable before requests queue for too long
    # fleets (docs/simulate.md, "Planning a fleet"): copies of a self-hosted deployment (throughput and
    # GPU cost x replicas), the share of prompt tokens its replicas find in their prefix caches (less
    # prefill work and a shorter time to first token), and the log-normal spread of its time to first token
    replicas: int = 1
    prefix_hit_rate: float = 0.0
    ttft_sigma: float = 0.0


@dataclass(frozen=True, slots=True)
class Lengths:
    mean: float
    sigma: float = 0.8               # of the underlying normal: a log-normal with this mean

    def sample(self, rng: random.Random) -> int:
        mu = math.log(self.mean) - self.sigma ** 2 / 2
        return max(1, int(rng.lognormvariate(mu, self.sigma)))


@dataclass(frozen=True, slots=True)
class TrafficSpec:
    name: str
    tokens_per_month: float
    daily_curve: tuple[float, ...]            # 24 hourly weights, normalised to mean 1
    tasks: Mapping[str, float]
    input_tokens: Lengths
    output_tokens: Lengths
    deployments: Mapping[str, Deployment]
    policies: tuple[str, ...] = ()
    step_s: float = 300.0
    samples_per_step: int = 8
    seed: int = 1
    weekend_factor: float = 1.0
    prompt_cache_hit_rate: float = 0.0        # share of input tokens read from the providers' prompt caches

    @property
    def tokens_per_request(self) -> float:
        return self.input_tokens.mean + self.output_tokens.mean


def load_spec(path: str | os.PathLike[str]) -> TrafficSpec:
    """Read a traffic spec; policy paths in it are resolved against the spec's directory."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    return parse_spec(raw, base=os.path.dirname(path), source=path)


def _num(raw: Mapping[str, Any], key: str, path: str, default: Any = None, *, positive: bool = True) -> Any:
    v = raw.get(key)
    if v is None:
        if default is None:
            raise SpecError(f"{path}.{key}: required")
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (positive and v <= 0) or v < 0:
        raise SpecError(f"{path}.{key}: expected a {'positive ' if positive else ''}number, got {v!r}")
    return float(v)


def _strict(raw: Any, path: str, allowed: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(raw, dict):
        raise SpecError(f"{path or '(top level)'}: expected a mapping")
    for k in raw:
        if k not in allowed:
            raise SpecError(f"{path + '.' if path else ''}{k}: unknown key (allowed: {', '.join(allowed)})")
    return raw


def parse_spec(raw: Any, *, base: str = ".", source: str = "<spec>") -> TrafficSpec:
    top = _strict(raw, "", ("name", "tokens_per_month", "daily_curve", "tasks", "input_tokens", "output_tokens",
                            "deployments", "policies", "step_s", "samples_per_step", "seed", "weekend_factor",
                            "prompt_cache_hit_rate"))
    curve = top.get("daily_curve") or [1.0] * 24
    if not isinstance(curve, list) or len(curve) != 24 or not all(isinstance(x, (int, float)) and x >= 0 for x in curve):
        raise SpecError("daily_curve: expected 24 non-negative hourly weights")
    mean = sum(curve) / 24
    if mean <= 0:
        raise SpecError("daily_curve: all weights are zero")
    tasks = _strict(top.get("tasks") or {"general": 1.0}, "tasks", TASKS)
    total = sum(float(v) for v in tasks.values())
    if total <= 0:
        raise SpecError("tasks: shares must add up to more than 0")

    def lengths(key: str) -> Lengths:
        m = _strict(top.get(key), key, ("mean", "sigma"))
        return Lengths(_num(m, "mean", key), _num(m, "sigma", key, 0.8, positive=False))

    deps = {}
    for name, d in _strict(top.get("deployments") or {}, "deployments", tuple(top.get("deployments") or ())).items():
        p = f"deployments.{name}"
        d = _strict(d, p, ("input_tokens_per_s", "output_tokens_per_s", "ttft_s", "decode_tokens_per_s",
                           "failure_rate", "max_utilisation", "replicas", "prefix_hit_rate", "ttft_sigma"))
        replicas = _num(d, "replicas", p, 1)
        if replicas != int(replicas):
            raise SpecError(f"{p}.replicas: a whole number, got {replicas:g}")
        deps[str(name)] = Deployment(
            _num(d, "input_tokens_per_s", p, 0.0) or None, _num(d, "output_tokens_per_s", p, 0.0) or None,
            _num(d, "ttft_s", p, 0.5), _num(d, "decode_tokens_per_s", p, 50.0),
            _num(d, "failure_rate", p, 0.0, positive=False), _num(d, "max_utilisation", p, 0.9), int(replicas),
            _rate(_num(d, "prefix_hit_rate", p, 0.0, positive=False), f"{p}.prefix_hit_rate"),
            _num(d, "ttft_sigma", p, 0.0, positive=False))
    policies = tuple(os.path.join(base, str(x)) for x in (top.get("policies") or ()))
    return TrafficSpec(str(top.get("name") or os.path.basename(source)), _num(top, "tokens_per_month", ""),
                       tuple(x / mean for x in curve), {k: float(v) / total for k, v in tasks.items()},
                       lengths("input_tokens"), lengths("output_tokens"), deps, policies,
                       _num(top, "step_s", "", 300.0), int(_num(top, "samples_per_step", "", 8)),
                       int(top.get("seed", 1)), _num(top, "weekend_factor", "", 1.0),
                       _rate(_num(top, "prompt_cache_hit_rate", "", 0.0, positive=False), "prompt_cache_hit_rate"))


def _rate(value: float, path: str) -> float:
    if not 0 <= value <= 1:
        raise SpecError(f"{path}: a share between 0 and 1, got {value:g}")
    return value


@dataclass
class SimResult:
    policy: str
    days: float
    requests: float = 0.0
    tokens: float = 0.0
    token_cost_usd: float = 0.0            # marginal: per-token prices of what was served
    cached_tokens: float = 0.0             # input tokens read from the providers' prompt caches
    fixed_cost_usd: float = 0.0            # GPUs, for the simulated period
    self_hosted_tokens: float = 0.0
    spilled: float = 0.0
    failed: float = 0.0
    overflow: float = 0.0                  # of the failed, those that found every candidate full or saturated
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (seconds, weight)
    ttfts: list[tuple[float, float]] = field(default_factory=list)      # (time to first token, weight)
    hedged: float = 0.0                    # requests that hedged (docs/routing.md, "Hedging")
    hedges_won: float = 0.0                # of them, served by the hedge
    hedge_cost_usd: float = 0.0            # the losing attempts' prompts (also in token_cost_usd)
    by_provider: dict[str, float] = field(default_factory=dict)         # tokens
    hourly: dict[str, list[float]] = field(default_factory=dict)        # provider -> tokens per hour
    samples: int = 0
    per_sample: float = 0.0                # requests one sample stood for, on average
    elapsed_s: float = 0.0

    @property
    def scale(self) -> float:
        return 30.0 / self.days

    @property
    def monthly_cost_usd(self) -> float:
        return (self.token_cost_usd + self.fixed_cost_usd) * self.scale

    def percentile(self, q: float, of: str = "latencies") -> float:
        """The weighted `q` quantile of the latencies (or of ``of="ttfts"``)."""
        values = getattr(self, of)
        if not values:
            return math.nan
        items = sorted(values)
        total = sum(w for _, w in items)
        acc = 0.0
        for value, w in items:
            acc += w
            if acc >= q * total:
                return value
        return items[-1][0]


def _self_hosted_fixed(policy: Policy, days: float, deployments: Mapping[str, Deployment] | None = None) -> float:
    deployments = deployments or {}
    return sum((p.gpu_hour_usd or 0.0) * p.gpus * deployments.get(p.name, Deployment()).replicas * 24 * days
               for p in policy.providers.values() if p.self_hosted and p.gpu_hour_usd)


def simulate(policy: Policy, spec: TrafficSpec, *, days: float = 30, name: str | None = None,
             cache_hit_rate: float | None = None) -> SimResult:
    """Simulate `days` of `spec`'s traffic routed by `policy`. `cache_hit_rate` (default: the spec's
    ``prompt_cache_hit_rate``): the share of input tokens the providers serve from their prompt
    caches, billed at each model's cached-input price. Prices follow their time-of-day windows
    (simulated time starts at midnight UTC)."""
    started = time.perf_counter()
    hit_rate = spec.prompt_cache_hit_rate if cache_hit_rate is None else _rate(cache_hit_rate, "cache_hit_rate")
    rng = random.Random(spec.seed)
    # failures, TTFT spread and hedges draw from their own stream, so the traffic itself (tasks and
    # lengths) is the same whatever the deployments do: runs that differ only in capacity compare
    noise = random.Random(spec.seed + 1)
    res = SimResult(name or policy.source, days)
    res.fixed_cost_usd = _self_hosted_fixed(policy, days, spec.deployments)
    steps = int(days * 86400 / spec.step_s)
    week = (5 + 2 * spec.weekend_factor) / 7          # so that the month still carries tokens_per_month
    requests_per_s = spec.tokens_per_month / (30 * 86400) / spec.tokens_per_request / week
    tasks, shares = list(spec.tasks), list(spec.tasks.values())
    gates: dict[str, SaturationGate] = {}    # by deployment key (Model.key: a replica is its own)
    for key, (_, pname) in policy.deployments.items():
        p = policy.providers[pname]
        if p.saturation is not None:
            gates[key] = SaturationGate(p.saturation)
        elif p.self_hosted and spec.deployments.get(p.name, Deployment()).output_tokens_per_s:
            gates[key] = SaturationGate(SaturationSettings(max_kv_cache=0.95, recover_kv_cache=0.85))
    hedging = _Hedging(policy, spec, noise)
    saturated: frozenset[str] = frozenset()
    body: dict[str, Any] = {"model": "auto", "messages": [{"role": "user", "content": "simulated request"}]}
    first_choice: dict[tuple[str, int], str] = {}
    windowed = any(m.price.windows for m in policy.models.values())
    hours = int(math.ceil(days * 24))
    for step in range(steps):
        t = step * spec.step_s
        hour = t / 3600
        weight = spec.daily_curve[int(hour) % 24]
        if int(hour // 24) % 7 >= 5:
            weight *= spec.weekend_factor
        arrivals = requests_per_s * weight * spec.step_s
        if arrivals <= 0:
            continue
        n = max(1, min(spec.samples_per_step, int(math.ceil(arrivals))))
        w = arrivals / n
        used: dict[str, float] = {}          # provider -> busy seconds of throughput this step
        state = LiveState(saturated=saturated)
        for i in range(n):
            if i:   # a scrape between two samples: the step's work so far against the time gone by
                now = _scrape(policy, spec, gates, used, i / n)
                if now != saturated:
                    saturated, state = now, LiveState(saturated=now)
            task = rng.choices(tasks, shares)[0]
            tin, tout = spec.input_tokens.sample(rng), spec.output_tokens.sample(rng)
            body["max_tokens"] = tout
            res.samples += 1
            try:
                d = decide(policy, body, task=task, state=state, now=t)
            except RouterError as e:
                res.failed += w
                res.requests += w
                if getattr(e, "status", None) == 503:   # every candidate saturated: over capacity
                    res.overflow += w
                continue
            # the route's first choice with nothing saturated, at this minute's prices (their windows)
            choice = (d.route, int(t // 60) % 1440 if windowed else 0)
            preferred = first_choice.get(choice)
            if preferred is None:
                preferred = first_choice[choice] = decide(policy, body, task=task, now=t).candidates[0].model
            # The requests this sample stands for are a flow: a deployment takes what fits in its throughput
            # for the step (the rest goes on to its next replica or candidate, as the engine spills a
            # saturated or full deployment), and a failed attempt fails over like the engine does.
            parts: list[tuple[Any, Deployment, str, float]] = []     # (candidate, deployment, provider, requests)
            left = w
            full = not d.allowed          # every candidate excluded: by this simulation, only as saturated
            for c in d.allowed:
                # a replicated model: its usable replicas, the least busy first (the engine's least-loaded pick)
                names = ([n for n, why in c.replicas if why is None] if c.replicas else [c.provider])
                names.sort(key=lambda n: used.get(n, 0.0))
                for pname in names:
                    dep = spec.deployments.get(pname, Deployment())
                    take = left
                    if dep.output_tokens_per_s:
                        work = _sample_work(spec, dep, tin, tout, left)
                        room = _capacity(dep, spec.step_s) - used.get(pname, 0.0)
                        if room <= 0:
                            full = True
                            continue        # full this step: the real engine sees it as saturated / at max_concurrency
                        if work > room:
                            full = True
                            take, work = left * room / work, room
                        used[pname] = used.get(pname, 0.0) + work
                    if dep.failure_rate and noise.random() < dep.failure_rate:
                        continue            # failed attempt: fail over like the engine does
                    parts.append((c, dep, pname, take))
                    left -= take
                    if left <= 1e-9 * w:
                        break
                if left <= 1e-9 * w:
                    break
            res.requests += w
            if left > 1e-9 * w:
                res.failed += left
                if full:
                    res.overflow += left
            route = policy.routes.get(d.route)
            for c, dep, pname, wp in parts:
                ttft = _ttft(dep, tin, used.get(pname, 0.0) / (dep.replicas * spec.step_s), noise)
                if route is not None and route.hedge is not None:
                    ttft, switched = hedging.run(res, route.name, route.hedge, d, c, pname, dep, ttft, tin, used, wp, t)
                    if switched is not None:
                        c, dep, pname = switched
                model = policy.models[c.model]
                res.tokens += (tin + tout) * wp
                cached = round(tin * hit_rate)
                res.cached_tokens += cached * wp
                res.token_cost_usd += usage_cost(model.price, Usage(tin, tout, cached_tokens=cached), t) * wp
                if c.self_hosted:
                    res.self_hosted_tokens += (tin + tout) * wp
                if c.model != preferred:
                    res.spilled += wp
                res.by_provider[pname] = res.by_provider.get(pname, 0.0) + (tin + tout) * wp
                series = res.hourly.setdefault(pname, [0.0] * hours)
                series[min(hours - 1, int(hour))] += (tin + tout) * wp
                res.ttfts.append((ttft, wp))
                res.latencies.append((ttft + tout / dep.decode_tokens_per_s, wp))
        saturated = _scrape(policy, spec, gates, used, 1.0)
    res.per_sample = res.requests / res.samples if res.samples else 0.0
    res.elapsed_s = time.perf_counter() - started
    return res


def _scrape(policy: Policy, spec: TrafficSpec, gates: Mapping[str, SaturationGate], used: Mapping[str, float],
            elapsed: float) -> frozenset[str]:
    """What vLLM's /metrics would show `elapsed` (a share) into a step, through the real hysteresis gate:
    the deployments saturated until the next scrape. Scraped between samples, as the monitor scrapes
    every few seconds: a deployment over capacity is excluded for the rest of its burst and comes back
    with hysteresis, so under sustained overload it serves its capacity and spills the rest (scraped
    once a step, it would alternate a full step on with a whole step off and serve half of it)."""
    new = set()
    for key, gate in gates.items():
        provider = policy.deployments[key][1]
        dep = spec.deployments.get(provider, Deployment())
        util = used.get(provider, 0.0) / (_capacity(dep, spec.step_s) * elapsed)
        if gate.update(LoadSample(kv_cache=min(1.0, util))):
            new.add(key)
    return frozenset(new)


def _sample_work(spec: TrafficSpec, dep: Deployment, tin: int, tout: int, w: float) -> float:
    """GPU-seconds of the `w` requests one sample stands for: their mean work plus the drawn request's
    deviation from it times sqrt(w), which is the spread of a sum of `w` independent requests. (The
    drawn request's work times `w`, as if they were all alike, would make a 100B-token month's
    samples of ~800 requests swing by the size of one request each, and overflow from noise.)"""
    one = _work(dep, tin, tout)
    if w <= 1:
        return one * w
    mean = _work(dep, spec.input_tokens.mean, spec.output_tokens.mean)
    return max(0.0, mean * w + (one - mean) * math.sqrt(w))


def _work(dep: Deployment, tin: float, tout: float) -> float:
    """GPU-seconds of one request on `dep`: decode, plus the prefill of the prompt its prefix cache misses."""
    assert dep.output_tokens_per_s
    return tout / dep.output_tokens_per_s + tin * (1 - dep.prefix_hit_rate) / (dep.input_tokens_per_s or math.inf)


def _capacity(dep: Deployment, step_s: float) -> float:
    """GPU-seconds a (replicated) deployment may be busy in one step."""
    return dep.max_utilisation * step_s * dep.replicas


def _ttft(dep: Deployment, tin: int, util: float, rng: random.Random) -> float:
    """Time to first token: the deployment's base (log-normal with `ttft_sigma`), plus on a self-hosted
    deployment the prefill of the uncached prompt, stretched by 1 / (1 - utilisation) for queueing."""
    base = dep.ttft_s
    if dep.ttft_sigma:
        base *= rng.lognormvariate(-dep.ttft_sigma ** 2 / 2, dep.ttft_sigma)
    if not dep.output_tokens_per_s:
        return base
    prefill = tin * (1 - dep.prefix_hit_rate) / (dep.input_tokens_per_s or math.inf)
    return (base + prefill) / max(0.05, 1.0 - min(util, 0.95)) if util else base + prefill


class _Hedging:
    """A route's `hedge` in the simulation: a request whose first token would come after the delay
    (fixed, or the percentile of the deployment's recent simulated TTFTs) also goes to the next allowed
    target, within the share cap; the first token wins, the loser's prompt is paid for."""

    def __init__(self, policy: Policy, spec: TrafficSpec, rng: random.Random):
        self.policy, self.spec, self.rng = policy, spec, rng
        self.credit: dict[str, float] = {}
        self.recent: dict[str, collections.deque[float]] = {}

    def delay(self, settings: HedgeSettings, pname: str, ttft: float) -> float:
        recent = self.recent.setdefault(pname, collections.deque(maxlen=256))
        recent.append(ttft)
        if settings.delay_s is not None:
            return settings.delay_s
        if len(recent) < 20:
            return settings.min_delay_s
        ordered = sorted(recent)
        return max(settings.min_delay_s, ordered[min(len(ordered) - 1, int((settings.percentile or 0.95) * len(ordered)))])

    def run(self, res: SimResult, route: str, settings: HedgeSettings, d: Any, c: Any, pname: str,
            dep: Deployment, ttft: float, tin: int, used: dict[str, float], w: float, t: float
            ) -> tuple[float, tuple[Any, Deployment, str] | None]:
        # the share cap as the engine keeps it (engine.hedge.HedgeGovernor): every request adds credit
        credit = self.credit[route] = min(max(1.0, 10 * settings.max_share),
                                          self.credit.get(route, 0.0) + settings.max_share)
        delay = self.delay(settings, pname, ttft)
        if ttft <= delay or credit < 1.0 - 1e-9:
            return ttft, None
        alt = self._target(d, c, pname)
        if alt is None:
            return ttft, None
        self.credit[route] = credit - 1.0
        alt_c, alt_name = alt
        alt_dep = self.spec.deployments.get(alt_name, Deployment())
        if alt_dep.output_tokens_per_s:    # the hedge's prefill is work on its replicas too
            used[alt_name] = used.get(alt_name, 0.0) + tin * (1 - alt_dep.prefix_hit_rate) / (
                alt_dep.input_tokens_per_s or math.inf) * w
        alt_ttft = delay + _ttft(alt_dep, tin, used.get(alt_name, 0.0) / (alt_dep.replicas * self.spec.step_s),
                                 self.rng)
        res.hedged += w
        won = alt_ttft < ttft
        loser = c if won else alt_c
        cost = usage_cost(self.policy.models[loser.model].price, Usage(tin, 0), t) * w
        res.hedge_cost_usd += cost
        res.token_cost_usd += cost
        if not won:
            return ttft, None
        res.hedges_won += w
        return alt_ttft, (alt_c, alt_dep, alt_name)

    def _target(self, d: Any, c: Any, pname: str) -> tuple[Any, str] | None:
        """Another usable replica of the model, else the next allowed candidate (as the engine picks)."""
        for name, why in c.replicas:
            if why is None and name != pname:
                return c, name
        allowed = d.allowed
        for other in allowed[allowed.index(c) + 1:]:
            names = [n for n, why in other.replicas if why is None] if other.replicas else [other.provider]
            if names:
                return other, names[0]
        return None


def _money(x: float) -> str:
    return f"${x:,.0f}" if x >= 10 else f"${x:,.2f}"


def format_table(spec: TrafficSpec, results: Sequence[SimResult]) -> str:
    """The report `router simulate` prints."""
    head = (f"{spec.name}: {spec.tokens_per_month:,.0f} tokens/month, "
            f"{spec.tokens_per_month / spec.tokens_per_request:,.0f} requests/month "
            f"(mean {spec.input_tokens.mean:.0f} in / {spec.output_tokens.mean:.0f} out), "
            f"peak/average {max(spec.daily_curve):.2f}")
    cols = ("policy", "monthly", "tokens", "fixed", "self-hosted", "p50 s", "p95 s", "p99 s", "TTFT p90 s",
            "TTFT p99 s", "spilled", "failed")
    rows = []
    for r in results:
        tot = r.requests or 1.0
        rows.append((os.path.basename(r.policy), _money(r.monthly_cost_usd), _money(r.token_cost_usd * r.scale),
                     _money(r.fixed_cost_usd * r.scale), f"{100 * r.self_hosted_tokens / (r.tokens or 1):.1f}%",
                     f"{r.percentile(0.5):.2f}", f"{r.percentile(0.95):.2f}", f"{r.percentile(0.99):.2f}",
                     f"{r.percentile(0.9, 'ttfts'):.2f}", f"{r.percentile(0.99, 'ttfts'):.2f}",
                     f"{100 * r.spilled / tot:.1f}%", f"{100 * r.failed / tot:.2f}%"))
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    lines = [head, "", "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cols))]
    for row in rows:
        lines.append("  ".join(v.ljust(widths[i]) if i == 0 else v.rjust(widths[i]) for i, v in enumerate(row)))
    if results:
        r = results[0]
        lines += ["", f"sampled: {spec.step_s / 60:g}-minute steps over {r.days:g} days, up to "
                      f"{spec.samples_per_step} requests per step through decide(); each sample stands for "
                      f"~{r.per_sample:,.1f} requests (scaled up). monthly = (tokens + fixed) x 30 / days. "
                      f"{sum(x.elapsed_s for x in results):.1f}s."]
        cached = sum(x.cached_tokens for x in results) / max(1.0, sum(x.tokens for x in results))
        if cached:
            lines.append(f"prompt cache: {100 * cached:.1f}% of all tokens read from the providers' caches, "
                         "billed at each model's cached-input price.")
        for x in results:
            if x.hedged:
                lines.append(f"{os.path.basename(x.policy)}: {100 * x.hedged / (x.requests or 1):.2f}% of requests "
                             f"hedged, {100 * x.hedges_won / x.hedged:.0f}% of those won by the hedge, "
                             f"{_money(x.hedge_cost_usd * x.scale)}/month on losing attempts.")
    return "\n".join(lines)


def plot(results: Sequence[SimResult], path: str, title: str = "") -> None:
    """Tokens per hour by provider over the first three days, one panel per policy (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(10, 2.4 * len(results)), sharex=True, squeeze=False)
    for ax, r in zip(axes[:, 0], results, strict=True):
        names = sorted(r.hourly)
        hours = min(72, len(next(iter(r.hourly.values()))) if r.hourly else 0)
        if names:
            ax.stackplot(range(hours), *[r.hourly[n][:hours] for n in names], labels=names)
            ax.legend(loc="upper right", fontsize=7)
        ax.set_title(f"{os.path.basename(r.policy)}: ${r.monthly_cost_usd:,.0f}/month", fontsize=9)
        ax.set_ylabel("tokens/h")
    axes[-1, 0].set_xlabel("hour")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(policies: Sequence[str], traffic: str, days: float = 30, plot_path: str | None = None,
        out: Any = None, cache_hit_rate: float | None = None) -> int:
    """`router simulate`: print the table for each policy (the spec's own list when none is given)."""
    import sys

    from router.core.policy_parser import load_policy

    out = out or sys.stdout
    try:
        spec = load_spec(traffic)
    except (OSError, SpecError, yaml.YAMLError) as e:
        print(f"error: {traffic}: {e}", file=sys.stderr)
        return 1
    paths = list(policies) or list(spec.policies)
    if not paths:
        print("error: no policy: pass --policy FILE or list `policies:` in the traffic spec", file=sys.stderr)
        return 1
    results = []
    for path in paths:
        try:
            policy = load_policy(path)
        except RouterError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        try:
            results.append(simulate(policy, spec, days=days, name=path, cache_hit_rate=cache_hit_rate))
        except SpecError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    print(format_table(spec, results), file=out)
    if plot_path:
        try:
            plot(results, plot_path, spec.name)
        except ImportError:
            print("error: --plot needs matplotlib: pip install 'router[plot]'", file=sys.stderr)
            return 1
        print(f"plot: {plot_path}", file=out)
    return 0
