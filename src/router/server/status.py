"""The status page: ``GET /status`` (HTML) and ``GET /status.json``, for the person at the sidecar.

One snapshot of this worker, read when the page is requested (reload to update): the policy and
when it was loaded; every provider and model with its health (circuit), saturation, scraped queue,
requests in flight and time-to-first-token estimates; each tenant's spend today and budget left,
its rate limits and how much of each this minute's window has used (read live from the rate
limiter: this process's counters, or Redis shared by every replica); the last routing decisions (task, confidence, route, the candidates excluded
and why). Never a prompt, an answer, an error message (which may quote one) or a key.

Server-rendered with the standard library's `html.escape`: no template engine, no script, no
external asset, so it works offline and behind any proxy. Same access rule as ``/metrics``
(docs/proxy.md): not authenticated, so keep it off the public network.
"""

from __future__ import annotations

import collections
import datetime
import html
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from router.core.meter import Meter
from router.core.response import RouterInfo
from router.metering.ratelimit import ScopeUsage
from router.monitor.monitor import Monitor

if TYPE_CHECKING:
    from router.core.decision import Decision
    from router.core.policy import Policy
    from router.engine.engine import Engine

__all__ = ["StatusPage"]

_STATES = {0: "healthy", 1: "degraded", 2: "down"}


