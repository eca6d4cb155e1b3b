"""The routing decision: request + policy + live state -> every candidate, costed and judged.

Pure: no I/O, no clock. `decide()` is what `router explain` prints and what the engine
executes, so what users read is exactly what runs.

>>> d = decide(policy, {"messages": [{"role": "user", "content": "fix this SQL"}]})  # doctest: +SKIP
>>> [(c.model, c.excluded) for c in d.candidates]                                    # doctest: +SKIP
[('qwen3-coder-next', None), ('deepseek-v3', None), ('gpt-4.1-mini', None)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from router.classify.classifier import classify
from router.core.errors import BudgetExceeded, InvalidRequest, NoCandidate, NotFound, PermissionDenied
from router.core.policy import Model, Policy, Provider, Route, Tenant
from router.core.pricing import price_at

__all__ = ["Candidate", "Decision", "LiveState", "decide", "decide_embedding", "estimate_prompt_tokens"]


@dataclass(frozen=True, slots=True)
class LiveState:
    """What the decision needs to know about the world right now, as plain data."""

    budget_remaining: Mapping[str, float] = field(default_factory=dict)  # tenant -> USD left
    circuit_open: frozenset[str] = frozenset()                           # deployment keys (Model.key)
    saturated: frozenset[str] = frozenset()                              # deployment keys
    ttft: Mapping[str, float] = field(default_factory=dict)              # alias -> EWMA seconds to first token


EMPTY_STATE = LiveState()

# Exclusions that pass with time (503: retry later); every other one is about the request (4xx).
_TRANSIENT = frozenset({"circuit_open", "saturated"})


@dataclass(slots=True)
class Candidate:
    model: str
    provider: str
    region: str | None
    upstream_model: str
    estimated_cost_usd: float
    excluded: str | None = None
    self_hosted: bool = False
    # a model served by several deployments: (provider, why it is out or None), in the policy's order;
    # the engine picks one of the usable ones with live load (router.engine.replicas)
    replicas: tuple[tuple[str, str | None], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = {"model": self.model, "provider": self.provider, "region": self.region,
               "upstream_model": self.upstream_model, "self_hosted": self.self_hosted,
               "estimated_cost_usd": round(self.estimated_cost_usd, 10), "excluded": self.excluded}
        if self.replicas:
            out["replicas"] = [{"provider": p, "excluded": why} for p, why in self.replicas]
        return out


@dataclass(slots=True)
class Decision:
    task: str
    task_source: str            # hint | alias | classifier | fallback
    confidence: float
    language: str | None
    route: str
    rule: int | None            # index of the matching rule; None when `model` named the route or alias
    candidates: list[Candidate]
    prompt_tokens: int          # estimated
    output_tokens: int          # expected: max_tokens, else the route's or the policy's default
    tenant: str | None = None
    residency: tuple[str, ...] = ()
    classified_task: str | None = None
    downgraded: bool = False
    scores: tuple[tuple[str, float], ...] | None = None  # every task's probability, when classified

    @property
    def allowed(self) -> list[Candidate]:
        return [c for c in self.candidates if c.excluded is None]

    def require_candidates(self) -> list[Candidate]:
        """The candidates to try, in order; raises when every one was excluded."""
        allowed = self.allowed
        if allowed:
            return allowed
        reasons = ", ".join(f"{c.model}: {c.excluded}" for c in self.candidates)
        why = {c.excluded for c in self.candidates}
        if "over_budget" in why:
            raise BudgetExceeded(f"tenant '{self.tenant}' has no budget left for this request ({reasons})")
        message = f"no candidate of route '{self.route}' can serve this request ({reasons})"
        if why & _TRANSIENT:  # a deployment that may recover: worth a retry later
            raise NoCandidate(message, decision=self)
        if why == {"residency"}:  # the policy forbids every candidate: retrying cannot help
            raise NoCandidate(message, decision=self, status=403, code="residency")
        raise NoCandidate(message, decision=self, status=400, code="no_candidate_fits")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task, "task_source": self.task_source,
                               "confidence": round(self.confidence, 4)}
        if self.scores is not None:
            out["scores"] = {t: round(p, 4) for t, p in self.scores}
        out |= {
            "language": self.language, "route": self.route, "rule": self.rule,
            "tenant": self.tenant, "residency": list(self.residency),
            "estimated_prompt_tokens": self.prompt_tokens, "expected_output_tokens": self.output_tokens,
            "candidates": [c.to_dict() for c in self.candidates],
        }
        if self.classified_task is not None:
            out["classified_task"] = self.classified_task
        if self.downgraded:
            out["downgraded"] = True
        return out


def estimate_prompt_tokens(messages: Sequence[Any], tools: Sequence[Any] | None = None) -> int:
    """A cheap, deliberately generous token estimate: 1 token per 4 characters + 4 per message."""
    chars = 0
    for m in messages:
        if not isinstance(m, Mapping):
            continue
        c = m.get("content")
        if isinstance(c, str):
            chars += len(c)
        elif isinstance(c, list):
            for part in c:
                if isinstance(part, Mapping):
                    text = part.get("text")
                    chars += len(text) if isinstance(text, str) else 0
                    if part.get("type") in ("image_url", "input_image"):
                        chars += 3400  # ~850 tokens: a typical high-detail image tile budget
        calls = m.get("tool_calls")
        if calls:
            chars += len(str(calls))
    if tools:
        chars += len(str(tools))
    return chars // 4 + 4 * len(messages) + 3


def _has_images(messages: Sequence[Any]) -> bool:
    for m in messages:
        c = m.get("content") if isinstance(m, Mapping) else None
        if isinstance(c, list):
            for part in c:
                if isinstance(part, Mapping) and part.get("type") in ("image_url", "input_image"):
                    return True
    return False


def _tenant_and_residencies(policy: Policy, tenant: str | None, residency: str | None
                            ) -> tuple[Tenant | None, list[str]]:
    """The tenant (checked) and every residency the request carries: the tenant's, then its own."""
    ten: Tenant | None = None
    if tenant is not None:
        ten = policy.tenants.get(tenant)
        if ten is None and policy.tenants:
            raise PermissionDenied(f"unknown tenant '{tenant}'", param="tenant")
    residencies: list[str] = []
    if ten is not None and ten.residency:
        residencies.append(ten.residency)
    if residency:
        if residency not in policy.residency:
            known = ", ".join(policy.residency) or "none"
            raise InvalidRequest(f"unknown residency '{residency}' (the policy defines: {known})", param="residency")
        if residency not in residencies:
            residencies.append(residency)
    return ten, residencies


