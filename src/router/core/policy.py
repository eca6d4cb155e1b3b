"""The policy as data: frozen dataclasses for providers, models, routes, rules, tenants and settings.

Plain data, no parsing and no I/O: `router.core.policy_parser` builds these from YAML and
validates them. Everything that routes (`decide`, the engine, the monitors) reads a `Policy`.

>>> from router.core.policy_parser import load_policy
>>> policy = load_policy("policies/default.yaml")     # doctest: +SKIP
>>> policy.routes["coding"].targets                   # doctest: +SKIP
('qwen3-coder-next', 'deepseek-v3', 'gpt-4.1-mini')
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PROVIDER_KINDS",
    "Balance",
    "Budget",
    "ClassifierSettings",
    "ClientModel",
    "MeteringSettings",
    "Condition",
    "HealthSettings",
    "HedgeSettings",
    "Model",
    "Policy",
    "Price",
    "PriceWindow",
    "Provider",
    "ProbeSettings",
    "RateLimit",
    "RateLimits",
    "ReferenceModel",
    "ResumeSettings",
    "Retry",
    "Route",
    "RouteCache",
    "Rule",
    "SaturationSettings",
    "Secret",
    "TelemetrySettings",
    "Tenant",
    "Timeouts",
    "hash_key",
    "key_id_of",
]

PROVIDER_KINDS = ("vllm", "openai", "deepseek", "mistral", "litellm")
STRATEGIES = ("ordered", "cheapest", "fastest")
BALANCE_STRATEGIES = ("least_loaded", "round_robin")   # picking a replica of a model
AFFINITIES = ("prefix", "session", "none")
TASK_LABELS = ("coding", "reasoning", "general")
CONDITION_KEYS = ("task", "residency", "language", "tenant", "tools", "api")
APIS = ("chat", "messages", "responses")   # the API a request came in on: a rule's `api` condition


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


def key_id_of(hashed: str) -> str:
    """A key's id for per-key rate limits and the status page: 16 hex digits of its hash
    (`hash_key`), never the key.

    >>> key_id_of(hash_key("sk-test"))
    'f3abf2a6cc4f0098'
    """
    return hashed[7:23]


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
    """USD per million tokens. Token kinds without their own price are billed at the input (cache
    read, cache write) or output (reasoning) price; `router.core.pricing` bills a usage."""

    input_per_mtok: float
    output_per_mtok: float
    source: str = "policy"   # "policy" or "catalogue:<key> (litellm <version>)"
    cached_input_per_mtok: float | None = None   # input read from the provider's prompt cache
    cache_write_per_mtok: float | None = None    # input written to it (Anthropic charges it)
    reasoning_per_mtok: float | None = None      # reasoning tokens, where billed apart from output
    windows: tuple[PriceWindow, ...] = ()        # time-of-day prices (UTC), e.g. an off-peak discount

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


@dataclass(frozen=True, slots=True)
class PriceWindow:
    """A time-of-day price: from `start` to `end` (minutes after midnight UTC; may wrap past midnight)."""

    start: int
    end: int
    price: Price     # the whole price in the window (keys it does not set are the base price's)

    def contains(self, minute: int) -> bool:
        if self.start <= self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    @property
    def label(self) -> str:
        return f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"


@dataclass(frozen=True, slots=True)
class Model:
    alias: str
    provider: str                             # the provider; with replicas, the first replica
    model: str
    price: Price
    context_window: int | None = None
    capabilities: frozenset[str] = frozenset()
    params: Mapping[str, Any] = field(default_factory=dict)
    replicas: tuple[str, ...] = ()            # several deployments of this model (docs/routing.md); () : one
    balance: Balance = field(default_factory=lambda: Balance())   # how the engine picks among replicas
    max_output_tokens: int | None = None      # the most tokens it may generate; larger asks are capped

    @property
    def providers(self) -> tuple[str, ...]:
        """Every provider serving this model: its replicas, or its one provider."""
        return self.replicas or (self.provider,)

    def key(self, provider: str) -> str:
        """The deployment key of this model on `provider`: the alias itself for a model with one
        provider, ``alias@provider`` for a replica (health, load and `LiveState` sets use it).

        >>> Model("qwen", "a", "q", Price(0, 0), replicas=("a", "b")).key("b")
        'qwen@b'
        """
        return f"{self.alias}@{provider}" if self.replicas else self.alias


@dataclass(frozen=True, slots=True)
class Balance:
    """How the engine picks a replica of a model (docs/routing.md, "Replicas").

    `strategy`: ``least_loaded`` (the less loaded of two random healthy replicas) or ``round_robin``;
    `affinity`: ``prefix`` (a session key, else the `user` field, else a hash of the conversation's
    stable prefix), ``session`` (a session key or `user` only) or ``none``; `load_cap`: a replica
    keeps its affinity keys while its load is at most `load_cap` x the mean (bounded-load hashing).
    """

    strategy: str = "least_loaded"
    affinity: str = "prefix"
    load_cap: float = 1.25


@dataclass(frozen=True, slots=True)
class HedgeSettings:
    """A route's request hedging (streams): after `delay_s` (or the candidate's measured TTFT
    `percentile`, never below `min_delay_s`) without a first chunk, the same request goes to the next
    allowed candidate; the first to stream wins. At most `max_share` of the route's requests hedge,
    and at most `max_usd_per_day` is spent on losing attempts (per process)."""

    delay_s: float | None = None
    percentile: float | None = None
    min_delay_s: float = 0.25
    max_share: float = 0.05
    max_usd_per_day: float | None = None


@dataclass(frozen=True, slots=True)
class ResumeSettings:
    """A route's recovery after the first byte: a stream cut mid-way continues on the next allowed
    candidate that can prefill, up to `attempts` times per request."""

    attempts: int = 1


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    targets: tuple[str, ...]
    strategy: str = "ordered"
    max_cost_usd: float | None = None
    expected_output_tokens: int | None = None
    cache: RouteCache | None = None           # exact-match response cache (docs/metering.md)
    hedge: HedgeSettings | None = None        # request hedging (docs/routing.md)
    resume: ResumeSettings | None = None      # recovery after the first byte (docs/routing.md)


@dataclass(frozen=True, slots=True)
class RouteCache:
    """A route's response cache: entries live `ttl_s`, bounded by `max_entries` and/or `max_bytes`;
    requests sampled above `max_temperature` (absent: 1, the APIs' default) are not cached."""

    ttl_s: float
    max_entries: int | None = None
    max_bytes: int | None = None
    max_temperature: float = 0.0


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
    rate_limits: RateLimits | None = None


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Limits on one scope: a tenant, one of its keys, or its traffic on one route or model."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None    # input + output
    concurrent: int | None = None           # requests in flight

    @property
    def limited(self) -> bool:
        return not (self.requests_per_minute is None and self.tokens_per_minute is None and self.concurrent is None)


@dataclass(frozen=True, slots=True)
class RateLimits:
    """A tenant's rate limits: its own, each of its keys', and per route or model alias."""

    tenant: RateLimit = RateLimit()
    per_key: RateLimit | None = None
    routes: Mapping[str, RateLimit] = field(default_factory=dict)
    cache_hits: bool = True        # a response-cache hit counts as a request (with no tokens)


@dataclass(frozen=True, slots=True)
class ClassifierSettings:
    min_confidence: float = 0.0
    fallback_task: str = "general"
    fallback_route: str | None = None     # uncertain requests go straight here (rules skipped)
    model: str | None = None              # the task model's file (resolved); None: the shipped model
    tasks: tuple[str, ...] = TASK_LABELS  # the tasks the model can return
    classifier: Any = field(default=None, compare=False, repr=False)  # the loaded model, when `model`


@dataclass(frozen=True, slots=True)
class ReferenceModel:
    """What every request would have cost on one reference model: savings = reference - actual."""

    name: str
    price: Price


@dataclass(frozen=True, slots=True)
class MeteringSettings:
    tenant_label: bool = False      # add a `tenant` label to request and cost metrics
    ledger: str | None = None       # ledger URL or SQLite path
    spool: str | None = None        # durable ledger mode: a local write-ahead spool directory
    budget_unavailable: str = "fail_closed"   # fail_closed (503) | fail_open, when the budget store is down
    budget_timeout_s: float = 1.0   # longest wait for the budget store (also bounded by the request's deadline)
    rate_limit_unavailable: str = "fail_open"   # fail_open | fail_closed (503), when the rate-limit store is down
    rate_limit_timeout_s: float = 0.5   # longest wait for the rate-limit store (also bounded by the deadline)


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """OpenTelemetry traces (docs/observability.md): off unless an endpoint is set here or in the
    standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` variables."""

    enabled: bool | None = None         # False: off even when OTEL_* variables are set; None: on with an endpoint
    endpoint: str | None = None         # OTLP/HTTP base URL (``/v1/traces`` is appended), else from OTEL_*
    service_name: str | None = None     # else $OTEL_SERVICE_NAME, else "router"
    capture_content: bool = False       # record prompt and completion text on spans (off: never)


@dataclass(frozen=True, slots=True)
class ClientModel:
    """A model name a client sends (exact, or a glob like ``claude-*``) and what it means here:
    ``auto``, a route or a model alias."""

    pattern: str
    target: str
    glob: bool = False

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern) if self.glob else name == self.pattern


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
    client_models: tuple[ClientModel, ...] = ()   # exact names first, then globs in file order
    telemetry: TelemetrySettings = TelemetrySettings()

    @functools.cached_property
    def alias_tasks(self) -> Mapping[str, str]:
        """Model alias -> task, for aliases that are targets of exactly one task-named route."""
        seen: dict[str, set[str]] = {}
        for route in self.routes.values():
            if route.name in self.classifier.tasks:
                for alias in route.targets:
                    seen.setdefault(alias, set()).add(route.name)
        return {alias: next(iter(tasks)) for alias, tasks in seen.items() if len(tasks) == 1}

    def client_model(self, name: str) -> str | None:
        """What a client's model name maps to (``auto``, a route or an alias), or None when no
        `client_models` entry matches. Exact entries win over globs; globs match in file order.

        >>> Policy("p", {}, {}, {}, (), {}, {}, client_models=(ClientModel("claude-*", "coding", True),)
        ...        ).client_model("claude-sonnet-4-5")
        'coding'
        """
        for entry in self.client_models:
            if entry.matches(name):
                return entry.target
        return None

    @functools.cached_property
    def deployments(self) -> Mapping[str, tuple[str, str]]:
        """Every deployment, by its key (`Model.key`): ``{key: (alias, provider)}``."""
        return {m.key(p): (alias, p) for alias, m in self.models.items() for p in m.providers}

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
