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
from router.core.policy import Policy, SaturationSettings
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
                            "deployments", "policies", "step_s", "samples_per_step", "seed", "weekend_factor"))
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
                           "failure_rate", "max_utilisation"))
        deps[str(name)] = Deployment(
            _num(d, "input_tokens_per_s", p, 0.0) or None, _num(d, "output_tokens_per_s", p, 0.0) or None,
            _num(d, "ttft_s", p, 0.5), _num(d, "decode_tokens_per_s", p, 50.0),
            _num(d, "failure_rate", p, 0.0, positive=False), _num(d, "max_utilisation", p, 0.9))
    policies = tuple(os.path.join(base, str(x)) for x in (top.get("policies") or ()))
    return TrafficSpec(str(top.get("name") or os.path.basename(source)), _num(top, "tokens_per_month", ""),
                       tuple(x / mean for x in curve), {k: float(v) / total for k, v in tasks.items()},
                       lengths("input_tokens"), lengths("output_tokens"), deps, policies,
                       _num(top, "step_s", "", 300.0), int(_num(top, "samples_per_step", "", 8)),
                       int(top.get("seed", 1)), _num(top, "weekend_factor", "", 1.0))


@dataclass
class SimResult:
    policy: str
    days: float
    requests: float = 0.0
    tokens: float = 0.0
    token_cost_usd: float = 0.0            # marginal: per-token prices of what was served
    fixed_cost_usd: float = 0.0            # GPUs, for the simulated period
    self_hosted_tokens: float = 0.0
    spilled: float = 0.0
    failed: float = 0.0
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (seconds, weight)
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

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return math.nan
        items = sorted(self.latencies)
        total = sum(w for _, w in items)
        acc = 0.0
        for value, w in items:
            acc += w
            if acc >= q * total:
                return value
        return items[-1][0]


def _self_hosted_fixed(policy: Policy, days: float) -> float:
    return sum((p.gpu_hour_usd or 0.0) * p.gpus * 24 * days for p in policy.providers.values()
               if p.self_hosted and p.gpu_hour_usd)


