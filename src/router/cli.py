"""The `router` command: check, explain, demo, hash-key (and serve, report, simulate as they land)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

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
    from router.core.decision import LiveState, decide
    from router.core.errors import RouterError
    from router.core.policy_parser import load_policy
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
        state = LiveState(circuit_open=frozenset(args.down or ()))
        decision = decide(policy, body, task=args.task, residency=args.residency, tenant=args.tenant, state=state)
    except RouterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(decision.to_dict(), indent=2))
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
                              ledger=args.ledger, budgets=args.budgets))


def _cmd_report(args: argparse.Namespace) -> int:
    from router.tools.report import run

    return run(args)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from router.tools.simulate import run

    return run(args.policy, args.traffic, days=args.days, plot_path=args.plot)


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
    e.add_argument("--image", action="append", metavar="URL", help="attach an image (repeatable)")
    e.add_argument("--down", action="append", metavar="ALIAS",
                   help="decide as if this model alias were down (its circuit open); repeatable")
    e.set_defaults(fn=_cmd_explain)

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
    s.add_argument("--keepalive-s", type=float, default=10.0, dest="keepalive_s",
                   help="SSE keep-alive comment interval while the upstream is silent")
    s.set_defaults(fn=_cmd_serve)

    sm = sub.add_parser("simulate", help="replay synthetic traffic through the decision engine: cost, latency, spill")
    sm.add_argument("--policy", action="append", default=[], help="policy file (repeat to compare; default: the "
                    "spec's `policies:`)")
    sm.add_argument("--traffic", required=True, help="traffic spec (YAML), e.g. simulate/100m.yaml")
    sm.add_argument("--days", type=float, default=30, help="days to simulate (costs are scaled to a month)")
    sm.add_argument("--plot", help="draw tokens per hour by provider to this PNG (needs matplotlib)")
    sm.set_defaults(fn=_cmd_simulate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