def decide_embedding(policy: Policy, body: Mapping[str, Any], *, residency: str | None = None,
                     tenant: str | None = None, state: LiveState = EMPTY_STATE) -> Decision:
    """An embeddings request: `model` names the alias (no classification), residency still applies.

    >>> decide_embedding(policy, {"model": "embed-eu", "input": "hello"}).route  # doctest: +SKIP
    'embed-eu'
    """
    alias = body.get("model")
    if type(alias) is not str or not alias:
        raise InvalidRequest("`model` must name a model alias from the policy", param="model")
    model = policy.models.get(alias)
    if model is None:
        raise NotFound(f"unknown model '{alias}': use one of {', '.join(policy.models)}", param="model")
    inputs = body.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequest("`input` must be a string or a non-empty list", param="input")
    ten, residencies = _tenant_and_residencies(policy, tenant, residency)
    if ten is not None and ten.routes is not None and alias not in ten.routes:
        raise PermissionDenied(f"tenant '{ten.name}' may not use '{alias}'", param="model")
    provider = policy.providers[model.provider]
    prompt_tokens = sum(len(x) // 4 + 1 if isinstance(x, str) else len(x) if isinstance(x, list) else 1
                        for x in inputs)
    excluded = None
    replicas: tuple[tuple[str, str | None], ...] = ()
    if model.replicas:
        regions = None
        for r in residencies:
            regions = policy.residency[r] if regions is None else regions & policy.residency[r]
        replicas, provider, excluded = _replicas(policy, model, regions, state)
    elif any(provider.region not in policy.residency[r] for r in residencies):
        excluded = "residency"
    elif alias in state.circuit_open:
        excluded = "circuit_open"
    candidate = Candidate(alias, provider.name, provider.region, model.model,
                          model.price.cost(prompt_tokens, 0), excluded, provider.self_hosted, replicas)
    return Decision("embedding", "alias", 1.0, None, alias, None, [candidate], prompt_tokens, 0,
                    ten.name if ten is not None else tenant, tuple(residencies))


