"""Scoring a task model on labelled rows: accuracy, per-task precision and recall, confusion,
per-language figures, calibration, and what a confidence threshold would send to the fallback.

Standard library only; ``router eval`` and ``scripts/eval_classifier.py`` print :func:`format_report`.

>>> r = Report.of([("coding", "coding", 0.9, "en"), ("general", "coding", 0.6, "ja")])
>>> r.accuracy, r.groups["CJK"].accuracy
(0.5, 0.0)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.classify.classifier import Classifier
from router.classify.features import content_text
from router.classify.language import detect_language

__all__ = [
    "LANGUAGE_GROUPS",
    "Report",
    "breakdown",
    "evaluate",
    "format_report",
    "language_group",
    "load_rows",
    "outcomes_of",
    "row_language",
    "row_messages",
]

LANGUAGE_GROUPS = ("English", "CJK", "other")
_CJK = frozenset({"zh", "ja", "ko"})


def language_group(lang: str | None) -> str:
    """``English`` (en or no language given), ``CJK`` (zh, ja, ko) or ``other``.

    >>> language_group("ko"), language_group("de"), language_group(None)
    ('CJK', 'other', 'English')
    """
    if not lang or lang == "en":
        return "English"
    return "CJK" if lang in _CJK else "other"


def load_rows(path: str | Path, *, tasks: Sequence[str] | None = None) -> list[dict]:
    """Labelled JSON lines: ``{"text": ..., "task": ...}`` or ``{"messages": [...], "tools": [...],
    "task": ...}``, optional ``lang`` and ``source``. Raises ValueError naming the line of a bad row
    (and, with ``tasks``, of a task outside it)."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected an object with `text` or `messages`, and `task`")
            task = row.get("task")
            if not isinstance(task, str) or not task.strip():
                raise ValueError(f"{path}:{n}: `task` must be a non-empty string")
            if tasks is not None and task not in tasks:
                raise ValueError(f"{path}:{n}: task {task!r} is not one of {', '.join(tasks)}")
            messages = row.get("messages")
            if messages is not None:
                if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
                    raise ValueError(f"{path}:{n}: `messages` must be a non-empty list of message objects")
            elif not isinstance(row.get("text"), str):
                raise ValueError(f"{path}:{n}: needs `text` (a string) or `messages`")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no labelled rows")
    return rows


@dataclass
class Slice:
    """Counts for one subset of the rows."""

    n: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")


@dataclass
class Report:
    """Figures for (gold, predicted, confidence, language) outcomes."""

    tasks: tuple[str, ...]
    outcomes: list[tuple[str, str, float, str | None]]
    confusion: dict[str, dict[str, int]] = field(init=False)
    groups: dict[str, Slice] = field(init=False)
    languages: dict[str, Slice] = field(init=False)

    @classmethod
    def of(cls, outcomes: Iterable[tuple[str, str, float, str | None]], tasks: Sequence[str] | None = None) -> Report:
        outcomes = list(outcomes)
        names = tuple(tasks) if tasks else tuple(sorted({g for g, *_ in outcomes} | {p for _, p, *_ in outcomes}))
        return cls(names, outcomes)

    def __post_init__(self) -> None:
        names = list(self.tasks)
        for gold, pred, *_ in self.outcomes:
            for t in (gold, pred):
                if t not in names:
                    names.append(t)
        self.tasks = tuple(names)
        self.confusion = {g: dict.fromkeys(self.tasks, 0) for g in self.tasks}
        self.groups = {g: Slice() for g in LANGUAGE_GROUPS}
        self.languages = {}
        for gold, pred, _conf, lang in self.outcomes:
            self.confusion[gold][pred] += 1
            for s in (self.groups[language_group(lang)], self.languages.setdefault(lang or "?", Slice())):
                s.n += 1
                s.correct += gold == pred

    @property
    def n(self) -> int:
        return len(self.outcomes)

    @property
    def accuracy(self) -> float:
        return sum(g == p for g, p, *_ in self.outcomes) / self.n if self.n else float("nan")

    def precision_recall(self, task: str) -> tuple[float, float, int]:
        """(precision, recall, support) of one task; NaN where undefined."""
        predicted = sum(self.confusion[g][task] for g in self.tasks)
        support = sum(self.confusion[task].values())
        hit = self.confusion[task][task]
        return (hit / predicted if predicted else float("nan"), hit / support if support else float("nan"), support)

    def calibration_error(self, bins: int = 10) -> float:
        """Expected calibration error: the gap between confidence and accuracy, averaged over
        equal-width confidence bins weighted by their share of rows."""
        if not self.n:
            return float("nan")
        sums: dict[int, list[float]] = {}
        for gold, pred, conf, _ in self.outcomes:
            b = min(int(conf * bins), bins - 1)
            s = sums.setdefault(b, [0.0, 0.0, 0.0])
            s[0] += 1
            s[1] += conf
            s[2] += gold == pred
        return sum(abs(c - a) for _n, c, a in sums.values()) / self.n

    def threshold(self, min_confidence: float) -> tuple[float, float]:
        """(share of rows below ``min_confidence``, that is sent to the fallback; accuracy of the rest)."""
        kept = [(g, p) for g, p, c, _ in self.outcomes if c >= min_confidence]
        share = 1 - len(kept) / self.n if self.n else float("nan")
        return share, (sum(g == p for g, p in kept) / len(kept) if kept else float("nan"))

    def to_dict(self, thresholds: Sequence[float] = ()) -> dict[str, Any]:
        return {
            "rows": self.n, "accuracy": self.accuracy,
            "tasks": {t: dict(zip(("precision", "recall", "support"), self.precision_recall(t), strict=True))
                      for t in self.tasks},
            "confusion": self.confusion,
            "groups": {g: {"rows": s.n, "accuracy": s.accuracy} for g, s in self.groups.items() if s.n},
            "languages": {k: {"rows": s.n, "accuracy": s.accuracy} for k, s in sorted(self.languages.items())},
            "calibration_error": self.calibration_error(),
            "thresholds": {str(t): dict(zip(("fallback_share", "accuracy_of_rest"), self.threshold(t), strict=True))
                           for t in thresholds},
        }


