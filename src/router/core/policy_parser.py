"""Policy files: load YAML, substitute the environment, parse strictly, validate as a whole.

Pure: no network. Every problem is reported with the file, the path inside it
(``routes.coding.targets[1]``) and what to do, and all problems are reported at once. The result
is a `router.core.policy.Policy`.

>>> policy = load_policy("policies/default.yaml")     # doctest: +SKIP
>>> policy.routes["coding"].targets                   # doctest: +SKIP
('qwen3-coder-next', 'deepseek-v3', 'gpt-4.1-mini')
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from router.core.errors import PolicyError, PolicyIssue
from router.core.policy import (
    AFFINITIES,
    APIS,
    BALANCE_STRATEGIES,
    CONDITION_KEYS,
    PROVIDER_KINDS,
    STRATEGIES,
    TASK_LABELS,
    Balance,
    Budget,
    ClassifierSettings,
    ClientModel,
    Condition,
    HealthSettings,
    HedgeSettings,
    MeteringSettings,
    Model,
    Policy,
    Price,
    PriceWindow,
    ProbeSettings,
    Provider,
    RateLimit,
    RateLimits,
    ReferenceModel,
    ResumeSettings,
    Retry,
    Route,
    RouteCache,
    Rule,
    SaturationSettings,
    Secret,
    TelemetrySettings,
    Tenant,
    Timeouts,
)
from router.core.prices import catalogue_lookup

__all__ = ["check_policy", "load_policy", "parse_policy"]

# ----------------------------------------------------------------------------- loading

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def load_policy(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Policy:
    """Load and validate the policy at `path`; raise PolicyError listing every problem."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise PolicyError([PolicyIssue(path, "", f"cannot read the policy: {e.strerror}",
                                       "check the path, or set ROUTER_POLICY")]) from None
    except UnicodeDecodeError as e:  # a reload must reject this like any other invalid file, not crash
        raise PolicyError([PolicyIssue(path, "", f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})",
                                       "save the policy as UTF-8")]) from None
    return parse_policy(text, source=path, env=env)


