"""Features added for issue 12's generalisation work: the last user turn's shape markers
(router.classify.features.shape_features), scored exactly as training saw them on both scoring paths,
and Latin terms glued to CJK particles ("vue에서") read as words."""

from __future__ import annotations

import gzip
import json

import pytest

from router.classify.classifier import DEFAULT_MODEL_PATH, Classifier, extract_features
from router.classify.features import SHAPE_PREFIX, SHAPE_VALUE, shape_features, text_keys
from router.classify.language import native_module

MINUTES = ("summarise these minutes in three bullet points\n\n"
           "Minutes, 3 March. The quote came in at $18,400, about $2,000 over the budget agreed in January.\n"
           "12 of the 40 spaces will be reserved from April; the gym opens 6:00-22:00 from 1 May.\n"
           "Next meeting 7 April, 18:30, room 2.14. Fees rise 3.5% to $1,240 a year.\n")


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_shape_markers() -> None:
    assert shape_features("") == []
    assert shape_features("hello") == []
    short = shape_features("is 1001 prime?")
    assert {"__d:num1", "__d:endq", "__d:q"} <= set(short) and "__d:num3" not in short
    doc = set(shape_features(MINUTES))
    assert {"__d:len200", "__d:num12", "__d:nr0.2", "__d:lines3", "__d:para"} <= doc
    assert "__d:q" not in doc and "__d:num25" not in doc and "__d:len500" not in doc and "__d:lines6" not in doc
    # full-width question mark, Windows line ends
    assert "__d:endq" in shape_features("これは何ですか？")
    assert "__d:lines3" in shape_features("a\r\nb\r\nc")
    assert all(name.startswith(SHAPE_PREFIX) for name in doc)


def test_training_vector_holds_the_markers_unnormalised() -> None:
    v = extract_features(user(MINUTES))
    assert v["__d:num12"] == SHAPE_VALUE and v["__d:para"] == SHAPE_VALUE
    # the words are divided by the square root of their number; the markers are not
    words = [value for name, value in v.items() if not name.startswith(SHAPE_PREFIX) and " " not in name
             and not name.endswith("~") and not name.startswith("@")]
    assert max(words) < SHAPE_VALUE


def _model_json() -> dict:
    with gzip.open(DEFAULT_MODEL_PATH, "rb") as fh:
        return json.loads(fh.read())


def _linear_logits(model: dict, vector: dict[str, float]) -> list[float]:
    """What training computes: the feature vector times the weights, plus the bias, over the temperature
    (relative to the first class)."""
    weights, k = model["weights"], len(model["classes"])
    z = list(model["bias"])
    for name, value in vector.items():
        w = weights.get(name)  # concepts (@code) have their own weights; features the model dropped none
        if w is not None:
            for j in range(k):
                z[j] += value * w[j]
    return [(v - z[0]) / model["temperature"] for v in z]


def test_the_shipped_model_has_shape_weights() -> None:
    model = _model_json()
    assert any(name.startswith(SHAPE_PREFIX) for name in model["weights"])


@pytest.mark.parametrize("native", [False, True])
def test_scoring_equals_the_training_vector_times_the_weights(native: bool) -> None:
    if native and native_module() is None:
        pytest.skip("the C accelerator is not built")
    model = _model_json()
    clf = Classifier.load(native=native)
    texts = [MINUTES, "is 1001 prime?", "hello", "A train leaves at 3pm at 60 mph; when does it arrive 150 miles on?",
             "list every amount and date in this lease:\n\n" + "Rent EUR 1,450 due on the 1st. Deposit EUR 4,350.\n" * 6,
             "fix this\n\nTraceback (most recent call last):\n  File \"a.py\", line 3\nKeyError: 'user_id'\n"]
    for text in texts:
        want = _linear_logits(model, extract_features(user(text)))
        got = clf.logits(user(text))
        # fixed-point rounding: 0.0005 per weight at most, and few features
        assert got == pytest.approx(want, abs=0.02), text[:40]


def test_both_paths_give_the_same_logits_with_shape_markers() -> None:
    if native_module() is None:
        pytest.skip("the C accelerator is not built")
    fast, ref = Classifier.load(native=True), Classifier.load(native=False)
    for text in (MINUTES, MINUTES * 5, "what is 2+2?", "さっきの議事録を要約して\n\n" + MINUTES):
        assert fast.logits(user(text)) == ref.logits(user(text))


def test_a_model_without_shape_weights_scores_as_before() -> None:
    model = _model_json()
    plain = {name: w for name, w in model["weights"].items() if not name.startswith(SHAPE_PREFIX)}
    clf = Classifier(model["classes"], model["bias"], plain, model["temperature"], concepts=model["concepts"],
                     native=False)
    z = _linear_logits({**model, "weights": plain}, {k: v for k, v in extract_features(user(MINUTES)).items()
                                                      if not k.startswith(SHAPE_PREFIX)})
    assert clf.logits(user(MINUTES)) == pytest.approx(z, abs=0.02)


GLUED = ["vue에서 v-for 쓸 때 key 왜 넣어야 돼?", "pythonでcsvを読む方法", "用java2写一个单例", "VBA로 시트 이름 목록 뽑는 매크로",
         "dockerコンテナに入るコマンド", "el código de la función", "naïve café", "x가y보다"]


def test_latin_terms_glued_to_cjk_particles_count_as_words() -> None:
    tokens, _ = text_keys(GLUED[0])
    assert {b"vue", "vue에서".encode()} <= tokens  # the glued word stays a feature too
    assert {b"python", b"csv"} <= text_keys(GLUED[1])[0]
    assert {b"java0"} <= text_keys(GLUED[2])[0]  # digits read as 0, as in any word
    assert b"vba" in text_keys(GLUED[3])[0]
    # accented Latin (two UTF-8 bytes a letter) is not split: no "c" or "digo" from "código"
    latin = text_keys(GLUED[5])[0] | text_keys(GLUED[6])[0]
    assert not latin & {b"c", b"digo", b"funci", b"n", b"na", b"ve", b"caf"}


def test_both_paths_read_glued_terms_alike() -> None:
    if native_module() is None:
        pytest.skip("the C accelerator is not built")
    fast, ref = Classifier.load(native=True), Classifier.load(native=False)
    for text in GLUED + [" ".join(GLUED) * 3, "a" * 300 + "에서", "에" + "b" * 7 + "서c"]:
        assert fast._sums(user(text), None) == ref._sums(user(text), None), text
        assert fast.logits(user(text)) == ref.logits(user(text))
