"""The `router` command: check, explain, demo, hash-key (and serve, report, simulate as they land)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _cmd_check(args: argparse.Namespace) -> int:
    from .policy import check_policy

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
    from .client import default_policy_path
    from .decision import decide
    from .errors import RouterError
    from .policy import load_policy

    text = " ".join(args.text) if args.text else sys.stdin.read()
    body: dict = {"model": args.model, "messages": [{"role": "user", "content": text}]}
    if args.system:
        body["messages"].insert(0, {"role": "system", "content": args.system})
    if args.max_tokens:
        body["max_tokens"] = args.max_tokens
    if args.tools:
        body["tools"] = [{"type": "function", "function": {"name": "tool", "parameters": {"type": "object"}}}]
    try:
        policy = load_policy(args.policy or default_policy_path())
        decision = decide(policy, body, task=args.task, residency=args.residency, tenant=args.tenant)
    except RouterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(decision.to_dict(), indent=2))
    return 0


def _cmd_hash_key(args: argparse.Namespace) -> int:
    from .policy import hash_key

    key = args.key if args.key is not None else sys.stdin.readline().strip()
    print(hash_key(key))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(verbose=args.verbose)


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
    e.set_defaults(fn=_cmd_explain)

    h = sub.add_parser("hash-key", help="print the sha256:... form of an API key, for a policy's tenants")
    h.add_argument("key", nargs="?", help="the key (read from stdin when absent, which keeps it out of history)")
    h.set_defaults(fn=_cmd_hash_key)

    d = sub.add_parser("demo", help="route a mix of requests through simulated providers and print a table")
    d.add_argument("-v", "--verbose", action="store_true")
    d.set_defaults(fn=_cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