def _replicas(policy: Policy, model: Model, regions: frozenset[str] | None, state: LiveState
              ) -> tuple[tuple[tuple[str, str | None], ...], Provider, str | None]:
    """Each replica of `model` with why it is out (residency, circuit_open, saturated) or None; the
    first usable replica's provider (the first replica's when none is); and why the model is out
    when every replica is (a replica that may recover wins over residency, so the error is a 503)."""
    out = []
    first = None
    for name in model.replicas:
        p = policy.providers[name]
        key = model.key(name)
        why = None
        if regions is not None and p.region not in regions:
            why = "residency"
        elif key in state.circuit_open:
            why = "circuit_open"
        elif key in state.saturated:
            why = "saturated"
        elif first is None:
            first = p
        out.append((name, why))
    if first is not None:
        return tuple(out), first, None
    reasons = {why for _, why in out}
    excluded = "saturated" if "saturated" in reasons else "circuit_open" if "circuit_open" in reasons else "residency"
    return tuple(out), policy.providers[model.replicas[0]], excluded


def decide(policy: Policy, body: Mapping[str, Any], *, task: str | None = None, residency: str | None = None,
           tenant: str | None = None, state: LiveState = EMPTY_STATE, language: bool = True,
           api: str = "chat", now: float | None = None) -> Decision:
    """Route one OpenAI-style request body. Raises a RequestError when no route can serve it.

    `task` is an explicit hint, `residency` a requirement added to the tenant's (never lifting it),
    `tenant` a tenant name from the policy. `language=False` detects the language only when a
    policy rule reads it (the engine's hot path); otherwise ``Decision.language`` is None. `api`
    is the API the request came in on (chat, messages or responses), for rules' `api` condition.
    A `model` that is not auto, a route or an alias is looked up in the policy's `client_models`.
    `now` (Unix seconds) estimates each cost at the price's time-of-day window in force then (None:
    the base price), so cheapest-first follows an off-peak discount.
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("`messages` must be a non-empty list of messages", param="messages")
    tools = body.get("tools") or None

    ten, residencies = _tenant_and_residencies(policy, tenant, residency)

    if task is not None:
        if task not in policy.classifier.tasks:
            known = ", ".join(policy.classifier.tasks)
            raise InvalidRequest(f"unknown task '{task}'; use one of: {known}", param="task")
        if ten is not None and not ten.allow_hints:
            task = None

    model = body.get("model") or "auto"
    route: Route | None = None
    pinned: Model | None = None
    if model != "auto" and model not in policy.routes and model not in policy.models and policy.client_models:
        model = policy.client_model(model) or model
    if model != "auto":
        route = policy.routes.get(model)
        if route is None:
            pinned = policy.models.get(model)
            if pinned is None:
                names = ", ".join(["auto", *policy.routes, *policy.models, *(c.pattern for c in policy.client_models)])
                raise NotFound(f"unknown model '{model}': use one of {names}", param="model")
        if ten is not None and ten.routes is not None and model not in ten.routes:
            raise PermissionDenied(f"tenant '{ten.name}' may not use '{model}'", param="model")

    # Task: hint, then a route named after a task, then the classifier.
    needs_language = model == "auto" and policy.uses_language
    detect_language = language or needs_language
    confidence, language, classified, scores, fallback_route = 1.0, None, None, None, None
    if task is not None:
        source = "hint"
    elif route is not None and route.name in policy.classifier.tasks:
        task, source = route.name, "alias"
    elif pinned is not None and pinned.alias in policy.alias_tasks:
        task, source = policy.alias_tasks[pinned.alias], "alias"
    else:
        source = "classifier"
    if source == "classifier" or needs_language:
        model = policy.classifier.classifier
        c = (model.classify(messages, tools, language=detect_language) if model is not None
             else classify(messages, tools, language=detect_language))
        language = c.language
        if source == "classifier":
            task, confidence, scores = c.task, c.confidence, c.scores
            if confidence < policy.classifier.min_confidence:
                classified, task, source = c.task, policy.classifier.fallback_task, "fallback"
                if policy.classifier.fallback_route is not None:
                    fallback_route = policy.routes[policy.classifier.fallback_route]
    assert task is not None

    rule_index: int | None = None
    if route is None and pinned is None and fallback_route is not None:
        route = fallback_route  # an uncertain classification: the policy's safe route, rules skipped
        if ten is not None and ten.routes is not None and route.name not in ten.routes:
            raise PermissionDenied(f"tenant '{ten.name}' may not use route '{route.name}'", param="model")
    elif route is None and pinned is None:
        facts = {"task": task, "language": language, "tenant": ten.name if ten else tenant, "tools": bool(tools),
                 "api": api}
        for rule in policy.rules:
            ok = True
            for key, cond in rule.conditions.items():
                if key == "residency":
                    hit = any(r in cond.values for r in residencies)
                    ok = hit != cond.negate
                else:
                    ok = cond.matches(facts[key])
                if not ok:
                    break
            if ok:
                route, rule_index = policy.routes[rule.route], rule.index
                break
        if route is None:
            raise NotFound("no rule in the policy matches this request", param="model")
        if ten is not None and ten.routes is not None and route.name not in ten.routes:
            raise PermissionDenied(f"tenant '{ten.name}' may not use route '{route.name}'", param="model")

    targets = (pinned.alias,) if pinned is not None else route.targets  # type: ignore[union-attr]
    route_name = pinned.alias if pinned is not None else route.name  # type: ignore[union-attr]
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    prompt_tokens = estimate_prompt_tokens(messages, tools)
    out_tokens = int(max_tokens) if isinstance(max_tokens, int) and max_tokens > 0 else (
        (route.expected_output_tokens if route is not None else None) or policy.expected_output_tokens)
    max_cost = body.get("max_cost_usd")
    if max_cost is None and route is not None:
        max_cost = route.max_cost_usd
    regions = None
    for r in residencies:
        allowed_regions = policy.residency[r]
        regions = allowed_regions if regions is None else regions & allowed_regions
    images = _has_images(messages)
    tenant_name = ten.name if ten is not None else tenant
    remaining = state.budget_remaining.get(tenant_name) if tenant_name is not None else None

    candidates: list[Candidate] = []
    for alias in targets:
        m = policy.models[alias]
        replicas: tuple[tuple[str, str | None], ...] = ()
        if m.replicas:
            replicas, p, excluded = _replicas(policy, m, regions, state)
        else:
            p = policy.providers[m.provider]
            excluded = None
            if regions is not None and p.region not in regions:
                excluded = "residency"
            elif alias in state.circuit_open:
                excluded = "circuit_open"
            elif alias in state.saturated:
                excluded = "saturated"
        price = m.price if now is None or not m.price.windows else price_at(m.price, now)
        cost = price.cost(prompt_tokens, min(out_tokens, m.max_output_tokens) if m.max_output_tokens else out_tokens)
        if excluded is None:
            if tools and "tools" not in m.capabilities:
                excluded = "capability:tools"
            elif images and "vision" not in m.capabilities:
                excluded = "capability:vision"
            elif m.context_window is not None and prompt_tokens + _output_room(max_tokens, m) > m.context_window:
                excluded = "context_window"
            elif max_cost is not None and cost > max_cost:
                excluded = "max_cost"
            elif remaining is not None and cost > remaining:
                excluded = "over_budget"
        candidates.append(Candidate(alias, p.name, p.region, m.model, cost, excluded, p.self_hosted, replicas))

    downgraded = False
    allowed = [c for c in candidates if c.excluded is None]
    if not allowed:
        broke = [c for c in candidates if c.excluded == "over_budget"]
        if broke and ten is not None and ten.budget is not None and ten.budget.on_exhausted == "downgrade":
            cheapest = min(broke, key=lambda c: c.estimated_cost_usd)
            cheapest.excluded, downgraded = None, True
            allowed = [cheapest]
    if route is not None and route.strategy == "cheapest":
        ttft = state.ttft  # latency breaks cost ties; unmeasured deployments count as fastest, to get measured
        allowed.sort(key=lambda c: (c.estimated_cost_usd, ttft.get(c.model, 0.0)))
    elif route is not None and route.strategy == "fastest":
        ttft = state.ttft
        allowed.sort(key=lambda c: ttft.get(c.model, 0.0))
    ordered = allowed + [c for c in candidates if c.excluded is not None]
    return Decision(task, source, confidence, language, route_name, rule_index, ordered, prompt_tokens,
                    out_tokens, tenant_name, tuple(residencies), classified, downgraded, scores)


def _output_room(max_tokens: Any, m: Model) -> int:
    """The output a request reserves in `m`'s context window: its `max_tokens`, capped at the most
    the model writes (the call is capped too, in `translate.build_call`)."""
    n = max_tokens if type(max_tokens) is int and max_tokens > 0 else 0
    return min(n, m.max_output_tokens) if m.max_output_tokens is not None else n
