"""`router report`: spend, tokens, requests, error rate and savings from the ledger; price comparisons.

>>> print(render(summarize(open_ledger("ledger.db"), by="route"), "table"))          # doctest: +SKIP
>>> print(render(compare([("deepseek", Price(0.28, 0.42))], 100e6, 0.75), "table"))  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["compare", "parse_tokens", "parse_when", "render", "run", "summarize"]

_REL = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(text: str, now: float | None = None) -> float:
    """``2025-06-01``, ``2025-06-01T12:00``, a Unix time, or a duration ago (``7d``, ``24h``) -> Unix seconds."""
    now = time.time() if now is None else now
    m = _REL.match(text.strip())
    if m:
        return now - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"cannot read time '{text}': use 2025-06-01, 2025-06-01T12:00 or 7d / 24h") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def parse_tokens(text: str) -> float:
    """``100M``, ``2.5B``, ``750k`` or a plain number -> tokens."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMbB]?)\s*", text)
    if not m:
        raise ValueError(f"cannot read token count '{text}': write e.g. 100M, 2.5B or 750k")
    return float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}[m.group(2).lower()]


def summarize(ledger: Any, *, by: str | None = None, since: float | None = None,
              until: float | None = None) -> list[dict[str, Any]]:
    """One dict per group: requests, errors, error_rate, tokens (cached_tokens: the prompt tokens read from
    providers' prompt caches), cost_usd, reference_cost_usd, savings_usd, and the response cache's
    cache_hits and cache_saved_usd (what the upstream calls the hits replaced cost)."""
    rows = []
    for r in ledger.summary(by=by, since=since, until=until):
        rows.append({by or "all": _label(r.key), "requests": r.requests,
                     "errors": r.errors, "error_rate": round(r.error_rate, 4),
                     "prompt_tokens": r.prompt_tokens, "cached_tokens": r.cached_tokens,
                     "completion_tokens": r.completion_tokens,
                     "reasoning_tokens": r.reasoning_tokens, "cost_usd": round(r.cost_usd, 6),
                     "reference_cost_usd": round(r.reference_cost_usd, 6), "savings_usd": round(r.savings_usd, 6),
                     "cache_hits": r.cache_hits, "cache_saved_usd": round(r.cache_saved_usd, 6)})
    rows.sort(key=lambda d: -d["cost_usd"])
    return rows


