"""Evaluate the task classifier where it has to generalise.

    python scripts/eval_classifier.py                     # everything below (leave-one-source-out takes minutes)
    python scripts/eval_classifier.py --no-loso           # the shipped model on the evaluation sets only
    python scripts/eval_classifier.py --model m.json.gz --data my_labelled.jsonl --errors

1. Leave-one-source-out (the headline): for every source of the training data, a model trained
   on all the other sources (same options as the shipped one) classifies that source's rows.
   Mean and worst sources, and the pooled rows by task, language group and calibration.
2. ``../shared/data/tasks/dev_real.jsonl``: whole sources never trained on (mostly Chinese and
   Japanese), scored with the shipped model.
3. ``data/tasks/conversations_eval.jsonl``: conversations (follow-ups, topic switches, agents with
   tools, system prompts), by kind; so is any further ``conversations_eval*.jsonl`` put beside it
   (scripts/check_overlap.py keeps training rows away from those too).
4. ``data/tasks/casual_eval*.jsonl``: prompts written for evaluation only.
5. ``data/tasks/public_eval.jsonl``: real prompts from public sources outside the training data
   (data/tasks/PUBLIC_EVAL.md), scored without its rows marked ``ambiguous``.

Every figure comes with per-task precision/recall, per-language-group accuracy and the expected
calibration error. Evaluation files are never trained on (scripts/train_classifier.py reads only
``train.jsonl`` and ``extra*.jsonl``). Needs numpy for leave-one-source-out only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from check_overlap import DEV_REAL  # noqa: E402
from train_classifier import SHIPPED_C, source_of, training_rows  # noqa: E402

from router.classify.classifier import DEFAULT_MODEL_PATH, Classifier  # noqa: E402
from router.classify.evaluate import (  # noqa: E402
    Report,
    breakdown,
    evaluate,
    format_report,
    load_rows,
    outcomes_of,
    row_messages,
)

TASKS_DIR = ROOT / "data" / "tasks"
PUBLIC_EVAL = TASKS_DIR / "public_eval.jsonl"
THRESHOLDS = (0.5, 0.6, 0.7)


def _errors(rows: list[dict], outcomes: list) -> None:
    for r, (gold, pred, conf, lang) in zip(rows, outcomes, strict=True):
        if gold != pred:
            text = r.get("text") or " | ".join(str(m.get("content"))[:60] for m in row_messages(r))
            print(f"    {gold:>9} -> {pred:<9} {conf:.2f} {lang} [{str(r.get('source', ''))[:30]}] {text[:110]!r}")


def loso(clf: Classifier, errors: bool) -> Report:
    from router.classify.train import GramOptions, leave_one_source_out

    rows = training_rows()
    sources = [source_of(r) for r in rows]
    c = float(clf.trained_on.get("C", SHIPPED_C[1]))
    started = time.perf_counter()
    print(f"\n== leave-one-source-out: {len(rows)} rows, {len(set(sources))} sources, C={c:g} (takes minutes)")
    grams = GramOptions.of(clf.trained_on) if clf.grams is not None else None
    predictions = leave_one_source_out(rows, sources, c=c, conversation=clf.conversation,
                                       temperature=clf.temperature, grams=grams)
    # Scored on the rows as written: the LaTeX-free training copies are left out.
    kept = [i for i, r in enumerate(rows) if not r.get("augmented")]
    rows, sources = [rows[i] for i in kept], [sources[i] for i in kept]
    outcomes = outcomes_of(rows, [predictions[i] for i in kept])
    per: dict[str, list[int]] = {}
    for s, (gold, pred, *_rest) in zip(sources, outcomes, strict=True):
        per.setdefault(s, [0, 0])
        per[s][0] += 1
        per[s][1] += gold == pred
    ranked = sorted(per.items(), key=lambda kv: kv[1][1] / kv[1][0])
    mean = sum(k / n for n, k in per.values()) / len(per)
    print(f"  mean over sources {100 * mean:.1f}%  ({time.perf_counter() - started:.0f}s)")
    for name, (n, k) in ranked:
        print(f"  {100 * k / n:5.1f}% {n:5d}  {name}")
    print("  worst: " + "; ".join(f"{name[:48]} {100 * k / n:.1f}%" for name, (n, k) in ranked[:5]))
    report = Report.of(outcomes, clf.classes)
    print(format_report("leave-one-source-out, all rows pooled", report, thresholds=THRESHOLDS, languages=False))
    if errors:
        _errors(rows, outcomes)
    return report


def score(name: str, clf: Classifier, rows: list[dict], errors: bool, by_kind: bool = False) -> Report:
    report = evaluate(clf, rows)
    print()
    print(format_report(name, report, thresholds=THRESHOLDS))
    if by_kind and (line := breakdown(rows, report)):
        print(line)
    if errors:
        _errors(rows, report.outcomes)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    ap.add_argument("--data", type=Path, action="append", help="labelled JSONL to score in full (instead of the sets)")
    ap.add_argument("--no-loso", action="store_true", help="skip leave-one-source-out")
    ap.add_argument("--errors", action="store_true", help="print every misclassified row")
    args = ap.parse_args(argv)

    clf = Classifier.load(args.model)
    if args.data:
        for path in args.data:
            score(str(path), clf, load_rows(path), args.errors, by_kind=True)
        return 0
    if not args.no_loso:
        loso(clf, args.errors)
    if DEV_REAL.exists():
        score(f"{DEV_REAL.name} (source-disjoint)", clf, load_rows(DEV_REAL), args.errors)
    else:
        print(f"\n(no {DEV_REAL}: skipped)")
    if PUBLIC_EVAL.exists():  # public prompts, source-disjoint (data/tasks/PUBLIC_EVAL.md); ambiguous rows left out
        rows = load_rows(PUBLIC_EVAL)
        clear = [r for r in rows if not r.get("ambiguous")]
        score(f"{PUBLIC_EVAL.name} (public sources; {len(rows) - len(clear)} ambiguous rows left out)", clf, clear,
              args.errors)
    for path in sorted(TASKS_DIR.glob("conversations_eval*.jsonl")):
        score(path.name, clf, load_rows(path), args.errors, by_kind=True)
    for path in sorted(TASKS_DIR.glob("casual_eval*.jsonl")):
        score(path.name, clf, load_rows(path), args.errors)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