def _pct(x: float) -> str:
    return "   -  " if x != x else f"{100 * x:5.1f}%"


def format_report(name: str, report: Report, *, thresholds: Sequence[float] = (), languages: bool = True) -> str:
    """The report as text: what ``router eval`` prints."""
    r = report
    lines = [f"== {name}: {r.n} rows, accuracy {_pct(r.accuracy).strip()} ({sum(g == p for g, p, *_ in r.outcomes)}/{r.n})"]
    width = max(9, *(len(t) for t in r.tasks))
    lines.append(f"  {'task':<{width}} {'precision':>9} {'recall':>7} {'support':>7}")
    for t in r.tasks:
        p, rec, sup = r.precision_recall(t)
        lines.append(f"  {t:<{width}} {_pct(p):>9} {_pct(rec):>7} {sup:>7}")
    lines.append("  confusion (rows: gold, columns: predicted):")
    lines.append("  " + " " * width + "".join(f" {t[:10]:>10}" for t in r.tasks))
    for g in r.tasks:
        lines.append(f"  {g:<{width}}" + "".join(f" {r.confusion[g][p]:>10}" for p in r.tasks))
    lines.append("  language groups: " + ", ".join(f"{g} {_pct(s.accuracy).strip()} ({s.correct}/{s.n})"
                                                 for g, s in r.groups.items() if s.n))
    if languages and len(r.languages) > 1:
        lines.append("  languages: " + ", ".join(f"{k} {_pct(s.accuracy).strip()} ({s.n})"
                                                for k, s in sorted(r.languages.items(), key=lambda kv: -kv[1].n)))
    lines.append(f"  calibration: expected calibration error {r.calibration_error():.3f}")
    for t in thresholds:
        share, acc = r.threshold(t)
        lines.append(f"  min_confidence {t:g}: {_pct(share).strip()} of requests go to the fallback; "
                     f"accuracy on the rest {_pct(acc).strip()}")
    return "\n".join(lines)


def breakdown(rows: Sequence[Mapping], report: Report, field: str = "kind") -> str:
    """Accuracy by the value of a row field (``kind`` of a conversation set), or "" without it.

    >>> breakdown([{"kind": "a"}, {"kind": "b"}], Report.of([("x", "x", 1.0, "en"), ("x", "y", 1.0, "en")]))
    '  by kind: a 100.0% (1), b 0.0% (1)'
    """
    counts: dict[str, list[int]] = {}
    for r, (gold, pred, *_rest) in zip(rows, report.outcomes, strict=True):
        if field in r:
            c = counts.setdefault(str(r[field]), [0, 0])
            c[0] += 1
            c[1] += gold == pred
    if not counts:
        return ""
    return f"  by {field}: " + ", ".join(f"{k} {_pct(c / n).strip()} ({n})" for k, (n, c) in sorted(counts.items()))


def row_messages(row: Mapping) -> list:
    """A labelled row's conversation: its ``messages``, or its ``text`` as one user turn."""
    return row.get("messages") or [{"role": "user", "content": row.get("text", "")}]


def row_language(row: Mapping) -> str:
    """The row's ``lang``, else the language the classifier detects in its last user turn."""
    lang = row.get("lang")
    if isinstance(lang, str) and lang:
        return lang
    user = [m for m in row_messages(row) if isinstance(m, Mapping) and m.get("role", "user") == "user"]
    return detect_language(content_text(user[-1].get("content")) if user else "")


def evaluate(classifier: Classifier, rows: Sequence[Mapping]) -> Report:
    """Classify every row and compare with its label.

    >>> evaluate(Classifier.load(), [{"text": "hello!", "task": "general"}]).accuracy
    1.0
    """
    outcomes = []
    for r in rows:
        c = classifier.classify(row_messages(r), r.get("tools"), language=False)
        outcomes.append((str(r["task"]), c.task, c.confidence, row_language(r)))
    return Report.of(outcomes, classifier.classes)


def outcomes_of(rows: Sequence[Mapping], predictions: Sequence[tuple[str, float]]) -> list[tuple[str, str, float, str]]:
    """Zip labelled rows with (task, confidence) predictions into :class:`Report` outcomes."""
    return [(str(r["task"]), t, c, row_language(r)) for r, (t, c) in zip(rows, predictions, strict=True)]
