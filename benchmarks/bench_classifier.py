"""Latency of ``router.classifier.classify`` per request, one core, model already loaded.

    python benchmarks/bench_classifier.py [--repeat 3000] [--no-baseline]
    python benchmarks/bench_classifier.py --shape-ab     # the shape markers' cost: C, Python, off, same run
    python benchmarks/bench_classifier.py --grams-ab     # the character n-gram model's cost: on, off, same run

Inputs of about 50, 1,000 and 20,000 characters are built from the shipped training data (a mix
of prose, code and maths), plus an agent conversation with tools and a stack trace. Prints p50 and
p99 in microseconds, task and language detection included; targets are p99 < 200 us up to 1,000
characters and < 1 ms at 20,000.

The run measures the classifier as installed (with its C accelerator, ``router.classify._features``, when it
was built) and, as the baseline in the same run, its pure-Python path (a child process with
``ROUTER_CLASSIFIER_NATIVE=0``); both compute the same results. Exits 1 when a target is missed.

``--shape-ab`` measures what the last user turn's shape markers (``features.shape_features``)
cost, in alternating rounds of ``--repeat`` calls in one process: the shipped model as loaded
(with the accelerator, the markers come from its tokenizer's pass), the same model with the
markers computed in Python beside the C scoring (how they were computed before 2026-12-04's move
to C), and the same model with its shape weights removed (no markers computed).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from router.classify.classifier import Classifier, _default_model, classify  # noqa: E402

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


def samples_of(cases: list[tuple[list[dict], list[dict] | None]], repeat: int, fn=classify) -> list[float]:
    samples = []
    gc.disable()
    try:
        for r in range(repeat):
            messages, tools = cases[r % len(cases)]
            t0 = time.perf_counter_ns()
            fn(messages, tools)
            samples.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        gc.enable()
    return samples


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def measure(cases: list[tuple[list[dict], list[dict] | None]], repeat: int) -> tuple[float, float]:
    return percentiles(samples_of(cases, repeat))


def suites() -> dict[str, list[tuple[list[dict], list[dict] | None]]]:
    return {
        "short (50)": [(m, None) for m in inputs(50)],
        "medium (1,000)": [(m, None) for m in inputs(1000)],
        "long (20,000)": [(m, None) for m in inputs(20000)],
        "agent (tools)": [agent_conversation()],
    }


def shape_ab(repeat: int, rounds: int = 6) -> None:
    """The shape markers as loaded, computed in Python, and off: alternating rounds (each round in
    a rotated order), one process, the same model otherwise."""
    on, python, off = Classifier.load(), Classifier.load(), Classifier.load()
    python._native_shape = False  # native scoring, markers by features.shape_features
    off._native_shape, off._shape = False, {}  # no shape weights: no markers computed
    arms = [("on", on), ("python", python), ("off", off)]
    where = "C pass" if on._native_shape else "Python"
    print(f"shape markers as loaded ({where}) vs in Python vs off, {rounds} rounds of {repeat} calls each, "
          f"order rotated; scoring: {'C accelerator' if on.native else 'pure Python'}")
    print(f"{'input':<16} {'on p50':>7} {'on p99':>7} {'py p50':>7} {'py p99':>7} {'off p50':>7} {'off p99':>7} "
          f"{'on-off p50':>10} {'py-off p50':>10} {'p99 on/off':>10} {'p99 py/off':>10}")
    for name, cases in suites().items():
        got: dict[str, list[float]] = {label: [] for label, _ in arms}
        for r in range(rounds):
            for label, clf in arms[r % 3:] + arms[:r % 3]:
                got[label] += samples_of(cases, repeat, clf.classify)
        (a50, a99), (p50, p99), (b50, b99) = (percentiles(got[label]) for label, _ in arms)
        print(f"{name:<16} {a50:>7.1f} {a99:>7.1f} {p50:>7.1f} {p99:>7.1f} {b50:>7.1f} {b99:>7.1f} "
              f"{a50 - b50:>10.1f} {p50 - b50:>10.1f} {a99 / b99:>9.2f}x {p99 / b99:>9.2f}x")


def grams_ab(repeat: int, rounds: int = 6) -> None:
    """The character n-gram model's cost: the shipped model as loaded and the same model without
    its n-gram pass, in alternating rounds (order swapped each round), one process."""
    on, off = Classifier.load(), Classifier.load()
    off.grams = None  # the word model alone: no n-gram pass, no n-gram logits
    arms = [("on", on), ("off", off)]
    print(f"character n-grams on vs off, {rounds} rounds of {repeat} calls each, order swapped; "
          f"scoring: {'C accelerator' if on.native else 'pure Python'}")
    print(f"{'input':<16} {'on p50':>7} {'on p99':>7} {'off p50':>7} {'off p99':>7} {'p50 on/off':>10} {'p99 on/off':>10}")
    for name, cases in suites().items():
        got: dict[str, list[float]] = {label: [] for label, _ in arms}
        for r in range(rounds):
            for label, clf in (arms if r % 2 == 0 else arms[::-1]):
                got[label] += samples_of(cases, repeat, clf.classify)
        (a50, a99), (b50, b99) = (percentiles(got[label]) for label, _ in arms)
        print(f"{name:<16} {a50:>7.1f} {a99:>7.1f} {b50:>7.1f} {b99:>7.1f} {a50 / b50:>9.2f}x {a99 / b99:>9.2f}x")


def run(repeat: int) -> dict[str, tuple[float, float]]:
    classify([{"role": "user", "content": "warm up"}])
    results = {}
    for name, cases in suites().items():
        for m, t in cases[:5]:  # warm caches for these inputs
            classify(m, t)
        results[name] = measure(cases, repeat)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3000)
    ap.add_argument("--no-baseline", action="store_true", help="skip the pure-Python baseline")
    ap.add_argument("--shape-ab", action="store_true",
                    help="the shape markers' cost: as loaded, in Python, off, in one run")
    ap.add_argument("--grams-ab", action="store_true",
                    help="the character n-gram model's cost: on and off, in one run")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the baseline child's output
    args = ap.parse_args(argv)
    if args.shape_ab:
        shape_ab(args.repeat)
        return 0
    if args.grams_ab:
        grams_ab(args.repeat)
        return 0

    t0 = time.perf_counter()
    native = _default_model().native
    load_ms = (time.perf_counter() - t0) * 1000
    if args.json:
        print(json.dumps(run(args.repeat)))
        return 0
    baseline = {}
    if not args.no_baseline:
        env = {**os.environ, "ROUTER_CLASSIFIER_NATIVE": "0"}
        out = subprocess.run([sys.executable, __file__, "--json", "--repeat", str(args.repeat)],
                             env=env, capture_output=True, text=True, check=True)
        baseline = json.loads(out.stdout)
    results = run(args.repeat)
    print(f"model load: {load_ms:.1f} ms; scoring: {'C accelerator' if native else 'pure Python'}")
    print(f"{'input':<16} {'p50 us':>8} {'p99 us':>8} {'target p99':>11}   {'python p50':>10} {'python p99':>10} {'p99 x':>6}")
    ok = True
    for name, (p50, p99) in results.items():
        met = p99 < TARGETS_US[name]
        ok &= met
        line = f"{name:<16} {p50:>8.1f} {p99:>8.1f} {TARGETS_US[name]:>8} us {'ok' if met else 'SLOW':<4}"
        if name in baseline:
            b50, b99 = baseline[name]
            line += f" {b50:>10.1f} {b99:>10.1f} {b99 / p99:>5.1f}x"
        print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