def _day(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d")


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class _SpendToday(Meter):
    """What each tenant spent today (UTC) through this worker: a sum per tenant, reset at midnight."""

    def __init__(self, wall: Callable[[], float]):
        self.wall = wall
        self._set_day(wall())
        self.spent: dict[str, float] = {}
        self.requests: dict[str, int] = {}

    def _set_day(self, now: float) -> None:
        self.day = _day(now)
        self._start = float(int(now // 86400) * 86400)   # UTC days are 86,400 s long in POSIX time
        self._end = self._start + 86400.0

    def roll(self, now: float) -> bool:
        """Start a new day at 00:00 UTC; False for a time before the current day. Within the day, two
        comparisons (formatting the date cost 3 us a request)."""
        if self._start <= now < self._end:
            return True
        if now < self._start:
            return False
        self._set_day(now)
        self.spent, self.requests = {}, {}
        return True

    def record(self, info: RouterInfo) -> None:
        if not self.roll(info.created or self.wall()):
            return
        tenant = info.tenant or ""
        self.spent[tenant] = self.spent.get(tenant, 0.0) + info.cost_usd
        self.requests[tenant] = self.requests.get(tenant, 0) + 1


class StatusPage:
    """Renders `engine`'s state. Keeps the last `keep` requests' decisions (the engine's `recent`)
    and a per-tenant spend tally (a meter added to the engine's meters).

    `loaded_at` tells when the serving policy was loaded (``router serve`` passes its own);
    without it the page notes the first time it saw each policy."""

    def __init__(self, engine: Engine, *, keep: int = 50, wall: Callable[[], float] = time.time,
                 loaded_at: Callable[[], float | None] | None = None):
        self.engine, self.wall = engine, wall
        self.started = wall()
        engine.recent = collections.deque(maxlen=keep)
        self.tally = _SpendToday(wall)
        engine.meters.append(self.tally)
        self._loaded_at = loaded_at
        self._seen: tuple[Policy, float] = (engine.policy, self.started)

    # ------------------------------------------------------------------ the data

    def loaded_at(self, policy: Policy) -> float:
        if self._loaded_at is not None:
            t = self._loaded_at()
            if t is not None:
                return t
        if self._seen[0] is not policy:
            self._seen = (policy, self.wall())
        return self._seen[1]

    async def asnapshot(self) -> dict[str, Any]:
        """`snapshot` with each tenant's live rate-limit counts (``/status.json``)."""
        policy = self.engine.policy
        return self.snapshot(await self.rate_limit_usage(policy), policy=policy)

    async def ahtml(self) -> bytes:
        """`html` with each tenant's live rate-limit counts (``/status``)."""
        return self.html(await self.asnapshot())

    def snapshot(self, usage: dict[str, list[ScopeUsage] | None] | None = None, *,
                 policy: Policy | None = None) -> dict[str, Any]:
        """The page as plain data; `usage`: the live rate-limit counts by tenant (`rate_limit_usage`),
        None for a tenant whose store did not answer. Without it, only the configured limits."""
        engine = self.engine
        policy = policy if policy is not None else engine.policy
        now = self.wall()
        self.tally.roll(now)
        return {
            "generated_at": _iso(now),
            "worker": {"pid": os.getpid(), "up_s": round(now - self.started, 1)},
            "policy": {"source": policy.source, "digest": policy.digest, "loaded_at": _iso(self.loaded_at(policy))},
            "providers": self.providers(policy),
            "tenants": self.tenants(policy, usage),
            "decisions": self.decisions(),
        }

    async def rate_limit_usage(self, policy: Policy) -> dict[str, list[ScopeUsage] | None]:
        """Each rate-limited tenant's scopes with their counts in the current window, from the engine's
        rate limiter (nothing is counted by reading); None for a tenant when the store did not answer."""
        limited = [name for name, t in policy.tenants.items() if t.rate_limits is not None]
        if not limited:
            return {}
        limiter = self.engine.admission.limiter
        out: dict[str, list[ScopeUsage] | None] = {}
        for name in limited:
            try:
                out[name] = await limiter.tenant_usage(policy, name, timeout_s=policy.metering.rate_limit_timeout_s)
            except Exception:   # a store that does not answer: the page still renders, marked unavailable
                out[name] = None
        return out

    def providers(self, policy: Policy) -> list[dict[str, Any]]:
        monitor = self.engine.monitor if isinstance(self.engine.monitor, Monitor) else None
        states = self.engine.provider_states()
        health = monitor.health if monitor is not None else None
        load = monitor.load if monitor is not None else None
        saturated = load.saturated() if load is not None else frozenset()
        out: dict[str, dict[str, Any]] = {}
        for name, p in policy.providers.items():
            out[name] = {"name": name, "kind": p.kind, "region": p.region, "self_hosted": p.self_hosted,
                         "models": []}
        for alias, model in policy.models.items():
            for pname in model.providers:
                entry = out.get(pname)
                if entry is None:
                    continue
                key = model.key(pname)
                row: dict[str, Any] = {"alias": alias, "model": model.model,
                                       "state": _STATES.get(states.get((pname, alias), 0), "healthy"),
                                       "saturated": key in saturated, "inflight": 0, "queue": None,
                                       "ttft_p50_s": None, "ttft_p95_s": None}
                if health is not None:
                    row["inflight"] = health.inflight.get(key, 0)
                if monitor is not None:
                    for q, field in ((0.5, "ttft_p50_s"), (0.95, "ttft_p95_s")):
                        v = monitor.ttft_quantile(key, q)
                        row[field] = round(v, 4) if v is not None else None
                if load is not None and key in load.samples:
                    sample = load.fresh(key)
                    if sample is not None:
                        row["queue"] = {"waiting": sample.waiting, "running": sample.running,
                                        "kv_cache": sample.kv_cache}
                entry["models"].append(row)
        for entry in out.values():
            worst = max((m["state"] for m in entry["models"]), key=("healthy", "degraded", "down").index,
                        default="healthy")
            entry["state"] = worst
        return list(out.values())

    def tenants(self, policy: Policy, usage: dict[str, list[ScopeUsage] | None] | None = None
                ) -> list[dict[str, Any]]:
        budget = self.engine.budget
        tally = self.tally
        limited: dict[str, int] = {}
        for info, _, error in self._recent():
            if error in ("RateLimited", "RateLimitUnavailable") and info.tenant:
                limited[info.tenant] = limited.get(info.tenant, 0) + 1
        out = []
        for name, t in policy.tenants.items():
            row: dict[str, Any] = {"name": name, "spent_today_usd": round(tally.spent.get(name, 0.0), 6),
                                   "requests_today": tally.requests.get(name, 0), "daily_usd": None,
                                   "monthly_usd": None, "left_usd": None, "on_exhausted": None,
                                   "rate_limits": None, "rate_limit_usage": None,
                                   "rate_limited_recent": limited.get(name, 0)}
            if t.budget is not None:
                row.update(daily_usd=t.budget.daily_usd, monthly_usd=t.budget.monthly_usd,
                           on_exhausted=t.budget.on_exhausted)
                if budget is not None:
                    try:
                        left = budget.remaining(policy, name)
                    except Exception:
                        left = None
                    row["left_usd"] = round(left, 6) if left is not None else None
            rl = t.rate_limits
            if rl is not None:
                def limit(x: Any) -> dict[str, Any] | None:
                    return None if x is None else {"requests_per_minute": x.requests_per_minute,
                                                   "tokens_per_minute": x.tokens_per_minute,
                                                   "concurrent": x.concurrent}
                row["rate_limits"] = {"tenant": limit(rl.tenant), "per_key": limit(rl.per_key),
                                      "routes": {k: limit(v) for k, v in rl.routes.items()}}
                if usage is not None and name in usage:
                    scopes = usage[name]
                    row["rate_limit_usage"] = (
                        {"available": False, "scopes": []} if scopes is None else
                        {"available": True, "window_s": 60, "scopes": [_usage_row(su) for su in scopes]})
            out.append(row)
        return out

    def _recent(self) -> Sequence[tuple[RouterInfo, Decision | None, str | None]]:
        recent = self.engine.recent
        return list(recent) if recent is not None else []

    def decisions(self) -> list[dict[str, Any]]:
        """The last requests, newest first: what was decided and how it went (no text of them)."""
        out = []
        for info, decision, error in reversed(self._recent()):
            excluded = []
            if decision is not None:
                for c in decision.candidates:
                    if c.excluded is not None:
                        excluded.append({"model": c.model, "provider": c.provider, "why": c.excluded})
                    for provider, why in c.replicas:
                        if why is not None and c.excluded is None:
                            excluded.append({"model": c.model, "provider": provider, "why": why})
            out.append({"at": _iso(info.created), "request_id": info.request_id, "api": info.api,
                        "tenant": info.tenant, "task": info.task or None, "task_source": info.task_source or None,
                        "confidence": round(info.confidence, 3) if info.task else None,
                        "route": info.route or None, "rule": info.rule, "provider": info.provider,
                        "model": info.model, "status": info.status, "error_type": error,
                        "cost_usd": round(info.cost_usd, 8), "latency_s": round(info.latency_s, 4),
                        "cache": info.response_cache, "attempts": [{"provider": a.provider, "model": a.model,
                                                                    "outcome": a.outcome} for a in info.attempts],
                        "excluded": excluded})
        return out

    # ------------------------------------------------------------------ the page

    def html(self, snapshot: dict[str, Any] | None = None) -> bytes:
        s = snapshot if snapshot is not None else self.snapshot()
        e = html.escape
        p = s["policy"]
        parts = [_HEAD, f"<h1>router status</h1><p class=meta>worker {s['worker']['pid']}, up "
                 f"{s['worker']['up_s']:.0f} s &middot; generated {e(s['generated_at'])} &middot; reload to update"
                 f" &middot; <a href=\"/status.json\">JSON</a></p>",
                 f"<section id=policy><h2>Policy</h2><p><code>{e(p['source'])}</code> digest "
                 f"<code class=digest>{e(p['digest'])}</code>, loaded {e(p['loaded_at'] or '?')}</p></section>"]
        rows = []
        for prov in s["providers"]:
            for m in prov["models"] or [{"alias": "", "model": "", "state": prov["state"], "saturated": False,
                                         "inflight": 0, "queue": None, "ttft_p50_s": None, "ttft_p95_s": None}]:
                q = m["queue"]
                queue = (f"{q['waiting']:g} waiting, {q['running']:g} running"
                         + (f", KV {q['kv_cache']:.0%}" if q.get("kv_cache") is not None else "")) if q else ""
                rows.append(
                    f"<tr class=\"state-{e(m['state'])}\" data-provider=\"{e(prov['name'])}\" "
                    f"data-model=\"{e(m['alias'])}\"><td>{e(prov['name'])}</td><td>{e(prov['kind'])}"
                    f"{' (self-hosted)' if prov['self_hosted'] else ''}</td><td>{e(prov['region'] or '')}</td>"
                    f"<td>{e(m['alias'])}</td><td><code>{e(m['model'])}</code></td>"
                    f"<td class=state>{e(m['state'])}</td><td>{'yes' if m['saturated'] else ''}</td>"
                    f"<td>{e(queue)}</td><td class=num>{m['inflight']}</td>"
                    f"<td class=num>{_secs(m['ttft_p50_s'])}</td><td class=num>{_secs(m['ttft_p95_s'])}</td></tr>")
        parts.append("<section id=providers><h2>Providers and models</h2><table><thead><tr><th>provider</th>"
                     "<th>kind</th><th>region</th><th>model</th><th>upstream name</th><th>health</th>"
                     "<th>saturated</th><th>scraped queue</th><th>in flight</th><th>TTFT p50</th>"
                     "<th>TTFT p95</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></section>")
        rows = []
        for t in s["tenants"]:
            budget = ""
            if t["daily_usd"] is not None or t["monthly_usd"] is not None:
                budget = " / ".join(x for x in (f"${t['daily_usd']:g} a day" if t["daily_usd"] is not None else "",
                                                f"${t['monthly_usd']:g} a month" if t["monthly_usd"] is not None
                                                else "") if x)
            left = "" if t["left_usd"] is None else f"${t['left_usd']:.4f}"
            rows.append(f"<tr data-tenant=\"{e(t['name'])}\"><td>{e(t['name'])}</td>"
                        f"<td class=\"num spent\">${t['spent_today_usd']:.4f}</td>"
                        f"<td class=num>{t['requests_today']}</td><td>{e(budget)}</td>"
                        f"<td class=\"num left\">{e(left)}</td><td>{e(_limits(t['rate_limits']))}</td>"
                        f"<td class=usage>{_usage_html(t['rate_limit_usage'])}</td>"
                        f"<td class=num>{t['rate_limited_recent']}</td></tr>")
        parts.append("<section id=tenants><h2>Tenants</h2><table><thead><tr><th>tenant</th><th>spent today "
                     "(this worker)</th><th>requests today</th><th>budget</th><th>budget left</th>"
                     "<th>rate limits</th><th>used / limit this minute</th><th>rate-limited (recent)</th></tr></thead><tbody>" + "".join(rows)
                     + "</tbody></table>" + ("" if rows else "<p>No tenants in the policy.</p>") + "</section>")
        rows = []
        for d in s["decisions"]:
            excluded = "; ".join(f"{x['model']}@{x['provider']}: {x['why']}" for x in d["excluded"])
            attempts = ", ".join(f"{a['provider']}/{a['model']} {a['outcome']}" for a in d["attempts"])
            conf = "" if d["confidence"] is None else f"{d['confidence']:.2f}"
            rows.append(f"<tr class=\"status-{e(d['status'])}\"><td>{e((d['at'] or '')[11:19])}</td>"
                        f"<td>{e(d['api'])}</td><td>{e(d['tenant'] or '')}</td>"
                        f"<td>{e(d['task'] or '')}</td><td class=num>{conf}</td><td>{e(d['route'] or '')}</td>"
                        f"<td>{e(excluded)}</td><td>{e(attempts)}</td><td>{e(d['status'])}"
                        f"{' (' + e(d['error_type']) + ')' if d['error_type'] else ''}</td>"
                        f"<td class=num>${d['cost_usd']:.6f}</td></tr>")
        parts.append("<section id=decisions><h2>Last routing decisions</h2><table><thead><tr><th>time</th>"
                     "<th>API</th><th>tenant</th><th>task</th><th>confidence</th><th>route</th>"
                     "<th>excluded (why)</th><th>attempts</th><th>result</th><th>cost</th></tr></thead><tbody>"
                     + "".join(rows) + "</tbody></table>"
                     + ("" if rows else "<p>No requests yet.</p>") + "</section></body></html>")
        return "".join(parts).encode()


def _usage_row(su: ScopeUsage) -> dict[str, Any]:
    """One scope's live counts against its limits, for the page: ``{"used", "limit"}`` per limited kind."""
    lim, u = su.scope.limit, su.usage
    row: dict[str, Any] = {"scope": su.scope.label}
    for kind, used, limit in (("requests", u.requests, lim.requests_per_minute),
                              ("tokens", u.tokens, lim.tokens_per_minute),
                              ("concurrent", u.concurrent, lim.concurrent)):
        row[kind] = None if limit is None else {"used": used, "limit": limit}
    row["requests_reset_s"], row["tokens_reset_s"] = round(u.requests_reset_s, 3), round(u.tokens_reset_s, 3)
    return row


def _usage_html(usage: dict[str, Any] | None) -> str:
    if usage is None:
        return ""
    if not usage["available"]:
        return "<span class=unavailable>rate-limit store unavailable</span>"
    e = html.escape
    lines = []
    for r in usage["scopes"]:
        parts, attrs = [], []
        for kind, word in (("requests", "requests"), ("tokens", "tokens"), ("concurrent", "in flight")):
            x = r[kind]
            if x is not None:
                parts.append(f"{x['used']} / {x['limit']} {word}")
                attrs.append(f" data-{kind}=\"{x['used']}\"")
        lines.append(f"<div class=rl data-scope=\"{e(r['scope'])}\"{''.join(attrs)}>{e(r['scope'])}: "
                     f"{e(', '.join(parts))}</div>")
    return "".join(lines)


def _secs(v: float | None) -> str:
    return "" if v is None else f"{v * 1000:.0f} ms"


def _limits(rl: dict[str, Any] | None) -> str:
    if not rl:
        return ""
    parts = []
    for scope, lim in (("tenant", rl.get("tenant")), ("per key", rl.get("per_key"))):
        if lim:
            text = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in lim.items() if v is not None)
            if text:
                parts.append(f"{scope}: {text}")
    for route, lim in (rl.get("routes") or {}).items():
        text = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in lim.items() if v is not None)
        if text:
            parts.append(f"{route}: {text}")
    return "; ".join(parts)


_HEAD = """<!doctype html><html lang=en><head><meta charset=utf-8>
<meta name=viewport content="width=device-width, initial-scale=1"><title>router status</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.4em;margin:0}h2{font-size:1.1em;margin:1.4em 0 .4em}.meta{color:#666;margin:.2em 0 1em}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ddd;padding:.3em .5em;text-align:left;
vertical-align:top}th{background:#f4f4f4;font-weight:600}.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:.95em}tr.state-down td.state{background:#fbd5d5;color:#8a1010;font-weight:600}
tr.state-degraded td.state{background:#fdf0c8;color:#7a5a00}tr.state-healthy td.state{color:#16632b}
tr.status-error td{color:#8a1010}tr.status-cancelled td{color:#777}
@media (prefers-color-scheme:dark){body{background:#111;color:#ddd}th{background:#222}th,td{border-color:#333}}
</style></head><body>"""
