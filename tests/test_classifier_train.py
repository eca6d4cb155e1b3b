"""The trainer and the evaluation figures (router.classify.train, router.classify.evaluate)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from router.classify.classifier import Classifier
from router.classify.evaluate import Report, format_report, language_group, load_rows

ROOT = Path(__file__).resolve().parent.parent

ROWS = (
    [{"text": f"SELECT {c} FROM t{i} WHERE id = {i}", "task": "sql", "source": f"s{i % 3}"} for i, c in
     enumerate(["name", "price", "email", "total", "city", "age", "count(*)", "max(price)", "id", "title"])]
    + [{"text": f"translate '{w}' into French please", "task": "translation", "source": f"s{i % 3}"} for i, w in
       enumerate(["good morning", "thank you", "see you soon", "where is the station", "I am hungry",
                  "happy birthday", "the bill please", "good night", "how much is it", "I love you"])]
)


def test_train_fits_free_task_names_and_scores_them() -> None:
    pytest.importorskip("numpy")
    from router.classify.train import train

    model = train(ROWS, c=10.0, folds=3, min_df=1)
    assert model.classes == ("sql", "translation")
    clf = Classifier(model.classes, model.bias, model.weights, model.temperature, model.conversation,
                     concepts=model.to_json()["concepts"])
    assert clf.classify([{"role": "user", "content": "SELECT title FROM books"}]).task == "sql"
    assert clf.classify([{"role": "user", "content": "translate 'cheers' into French"}]).task == "translation"
    assert 0.3 <= model.temperature <= 4.0


def test_leave_one_source_out_never_scores_a_row_with_a_model_that_saw_its_source() -> None:
    np = pytest.importorskip("numpy")
    from router.classify.train import group_folds, leave_one_source_out

    sources = [r["source"] for r in ROWS]
    predictions = leave_one_source_out(ROWS, sources, c=10.0, min_df=1)
    assert len(predictions) == len(ROWS) and all(t in ("sql", "translation") for t, _ in predictions)
    assert sum(t == r["task"] for r, (t, _) in zip(ROWS, predictions, strict=True)) >= 18
    # a row that only its own source has is unknown to the model that predicts it: a lone task
    # label can't be learnt from the other sources
    lone = [*ROWS, {"text": "compose a haiku", "task": "poem", "source": "only-here"}]
    out = leave_one_source_out(lone, [r["source"] for r in lone], c=10.0, min_df=1)
    assert out[-1][0] != "poem"
    folds = group_folds(["a", "a", "b", "c", "c", "c", "d"], 2)
    assert len(set(folds[:2])) == 1 and len(set(folds[3:6])) == 1 and set(np.unique(folds)) == {0, 1}


def test_training_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    pytest.importorskip("numpy")
    from router.classify.train import train, write_model

    a, b = tmp_path / "a.json.gz", tmp_path / "b.json.gz"
    write_model(train(ROWS, c=10.0, folds=3, min_df=1), a)
    write_model(train(list(ROWS), c=10.0, folds=3, min_df=1), b)
    assert a.read_bytes() == b.read_bytes()


def test_the_character_gram_model_is_trained_written_and_scored_on_both_paths(tmp_path: Path) -> None:
    pytest.importorskip("numpy")
    import gzip
    import json

    from router.classify.language import native_module
    from router.classify.train import GramOptions, train, write_model

    sources = [r["source"] for r in ROWS]
    model = train(ROWS, c=10.0, folds=3, min_df=1, groups=sources, grams=GramOptions(min_df=1))
    assert model.grams is not None and model.grams["n"] == 4 and model.grams["weight"] == 0.5
    assert model.info["grams"] == {"n": 4, "c": 100.0, "weight": 0.5, "min_df": 1}
    plain = train(ROWS, c=10.0, folds=3, min_df=1, groups=sources, grams=None)
    assert plain.grams is None and "grams" not in plain.to_json() and "grams" not in plain.info
    path = tmp_path / "m.json.gz"
    write_model(model, path)
    ref = Classifier.load(path, native=False)
    assert ref.grams is not None and GramOptions.of(ref.trained_on) == GramOptions(min_df=1)
    # never seen whole, but sharing 4-grams with the rows of each task
    texts = ["SELECTING titles FROM tables", "translating 'bonjour' into Frenchish", "", "\u3000 \n", "x" * 3000]
    without = Classifier(model.classes, model.bias, model.weights, model.temperature, model.conversation,
                         concepts=model.to_json()["concepts"], native=False)
    assert any(ref.logits([{"role": "user", "content": t}]) != without.logits([{"role": "user", "content": t}])
               for t in texts)
    assert ref.classify([{"role": "user", "content": texts[0]}]).task == "sql"
    if native_module() is not None:
        fast = Classifier.load(path, native=True)
        assert fast._gram_table is not None
        for t in texts:
            assert fast.logits([{"role": "user", "content": t}]) == ref.logits([{"role": "user", "content": t}])
    # a broken n-gram section is refused with the file's name
    data = json.loads(gzip.decompress(path.read_bytes()))
    for broken in ({**data["grams"], "n": 0}, {**data["grams"], "bias": [0.0]}, {"n": 4}):
        bad = tmp_path / "bad.json.gz"
        bad.write_bytes(gzip.compress(json.dumps({**data, "grams": broken}).encode()))
        with pytest.raises(ValueError, match="bad.json.gz: a broken task model"):
            Classifier.load(bad)


def test_train_without_numpy_says_what_to_install(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a", "task": "x"}\n{"text": "b", "task": "y"}\n')
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" or name.startswith("numpy.") or name == "scipy":
            raise ImportError("no numpy here")
sys.meta_path.insert(0, Block())
from router.cli import main
sys.exit(main(["train", "--data", {str(data)!r}, "--out", {str(tmp_path / "m.json.gz")!r}]))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2
    assert "needs numpy: pip install 'router[train]'" in out.stderr


def test_report_figures() -> None:
    outcomes = [("coding", "coding", 0.95, "en"), ("coding", "general", 0.55, "ja"),
                ("general", "general", 0.85, "de"), ("reasoning", "reasoning", 0.65, None)]
    r = Report.of(outcomes, ("coding", "general", "reasoning"))
    assert r.accuracy == 0.75
    assert r.precision_recall("coding") == (1.0, 0.5, 2)
    assert r.precision_recall("general") == (0.5, 1.0, 1)
    assert (r.groups["English"].n, r.groups["CJK"].n, r.groups["other"].n) == (2, 1, 1)
    assert r.confusion["coding"]["general"] == 1
    # one row per bin: |0.95-1| + |0.55-0| + |0.85-1| + |0.65-1| over 4
    assert r.calibration_error() == pytest.approx((0.05 + 0.55 + 0.15 + 0.35) / 4)
    assert r.threshold(0.6) == (0.25, 1.0)
    text = format_report("x", r, thresholds=[0.6])
    assert "accuracy 75.0% (3/4)" in text and "min_confidence 0.6: 25.0% of requests go to the fallback" in text
    assert language_group("zh") == "CJK" and language_group("pt") == "other" and language_group("en") == "English"


def test_load_rows_names_the_bad_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok", "task": "a"}\n{"messages": [], "task": "a"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: `messages` must be a non-empty list"):
        load_rows(bad)
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: not JSON"):
        load_rows(bad)
    bad.write_text('{"text": "ok", "task": "poem"}\n')
    with pytest.raises(ValueError, match="task 'poem' is not one of a, b"):
        load_rows(bad, tasks=("a", "b"))
