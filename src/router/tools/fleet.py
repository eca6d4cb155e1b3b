"""`router simulate --plan`: how many replicas (and GPUs) a self-hosted deployment needs for a traffic
spec at a target time to first token, and what the APIs would cost for the same traffic.

The search runs the whole month through `router.tools.simulate.simulate` (the real `decide()`,
saturation gates, the route's hedging) with ``deployments.NAME.replicas`` set to 1, 2, 4, ... until
the p90 time to first token is at or under the target and at most `max_overflow` of the requests
find no capacity, then bisects between the last two counts: replica counts are integers and more replicas never
make it slower, so the answer is the smallest count that meets the target. Each replica costs the
policy provider's ``gpus x gpu_hour_usd``.

>>> plan = plan_fleet(load_policy("simulate/policies/self-hosted.yaml"), load_spec("simulate/100b.yaml"),  # doctest: +SKIP
...                   "gpu", p90_ttft_s=1.0)
>>> plan.answer.replicas                                                                                      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from router.core.policy import Policy
from router.tools.simulate import Deployment, SimResult, SpecError, TrafficSpec, simulate

__all__ = ["FleetPlan", "PlanRow", "format_plan", "plan_fleet", "run_plan"]


@dataclass(frozen=True, slots=True)
class PlanRow:
    replicas: int
    gpus: int
    result: SimResult

    @property
    def ttft_p90(self) -> float:
        return self.result.percentile(0.9, "ttfts")

    @property
    def failed(self) -> float:
        return self.result.failed / (self.result.requests or 1.0)

    @property
    def overflow(self) -> float:
        """Requests that found no capacity (every candidate full or saturated), a share."""
        return self.result.overflow / (self.result.requests or 1.0)


@dataclass
class FleetPlan:
    provider: str
    p90_ttft_s: float
    max_overflow: float
    rows: list[PlanRow] = field(default_factory=list)    # every count simulated, in order
    answer: PlanRow | None = None                        # the smallest count that meets the target
    apis: list[SimResult] = field(default_factory=list)  # the spec's policies without self-hosted providers


def _meets(row: PlanRow, plan: FleetPlan) -> bool:
    return row.ttft_p90 <= plan.p90_ttft_s and row.overflow <= plan.max_overflow


def plan_fleet(policy: Policy, spec: TrafficSpec, provider: str, *, p90_ttft_s: float, days: float = 30,
               max_overflow: float = 0.001, max_replicas: int = 512, prefix_hit_rate: float | None = None,
               name: str | None = None) -> FleetPlan:
    """The smallest replica count of `provider` (a self-hosted provider of `policy` with throughput in
    `spec`) that serves the spec at `p90_ttft_s` with at most `max_overflow` of the requests finding no
    capacity (failures of the deployments' own `failure_rate` are not a capacity problem)."""
    p = policy.providers.get(provider)
    base = spec.deployments.get(provider)
    if p is None or base is None or not base.output_tokens_per_s:
        raise SpecError(f"--plan {provider}: needs a provider of the policy with `output_tokens_per_s` under "
                        f"deployments.{provider} in the spec")
    if prefix_hit_rate is not None:
        base = dataclasses.replace(base, prefix_hit_rate=prefix_hit_rate)
    plan = FleetPlan(provider, p90_ttft_s, max_overflow)
    tried: dict[int, PlanRow] = {}

    def run(n: int) -> PlanRow:
        if n not in tried:
            deps = {**spec.deployments, provider: dataclasses.replace(base, replicas=n)}
            result = simulate(policy, dataclasses.replace(spec, deployments=deps), days=days,
                              name=name or policy.source)
            tried[n] = PlanRow(n, n * p.gpus, result)
            plan.rows.append(tried[n])
        return tried[n]

    low, high = 0, 1
    while not _meets(run(high), plan):
        if high >= max_replicas:
            return plan                      # not reachable within max_replicas: no answer
        low, high = high, min(max_replicas, high * 2)
    while high - low > 1:
        mid = (low + high) // 2
        if _meets(run(mid), plan):
            high = mid
        else:
            low = mid
    plan.answer = tried[high]
    plan.rows.sort(key=lambda r: r.replicas)
    return plan


def _money(x: float) -> str:
    return f"${x:,.0f}"


def format_plan(spec: TrafficSpec, policy: Policy, plan: FleetPlan, deployment: Deployment) -> str:
    """The report `router simulate --plan` prints."""
    p = policy.providers[plan.provider]
    lines = [f"{spec.name}: {spec.tokens_per_month:,.0f} tokens/month; plan `{plan.provider}` "
             f"({os.path.basename(policy.source)}) for a p90 time to first token <= {plan.p90_ttft_s:g} s with "
             f"<= {100 * plan.max_overflow:g}% of requests over capacity",
             f"one replica: {p.gpus} GPU(s) at ${p.gpu_hour_usd or 0:g}/GPU-hour, {deployment.input_tokens_per_s or 0:,.0f} "
             f"prefill + {deployment.output_tokens_per_s or 0:,.0f} decode tokens/s, prefix-cache hits "
             f"{100 * deployment.prefix_hit_rate:.0f}% of prompt tokens", ""]
    cols = ("replicas", "GPUs", "monthly", "TTFT p50 s", "TTFT p90 s", "latency p95 s", "over capacity", "failed")
    rows = []
    for row in plan.rows:
        r = row.result
        rows.append((f"{row.replicas}{' <-' if row is plan.answer else ''}", str(row.gpus),
                     _money(r.monthly_cost_usd), f"{r.percentile(0.5, 'ttfts'):.2f}", f"{row.ttft_p90:.2f}",
                     f"{r.percentile(0.95):.2f}", f"{100 * row.overflow:.2f}%", f"{100 * row.failed:.2f}%"))
    widths = [max(len(c), *(len(x[i]) for x in rows)) for i, c in enumerate(cols)]
    lines.append("  ".join(c.rjust(widths[i]) for i, c in enumerate(cols)))
    lines += ["  ".join(v.rjust(widths[i]) for i, v in enumerate(x)) for x in rows]
    lines.append("")
    a = plan.answer
    if a is None:
        lines.append(f"no replica count up to {max(r.replicas for r in plan.rows)} meets the target")
    else:
        lines.append(f"answer: {a.replicas} replicas = {a.gpus} GPUs, {_money(a.result.monthly_cost_usd)}/month, "
                     f"TTFT p90 {a.ttft_p90:.2f} s, {100 * a.overflow:.2f}% over capacity, {100 * a.failed:.2f}% failed "
                     "in all")
    for api in plan.apis:
        lines.append(f"  vs {os.path.basename(api.policy)}: {_money(api.monthly_cost_usd)}/month, "
                     f"TTFT p90 {api.percentile(0.9, 'ttfts'):.2f} s")
    return "\n".join(lines)


def run_plan(policy_path: str | None, spec: TrafficSpec, provider: str, p90_ttft_s: float, *, days: float = 30,
             max_overflow: float = 0.001, prefix_hit_rate: float | None = None, out: Any = None,
             api_policies: Sequence[str] | None = None) -> int:
    """`router simulate --plan PROVIDER --p90-ttft S`: print the plan and the APIs beside it."""
    import sys

    from router.core.errors import RouterError
    from router.core.policy_parser import load_policy

    out = out or sys.stdout
    try:
        paths = [policy_path] if policy_path else list(spec.policies)
        loaded = [(path, load_policy(path)) for path in paths]
        api_paths = list(api_policies) if api_policies is not None else list(spec.policies)
        apis = [(path, load_policy(path)) for path in api_paths]
    except RouterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    chosen = next(((path, pol) for path, pol in loaded if provider in pol.providers), None)
    if chosen is None:
        print(f"error: no policy has a provider `{provider}` (pass --policy FILE)", file=sys.stderr)
        return 1
    path, policy = chosen
    try:
        plan = plan_fleet(policy, spec, provider, p90_ttft_s=p90_ttft_s, days=days, max_overflow=max_overflow,
                          prefix_hit_rate=prefix_hit_rate, name=path)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    plan.apis = [simulate(pol, spec, days=days, name=p) for p, pol in apis
                 if not any(pr.self_hosted for pr in pol.providers.values())]
    deployment = spec.deployments[provider]
    if prefix_hit_rate is not None:
        deployment = dataclasses.replace(deployment, prefix_hit_rate=prefix_hit_rate)
    print(format_plan(spec, policy, plan, deployment), file=out)
    return 0 if plan.answer is not None else 2