def simulate(policy: Policy, spec: TrafficSpec, *, days: float = 30, name: str | None = None) -> SimResult:
    """Simulate `days` of `spec`'s traffic routed by `policy`."""
    started = time.perf_counter()
    rng = random.Random(spec.seed)
    res = SimResult(name or policy.source, days)
    res.fixed_cost_usd = _self_hosted_fixed(policy, days)
    steps = int(days * 86400 / spec.step_s)
    week = (5 + 2 * spec.weekend_factor) / 7          # so that the month still carries tokens_per_month
    requests_per_s = spec.tokens_per_month / (30 * 86400) / spec.tokens_per_request / week
    tasks, shares = list(spec.tasks), list(spec.tasks.values())
    gates: dict[str, SaturationGate] = {}
    for alias, m in policy.models.items():
        p = policy.providers[m.provider]
        if p.saturation is not None:
            gates[alias] = SaturationGate(p.saturation)
        elif p.self_hosted and spec.deployments.get(p.name, Deployment()).output_tokens_per_s:
            gates[alias] = SaturationGate(SaturationSettings(max_kv_cache=0.95, recover_kv_cache=0.85))
    saturated: frozenset[str] = frozenset()
    body: dict[str, Any] = {"model": "auto", "messages": [{"role": "user", "content": "simulated request"}]}
    first_choice: dict[str, str] = {}
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
        for _ in range(n):
            task = rng.choices(tasks, shares)[0]
            tin, tout = spec.input_tokens.sample(rng), spec.output_tokens.sample(rng)
            body["max_tokens"] = tout
            res.samples += 1
            try:
                d = decide(policy, body, task=task, state=state)
            except RouterError:
                res.failed += w
                res.requests += w
                continue
            preferred = first_choice.get(d.route)
            if preferred is None:
                preferred = first_choice[d.route] = decide(policy, body, task=task).candidates[0].model
            served = None
            for c in d.allowed:
                dep = spec.deployments.get(c.provider, Deployment())
                if dep.output_tokens_per_s:
                    work = tout / dep.output_tokens_per_s + tin / (dep.input_tokens_per_s or math.inf)
                    if used.get(c.provider, 0.0) + work * w > dep.max_utilisation * spec.step_s:
                        continue            # full this step: the real engine sees it as saturated / at max_concurrency
                    used[c.provider] = used.get(c.provider, 0.0) + work * w
                if dep.failure_rate and rng.random() < dep.failure_rate:
                    continue                # failed attempt: fail over like the engine does
                served = (c, dep)
                break
            res.requests += w
            if served is None:
                res.failed += w
                continue
            c, dep = served
            model = policy.models[c.model]
            res.tokens += (tin + tout) * w
            res.token_cost_usd += model.price.cost(tin, tout) * w
            if c.self_hosted:
                res.self_hosted_tokens += (tin + tout) * w
            if c.model != preferred:
                res.spilled += w
            res.by_provider[c.provider] = res.by_provider.get(c.provider, 0.0) + (tin + tout) * w
            series = res.hourly.setdefault(c.provider, [0.0] * hours)
            series[min(hours - 1, int(hour))] += (tin + tout) * w
            util = 0.0
            if dep.output_tokens_per_s:
                util = used.get(c.provider, 0.0) / spec.step_s
            queueing = 1.0 / max(0.05, 1.0 - min(util, 0.95)) if util else 1.0
            res.latencies.append((dep.ttft_s * queueing + tout / dep.decode_tokens_per_s, w))
        # End of step: what a vLLM /metrics scrape would show, through the real hysteresis gate.
        new = set()
        for alias, gate in gates.items():
            provider = policy.models[alias].provider
            dep = spec.deployments.get(provider, Deployment())
            util = used.get(provider, 0.0) / (dep.max_utilisation * spec.step_s)
            if gate.update(LoadSample(kv_cache=min(1.0, util))):
                new.add(alias)
        saturated = frozenset(new)
    res.per_sample = res.requests / res.samples if res.samples else 0.0
    res.elapsed_s = time.perf_counter() - started
    return res


def _money(x: float) -> str:
    return f"${x:,.0f}" if x >= 10 else f"${x:,.2f}"


def format_table(spec: TrafficSpec, results: Sequence[SimResult]) -> str:
    """The report `router simulate` prints."""
    head = (f"{spec.name}: {spec.tokens_per_month:,.0f} tokens/month, "
            f"{spec.tokens_per_month / spec.tokens_per_request:,.0f} requests/month "
            f"(mean {spec.input_tokens.mean:.0f} in / {spec.output_tokens.mean:.0f} out), "
            f"peak/average {max(spec.daily_curve):.2f}")
    cols = ("policy", "monthly", "tokens", "fixed", "self-hosted", "p50 s", "p95 s", "p99 s", "spilled", "failed")
    rows = []
    for r in results:
        tot = r.requests or 1.0
        rows.append((os.path.basename(r.policy), _money(r.monthly_cost_usd), _money(r.token_cost_usd * r.scale),
                     _money(r.fixed_cost_usd * r.scale), f"{100 * r.self_hosted_tokens / (r.tokens or 1):.1f}%",
                     f"{r.percentile(0.5):.2f}", f"{r.percentile(0.95):.2f}", f"{r.percentile(0.99):.2f}",
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
        out: Any = None) -> int:
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
        results.append(simulate(policy, spec, days=days, name=path))
    print(format_table(spec, results), file=out)
    if plot_path:
        try:
            plot(results, plot_path, spec.name)
        except ImportError:
            print("error: --plot needs matplotlib: pip install 'router[plot]'", file=sys.stderr)
            return 1
        print(f"plot: {plot_path}", file=out)
    return 0
