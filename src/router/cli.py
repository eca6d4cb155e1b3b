"""The `router` command: check, explain, train, eval, demo, hash-key, serve, report, simulate."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


def _cmd_check(args: argparse.Namespace) -> int:
    from router.core.policy_parser import check_policy

    failed = False
    for path in args.files:
        issues = check_policy(path)
        if issues:
            failed = True
            print(f"{path}: {len(issues)} problem{'s' if len(issues) != 1 else ''}", file=sys.stderr)
            for issue in issues:
                print(f"  {issue}", file=sys.stderr)
        else:
            print(f"{path}: ok")
    return 1 if failed else 0


def _cmd_explain(args: argparse.Namespace) -> int:
    import time

    from router.core.decision import LiveState, decide
    from router.core.errors import RouterError
    from router.core.policy_parser import load_policy
    from router.core.pricing import describe_price
    from router.engine.client import default_policy_path

    text = " ".join(args.text) if args.text else sys.stdin.read()
    content: object = text
    if args.image:
        content = [{"type": "text", "text": text}, *({"type": "image_url", "image_url": {"url": url}} for url in args.image)]
    body: dict = {"model": args.model, "messages": [{"role": "user", "content": content}]}
    if args.system:
        body["messages"].insert(0, {"role": "system", "content": args.system})
    if args.max_tokens:
        body["max_tokens"] = args.max_tokens
    if args.tools:
        body["tools"] = [{"type": "function", "function": {"name": "tool", "parameters": {"type": "object"}}}]
    try:
        policy = load_policy(args.policy or default_policy_path())
        state = LiveState(circuit_open=_deployments(policy, args.down), saturated=_deployments(policy, args.saturated))
        now = time.time()
        decision = decide(policy, body, task=args.task, residency=args.residency, tenant=args.tenant, state=state,
                          api=args.api, now=now)
    except RouterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = decision.to_dict()
    for cand in out.get("candidates", ()):   # each price with its source (policy, or catalogue and its version)
        model = policy.models.get(cand.get("model", ""))
        if model is not None:
            cand["price"] = describe_price(model.price, now)
    print(json.dumps(out, indent=2))
    return 0


def _deployments(policy: Any, names: Sequence[str] | None) -> frozenset[str]:
    """`explain --down/--saturated`: model aliases as given; a provider name stands for every
    deployment on it (a replica of a model included)."""
    out: set[str] = set()
    for name in names or ():
        on = [key for key, (_, provider) in policy.deployments.items() if provider == name]
        out.update(on or (name,))
    return frozenset(out)


def _cmd_train(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from router.classify.classifier import DEFAULT_MODEL_PATH
    from router.classify.evaluate import load_rows
    from router.classify.train import GramOptions, TrainError, shipped_model, shipped_rows, train, write_model

    started = time.perf_counter()
    try:
        rows = [r for path in args.data for r in load_rows(path)]
        weights = [args.data_weight] * len(rows)
        start, folds, temperature = None, 3 if args.folds is None else args.folds, 1.0
        if args.with_shipped_data:
            shipped = shipped_rows()
            rows += shipped
            weights += [1.0] * len(shipped)
            start = shipped_model()
            # One fit from the shipped optimum, calibrated like the shipped model, unless asked.
            folds = 0 if args.folds is None else args.folds
            temperature = float(start.get("temperature", 1.0))
        c = args.c or (float(start.get("trained_on", {}).get("C", 10.0)) if start else 10.0)
        model = train(rows, c=c, folds=folds, weights=weights, log=print, temperature=temperature,
                      min_df=1 if len(rows) < 2000 else 2, warm_start=start,
                      grams=None if args.no_grams else GramOptions(min_df=1 if len(rows) < 2000 else 3),
                      info={"files": [str(p) for p in args.data], "with_shipped_data": args.with_shipped_data})
        size = write_model(model, args.out)
    except (OSError, ValueError, TrainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({size / 1e3:.0f} kB): tasks {', '.join(model.classes)}; "
          f"{time.perf_counter() - started:.1f}s")
    if Path(args.out).resolve() != DEFAULT_MODEL_PATH.resolve():
        print(f"use it: `classifier: {{model: {args.out}}}` in a policy (relative to the policy file); "
              f"check it: router eval --model {args.out} --data held_out.jsonl")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from router.classify.classifier import DEFAULT_MODEL_PATH, Classifier, load_model
    from router.classify.evaluate import breakdown, evaluate, format_report, load_rows
    from router.core.errors import RouterError
    from router.core.policy_parser import load_policy

    thresholds = list(args.min_confidence or [])
    try:
        if args.model:
            clf = Classifier.load(args.model)
        elif args.policy:
            policy = load_policy(args.policy)
            clf = policy.classifier.classifier or load_model(DEFAULT_MODEL_PATH)
            if not thresholds and policy.classifier.min_confidence:
                thresholds = [policy.classifier.min_confidence]
        else:
            clf = load_model(DEFAULT_MODEL_PATH)
        reports = []
        for path in args.data:
            rows = load_rows(path)
            unknown = sorted({r["task"] for r in rows} - set(clf.classes))
            if unknown:
                print(f"note: {path}: tasks the model doesn't have (always counted wrong): {', '.join(unknown)}; "
                      f"the model's tasks: {', '.join(clf.classes)}", file=sys.stderr)
            reports.append((str(path), rows, evaluate(clf, rows)))
    except (OSError, ValueError, RouterError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    thresholds = thresholds or [0.5, 0.6, 0.7]
    for name, rows, report in reports:
        if args.json:
            print(json.dumps({"data": name, **report.to_dict(thresholds)}, indent=2))
            continue
        print(format_report(name, report, thresholds=thresholds))
        if line := breakdown(rows, report):
            print(line)
        if args.errors:
            for r, (gold, pred, conf, lang) in zip(rows, report.outcomes, strict=True):
                if gold != pred:
                    text = r.get("text") or json.dumps(r.get("messages"), ensure_ascii=False)
                    print(f"    {gold} -> {pred} ({conf:.2f}, {lang}): {text[:100]!r}")
    return 0


def _cmd_hash_key(args: argparse.Namespace) -> int:
    from router.core.policy import hash_key

    key = args.key if args.key is not None else sys.stdin.readline().strip()
    print(hash_key(key))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from router.dev.demo import run_demo

    return run_demo(verbose=args.verbose)


def _cmd_serve(args: argparse.Namespace) -> int:
    from router.engine.client import default_policy_path
    from router.server.serve import ServeOptions, serve

    return serve(ServeOptions(policy=args.policy or default_policy_path(), host=args.host, port=args.port,
                              workers=args.workers, watch=args.watch, watch_interval_s=args.watch_interval_s,
                              grace_s=args.grace_s, max_body_mb=args.max_body_mb, keepalive_s=args.keepalive_s,
                              access_log=args.access_log, idle_timeout_s=args.idle_timeout_s,
                              body_timeout_s=args.body_timeout_s,
                              ledger=args.ledger, budgets=args.budgets))


def _cmd_report(args: argparse.Namespace) -> int:
    from router.tools.report import run

    return run(args)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from router.tools.simulate import run

    if args.plan:  # fleet planning: replicas of one self-hosted deployment for a TTFT target (docs/simulate.md)
        return _plan(args)
    return run(args.policy, args.traffic, days=args.days, plot_path=args.plot, cache_hit_rate=args.cache_hit_rate)


def _plan(args: argparse.Namespace) -> int:
    import yaml

    from router.tools.fleet import run_plan
    from router.tools.simulate import SpecError, load_spec

    if args.p90_ttft is None:
        print("error: --plan needs --p90-ttft SECONDS", file=sys.stderr)
        return 1
    try:
        spec = load_spec(args.traffic)
    except (OSError, SpecError, yaml.YAMLError) as e:
        print(f"error: {args.traffic}: {e}", file=sys.stderr)
        return 1
    return run_plan(args.policy[0] if args.policy else None, spec, args.plan, args.p90_ttft, days=args.days,
                    max_overflow=args.max_overflow, prefix_hit_rate=args.prefix_hit_rate)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="router", description="Route LLM requests by task, cost and residency.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="validate policy files; exit 1 on any problem")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.set_defaults(fn=_cmd_check)

    e = sub.add_parser("explain", help="print the routing decision for a prompt as JSON, calling no one")
    e.add_argument("text", nargs="*", help="the user message (read from stdin when absent)")
    e.add_argument("--policy", help="policy file (default: $ROUTER_POLICY, else the bundled policy)")
    e.add_argument("--model", default="auto", help="auto, a route name, or a model alias")
    e.add_argument("--task", help="task hint: coding, reasoning or general")
    e.add_argument("--residency", help="data-residency requirement, e.g. eu")
    e.add_argument("--tenant", help="tenant name from the policy")
    e.add_argument("--system", help="a system prompt to include")
    e.add_argument("--max-tokens", type=int, dest="max_tokens")
    e.add_argument("--tools", action="store_true", help="the request carries tool definitions")
    e.add_argument("--api", choices=("chat", "messages", "responses"), default="chat",
                   help="the API the request comes in on, for rules with an `api` condition (messages: Claude "
                        "Code and the Anthropic SDK; responses: Codex and the Agents SDK)")
    e.add_argument("--image", action="append", metavar="URL", help="attach an image (repeatable)")
    e.add_argument("--down", action="append", metavar="NAME",
                   help="decide as if this model alias, or every deployment on this provider (a replica), were "
                        "down (its circuit open); repeatable")
    e.add_argument("--saturated", action="append", metavar="NAME",
                   help="decide as if this model alias or provider were saturated; repeatable")
    e.set_defaults(fn=_cmd_explain)

    t = sub.add_parser("train", help="fit a task classifier on your labelled requests (any task names)")
    t.add_argument("--data", action="append", required=True, metavar="FILE",
                   help="labelled JSON lines: {text or messages, task} (repeatable)")
    t.add_argument("--with-shipped-data", action="store_true", dest="with_shipped_data",
                   help="add the shipped training set (coding, reasoning, general) to your rows")
    t.add_argument("--out", required=True, help="model file to write (.json.gz)")
    t.add_argument("--c", type=float, action="append", metavar="C",
                   help="inverse regularisation strength (default 10, with --with-shipped-data the shipped "
                        "model's; repeat to choose by cross-validation)")
    t.add_argument("--folds", type=int, help="cross-validation folds that calibrate the confidence (default 3; "
                   "with --with-shipped-data 0: the shipped model's calibration, one fit)")
    t.add_argument("--data-weight", type=float, default=1.0, dest="data_weight",
                   help="sample weight of your rows beside the shipped ones (default 1)")
    t.add_argument("--no-grams", action="store_true", dest="no_grams",
                   help="fit the word model alone, without the character 4-gram model beside it")
    t.set_defaults(fn=_cmd_train)

    ev = sub.add_parser("eval", help="score a task model on labelled requests: accuracy, per-task precision/recall, "
                                     "confusion, languages, calibration")
    ev.add_argument("--data", action="append", required=True, metavar="FILE", help="labelled JSON lines (repeatable)")
    ev.add_argument("--model", help="model file (default: the policy's classifier.model, else the shipped model)")
    ev.add_argument("--policy", help="take the model and the confidence threshold from this policy")
    ev.add_argument("--min-confidence", type=float, action="append", dest="min_confidence", metavar="P",
                    help="show what share a threshold sends to the fallback (repeatable; default: the policy's, "
                         "else 0.5, 0.6, 0.7)")
    ev.add_argument("--errors", action="store_true", help="list the misclassified rows")
    ev.add_argument("--json", action="store_true", help="print the figures as JSON")
    ev.set_defaults(fn=_cmd_eval)

    h = sub.add_parser("hash-key", help="print the sha256:... form of an API key, for a policy's tenants")
    h.add_argument("key", nargs="?", help="the key (read from stdin when absent, which keeps it out of history)")
    h.set_defaults(fn=_cmd_hash_key)

    rp = sub.add_parser("report", help="spend, tokens, errors and savings from the ledger; or a price comparison")
    from router.tools.report import add_arguments as _report_arguments

    _report_arguments(rp)
    rp.set_defaults(fn=_cmd_report)

    d = sub.add_parser("demo", help="route a mix of requests through simulated providers and print a table")
    d.add_argument("-v", "--verbose", action="store_true")
    d.set_defaults(fn=_cmd_demo)

    s = sub.add_parser("serve", help="run the OpenAI-compatible proxy (see docs/proxy.md)")
    s.add_argument("--policy", help="policy file (default: $ROUTER_POLICY, else the bundled policy)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    s.add_argument("--watch", action="store_true", help="reload the policy when the file changes")
    s.add_argument("--watch-interval-s", type=float, default=1.0, dest="watch_interval_s")
    s.add_argument("--grace-s", type=float, default=30.0, dest="grace_s",
                   help="on SIGTERM, how long requests in flight may take to finish")
    s.add_argument("--max-body-mb", type=float, default=10.0, dest="max_body_mb")
    s.add_argument("--ledger", help="SQLite path or postgresql:// URL for the ledger, or none (default: "
                                    "$ROUTER_LEDGER, else the policy's metering.ledger, else ./router-ledger.db)")
    s.add_argument("--budgets", help="budget backend: memory or redis://host:port/db (default: $ROUTER_BUDGETS, "
                                     "else memory; use Redis with several replicas)")
    s.add_argument("--access-log", action="store_true", default=None, dest="access_log",
                   help="one line per request on stderr: time, request id, tenant, API, route, provider, model, "
                        "status, latency, tokens, cost (default: $ROUTER_ACCESS_LOG, else off)")
    s.add_argument("--keepalive-s", type=float, default=10.0, dest="keepalive_s",
                   help="SSE keep-alive comment interval while the upstream is silent")
    s.add_argument("--idle-timeout-s", type=float, default=20.0, dest="idle_timeout_s",
                   help="close a connection that sends no complete request head for this long after connecting "
                        "or after its last response (idle keep-alive and half-sent requests)")
    s.add_argument("--body-timeout-s", type=float, default=10.0, dest="body_timeout_s",
                   help="answer 408 and close when a request body stops arriving for this long")
    s.set_defaults(fn=_cmd_serve)

    sm = sub.add_parser("simulate", help="replay synthetic traffic through the decision engine: cost, latency, spill")
    sm.add_argument("--policy", action="append", default=[], help="policy file (repeat to compare; default: the "
                    "spec's `policies:`)")
    sm.add_argument("--traffic", required=True, help="traffic spec (YAML), e.g. simulate/100m.yaml")
    sm.add_argument("--days", type=float, default=30, help="days to simulate (costs are scaled to a month)")
    sm.add_argument("--plot", help="draw tokens per hour by provider to this PNG (needs matplotlib)")
    sm.add_argument("--cache-hit-rate", type=float, default=None, dest="cache_hit_rate",
                    help="share of input tokens read from the providers' prompt caches, billed at cached-input "
                         "prices (default: the spec's prompt_cache_hit_rate, else 0)")
    sm.add_argument("--plan", metavar="PROVIDER", help="find the fewest replicas of this self-hosted provider that "
                    "meet --p90-ttft (docs/simulate.md, \"Planning a fleet\")")
    sm.add_argument("--p90-ttft", type=float, dest="p90_ttft", metavar="SECONDS",
                    help="with --plan: the target p90 time to first token")
    sm.add_argument("--max-overflow", type=float, default=0.001, dest="max_overflow",
                    help="with --plan: the largest share of requests allowed to find no capacity (default 0.001)")
    sm.add_argument("--prefix-hit-rate", type=float, dest="prefix_hit_rate",
                    help="with --plan: the replicas' prefix-cache hit rate (default: the spec's)")
    sm.set_defaults(fn=_cmd_simulate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
