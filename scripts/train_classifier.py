"""Train the task classifier shipped as ``src/router/classify/data/task_model.json.gz``.

    python scripts/train_classifier.py                      # rebuild the shipped model
    python scripts/train_classifier.py --extra my_traffic.jsonl --out my_model.json.gz

Input rows are JSON lines with ``text`` and ``task`` (one of coding / reasoning / general); a row
may instead carry a whole conversation as ``messages`` (and ``tools``), exactly as a request sends
it. Features come from ``router.classify.classifier.extract_features``, so training and serving can't drift.

Rows of ``--data`` whose :func:`is_holdout` is true are held out and never trained on (the test
suite and ``scripts/eval_classifier.py`` score the shipped model on them). ``--extra`` files are
trained on in full and weighted ``--extra-weight``: they are the place for your own traffic.

Training needs numpy, scipy and scikit-learn; serving the model needs none of them.
Same inputs and options give a byte-identical model file.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from router.classify.classifier import MODEL_FORMAT, TASKS, extract_features, feature_norm  # noqa: E402

DEFAULT_DATA = ROOT / "data" / "tasks" / "train.jsonl"
DEFAULT_EXTRA = sorted((ROOT / "data" / "tasks").glob("extra*.jsonl"))  # casual_eval*.jsonl: never
DEFAULT_OUT = ROOT / "src" / "router" / "classify" / "data" / "task_model.json.gz"
HOLDOUT_PERCENT = 20


def is_holdout(text: str, percent: int = HOLDOUT_PERCENT) -> bool:
    """The fixed held-out split: a stable hash of the text, so it survives reordering and additions."""
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16) % 100 < percent


def load_rows(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if row.get("task") not in TASKS:
                raise ValueError(f"{path}:{n}: task must be one of {TASKS}, got {row.get('task')!r}")
            if not isinstance(row.get("text"), str) and not row.get("messages"):
                raise ValueError(f"{path}:{n}: needs 'text' or 'messages'")
            rows.append(row)
    return rows


def row_messages(row: dict) -> list[dict]:
    return row.get("messages") or [{"role": "user", "content": row["text"]}]


def row_features(row: dict) -> dict[str, float]:
    return extract_features(row_messages(row), row.get("tools"))


def augment(rows: list[dict]) -> list[dict]:
    """Extra copies that break source artefacts: maths without LaTeX dollar signs and backslashes."""
    out = []
    for row in rows:
        text = row.get("text", "")
        if "messages" not in row and ("$" in text or "\\" in text) and row["task"] == "reasoning":
            plain = text.replace("$", "").replace("\\(", "").replace("\\)", "")
            out.append({**row, "text": plain})
    return out


def vectorise(feats: list[dict[str, float]], vocab: dict[str, int]):
    import numpy as np
    from scipy.sparse import csr_matrix

    indptr, indices, values = [0], [], []
    for f in feats:
        # The runtime normalises over all features but stems, known to the model or not; so does training.
        norm = feature_norm(f)
        for name, v in sorted(f.items()):  # a fixed order: the solver's sums don't depend on set order
            j = vocab.get(name)
            if j is not None:
                indices.append(j)
                values.append(v / norm)
        indptr.append(len(indices))
    return csr_matrix((np.array(values), np.array(indices), np.array(indptr)), shape=(len(feats), len(vocab)))


def fit(x, y, weights, c: float):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=2000, tol=1e-5)
    model.fit(x, y, sample_weight=weights)
    return model


def choose_temperature(logits, y) -> float:
    """The softmax temperature that minimises log loss on out-of-fold logits (calibration)."""
    import numpy as np

    best_t, best_nll = 1.0, float("inf")
    for t in np.arange(0.3, 3.01, 0.05):
        z = logits / t
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        nll = -logp[np.arange(len(y)), y].mean()
        if nll < best_nll:
            best_t, best_nll = float(round(t, 2)), nll
    return best_t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="labelled JSONL with the held-out split")
    ap.add_argument("--extra", type=Path, action="append", help="more labelled JSONL, trained on in full")
    ap.add_argument("--no-default-extra", action="store_true", help="don't add data/tasks/extra*.jsonl")
    ap.add_argument("--extra-weight", type=float, default=1.0, help="sample weight of --extra rows")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--c", type=float, default=None, help="inverse L2 strength (default: 5-fold CV)")
    ap.add_argument("--min-df", type=int, default=2, help="keep features seen in at least this many rows")
    ap.add_argument("--holdout-percent", type=int, default=HOLDOUT_PERCENT)
    args = ap.parse_args(argv)

    # One BLAS thread: multi-threaded reductions change the last bits of the weights from run to run,
    # and weights are rounded to 1e-3, so the same inputs would not always give the same file.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    started = time.perf_counter()
    base = load_rows(args.data)
    train = [r for r in base if not is_holdout(r.get("text", ""), args.holdout_percent)]
    held = [r for r in base if is_holdout(r.get("text", ""), args.holdout_percent)]
    extra_paths = ([] if args.no_default_extra else DEFAULT_EXTRA) + (args.extra or [])
    extra = [r for p in extra_paths if p.exists() for r in load_rows(p)]
    rows = train + augment(train) + extra
    weights = np.array([1.0] * (len(rows) - len(extra)) + [args.extra_weight] * len(extra))
    print(f"rows: {len(train)} train + {len(rows) - len(train) - len(extra)} augmented + {len(extra)} extra "
          f"({', '.join(str(p) for p in extra_paths)}); {len(held)} held out")

    feats = [row_features(r) for r in rows]
    df: dict[str, int] = {}
    for f in feats:
        for name in f:
            df[name] = df.get(name, 0) + 1
    vocab = {name: i for i, name in enumerate(sorted(n for n, k in df.items() if k >= args.min_df))}
    x = vectorise(feats, vocab)
    y = np.array([TASKS.index(r["task"]) for r in rows])
    print(f"features: {len(vocab)} (min_df={args.min_df})")

    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    grid = [args.c] if args.c else [30.0, 100.0, 300.0, 1000.0]
    best_c, best_acc, best_logits = grid[0], -1.0, None
    for c in grid:
        logits = np.zeros((len(rows), 3))
        for tr, te in folds.split(x, y):
            m = fit(x[tr], y[tr], weights[tr], c)
            logits[te] = m.decision_function(x[te])
        acc = float((logits.argmax(1) == y).mean())
        print(f"  C={c:g}: 5-fold accuracy {acc:.4f}")
        if acc > best_acc:
            best_c, best_acc, best_logits = c, acc, logits
    temperature = choose_temperature(best_logits, y)
    model = fit(x, y, weights, best_c)
    print(f"C={best_c:g}, temperature={temperature}")

    coef = model.coef_ - model.coef_.mean(axis=0, keepdims=True)  # softmax is shift-invariant
    bias = model.intercept_ - model.intercept_.mean()
    names = sorted(vocab, key=vocab.get)
    weights_out = {}
    for j, name in enumerate(names):
        w = coef[:, j]
        if np.abs(w).max() >= 0.02:  # below this a feature can't move a decision
            weights_out[name] = [round(float(v), 3) for v in w]
    data = {
        "format": MODEL_FORMAT,
        "classes": list(TASKS),
        "bias": [round(float(b), 4) for b in bias],
        "temperature": temperature,
        "trained_on": {
            "data": args.data.name,
            "extra": [p.name for p in extra_paths],
            "holdout_percent": args.holdout_percent,
            "rows": len(rows),
            "C": best_c,
        },
        "weights": weights_out,
    }
    payload = json.dumps(data, ensure_ascii=True, sort_keys=True, separators=(",", ":")).encode()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0, compresslevel=9) as fh:
        fh.write(payload)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {len(weights_out)} features) "
          f"in {time.perf_counter() - started:.1f}s")

    from router.classify.classifier import Classifier

    clf = Classifier.load(args.out)
    correct = sum(clf.classify(row_messages(r), r.get("tools")).task == r["task"] for r in held)
    print(f"held-out accuracy: {correct / max(len(held), 1):.4f} ({correct}/{len(held)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