def compare(models: Sequence[tuple[str, Any]], tokens: float, input_share: float,
            cache_hit_rate: float = 0.0) -> list[dict[str, Any]]:
    """What `tokens` tokens (a share `input_share` of them prompt) cost on each (name, Price), with a
    share `cache_hit_rate` of the prompt tokens read from the provider's prompt cache."""
    from router.core.pricing import usage_cost
    from router.core.translate import Usage

    inp, out = tokens * input_share, tokens * (1 - input_share)
    cached = inp * cache_hit_rate
    rows = []
    for name, price in models:
        cost = usage_cost(price, Usage(int(inp), int(out), cached_tokens=int(cached)))
        row: dict[str, Any] = {"model": name, "input_per_mtok": price.input_per_mtok}
        if cache_hit_rate:
            row["cached_input_per_mtok"] = (price.cached_input_per_mtok if price.cached_input_per_mtok is not None
                                            else price.input_per_mtok)
        row.update({"output_per_mtok": price.output_per_mtok, "input_tokens": int(inp)})
        if cache_hit_rate:
            row["cached_tokens"] = int(cached)
        row.update({"output_tokens": int(out), "cost_usd": round(cost, 2)})
        rows.append(row)
    cheapest = min((r["cost_usd"] for r in rows), default=0.0)
    for r in rows:
        r["vs_cheapest"] = f"{r['cost_usd'] / cheapest:.1f}x" if cheapest else "-"
    return rows


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if not rows:
        return "" if fmt == "csv" else "(no requests in the ledger for this period)"
    cols = list(rows[0])
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, cols, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue().rstrip("\n")
    cells = [[_cell(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.6f}".rstrip("0").rstrip(".") if abs(v) < 1000 else f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _label(key: str | None) -> str:
    # An empty route or task: a request refused before routing (bad input, auth, unknown model).
    return "-" if key is None else (key or "(refused)")


def _numeric(v: str) -> bool:
    return bool(re.fullmatch(r"-?[\d,]+(\.\d+)?x?", v))


def plot(ledger: Any, path: str, *, by: str, since: float | None, until: float | None, bucket_s: int = 86400) -> None:
    """Spend and savings per time bucket, one line per `by` value, into a PNG (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'router[plot]'") from None
    series: dict[str, dict[float, tuple[float, float]]] = {}
    for r in ledger.summary(by=by, since=since, until=until, bucket_s=bucket_s):
        series.setdefault(_label(r.key), {})[r.bucket or 0.0] = (r.cost_usd, r.savings_usd)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for key, points in sorted(series.items()):
        xs = sorted(points)
        dates = [datetime.fromtimestamp(x, UTC) for x in xs]
        ax1.plot(dates, [points[x][0] for x in xs], marker="o", label=key)
        ax2.plot(dates, [points[x][1] for x in xs], marker="o", label=key)
    ax1.set_ylabel("spend (USD)")
    ax2.set_ylabel("savings vs reference (USD)")
    ax1.set_title(f"spend and savings by {by}")
    ax1.legend(loc="upper left", fontsize="small")
    buckets = {x for points in series.values() for x in points}
    if len(buckets) == 1:  # one day of data: show that day, not years of empty axis around it
        day = datetime.fromtimestamp(next(iter(buckets)), UTC)
        ax1.set_xlim(day - timedelta(seconds=bucket_s), day + timedelta(seconds=bucket_s))
    fig.autofmt_xdate()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _compare_models(spec: str, policy_path: str | None) -> list[tuple[str, Any]]:
    """``alias,name=IN/OUT[/CACHED],...``: aliases from the policy, or explicit USD per million input and
    output tokens (and, optionally, cached input tokens)."""
    from router.core.policy import Price

    out: list[tuple[str, Any]] = []
    policy = None
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        m = re.fullmatch(r"(.+?)=(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)(?:/(\d+(?:\.\d+)?))?", item)
        if m:
            cached = float(m.group(4)) if m.group(4) is not None else None
            out.append((m.group(1), Price(float(m.group(2)), float(m.group(3)), cached_input_per_mtok=cached)))
            continue
        if policy is None:
            from router.core.policy_parser import load_policy
            from router.engine.client import default_policy_path

            policy = load_policy(policy_path or default_policy_path())
        if item in policy.models:
            out.append((item, policy.models[item].price))
        elif policy.reference_model is not None and item == policy.reference_model.name:
            out.append((item, policy.reference_model.price))
        else:
            raise ValueError(f"unknown model '{item}': use an alias from the policy or NAME=IN/OUT[/CACHED] "
                             f"(USD per million tokens), e.g. claude-sonnet=3/15/0.3")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ledger", help="ledger URL or SQLite path (default: $ROUTER_LEDGER, the policy's "
                                    "metering.ledger, else router-ledger.db)")
    p.add_argument("--policy", help="policy file, for --compare aliases and the default ledger")
    p.add_argument("--since", help="start: 2025-06-01, 2025-06-01T12:00, or a duration ago (7d, 24h)")
    p.add_argument("--until", help="end (exclusive), same forms as --since")
    p.add_argument("--by", choices=("tenant", "route", "provider", "model", "task", "api"), default=None)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--plot", metavar="FILE.png", help="draw spend and savings per day by --by (needs matplotlib)")
    p.add_argument("--compare", metavar="MODELS", help="price table instead of the ledger: aliases or NAME=IN/OUT")
    p.add_argument("--tokens", default="100M", help="tokens per period for --compare (default 100M)")
    p.add_argument("--input-share", type=float, default=0.75, dest="input_share",
                   help="share of the tokens that are prompt tokens, for --compare (default 0.75)")
    p.add_argument("--cache-hit-rate", type=float, default=0.0, dest="cache_hit_rate",
                   help="share of the prompt tokens read from the provider's prompt cache, billed at its cached-input "
                        "price, for --compare (default 0)")


def _ledger_target(args: argparse.Namespace) -> str:
    if args.ledger:
        return args.ledger
    if os.environ.get("ROUTER_LEDGER"):
        return os.environ["ROUTER_LEDGER"]
    if args.policy or os.environ.get("ROUTER_POLICY"):
        from router.core.policy_parser import load_policy

        policy = load_policy(args.policy or os.environ["ROUTER_POLICY"])
        if policy.metering.ledger:
            return policy.metering.ledger
    return "router-ledger.db"


def run(args: argparse.Namespace) -> int:
    try:
        if args.compare:
            if not 0 <= args.input_share <= 1:
                raise ValueError("--input-share must be between 0 and 1")
            if not 0 <= args.cache_hit_rate <= 1:
                raise ValueError("--cache-hit-rate must be between 0 and 1")
            rows = compare(_compare_models(args.compare, args.policy), parse_tokens(args.tokens), args.input_share,
                           args.cache_hit_rate)
            print(render(rows, args.format))
            return 0
        from router.metering.ledger import open_ledger

        since = parse_when(args.since) if args.since else None
        until = parse_when(args.until) if args.until else None
        target = _ledger_target(args)
        if "://" not in target and not os.path.exists(target):
            raise ValueError(f"no ledger at '{target}': pass --ledger PATH-or-URL")
        ledger = open_ledger(target)
        try:
            print(render(summarize(ledger, by=args.by, since=since, until=until), args.format))
            if args.plot:
                plot(ledger, args.plot, by=args.by or "route", since=since, until=until)
                print(f"wrote {args.plot}", file=sys.stderr)
        finally:
            ledger.close()
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