def check_policy(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> list[PolicyIssue]:
    """Every problem in the policy at `path`; empty when it is valid."""
    try:
        load_policy(path, env)
    except PolicyError as e:
        return e.issues
    return []


def parse_policy(text: str, *, source: str = "<policy>", env: Mapping[str, str] | None = None) -> Policy:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise PolicyError([PolicyIssue(source, where, f"not valid YAML: {problem}",
                                       "fix the YAML syntax at that position")]) from None
    parser = _Parser(source, os.environ if env is None else env)
    policy = parser.parse(raw)
    if parser.issues or policy is None:
        raise PolicyError(parser.issues)
    return dataclasses.replace(policy, digest=hashlib.sha256(text.encode()).hexdigest()[:12])


def _fmt(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


class _Parser:
    def __init__(self, source: str, env: Mapping[str, str]):
        self.source = source
        self.env = env
        self.issues: list[PolicyIssue] = []

    def err(self, path: str, message: str, fix: str = "") -> None:
        self.issues.append(PolicyIssue(self.source, path, message, fix))

    # -- primitives
    def subst(self, path: str, value: str) -> str:
        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in self.env:
                return self.env[name]
            if default is not None:
                return default
            self.err(path, f"environment variable {name} is not set",
                     f"export {name}, or write ${{{name}:-default}} to give a default")
            return ""

        return _ENV.sub(repl, value) if "${" in value else value

    def mapping(self, path: str, value: Any, allowed: tuple[str, ...], required: tuple[str, ...] = ()
                ) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.err(path or "(top level)", f"expected a mapping, got {_kind(value)}",
                     "write it as `key: value` pairs")
            return None
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                fix = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(allowed)}"
                self.err(_fmt(path, key), f"unknown key '{key}'", fix)
        for key in required:
            if key not in value:
                self.err(_fmt(path, key), f"missing required key '{key}'", f"add `{key}:`")
        return value

    def string(self, path: str, value: Any, *, secret: bool = False) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.err(path, f"expected a string, got {_kind(value)}")
            return None
        return self.subst(path, value) if isinstance(value, str) else str(value)

    def number(self, path: str, value: Any, *, minimum: float = 0.0, integer: bool = False,
               positive: bool = False) -> float | None:
        if isinstance(value, str):
            value = self.subst(path, value)
            try:
                value = float(value)
            except ValueError:
                self.err(path, f"expected a number, got '{value}'")
                return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.err(path, f"expected a number, got {_kind(value)}")
            return None
        if value < minimum or (positive and value <= 0):
            self.err(path, f"must be {'greater than' if positive else 'at least'} {minimum:g}, got {value:g}")
            return None
        if integer and value != int(value):
            self.err(path, f"expected a whole number, got {value:g}")
            return None
        return int(value) if integer else float(value)

    def boolean(self, path: str, value: Any) -> bool | None:
        if not isinstance(value, bool):
            self.err(path, f"expected true or false, got {_kind(value)}")
            return None
        return value

    def choice(self, path: str, value: Any, options: tuple[str, ...]) -> str | None:
        if value not in options:
            close = difflib.get_close_matches(str(value), options, n=1)
            fix = f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(options)}"
            self.err(path, f"'{value}' is not one of {', '.join(options)}", fix)
            return None
        return value

    def str_list(self, path: str, value: Any) -> list[str]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.err(path, f"expected a list, got {_kind(value)}", "write it as [a, b]")
            return []
        out = []
        for i, item in enumerate(value):
            s = self.string(_fmt(path, i), item)
            if s is not None:
                out.append(s)
        return out

    def each(self, path: str, value: Any, fn: Callable[[str, str, Any], Any]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.err(path, f"expected a mapping of names, got {_kind(value)}")
            return {}
        out = {}
        for name, item in value.items():
            parsed = fn(_fmt(path, name), str(name), item)
            if parsed is not None:
                out[str(name)] = parsed
        return out

    # -- sections
    def parse(self, raw: Any) -> Policy | None:
        top = self.mapping("", raw, ("version", "providers", "models", "routes", "rules", "residency",
                                     "tenants", "retry", "timeouts", "classifier", "defaults",
                                     "reference_model", "metering", "client_models", "telemetry"),
                           ("providers", "models", "routes"))
        if top is None:
            return None
        if top.get("version", 1) != 1:
            self.err("version", f"unsupported policy version {top.get('version')!r}", "use `version: 1`")
        providers = self.each("providers", top.get("providers"), self.provider)
        residency = self.each("residency", top.get("residency"), lambda p, n, v: frozenset(self.str_list(p, v)))
        models = self.each("models", top.get("models"), lambda p, n, v: self.model(p, n, v, providers))
        routes = self.each("routes", top.get("routes"), lambda p, n, v: self.route(p, n, v, models))
        tenants = self.each("tenants", top.get("tenants"), lambda p, n, v: self.tenant(p, n, v, residency, routes, models))
        classifier = self.classifier_settings(top.get("classifier"), routes)
        rules = self.rules(top.get("rules"), routes, residency, tenants, classifier.tasks)
        retry = self.retry(top.get("retry"))
        timeouts = self.timeouts("timeouts", top.get("timeouts"))
        expected = 256
        defaults = self.mapping("defaults", top.get("defaults", {}), ("expected_output_tokens",))
        if defaults and "expected_output_tokens" in defaults:
            expected = self.number("defaults.expected_output_tokens", defaults["expected_output_tokens"],
                                   integer=True, positive=True) or expected
        self.check_residency(providers, models, routes, rules, residency, tenants)
        reference = self.reference_model(top.get("reference_model"), models) if "reference_model" in top else None
        metering = self.metering_settings(top.get("metering"))
        client_models = self.client_models(top.get("client_models"), routes, models)
        telemetry = self.telemetry(top.get("telemetry"))
        return Policy(self.source, providers, models, routes, tuple(rules), residency, tenants, retry,
                      timeouts, classifier, int(expected), reference_model=reference, metering=metering,
                      client_models=client_models, telemetry=telemetry)

    def telemetry(self, raw: Any) -> TelemetrySettings:
        """`telemetry: {enabled, endpoint, service_name, capture_content}` (docs/observability.md)."""
        m = self.mapping("telemetry", raw or {}, ("enabled", "endpoint", "service_name", "capture_content"))
        if not m:
            return TelemetrySettings()
        enabled = self.boolean("telemetry.enabled", m["enabled"]) if m.get("enabled") is not None else None
        endpoint = self.string("telemetry.endpoint", m["endpoint"]) if m.get("endpoint") is not None else None
        if endpoint and not endpoint.startswith(("http://", "https://")):
            self.err("telemetry.endpoint", f"expected an http:// or https:// URL, got {endpoint!r}",
                     "write the collector's OTLP/HTTP address, e.g. http://otel-collector:4318")
        service = self.string("telemetry.service_name", m["service_name"]) if m.get("service_name") else None
        capture = (self.boolean("telemetry.capture_content", m["capture_content"])
                   if m.get("capture_content") is not None else False)
        return TelemetrySettings(enabled, endpoint or None, service or None, bool(capture))

    def client_models(self, raw: Any, routes: Mapping[str, Route], models: Mapping[str, Model]
                      ) -> tuple[ClientModel, ...]:
        """`client_models: {name-or-glob: auto | route | alias}`: exact names first, then globs in order."""
        if raw is None:
            return ()
        if not isinstance(raw, dict):
            self.err("client_models", f"expected a mapping of client model names to targets, got {_kind(raw)}",
                     "write it as `claude-*: coding`")
            return ()
        exact: list[ClientModel] = []
        globs: list[ClientModel] = []
        targets = ("auto", *routes, *models)
        for name, target in raw.items():
            path = _fmt("client_models", name)
            pattern = str(name)
            if not pattern:
                self.err(path, "an empty client model name")
                continue
            if pattern == "auto" or pattern in routes or pattern in models:
                self.err(path, f"'{pattern}' is already auto, a route or a model alias, which win over client_models",
                         "remove this entry")
                continue
            value = self.string(path, target)
            if value is None:
                continue
            if value not in targets:
                self.dangling(path, "route or model alias", value, targets)
                continue
            glob = any(c in pattern for c in "*?[")
            (globs if glob else exact).append(ClientModel(pattern, value, glob))
        return (*exact, *globs)

    def provider(self, path: str, name: str, raw: Any) -> Provider | None:
        m = self.mapping(path, raw, ("kind", "base_url", "api_key", "region", "metrics_url", "max_concurrency",
                                     "headers", "self_hosted", "health", "saturation", "gpu_hour_usd", "gpus"),
                           ("kind", "base_url"))
        if m is None:
            return None
        kind = self.choice(_fmt(path, "kind"), m.get("kind"), PROVIDER_KINDS) if "kind" in m else None
        base_url = self.string(_fmt(path, "base_url"), m.get("base_url", ""))
        if base_url is not None and "base_url" in m and not re.match(r"^https?://[^/\s]+", base_url):
            self.err(_fmt(path, "base_url"), "must be an http:// or https:// URL",
                     "write the full URL, e.g. https://api.example.com/v1")
        key = None
        if m.get("api_key") is not None:
            k = self.string(_fmt(path, "api_key"), m["api_key"], secret=True)
            if k and k.lower() not in ("none", "null"):
                key = Secret(k)
        metrics_url = self.string(_fmt(path, "metrics_url"), m["metrics_url"]) if m.get("metrics_url") else None
        mc = None
        if m.get("max_concurrency") is not None:
            mc = self.number(_fmt(path, "max_concurrency"), m["max_concurrency"], integer=True, positive=True)
        headers = {}
        if m.get("headers") is not None:
            if isinstance(m["headers"], dict):
                headers = {str(k): self.string(_fmt(_fmt(path, "headers"), k), v) or "" for k, v in m["headers"].items()}
            else:
                self.err(_fmt(path, "headers"), "expected a mapping of header names to values")
        region = self.string(_fmt(path, "region"), m["region"]) if m.get("region") is not None else None
        self_hosted = m.get("self_hosted", kind == "vllm")
        if not isinstance(self_hosted, bool):
            self.err(_fmt(path, "self_hosted"), "expected true or false")
            self_hosted = False
        health = self.health_settings(_fmt(path, "health"), m.get("health"))
        saturation = None
        if m.get("saturation") is not None:
            saturation = self.saturation_settings(_fmt(path, "saturation"), m["saturation"], metrics_url)
        elif metrics_url:  # a metrics_url alone enables scraping, with the documented default thresholds
            saturation = SaturationSettings.default_for(int(mc) if mc else None)
        gpu_hour = None
        if m.get("gpu_hour_usd") is not None:
            gpu_hour = self.number(_fmt(path, "gpu_hour_usd"), m["gpu_hour_usd"])
        gpus = 1
        if m.get("gpus") is not None:
            gpus = int(self.number(_fmt(path, "gpus"), m["gpus"], integer=True, positive=True) or 1)
        if kind is None or base_url is None:
            return None
        return Provider(name, kind, base_url.rstrip("/"), key, region, metrics_url,
                        int(mc) if mc else None, headers, self_hosted, health, saturation, gpu_hour, gpus)

    def health_settings(self, path: str, raw: Any) -> HealthSettings:
        keys = ("failure_threshold", "window_s", "min_requests", "failure_rate", "open_s", "half_open_probes",
                "probe")
        m = self.mapping(path, raw if raw is not None else {}, keys)
        d = HealthSettings()
        if not m:
            return d
        values: dict[str, Any] = {}
        for k in ("failure_threshold", "min_requests", "half_open_probes"):
            if m.get(k) is not None:
                values[k] = int(self.number(_fmt(path, k), m[k], integer=True, positive=True) or getattr(d, k))
        for k in ("window_s", "open_s", "failure_rate"):
            if m.get(k) is not None:
                values[k] = self.number(_fmt(path, k), m[k], positive=True) or getattr(d, k)
        if values.get("failure_rate", 0) > 1:
            self.err(_fmt(path, "failure_rate"), "must be between 0 and 1", "write 0.5 for 50%")
        if m.get("probe") is not None:
            pp = _fmt(path, "probe")
            pm = self.mapping(pp, m["probe"], ("path", "interval_s", "timeout_s"))
            if pm is not None:
                dp = ProbeSettings()
                ppath = self.string(_fmt(pp, "path"), pm["path"]) if pm.get("path") is not None else dp.path
                interval = (self.number(_fmt(pp, "interval_s"), pm["interval_s"], positive=True)
                            if pm.get("interval_s") is not None else dp.interval_s)
                timeout = (self.number(_fmt(pp, "timeout_s"), pm["timeout_s"], positive=True)
                           if pm.get("timeout_s") is not None else dp.timeout_s)
                values["probe"] = ProbeSettings(ppath or dp.path, interval or dp.interval_s, timeout or dp.timeout_s)
        return dataclasses.replace(d, **values)

    def saturation_settings(self, path: str, raw: Any, metrics_url: str | None) -> SaturationSettings | None:
        keys = ("max_waiting", "max_kv_cache", "recover_waiting", "recover_kv_cache", "scrape_interval_s",
                "stale_after_s")
        m = self.mapping(path, raw, keys)
        if m is None:
            return None
        d = SaturationSettings()
        v: dict[str, Any] = {}
        for k in keys:
            if m.get(k) is not None:
                v[k] = self.number(_fmt(path, k), m[k], positive=k.endswith("_s"))
        for k in ("max_kv_cache", "recover_kv_cache"):
            if v.get(k) is not None and v[k] > 1:
                self.err(_fmt(path, k), f"KV-cache usage is a fraction between 0 and 1, got {v[k]:g}",
                         "write 0.9 for 90%")
        if v.get("max_waiting") is None and v.get("max_kv_cache") is None:
            self.err(path, "no threshold: a deployment could never count as saturated",
                     "set `max_waiting:` and/or `max_kv_cache:`")
        for hi, lo in (("max_waiting", "recover_waiting"), ("max_kv_cache", "recover_kv_cache")):
            if v.get(lo) is not None and v.get(hi) is not None and v[lo] > v[hi]:
                self.err(_fmt(path, lo), f"must not exceed {hi} ({v[hi]:g}), or the deployment would flap",
                         f"set it below {hi}")
        if not metrics_url:
            self.err(path, "saturation is read from vLLM's /metrics, but the provider has no metrics_url",
                     "add `metrics_url: http://HOST:PORT/metrics`")
        if v.get("max_waiting") is not None and v.get("recover_waiting") is None:
            v["recover_waiting"] = v["max_waiting"] / 2
        if v.get("max_kv_cache") is not None and v.get("recover_kv_cache") is None:
            v["recover_kv_cache"] = max(0.0, v["max_kv_cache"] - 0.1)
        return SaturationSettings(**{k: (val if val is not None else getattr(d, k)) for k, val in v.items()})

    def model(self, path: str, alias: str, raw: Any, providers: Mapping[str, Provider]) -> Model | None:
        m = self.mapping(path, raw, ("provider", "replicas", "balance", "model", "price", "context_window",
                                     "capabilities", "params", "max_output_tokens"), ("model",))
        if m is None:
            return None
        replicas = self.replicas(path, m, providers)
        if replicas is None:
            return None
        pname = replicas[0] if replicas else self.string(_fmt(path, "provider"), m.get("provider", ""))
        upstream = self.string(_fmt(path, "model"), m.get("model", ""))
        provider = providers.get(pname or "")
        if pname and "provider" in m and provider is None:
            self.dangling(_fmt(path, "provider"), "provider", pname, providers)
        balance = self.balance(_fmt(path, "balance"), m["balance"], replicas) if m.get("balance") is not None else None
        ctx = None
        if m.get("context_window") is not None:
            ctx = self.number(_fmt(path, "context_window"), m["context_window"], integer=True, positive=True)
        max_out = None
        if m.get("max_output_tokens") is not None:
            max_out = self.number(_fmt(path, "max_output_tokens"), m["max_output_tokens"], integer=True, positive=True)
        caps = frozenset(self.str_list(_fmt(path, "capabilities"), m.get("capabilities", [])))
        params = m.get("params") or {}
        if not isinstance(params, dict):
            self.err(_fmt(path, "params"), "expected a mapping of request parameters")
            params = {}
        price = None
        if "price" in m:
            price = self.price(_fmt(path, "price"), m["price"])
        elif provider is not None and upstream:
            entry = catalogue_lookup(provider.kind, upstream)
            if entry is None:
                self.err(_fmt(path, "price"), f"no price for '{upstream}' in the policy or in litellm's catalogue",
                         "add `price: {input_per_mtok: X, output_per_mtok: Y}` (USD per million tokens)")
            else:
                price = Price(entry.input_per_mtok, entry.output_per_mtok, entry.source, entry.cached_input_per_mtok,
                              entry.cache_write_per_mtok, entry.reasoning_per_mtok)
                ctx = ctx or entry.context_window
        if provider is None or not upstream or price is None:
            return None
        if max_out is None and "max_output_tokens" not in m:   # the catalogue knows most APIs' output limits
            entry = catalogue_lookup(provider.kind, upstream)
            max_out = entry.max_output_tokens if entry is not None else None
        return Model(alias, provider.name, upstream, price, int(ctx) if ctx else None, caps, params, replicas,
                     balance or Balance(), int(max_out) if max_out else None)

    # -- replicas, hedging and resuming (docs/routing.md)

    def replicas(self, path: str, m: Mapping[str, Any], providers: Mapping[str, Provider]) -> tuple[str, ...] | None:
        """`replicas: [provider, ...]` (several deployments of one model), or () with `provider:`;
        None when neither is usable (the problem is reported)."""
        if "replicas" not in m:
            if "provider" not in m:
                self.err(_fmt(path, "provider"), "missing required key 'provider'",
                         "add `provider:` (or `replicas: [a, b]` for a model served by several deployments)")
                return None
            return ()
        rp = _fmt(path, "replicas")
        if "provider" in m:
            self.err(rp, "a model has either `provider` or `replicas`, not both",
                     "list every deployment under `replicas:` and remove `provider:`")
            return None
        names = self.str_list(rp, m["replicas"])
        if not names:
            self.err(rp, "no replica listed", "list the providers serving this model: `replicas: [gpu-a, gpu-b]`")
            return None
        ok = True
        for i, name in enumerate(names):
            if name not in providers:
                self.dangling(_fmt(rp, i), "provider", name, providers)
                ok = False
            elif name in names[:i]:
                self.err(_fmt(rp, i), f"'{name}' is listed twice", "list each replica once")
                ok = False
        if not ok:
            return None
        kinds = {providers[n].kind for n in names}
        if len(kinds) > 1:
            self.err(rp, f"replicas of one model must be of one kind, got {', '.join(sorted(kinds))}",
                     "serve the model with one kind of server, or make it two models")
            return None
        return tuple(names)

    def balance(self, path: str, raw: Any, replicas: tuple[str, ...]) -> Balance | None:
        m = self.mapping(path, raw, ("strategy", "affinity", "load_cap"))
        if m is None:
            return None
        if not replicas:
            self.err(path, "`balance` picks among replicas, and this model has one provider",
                     "list its deployments under `replicas:`, or remove `balance`")
        d = Balance()
        strategy = self.choice(_fmt(path, "strategy"), m["strategy"], BALANCE_STRATEGIES) if "strategy" in m else None
        affinity = self.choice(_fmt(path, "affinity"), m["affinity"], AFFINITIES) if "affinity" in m else None
        cap = None
        if m.get("load_cap") is not None:
            cap = self.number(_fmt(path, "load_cap"), m["load_cap"], minimum=1.0)
        return Balance(strategy or d.strategy, affinity or d.affinity, cap if cap is not None else d.load_cap)

    def hedge(self, path: str, raw: Any) -> HedgeSettings | None:
        """`hedge: {delay_s: 0.5 | p90 | p95 | p99, min_delay_s, max_share, max_usd_per_day}`."""
        m = self.mapping(path, raw, ("delay_s", "min_delay_s", "max_share", "max_usd_per_day"), ("delay_s",))
        if m is None or "delay_s" not in m:
            return None
        d = HedgeSettings()
        delay, percentile = None, None
        raw_delay = m["delay_s"]
        if isinstance(raw_delay, str) and re.fullmatch(r"p(\d{2})", raw_delay.strip()):
            percentile = int(raw_delay.strip()[1:]) / 100
            if not 0.5 <= percentile < 1:
                self.err(_fmt(path, "delay_s"), f"'{raw_delay}' is not a useful percentile", "use p90, p95 or p99")
                return None
        else:
            delay = self.number(_fmt(path, "delay_s"), raw_delay, positive=True)
            if delay is None:
                return None
        floor = (self.number(_fmt(path, "min_delay_s"), m["min_delay_s"], positive=True)
                 if m.get("min_delay_s") is not None else d.min_delay_s)
        share = self.number(_fmt(path, "max_share"), m["max_share"]) if m.get("max_share") is not None else d.max_share
        if share is not None and share > 1:
            self.err(_fmt(path, "max_share"), f"a share of requests is between 0 and 1, got {share:g}",
                     "write 0.05 for 5%")
        usd = (self.number(_fmt(path, "max_usd_per_day"), m["max_usd_per_day"])
               if m.get("max_usd_per_day") is not None else None)
        if floor is None or share is None:
            return None
        return HedgeSettings(delay, percentile, floor, share, usd)

    def resume(self, path: str, raw: Any) -> ResumeSettings | None:
        """`resume: {attempts: 1}` (or `resume: true`)."""
        if raw is True:
            return ResumeSettings()
        if raw is False:
            return None
        m = self.mapping(path, raw, ("attempts",))
        if m is None:
            return None
        attempts = (self.number(_fmt(path, "attempts"), m["attempts"], integer=True, positive=True)
                    if m.get("attempts") is not None else 1)
        return ResumeSettings(int(attempts)) if attempts else None

    def route(self, path: str, name: str, raw: Any, models: Mapping[str, Model]) -> Route | None:
        m = self.mapping(path, raw, ("targets", "strategy", "max_cost_usd", "expected_output_tokens", "cache",
                                     "hedge", "resume"), ("targets",))
        if m is None:
            return None
        targets = self.str_list(_fmt(path, "targets"), m.get("targets", []))
        if "targets" in m and not targets:
            self.err(_fmt(path, "targets"), "a route needs at least one target", "list model aliases from `models`")
        for i, t in enumerate(targets):
            if t not in models:
                self.dangling(_fmt(_fmt(path, "targets"), i), "model", t, models)
        strategy = self.choice(_fmt(path, "strategy"), m.get("strategy", "ordered"), STRATEGIES) or "ordered"
        max_cost = None
        if m.get("max_cost_usd") is not None:
            max_cost = self.number(_fmt(path, "max_cost_usd"), m["max_cost_usd"], positive=True)
        eot = None
        if m.get("expected_output_tokens") is not None:
            eot = self.number(_fmt(path, "expected_output_tokens"), m["expected_output_tokens"],
                              integer=True, positive=True)
        cache = self.route_cache(_fmt(path, "cache"), m["cache"]) if m.get("cache") is not None else None
        hedge = self.hedge(_fmt(path, "hedge"), m["hedge"]) if m.get("hedge") is not None else None
        resume = self.resume(_fmt(path, "resume"), m["resume"]) if m.get("resume") is not None else None
        return Route(name, tuple(t for t in targets if t in models), strategy, max_cost,
                     int(eot) if eot else None, cache, hedge, resume)

    def tenant(self, path: str, name: str, raw: Any, residency: Mapping[str, Any], routes: Mapping[str, Route],
               models: Mapping[str, Model]) -> Tenant | None:
        m = self.mapping(path, raw if raw is not None else {}, ("keys", "residency", "budget", "allow_hints", "routes",
                                                                "rate_limits"))
        if m is None:
            return None
        keys = self.str_list(_fmt(path, "keys"), m.get("keys", []))
        for i, k in enumerate(keys):
            if not re.fullmatch(r"sha256:[0-9a-f]{64}", k):
                self.err(_fmt(_fmt(path, "keys"), i), "a key must be stored as its hash, `sha256:<64 hex digits>`",
                         "run `router hash-key YOUR_KEY` and paste its output")
        res = None
        if m.get("residency") is not None:
            res = self.string(_fmt(path, "residency"), m["residency"])
            if res is not None and res not in residency:
                self.dangling(_fmt(path, "residency"), "residency", res, residency)
        budget = None
        if m.get("budget") is not None:
            bp = _fmt(path, "budget")
            b = self.mapping(bp, m["budget"], ("daily_usd", "monthly_usd", "on_exhausted", "routes"))
            if b is not None:
                daily = self.number(_fmt(bp, "daily_usd"), b["daily_usd"]) if b.get("daily_usd") is not None else None
                monthly = (self.number(_fmt(bp, "monthly_usd"), b["monthly_usd"])
                           if b.get("monthly_usd") is not None else None)
                action = self.choice(_fmt(bp, "on_exhausted"), b.get("on_exhausted", "reject"),
                                     ("reject", "downgrade")) or "reject"
                per_route: dict[str, Budget] = {}
                for rname, rb in (self.each(_fmt(bp, "routes"), b.get("routes"), lambda p, n, v: (p, v))).items():
                    rp, raw_rb = rb
                    if rname not in routes and rname not in models:
                        self.dangling(rp, "route", rname, routes)
                    rm = self.mapping(rp, raw_rb, ("daily_usd", "monthly_usd"))
                    if rm is not None:
                        rd = self.number(_fmt(rp, "daily_usd"), rm["daily_usd"]) if rm.get("daily_usd") is not None else None
                        rmo = (self.number(_fmt(rp, "monthly_usd"), rm["monthly_usd"])
                               if rm.get("monthly_usd") is not None else None)
                        per_route[rname] = Budget(rd, rmo, action)
                budget = Budget(daily, monthly, action, per_route)
        hints = self.boolean(_fmt(path, "allow_hints"), m.get("allow_hints", True))
        allowed = None
        if m.get("routes") is not None:
            allowed = tuple(self.str_list(_fmt(path, "routes"), m["routes"]))
            for i, r in enumerate(allowed):
                if r not in routes and r not in models:
                    self.dangling(_fmt(_fmt(path, "routes"), i), "route", r, routes)
        limits = None
        if m.get("rate_limits") is not None:
            limits = self.rate_limits(_fmt(path, "rate_limits"), m["rate_limits"], routes, models, bool(keys))
        return Tenant(name, tuple(keys), res, budget, hints is not False, allowed, limits)

    def rules(self, raw: Any, routes: Mapping[str, Route], residency: Mapping[str, Any],
              tenants: Mapping[str, Tenant], tasks: tuple[str, ...] = TASK_LABELS) -> list[Rule]:
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            self.err("rules", f"expected a list of rules, got {_kind(raw)}")
            return []
        out = []
        for i, item in enumerate(raw):
            path = f"rules[{i}]"
            m = self.mapping(path, item, ("if", "route"), ("route",))
            if m is None:
                continue
            route = self.string(_fmt(path, "route"), m.get("route", ""))
            if route and "route" in m and route not in routes:
                self.dangling(_fmt(path, "route"), "route", route, routes)
            conds: dict[str, Condition] = {}
            cm = self.mapping(_fmt(path, "if"), m.get("if") or {}, CONDITION_KEYS)
            for key, value in (cm or {}).items():
                if key not in CONDITION_KEYS:
                    continue
                cp = _fmt(_fmt(path, "if"), key)
                negate = False
                if isinstance(value, dict):
                    if set(value) != {"not"}:
                        self.err(cp, "a condition is a value, a list of values, or {not: value-or-list}")
                        continue
                    negate, value = True, value["not"]
                values = value if isinstance(value, list) else [value]
                if key == "tools":
                    if not all(isinstance(v, bool) for v in values):
                        self.err(cp, "`tools` matches true or false")
                        continue
                else:
                    values = [str(v) for v in values]
                    known = {"task": tasks, "residency": tuple(residency), "tenant": tuple(tenants),
                             "api": APIS}.get(key)
                    for v in values:
                        if known is not None and v not in known:
                            self.dangling(cp, key, v, known)
                conds[key] = Condition(frozenset(values), negate)
            if route in routes:
                out.append(Rule(i, conds, route))
        if not raw:
            self.err("rules", "no rules: no request could be routed",
                     "add at least a final catch-all rule, e.g. `- {route: general}`")
        elif not any(not r.get("if") for r in raw if isinstance(r, dict)):
            self.err("rules", "no catch-all rule: a request matching no condition could not be routed",
                     "end the list with a rule without `if`, e.g. `- {route: general}`")
        return out

    def retry(self, raw: Any) -> Retry:
        m = self.mapping("retry", raw or {}, ("attempts", "backoff_s", "max_backoff_s", "retry_after_max_s"))
        d = Retry()
        if not m:
            return d
        return Retry(
            int(self.number("retry.attempts", m.get("attempts", d.attempts), integer=True, positive=True)
                or d.attempts),
            self.number("retry.backoff_s", m.get("backoff_s", d.backoff_s)) or 0.0,
            self.number("retry.max_backoff_s", m.get("max_backoff_s", d.max_backoff_s)) or 0.0,
            self.number("retry.retry_after_max_s", m.get("retry_after_max_s", d.retry_after_max_s)) or 0.0,
        )

    def timeouts(self, path: str, raw: Any) -> Timeouts:
        keys = ("connect_s", "first_token_s", "total_s", "attempt_s")
        m = self.mapping(path, raw or {}, keys)
        d = Timeouts()
        if not m:
            return d
        return Timeouts(*(self.number(_fmt(path, k), m[k], positive=True) or getattr(d, k)
                          if m.get(k) is not None else getattr(d, k) for k in keys))

    def classifier_settings(self, raw: Any, routes: Mapping[str, Route]) -> ClassifierSettings:
        m = self.mapping("classifier", raw or {}, ("min_confidence", "fallback_task", "fallback_route", "model"))
        if not m:
            return ClassifierSettings()
        conf = self.number("classifier.min_confidence", m.get("min_confidence", 0.0))
        if conf is not None and conf > 1:
            self.err("classifier.min_confidence", "must be between 0 and 1")
        model_path, model, tasks = None, None, TASK_LABELS
        if m.get("model") is not None:
            model_path, model = self.task_model(m["model"])
            if model is not None:
                tasks = model.classes
        fallback = m.get("fallback_task", "general" if "general" in tasks else None)
        if fallback is None:
            if conf:
                self.err("classifier.fallback_task", "the model has no `general` task to fall back to",
                         f"set fallback_task to one of: {', '.join(tasks)}")
            fallback = tasks[0]
        task = self.choice("classifier.fallback_task", fallback, tasks)
        route = None
        if m.get("fallback_route") is not None:
            route = self.string("classifier.fallback_route", m["fallback_route"])
            if route and route not in routes:
                self.dangling("classifier.fallback_route", "route", route, routes)
        return ClassifierSettings(conf or 0.0, task or tasks[0], route or None, model_path, tasks, model)

    def task_model(self, raw: Any) -> tuple[str | None, Any]:
        """(resolved path, loaded model) of `classifier.model`: a path relative to the policy file."""
        from router.classify.classifier import load_model

        name = self.string("classifier.model", raw)
        if not name:
            return None, None
        base = os.path.dirname(os.path.abspath(self.source)) if os.path.exists(self.source) else os.getcwd()
        path = os.path.normpath(os.path.join(base, os.path.expanduser(name)))
        try:
            return path, load_model(path)
        except FileNotFoundError:
            self.err("classifier.model", f"no model file at {path}",
                     "train one with `router train --data labelled.jsonl --out FILE` (paths are relative to the policy)")
        except (OSError, ValueError) as e:
            self.err("classifier.model", f"cannot load the task model: {e}")
        return path, None

    def reference_model(self, raw: Any, models: Mapping[str, Model]) -> ReferenceModel | None:
        if isinstance(raw, str):
            model = models.get(raw)
            if model is None:
                self.dangling("reference_model", "model", raw, models)
                return None
            return ReferenceModel(raw, model.price)
        m = self.mapping("reference_model", raw, ("name", "price"), ("name", "price"))
        if m is None:
            return None
        name = self.string("reference_model.name", m.get("name", "")) if "name" in m else None
        price = self.price("reference_model.price", m["price"]) if "price" in m else None
        if not name or price is None:
            return None
        return ReferenceModel(name, price)

    def metering_settings(self, raw: Any) -> MeteringSettings:
        m = self.mapping("metering", raw or {}, ("tenant_label", "ledger", "spool", "budget_unavailable",
                                                 "budget_timeout_s", "rate_limit_unavailable", "rate_limit_timeout_s"))
        if not m:
            return MeteringSettings()
        d = MeteringSettings()
        label = self.boolean("metering.tenant_label", m["tenant_label"]) if "tenant_label" in m else False
        ledger = self.string("metering.ledger", m["ledger"]) if m.get("ledger") is not None else None
        spool = self.string("metering.spool", m["spool"]) if m.get("spool") is not None else None
        unavailable = (self.choice("metering.budget_unavailable", m["budget_unavailable"], ("fail_closed", "fail_open"))
                       if m.get("budget_unavailable") is not None else None) or d.budget_unavailable
        timeout = (self.number("metering.budget_timeout_s", m["budget_timeout_s"], positive=True)
                   if m.get("budget_timeout_s") is not None else None) or d.budget_timeout_s
        rl_unavailable = (self.choice("metering.rate_limit_unavailable", m["rate_limit_unavailable"],
                                      ("fail_open", "fail_closed"))
                          if m.get("rate_limit_unavailable") is not None else None) or d.rate_limit_unavailable
        rl_timeout = (self.number("metering.rate_limit_timeout_s", m["rate_limit_timeout_s"], positive=True)
                      if m.get("rate_limit_timeout_s") is not None else None) or d.rate_limit_timeout_s
        return MeteringSettings(bool(label), ledger or None, spool or None, unavailable, float(timeout),
                                rl_unavailable, float(rl_timeout))

    # -- prices, rate limits and the response cache (docs/metering.md)

    def price(self, path: str, raw: Any) -> Price | None:
        """``{input_per_mtok, output_per_mtok, cached_input_per_mtok?, cache_write_per_mtok?,
        reasoning_per_mtok?, windows?}``: USD per million tokens."""
        pm = self.mapping(path, raw, (*_PRICE_KEYS, "windows"), ("input_per_mtok", "output_per_mtok"))
        if pm is None:
            return None
        rates = {k: self.number(_fmt(path, k), pm[k]) for k in _PRICE_KEYS if pm.get(k) is not None}
        if rates.get("input_per_mtok") is None or rates.get("output_per_mtok") is None:
            return None
        base = Price(**{k: v for k, v in rates.items() if v is not None})
        if pm.get("windows") is None:
            return base
        return dataclasses.replace(base, windows=self.price_windows(_fmt(path, "windows"), pm["windows"], base))

    def price_windows(self, path: str, raw: Any, base: Price) -> tuple[PriceWindow, ...]:
        """``[{from: "16:30", to: "00:30", input_per_mtok: ..., ...}]``: UTC, first match wins."""
        if not isinstance(raw, list):
            self.err(path, f"expected a list of time windows, got {_kind(raw)}",
                     'write it as [{from: "16:30", to: "00:30", input_per_mtok: 0.14, output_per_mtok: 0.21}]')
            return ()
        out = []
        for i, item in enumerate(raw):
            wp = _fmt(path, i)
            wm = self.mapping(wp, item, ("from", "to", *_PRICE_KEYS), ("from", "to"))
            if wm is None or "from" not in wm or "to" not in wm:
                continue
            start, end = self.clock_time(_fmt(wp, "from"), wm["from"]), self.clock_time(_fmt(wp, "to"), wm["to"])
            overrides = {k: self.number(_fmt(wp, k), wm[k]) for k in _PRICE_KEYS if wm.get(k) is not None}
            if not overrides:
                self.err(wp, "a window with no price changes nothing", "set the prices that apply in it")
            if start is None or end is None or any(v is None for v in overrides.values()):
                continue
            if start == end:
                self.err(wp, "an empty window: `from` equals `to`")
                continue
            out.append(PriceWindow(start, end, dataclasses.replace(base, **overrides)))
        return tuple(out)

    def clock_time(self, path: str, raw: Any) -> int | None:
        """``HH:MM`` (UTC) -> minutes after midnight; ``24:00`` is midnight at the end of the day."""
        text = self.string(path, raw)
        m = re.fullmatch(r"([01]?\d|2[0-4]):([0-5]\d)", text or "")
        if m is None or (m.group(1) == "24" and m.group(2) != "00"):
            self.err(path, f"expected a UTC time HH:MM, got {raw!r}", 'write it as "16:30"')
            return None
        return (int(m.group(1)) * 60 + int(m.group(2))) % 1440

    def route_cache(self, path: str, raw: Any) -> RouteCache | None:
        m = self.mapping(path, raw, ("ttl_s", "max_entries", "max_bytes", "max_temperature"), ("ttl_s",))
        if m is None or "ttl_s" not in m:
            return None
        ttl = self.number(_fmt(path, "ttl_s"), m["ttl_s"], positive=True)
        entries = (self.number(_fmt(path, "max_entries"), m["max_entries"], integer=True, positive=True)
                   if m.get("max_entries") is not None else None)
        size = (self.number(_fmt(path, "max_bytes"), m["max_bytes"], integer=True, positive=True)
                if m.get("max_bytes") is not None else None)
        if m.get("max_entries") is None and m.get("max_bytes") is None:
            self.err(path, "an unbounded cache could fill the memory of every process",
                     "set `max_entries:` and/or `max_bytes:`")
        temperature = (self.number(_fmt(path, "max_temperature"), m["max_temperature"])
                       if m.get("max_temperature") is not None else 0.0)
        if ttl is None or temperature is None:
            return None
        return RouteCache(ttl, int(entries) if entries else None, int(size) if size else None, temperature)

    def rate_limit(self, path: str, m: Mapping[str, Any]) -> RateLimit:
        values = {k: self.number(_fmt(path, k), m[k], integer=True, positive=True)
                  for k in _RATE_KEYS if m.get(k) is not None}
        return RateLimit(**{k: int(v) for k, v in values.items() if v is not None})

    def rate_limits(self, path: str, raw: Any, routes: Mapping[str, Route], models: Mapping[str, Model],
                    has_keys: bool) -> RateLimits | None:
        """A tenant's ``rate_limits``: its own limits, ``per_key``, ``routes`` (route or model alias), ``cache_hits``."""
        m = self.mapping(path, raw, (*_RATE_KEYS, "per_key", "routes", "cache_hits"))
        if m is None:
            return None
        own = self.rate_limit(path, m)
        per_key = None
        if m.get("per_key") is not None:
            kp = _fmt(path, "per_key")
            km = self.mapping(kp, m["per_key"], _RATE_KEYS)
            per_key = self.rate_limit(kp, km) if km is not None else None
            if not has_keys:
                self.err(kp, "per-key limits apply to the tenant's API keys, and it has none", "add `keys:`")
        per_route: dict[str, RateLimit] = {}
        for name, (rp, raw_rl) in self.each(_fmt(path, "routes"), m.get("routes"), lambda p, n, v: (p, v)).items():
            if name not in routes and name not in models:
                self.dangling(rp, "route or model", name, (*routes, *models))
            rm = self.mapping(rp, raw_rl, _RATE_KEYS)
            if rm is not None:
                per_route[name] = self.rate_limit(rp, rm)
        hits = self.boolean(_fmt(path, "cache_hits"), m["cache_hits"]) if "cache_hits" in m else True
        if not own.limited and not (per_key and per_key.limited) and not any(r.limited for r in per_route.values()):
            self.err(path, "no limit is set", f"set one of {', '.join(_RATE_KEYS)}")
        return RateLimits(own, per_key, per_route, hits is not False)

    def check_residency(self, providers: Mapping[str, Provider], models: Mapping[str, Model],
                        routes: Mapping[str, Route], rules: list[Rule], residency: Mapping[str, frozenset[str]],
                        tenants: Mapping[str, Tenant]) -> None:
        def serves(route: Route, res: str) -> bool:
            regions = residency[res]
            return any(providers[p].region in regions for t in route.targets for p in models[t].providers)

        for res, regions in residency.items():
            if not any(p.region in regions for p in providers.values()):
                self.err(_fmt("residency", res), f"no provider is in any of the regions {sorted(regions)}",
                         "set `region:` on a provider, or list a region your providers are in")
        for rule in rules:
            cond = rule.conditions.get("residency")
            if cond is None or cond.negate:
                continue
            for res in sorted(cond.values):
                if res in residency and not serves(routes[rule.route], res):
                    self.err(f"rules[{rule.index}].route",
                             f"route '{rule.route}' has no target in a region allowed for residency '{res}' "
                             f"({', '.join(sorted(residency[res]))})",
                             "add a model served by a provider in one of those regions to the route's targets")
        for t in tenants.values():
            if t.residency and t.residency in residency and not any(serves(r, t.residency) for r in routes.values()):
                self.err(f"tenants.{t.name}.residency", f"no route can serve residency '{t.residency}'",
                         "add a route with a target in an allowed region")

    def dangling(self, path: str, what: str, name: str, known: Mapping[str, Any] | tuple[str, ...]) -> None:
        names = list(known)
        close = difflib.get_close_matches(name, names, n=1)
        if close:
            fix = f"did you mean '{close[0]}'?"
        elif names:
            fix = f"use one of: {', '.join(names)}"
        else:
            fix = f"define it first (no {what} is defined)"
        self.err(path, f"unknown {what} '{name}'", fix)


_PRICE_KEYS = ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "cache_write_per_mtok",
               "reasoning_per_mtok")
_RATE_KEYS = ("requests_per_minute", "tokens_per_minute", "concurrent")


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)
