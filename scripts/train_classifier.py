"""Train the task classifier shipped as ``src/router/classify/data/task_model.json.gz``.

    python scripts/train_classifier.py                 # rebuild the shipped model (and its bundled rows)
    python scripts/train_classifier.py --out m.json.gz --extra my_traffic.jsonl

The training set is every row of ``data/tasks/train.jsonl`` and every ``data/tasks/extra*.jsonl``
file (:func:`training_rows`); evaluation files (``casual_eval*``, ``conversations_eval``, and
``../shared/data/tasks/dev_real.jsonl``) are never read. The regularisation strength and the
softmax temperature are chosen by cross-validation over folds of whole sources, so they reward
what carries over to sources the model has not seen. Also writes the rows it trained on to
``src/router/classify/data/training_rows.jsonl.gz``, what ``router train --with-shipped-data`` adds
to a user's own rows.

Needs numpy (``pip install 'router[train]'``); scipy, when installed, makes it about 3x faster
with the same result. Same inputs give a byte-identical model file.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

# One thread for any BLAS numpy might call: multi-threaded reductions can change the last bits.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from router.classify.classifier import DEFAULT_CONVERSATION, DEFAULT_MODEL_PATH, ConversationWeights  # noqa: E402
from router.classify.evaluate import load_rows  # noqa: E402
from router.classify.train import DEFAULT_GRAMS, GramOptions, train, write_model  # noqa: E402

TASKS_DIR = ROOT / "data" / "tasks"
BUNDLE = DEFAULT_MODEL_PATH.parent / "training_rows.jsonl.gz"
SHIPPED_C = (100.0, 300.0, 1000.0)
FOLDS = 5
_KEEP = ("text", "messages", "tools", "task", "lang", "source", "augmented")


def training_files() -> list[Path]:
    return [TASKS_DIR / "train.jsonl", *sorted(TASKS_DIR.glob("extra*.jsonl"))]


def source_of(row: dict) -> str:
    """The source a row counts under for cross-validation: a public data set's repository, or the
    project file's theme."""
    return str(row.get("source") or "unknown").split(":")[0]


def training_rows(extra: list[Path] | None = None) -> list[dict]:
    """The shipped training set (plus ``extra`` files), each row with only the fields training uses,
    and the LaTeX-free copies of :func:`augment`."""
    rows = []
    for path in training_files() + list(extra or []):
        for r in load_rows(path, tasks=("coding", "reasoning", "general")):
            rows.append({k: r[k] for k in _KEEP if k in r})
    return rows + augment(rows)


def augment(rows: list[dict]) -> list[dict]:
    """Copies of reasoning rows with LaTeX, without ``$`` and ``\\(``/``\\)``: maths sources (MATH,
    ProofNet) write them, users mostly don't, and the model shouldn't learn "dollar sign means maths"."""
    out = []
    for r in rows:
        text = r.get("text", "")
        if r["task"] == "reasoning" and "messages" not in r and ("$" in text or "\\" in text):
            plain = text.replace("$", "").replace("\\(", "").replace("\\)", "")
            out.append({**r, "text": plain, "augmented": True})
    return out


def write_bundle(rows: list[dict], path: Path = BUNDLE) -> int:
    """The training rows, gzip-compressed JSON lines (no name or time in the header)."""
    payload = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode()
    with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0, compresslevel=9) as fh:
        fh.write(payload)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_MODEL_PATH)
    ap.add_argument("--extra", type=Path, action="append", help="more labelled JSONL to train on")
    ap.add_argument("--c", type=float, action="append", help=f"inverse L2 strength (default: chosen from {SHIPPED_C})")
    ap.add_argument("--folds", type=int, default=FOLDS, help="source-grouped cross-validation folds")
    ap.add_argument("--rule", help='another conversation rule than the shipped one, as JSON: {"own": false, ...}')
    ap.add_argument("--no-grams", action="store_true", help="the word model alone, without the character n-gram model")
    ap.add_argument("--grams", help='the character n-gram model\'s options, as JSON: {"n": 4, "c": 100, "weight": 0.5}')
    args = ap.parse_args(argv)

    started = time.perf_counter()
    rows = training_rows(args.extra)
    sources = [source_of(r) for r in rows]
    print(f"{len(rows)} rows from {len(set(sources))} sources ({', '.join(p.name for p in training_files())})")
    model = train(rows, c=args.c or SHIPPED_C, folds=args.folds, groups=sources, log=print,
                  conversation=ConversationWeights(**json.loads(args.rule)) if args.rule else DEFAULT_CONVERSATION,
                  grams=None if args.no_grams else GramOptions(**json.loads(args.grams)) if args.grams else DEFAULT_GRAMS,
                  info={"files": [p.name for p in training_files() + list(args.extra or [])],
                        "sources": len(set(sources))})
    size = write_model(model, args.out)
    print(f"wrote {args.out} ({size / 1e6:.2f} MB, {len(model.weights)} features) "
          f"in {time.perf_counter() - started:.0f}s")
    if args.out.resolve() == DEFAULT_MODEL_PATH.resolve() and not args.extra:
        print(f"wrote {BUNDLE} ({write_bundle(rows) / 1e6:.2f} MB, {len(rows)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
