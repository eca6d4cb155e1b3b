"""The policy as data: frozen dataclasses for providers, models, routes, rules, tenants and settings.

Plain data, no parsing and no I/O: `router.core.policy_parser` builds these from YAML and
validates them. Everything that routes (`decide`, the engine, the monitors) reads a `Policy`.

>>> from router.core.policy_parser import load_policy
>>> policy = load_policy("policies/default.yaml")     # doctest: +SKIP
>>> policy.routes["coding"].targets                   # doctest: +SKIP
('qwen3-coder-next', 'deepseek-v3', 'gpt-4.1-mini')
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PROVIDER_KINDS",
    "Budget",
    "ClassifierSettings",
    "MeteringSettings",
    "Condition",
    "HealthSettings",
    "Model",
    "Policy",
    "Price",
    "Provider",
    "ProbeSettings",
    "ReferenceModel",
    "Retry",
    "Route",
    "Rule",
    "SaturationSettings",
    "Secret",
    "Tenant",
    "Timeouts",
    "hash_key",
]

PROVIDER_KINDS = ("vllm", "openai", "deepseek", "mistral", "litellm")
STRATEGIES = ("ordered", "cheapest", "fastest")
TASK_LABELS = ("coding", "reasoning", "general")
CONDITION_KEYS = ("task", "residency", "language", "tenant", "tools")


class Secret:
    """A secret string that never shows itself in repr, str, logs or errors."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def hash_key(key: str) -> str:
    """The form a tenant key takes in a policy: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float = 2.0          # TCP connect, per attempt
    first_token_s: float = 30.0     # streaming: until the first chunk, and the longest gap between chunks
    total_s: float = 600.0          # the whole request, every retry and fallback included
    attempt_s: float | None = None  # non-streaming: one attempt; None: bounded by total_s only


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int = 2            # tries per candidate, the first included
    backoff_s: float = 0.2       # first wait; doubles each retry, with jitter
    max_backoff_s: float = 2.0   # cap on one wait
    retry_after_max_s: float = 10.0  # a longer Retry-After moves on to the next candidate


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """Active health probe: GET `path` (appended to base_url, or a full URL) every `interval_s`."""

    path: str = "/models"
    interval_s: float = 10.0
    timeout_s: float = 2.0


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """Circuit breaker per deployment (see docs/routing.md)."""

    failure_threshold: int = 5      # consecutive failures that open the circuit
    window_s: float = 30.0          # the sliding window the failure rate is computed over
    min_requests: int = 20          # outcomes needed in the window before the rate counts
    failure_rate: float = 0.5       # share of failures in the window that opens the circuit
    open_s: float = 30.0            # how long an open circuit stays open before half-open
    half_open_probes: int = 1       # successes needed in half-open (and requests let through at once)
    probe: ProbeSettings | None = None


@dataclass(frozen=True, slots=True)
class SaturationSettings:
    """When a deployment counts as saturated, from vLLM's /metrics, with hysteresis."""

    max_waiting: float | None = None        # enter: num_requests_waiting > this
    max_kv_cache: float | None = None       # enter: kv_cache_usage_perc > this (0..1)
    recover_waiting: float | None = None    # leave: waiting <= this (default max_waiting / 2)
    recover_kv_cache: float | None = None   # leave: kv cache <= this (default max_kv_cache - 0.1)
    scrape_interval_s: float = 2.0
    stale_after_s: float = 10.0             # older samples are ignored: fall back to in-flight counts

    @classmethod
    def default_for(cls, max_concurrency: int | None) -> SaturationSettings:
        """What a provider with a `metrics_url` and no `saturation:` block gets.

        Saturated when vLLM queues more than an eighth of `max_concurrency` (at least 2; 8 without
        it) or its KV cache is over 95 % full; recovered at half that queue and 85 %.

        >>> SaturationSettings.default_for(64).max_waiting, SaturationSettings.default_for(None).max_waiting
        (8, 8)
        """
        waiting = max(2, round(max_concurrency / 8)) if max_concurrency else 8
        return cls(max_waiting=waiting, max_kv_cache=0.95, recover_waiting=waiting / 2, recover_kv_cache=0.85)


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    kind: str
    base_url: str
    api_key: Secret | None = None
    region: str | None = None
    metrics_url: str | None = None
    max_concurrency: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    self_hosted: bool = False
    health: HealthSettings = HealthSettings()
    saturation: SaturationSettings | None = None
    gpu_hour_usd: float | None = None       # fixed cost of one GPU hour, for amortised cost reports
    gpus: int = 1


