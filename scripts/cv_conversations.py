"""Cross-validate how conversations are combined, over the training conversations only.

    python scripts/cv_conversations.py            # the shipped rule (DEFAULT_CONVERSATION)
    python scripts/cv_conversations.py --step     # the previous rule: gates 0.25 / 0.5, a step at 32 features
    python scripts/cv_conversations.py --two-texts  # the rule before 2026-12-04: one context text
    python scripts/cv_conversations.py --errors   # also: the misclassified conversations (held out)
    python scripts/cv_conversations.py --grid     # also: weights tried on the same fold models

Folds are the training sources that hold conversations (``data/tasks/extra*.jsonl`` files): for each,
a model is fitted on every training row of the other sources (all of ``train.jsonl`` and the other
files, so every single-text row but that source's) with the shipped model's C, and that
source's conversations are classified. ``conversations_eval.jsonl`` is never read. ``--grid`` scores
other part weights and gates on the same fold models (the training conversations stay combined by
the rule being cross-validated, so it is optimistic: confirm a choice by running again with it as
the default). The shipped model's character n-gram model is fitted beside each fold's word model
(``--no-grams``: without it). Needs numpy; about 2 minutes here.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from train_classifier import source_of, training_rows  # noqa: E402

import router.classify.train as trainer  # noqa: E402
from router.classify import classifier as clf  # noqa: E402
from router.classify.features import announces_new_topic, text_keys  # noqa: E402

READ_ALL = clf.ConversationWeights(combined=1.0, system=1.0, history=1.0, assistant=1.0, actions=1.0, tools=1.0)
LAST_TURN = clf.ConversationWeights(combined=0.0, system=0.0, history=0.0, assistant=0.0, actions=0.0, tools=0.0)
TWO_TEXTS = clf.ConversationWeights.from_json({"context": 0.3, "follow_up": 0.6})  # the rule before 2026-12-04
STEP = clf.ConversationWeights(follow_up=0.5, ramp=False)  # the rule of 2026-12-04's second round: a step at 32


def texts(row: dict, own: bool = False) -> tuple[list[dict], list[int], bool, int]:
    """Feature dictionaries of the last turn and of every part, and their sizes."""
    messages, tools = row["messages"], row.get("tools")
    main, parts = clf.conversation_parts(messages, tools, READ_ALL)
    n = len(text_keys(main)[0]) + len(text_keys(main)[1]) if main else 0
    vectors, sizes = [clf.extract_features(messages, tools, LAST_TURN)], [n]  # as training reads it
    for k, text in enumerate(parts):
        marked = bool(tools) and clf.PARTS[k] in ("context", "tools")
        v, m = clf._vector(clf._part_keys(text, marked)) if text is not None else ({}, 0)
        if own:
            v = {**v, **{clf.CONTEXT_PREFIX + name: x for name, x in v.items()}}
        vectors.append(v)
        sizes.append(m)
    return vectors, sizes, announces_new_topic(main), n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--two-texts", action="store_true", help="cross-validate the two-text rule (before 2026-12-04)")
    ap.add_argument("--step", action="store_true", help="cross-validate the previous rule: gates 0.25 / 0.5, a step")
    ap.add_argument("--grid", action="store_true", help="also score other weights on the same fold models")
    ap.add_argument("--rule", help='another rule, as JSON: {"context": 0.3, "combined": 1, "tools": 0.5, ...}')
    ap.add_argument("--errors", action="store_true", help="list the misclassified training conversations (held out)")
    ap.add_argument("--c", type=float, help="inverse L2 strength (default: the shipped model's)")
    ap.add_argument("--no-grams", action="store_true", help="the word model alone (no character n-gram model)")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    rows = training_rows()
    sources = [source_of(r) for r in rows]
    conv = [i for i, r in enumerate(rows) if "messages" in r]
    rule = TWO_TEXTS if args.two_texts else STEP if args.step else clf.DEFAULT_CONVERSATION
    if args.rule:
        rule = clf.ConversationWeights(**json.loads(args.rule))
    shipped = trainer.shipped_model()
    c = args.c or float(shipped.get("trained_on", {}).get("C", 100.0))
    d = trainer.design(rows, conversation=rule)
    vocab = {name: j for j, name in enumerate(d.names)}
    k = len(d.classes)
    start = trainer._start(d, shipped)
    grams = None if args.no_grams else trainer.GramOptions.of(shipped.get("trained_on"))
    gx = trainer.gram_design(rows, grams)[0] if grams is not None else None
    n_parts = len(clf.PARTS)
    main_z = np.zeros((len(conv), k))
    part_z = np.zeros((len(conv), n_parts, k))
    sizes = np.zeros((len(conv), n_parts))
    n_main, switch = np.zeros(len(conv)), np.zeros(len(conv), dtype=bool)
    groups = np.array([sources[i] for i in conv])
    print(f"{len(rows)} rows, {len(conv)} conversations in {len(set(groups))} sources")
    for g in sorted(set(groups)):
        train = np.array([i for i, s in enumerate(sources) if s != g])
        w, b = trainer.fit(d.x.take(train), d.y[train], k, c, d.weights[train], start=start)
        w = trainer._rounded(w, 0.02)
        held = np.flatnonzero(groups == g)
        if gx is not None:  # the character n-gram model of the last turn, fitted on the same rows
            gz = grams.weight * trainer._gram_logits(gx, d.y, k, grams, d.weights, train, np.array(conv)[held], 0.02)
            main_z[held] += gz
        for j in held:
            vectors, size, sw, n = texts(rows[conv[j]], rule.own)
            z = trainer.vectorise(vectors, vocab).dot(w)
            main_z[j] += z[0] + b
            part_z[j], sizes[j] = z[1:], size[1:]
            n_main[j], switch[j] = n, sw
    y = np.array([d.classes.index(rows[i]["task"]) for i in conv])

    def gates(context: float, follow_up: float, short: int, ramp: bool) -> np.ndarray:
        """ConversationWeights.weight, for every conversation."""
        if ramp:
            g = context + (follow_up - context) * np.clip(1 - n_main / short, 0, None)
        else:
            g = np.where(n_main < short, follow_up, context)
        return np.where(switch, rule.switch, g)

    def score(rel: tuple[float, ...], context: float, follow_up: float, short: int = 32, norm: float = 0.5,
              ramp: bool = rule.ramp) -> np.ndarray:
        gate = gates(context, follow_up, short, ramp)
        z = main_z.copy()
        for p, r in enumerate(rel):
            f = np.where(sizes[:, p] > 0, r / np.maximum(sizes[:, p], 1) ** norm, 0.0)
            z += (gate * f)[:, None] * part_z[:, p]
        return z.argmax(1) == y

    ok = score(rule.parts(), rule.context, rule.follow_up, rule.short_turn, rule.norm)
    print(f"\n{rule}\n  all: {100 * ok.mean():.1f}% ({ok.sum()}/{len(ok)})")
    for g in sorted(set(groups)):
        print(f"  {100 * ok[groups == g].mean():5.1f}% {int((groups == g).sum()):4d}  {g}")
    if args.errors:
        z = main_z.copy()
        gate = gates(rule.context, rule.follow_up, rule.short_turn, rule.ramp)
        for p, r in enumerate(rule.parts()):
            f = np.where(sizes[:, p] > 0, r / np.maximum(sizes[:, p], 1) ** rule.norm, 0.0)
            z += (gate * f)[:, None] * part_z[:, p]
        for j in np.flatnonzero(~ok):
            r = rows[conv[j]]
            last = clf.conversation_parts(r["messages"], r.get("tools"), LAST_TURN)[0]
            print(f"  {r['task']:>9} -> {d.classes[int(z[j].argmax())]:<9} {r.get('lang', '?'):>2} "
                  f"{'tools ' if r.get('tools') else ''}{len(r['messages'])} msgs  {last[:90]!r}")
    if args.grid:
        results = []
        for rel in itertools.product((0, 1), (0, 0.5, 1, 1.5), (0, 0.25, 0.5), (0,), (0, 0.25), (0, 0.5, 1)):
            for context, follow_up, short, ramp in itertools.product((0.2, 0.25, 0.3, 0.35, 0.5), (0.5, 0.75, 1.0, 1.5),
                                                                     (24, 32, 48), (False, True)):
                results.append((score(rel, context, follow_up, short, ramp=ramp).mean(), rel, context, follow_up,
                                f"{short}{' ramp' if ramp else ''}"))
        results.sort(key=lambda t: -t[0])
        print("\nbest on these fold models (combined, system, history, assistant, actions, tools; context / follow-up"
              " / short turn):")
        for acc, rel, context, follow_up, short in results[:15]:
            print(f"  {100 * acc:.1f}%  {rel}  {context} / {follow_up} / {short}")
    print(f"({time.perf_counter() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
