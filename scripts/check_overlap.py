"""Find (and with --drop, remove) project-written training rows that near-duplicate an evaluation row.

    python scripts/check_overlap.py            # list them; exit 1 when there are any
    python scripts/check_overlap.py --drop     # rewrite the data/tasks/extra*.jsonl files without them

Evaluation rows: ``data/tasks/casual_eval*.jsonl``, ``data/tasks/conversations_eval*.jsonl``,
``data/tasks/public_eval.jsonl`` (public prompts, data/tasks/PUBLIC_EVAL.md) and
``../shared/data/tasks/dev_real.jsonl``. A training row is too close when the token-Jaccard
similarity with an evaluation row is at least 0.5 (tokens: lower-cased words, CJK runs as character
pairs). Evaluation rows are never changed. tests/test_classifier.py runs the same check.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import chain
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS_DIR = ROOT / "data" / "tasks"
# ../shared beside the checkout, or beside a folder above it (a git worktree under /work/wt/<name>);
# scripts/eval_classifier.py and tests/test_classifier.py read it from here
_SHARED_DEV_REAL = Path("shared", "data", "tasks", "dev_real.jsonl")
DEV_REAL = next((d / _SHARED_DEV_REAL for d in ROOT.parents if (d / _SHARED_DEV_REAL).exists()),
                ROOT.parent / _SHARED_DEV_REAL)
THRESHOLD = 0.5
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]+")


def evaluation_files() -> list[Path]:
    files = sorted(TASKS_DIR.glob("casual_eval*.jsonl")) + sorted(TASKS_DIR.glob("conversations_eval*.jsonl"))
    files += [p for p in [TASKS_DIR / "public_eval.jsonl"] if p.exists()]
    return files + ([DEV_REAL] if DEV_REAL.exists() else [])


def training_files() -> list[Path]:
    """The project-written training files (``train.jsonl`` holds public data sets, copied unchanged)."""
    return sorted(TASKS_DIR.glob("extra*.jsonl"))


def row_text(row: dict) -> str:
    if "messages" not in row:
        return str(row.get("text", ""))
    parts = []
    for m in row["messages"]:
        c = m.get("content")
        parts.append(c if isinstance(c, str) else " ".join(p.get("text", "") for p in c or [] if isinstance(p, dict)))
    return "\n".join(parts)


def tokens(text: str) -> frozenset[str]:
    """Lower-cased words; CJK runs (no spaces) as character pairs."""
    out: set[str] = set()
    for tok in re.findall(r"\w+", text.lower()):
        runs = _CJK.findall(tok)
        if not runs:
            out.add(tok)
            continue
        out.update(_CJK.sub(" ", tok).split())
        for run in runs:
            out.update(run[i:i + 2] for i in range(max(1, len(run) - 1)))
    return frozenset(out)


def _read(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return [line for line in fh if line.strip()]


class Index:
    """The evaluation rows' token sets, with an inverted index."""

    def __init__(self, texts: Iterable[str]):
        self.rows = [tokens(t) for t in texts]
        self.by_token: dict[str, list[int]] = defaultdict(list)
        for i, toks in enumerate(self.rows):
            for tok in toks:
                self.by_token[tok].append(i)

    def near(self, text: str, threshold: float = THRESHOLD) -> bool:
        toks = tokens(text)
        if not toks:
            return False
        shared = Counter(chain.from_iterable(self.by_token[t] for t in toks if t in self.by_token))
        return any(n / len(toks | self.rows[i]) >= threshold for i, n in shared.items())


def evaluation_index() -> Index:
    return Index(row_text(json.loads(line)) for p in evaluation_files() for line in _read(p))


def near_duplicates(index: Index | None = None) -> list[tuple[Path, int, str]]:
    """(file, line number, text) of every training row too close to an evaluation row."""
    index = index or evaluation_index()
    out = []
    for path in training_files():
        for n, line in enumerate(_read(path), 1):
            text = row_text(json.loads(line))
            if index.near(text):
                out.append((path, n, text))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drop", action="store_true", help="rewrite the training files without the offending rows")
    args = ap.parse_args(argv)
    index = evaluation_index()
    found = near_duplicates(index)
    for path, n, text in found:
        print(f"{path.name}:{n}: {text[:100]!r}")
    print(f"{len(found)} training rows within {THRESHOLD} token-Jaccard of an evaluation row "
          f"({len(index.rows)} evaluation rows)")
    if args.drop and found:
        for path in sorted({p for p, _, _ in found}):
            lines = _read(path)
            keep = [line for line in lines if not index.near(row_text(json.loads(line)))]
            path.write_text("".join(keep), encoding="utf-8")
            print(f"{path.name}: dropped {len(lines) - len(keep)} of {len(lines)} rows")
        return 0
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
