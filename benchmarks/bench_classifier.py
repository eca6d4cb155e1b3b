"""Latency of ``router.classifier.classify`` per request, one core, model already loaded.

    python benchmarks/bench_classifier.py [--repeat 2000]

Inputs of about 50, 1,000 and 20,000 characters are built from the shipped training data (a mix
of prose, code and maths), plus an agent conversation with tools and a stack trace. Prints p50 and
p99 in microseconds; targets are p99 < 200 us up to 1,000 characters and < 1 ms at 20,000.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from router.classifier import classify  # noqa: E402

TARGETS_US = {"short (50)": 200, "medium (1,000)": 200, "long (20,000)": 1000, "agent (tools)": 1000}


def inputs(size: int, count: int = 50) -> list[list[dict]]:
    """``count`` different single-turn conversations of ``size`` characters."""
    with open(ROOT / "data" / "tasks" / "train.jsonl", encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    out = []
    for i in range(count):
        chunk, j = "", i * 37
        while len(chunk) < size:
            chunk += texts[j % len(texts)] + "\n"
            j += 1
        out.append([{"role": "user", "content": chunk[:size]}])
    return out


def agent_conversation() -> tuple[list[dict], list[dict]]:
    tools = [
        {"type": "function", "function": {"name": n, "description": f"{n} in the workspace"}}
        for n in ("run_shell", "read_file", "write_file", "search_code")
    ]
    trace = "Traceback (most recent call last):\n" + '  File "app.py", line 10, in main\n    run()\n' * 40
    messages = [
        {"role": "system", "content": "You are a coding agent. " * 40},
        {"role": "user", "content": "run the tests and fix what fails"},
        {"role": "assistant", "content": "Running the tests."},
        {"role": "tool", "tool_call_id": "1", "content": trace + "KeyError: 'user_id'"},
        {"role": "user", "content": "try again"},
    ]
    return messages, tools


def measure(cases: list[tuple[list[dict], list[dict] | None]], repeat: int) -> tuple[float, float]:
    samples = []
    gc.disable()
    try:
        for r in range(repeat):
            messages, tools = cases[r % len(cases)]
            t0 = time.perf_counter_ns()
            classify(messages, tools)
            samples.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        gc.enable()
    samples.sort()
    return samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2000)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    classify([{"role": "user", "content": "warm up"}])
    print(f"model load + first call: {(time.perf_counter() - t0) * 1000:.1f} ms")
    suites = {
        "short (50)": [(m, None) for m in inputs(50)],
        "medium (1,000)": [(m, None) for m in inputs(1000)],
        "long (20,000)": [(m, None) for m in inputs(20000)],
        "agent (tools)": [agent_conversation()],
    }
    print(f"{'input':<16} {'p50 us':>8} {'p99 us':>8} {'target p99':>11}")
    ok = True
    for name, cases in suites.items():
        for m, t in cases[:5]:  # warm caches for these inputs
            classify(m, t)
        p50, p99 = measure(cases, args.repeat)
        ok &= p99 < TARGETS_US[name]
        print(f"{name:<16} {p50:>8.1f} {p99:>8.1f} {TARGETS_US[name]:>8} us {'ok' if p99 < TARGETS_US[name] else 'SLOW'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
