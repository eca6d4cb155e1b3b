"""Evaluate a task model: accuracy, per-class precision/recall, confusion matrix, language, latency.

    python scripts/eval_classifier.py                          # shipped model, held-out split + casual set
    python scripts/eval_classifier.py --model m.json.gz --data my_labelled.jsonl --errors

By default it scores the held-out split of ``data/tasks/train.jsonl`` (rows never trained on) and
every ``data/tasks/casual_eval*.jsonl`` (hand-written, evaluation only). Files given with ``--data`` are
scored in full. Standard library only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

from train_classifier import DEFAULT_DATA, is_holdout, load_rows, row_messages  # noqa: E402

from router.classify.classifier import DEFAULT_MODEL_PATH, TASKS, Classifier, detect_language  # noqa: E402

CASUAL = sorted((ROOT / "data" / "tasks").glob("casual_eval*.jsonl"))


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def report(name: str, clf: Classifier, rows: list[dict], show_errors: bool) -> float:
    confusion = {t: dict.fromkeys(TASKS, 0) for t in TASKS}
    latencies: list[float] = []
    lang_ok = lang_n = 0
    errors = []
    for r in rows:
        msgs = row_messages(r)
        t0 = time.perf_counter()
        c = clf.classify(msgs, r.get("tools"))
        latencies.append((time.perf_counter() - t0) * 1e6)
        confusion[r["task"]][c.task] += 1
        if c.task != r["task"]:
            errors.append((r["task"], c.task, c.confidence, r.get("source", ""), r.get("text", "")))
        if r.get("lang") and "messages" not in r:
            lang_n += 1
            lang_ok += detect_language(r["text"]) == r["lang"]
    n = len(rows)
    acc = sum(confusion[t][t] for t in TASKS) / max(n, 1)
    print(f"\n== {name}: {n} rows, accuracy {acc:.4f}")
    print(f"{'class':<10} {'precision':>9} {'recall':>7} {'support':>7}")
    for t in TASKS:
        predicted = sum(confusion[g][t] for g in TASKS)
        support = sum(confusion[t].values())
        prec = confusion[t][t] / predicted if predicted else 0.0
        rec = confusion[t][t] / support if support else 0.0
        print(f"{t:<10} {prec:>9.4f} {rec:>7.4f} {support:>7}")
    print("confusion (rows = gold, columns = predicted):")
    print(" " * 10 + "".join(f"{t:>10}" for t in TASKS))
    for t in TASKS:
        print(f"{t:<10}" + "".join(f"{confusion[t][p]:>10}" for p in TASKS))
    if lang_n:
        print(f"language accuracy: {lang_ok / lang_n:.4f} ({lang_ok}/{lang_n})")
    print(f"latency per classify(): p50 {percentile(latencies, 50):.0f} us, p99 {percentile(latencies, 99):.0f} us")
    if show_errors:
        for gold, pred, conf, src, text in errors:
            print(f"  {gold:>9} -> {pred:<9} {conf:.2f} [{src.split(':')[0]}] {text[:110]!r}")
    return acc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    ap.add_argument("--data", type=Path, action="append", help="labelled JSONL to score in full")
    ap.add_argument("--errors", action="store_true", help="print every misclassified row")
    args = ap.parse_args(argv)

    clf = Classifier.load(args.model)
    if args.data:
        for path in args.data:
            report(str(path), clf, load_rows(path), args.errors)
        return 0
    held = [r for r in load_rows(DEFAULT_DATA) if is_holdout(r.get("text", ""))]
    report(f"held-out split of {DEFAULT_DATA.name}", clf, held, args.errors)
    for path in CASUAL:
        report(path.name, clf, load_rows(path), args.errors)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