@dataclass(frozen=True, slots=True)
class Price:
    input_per_mtok: float
    output_per_mtok: float
    source: str = "policy"   # "policy" or "catalogue:<key>"

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


@dataclass(frozen=True, slots=True)
class Model:
    alias: str
    provider: str
    model: str
    price: Price
    context_window: int | None = None
    capabilities: frozenset[str] = frozenset()
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    targets: tuple[str, ...]
    strategy: str = "ordered"
    max_cost_usd: float | None = None
    expected_output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Condition:
    values: frozenset[Any]
    negate: bool = False

    def matches(self, value: Any) -> bool:
        return (value in self.values) != self.negate


@dataclass(frozen=True, slots=True)
class Rule:
    index: int
    conditions: Mapping[str, Condition]
    route: str


@dataclass(frozen=True, slots=True)
class Budget:
    daily_usd: float | None = None
    monthly_usd: float | None = None
    on_exhausted: str = "reject"   # reject | downgrade
    routes: Mapping[str, Budget] = field(default_factory=dict)   # per-route limits inside the tenant's


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    keys: tuple[str, ...] = ()
    residency: str | None = None
    budget: Budget | None = None
    allow_hints: bool = True
    routes: tuple[str, ...] | None = None   # routes and aliases this tenant may name; None: all


@dataclass(frozen=True, slots=True)
class ClassifierSettings:
    min_confidence: float = 0.0
    fallback_task: str = "general"


@dataclass(frozen=True, slots=True)
class ReferenceModel:
    """What every request would have cost on one reference model: savings = reference - actual."""

    name: str
    price: Price


@dataclass(frozen=True, slots=True)
class MeteringSettings:
    tenant_label: bool = False      # add a `tenant` label to request and cost metrics
    ledger: str | None = None       # ledger URL or SQLite path


@dataclass(frozen=True)
class Policy:
    source: str
    providers: Mapping[str, Provider]
    models: Mapping[str, Model]
    routes: Mapping[str, Route]
    rules: tuple[Rule, ...]
    residency: Mapping[str, frozenset[str]]
    tenants: Mapping[str, Tenant]
    retry: Retry = Retry()
    timeouts: Timeouts = Timeouts()
    classifier: ClassifierSettings = ClassifierSettings()
    expected_output_tokens: int = 256
    digest: str = ""
    reference_model: ReferenceModel | None = None
    metering: MeteringSettings = MeteringSettings()

    @functools.cached_property
    def alias_tasks(self) -> Mapping[str, str]:
        """Model alias -> task, for aliases that are targets of exactly one task-named route."""
        seen: dict[str, set[str]] = {}
        for route in self.routes.values():
            if route.name in TASK_LABELS:
                for alias in route.targets:
                    seen.setdefault(alias, set()).add(route.name)
        return {alias: next(iter(tasks)) for alias, tasks in seen.items() if len(tasks) == 1}

    @functools.cached_property
    def uses_language(self) -> bool:
        """Whether any rule looks at the language (else auto-routing with a hint skips the classifier)."""
        return any("language" in r.conditions for r in self.rules)

    def tenant_for_key(self, key: str) -> Tenant | None:
        """The tenant owning API key `key`, compared in constant time."""
        import hmac

        want = hash_key(key)
        found = None
        for tenant in self.tenants.values():
            for stored in tenant.keys:
                if hmac.compare_digest(stored, want):
                    found = tenant
        return found
