"""Features added for issue 12's generalisation work: the last user turn's shape markers
(router.classify.features.shape_features), scored exactly as training saw them on both scoring paths
(the C accelerator computes them in its tokenizer's pass: the same markers, checked here), and Latin
terms glued to CJK particles ("vue에서") read as words."""

from __future__ import annotations

import gzip
import json
import random

import pytest

from router.classify.classifier import DEFAULT_MODEL_PATH, Classifier, conversation_parts, extract_features
from router.classify.features import (
    LAST_HEAD,
    LAST_TAIL,
    SHAPE_NAMES,
    SHAPE_PREFIX,
    SHAPE_VALUE,
    char_grams,
    shape_features,
    text_keys,
)
from router.classify.language import native_module
from tests.test_classifier import _data_rows, _data_texts, _native, _random_texts

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


def _linear_logits(model: dict, vector: dict[str, float], main: str | None = None) -> list[float]:
    """What training computes: the feature vector times the weights, plus the bias, over the temperature
    (relative to the first class); with the last user turn `main`, plus the n-gram model's logits
    (its grams' vector times its weights, plus its bias) times its weight."""
    weights, k = model["weights"], len(model["classes"])
    z = list(model["bias"])
    for name, value in vector.items():
        w = weights.get(name)  # concepts (@code) have their own weights; features the model dropped none
        if w is not None:
            for j in range(k):
                z[j] += value * w[j]
    if main is not None and (g := model.get("grams")):
        grams = char_grams(main.lower(), g["n"])
        for j in range(k):
            z[j] += g["weight"] * (g["bias"][j] + sum(g["weights"].get(x, [0.0] * k)[j] for x in grams)
                                   / len(grams) ** 0.5)
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
        want = _linear_logits(model, extract_features(user(text)), conversation_parts(user(text), None)[0])
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


# --- the shape markers in C (router.classify._features: computed in the tokenizer's pass) --------------

# What the markers' definitions turn on: digits only in ASCII (full-width and other scripts' digits are
# no number), Unicode white space (str.isspace, str.strip) for blank lines and the last character,
# lines split at \n only (CRLF), ? and ？, and the length before lower-casing (İ lowers to 2 characters).
EDGES = [
    "", " ", "\n", "\n\n", "?", "？", "1", "a1b22c333", "１２３ is full-width", "٣ ٤ ۴ ४ ๓ 三", "x٣1", "1٣1",
    "a\r\nb\r\nc", "a\r\n\r\nb", "a\n\nb", "\n\na\n\n", "a\n \nb", "a\n\u3000\nb\n\nc", "\u3000\u3000a\n\n\n",
    "why？\u3000\n", "why?\xa0", "why?\u2028", "what? no.", "？a", "a\u3000b\nc\xa0d\n\u2003", "\u3000\n\u3000\n\u3000\nx",
    "İ" * 79, "İ" * 80, "x" * 79 + "\n", "1\n2\n3\n4\n5\n6", "\x1c1\x1d2\x1e3\x1f", "a\x85\n\x85b", "\ud800?\udfff",
    "1 " * 30, "1," * 24 + "1", "word " * 20 + "1", "a" * 2000 + "?", "a\n" * 12 + "\n", "\t\v\f?\t",
]


@pytest.fixture(scope="module")
def fast_and_ref() -> tuple[Classifier, Classifier]:
    _native()
    return Classifier.load(native=True), Classifier.load(native=False)


def _native_markers(clf: Classifier, text: str) -> list[str]:
    from router.classify import _features

    lowered = text.lower()
    mask = _features.shape(clf._table, lowered.encode("utf-8", "surrogatepass"), lowered, len(text))
    return [name for bit, name in enumerate(SHAPE_NAMES) if mask >> bit & 1]


def test_lower_casing_keeps_what_the_markers_read() -> None:
    # The C pass reads the lower-cased text; every code point whose lower case differs keeps its
    # word/digit/white-space/line/question-mark class, so only the length needs the original text.
    def word(ch: str) -> bool:
        return ch >= "\x80" or (ch.isascii() and ch.isalnum())

    for cp in range(0x110000):
        c = chr(cp)
        low = c.lower()
        if low == c:
            continue
        assert all(map(word, low)) == word(c), hex(cp)
        assert not any(ch.isdigit() and ch.isascii() for ch in low), hex(cp)
        assert any(not ch.isspace() for ch in low) != c.isspace() and all(map(str.isspace, low)) == c.isspace(), hex(cp)
        assert not set(low) & set("\n?？"), hex(cp)


def test_native_markers_equal_the_reference(fast_and_ref) -> None:
    fast, _ = fast_and_ref
    assert fast._native_shape
    assert shape_features("is 1001 prime?") == _native_markers(fast, "is 1001 prime?")
    rng = random.Random(7)
    pool = ["\n", "\n\n", "\r\n", " ", "\t", "\u3000", "\xa0", "\u2028", "\x85", "?", "？", "1", "22", "１２", "٣", "४",
            "a", "İ", "é", "中", "\x1c", "\ud800", "\U0001f600"]
    texts = (EDGES + _data_texts() + _random_texts(3000, seed=13)
             + ["".join(rng.choice(pool) for _ in range(rng.choice([1, 2, 3, 5, 10, 40, 300]))) for _ in range(5000)])
    differ = [text for text in texts if _native_markers(fast, text) != shape_features(text)]
    assert differ == []
    with pytest.raises(ValueError, match="shape"):  # a table without markers has none to give
        from router.classify import _features

        _features.shape(_features.Table(1, [], [], 60), b"x", "x", 1)


def test_both_paths_give_the_same_marker_sums_and_logits(fast_and_ref) -> None:
    fast, ref = fast_and_ref
    long = "Line 1: 2,000 units at $3.50?\n\n" * 200  # longer than the clip: the markers read the clipped turn
    assert len(long) > LAST_HEAD + LAST_TAIL
    data = _data_texts()
    tools = [{"type": "function", "function": {"name": "run_shell", "description": "run a command"}}]
    for i, text in enumerate(EDGES + [long, "İ" * 3000] + data[::40] + _random_texts(400, seed=17)):
        conversations = [user(text), [{"role": "system", "content": data[i % len(data)]}, *user(text)],
                         [*user(data[-i]), {"role": "assistant", "content": text}, *user(text[:30])]]
        for messages in conversations:
            for offered in (None, tools):
                got, want = fast._sums(messages, offered), ref._sums(messages, offered)
                assert got == want, (text[:80], got[3], want[3])
                assert got[3] is not None
        assert fast.logits(user(text)) == ref.logits(user(text)), text[:80]
        assert fast.classify(user(text)) == ref.classify(user(text))
    rows = [r for r in _data_rows() if r.get("messages")]
    assert rows
    for r in rows:
        assert fast.logits(r["messages"], r.get("tools")) == ref.logits(r["messages"], r.get("tools"))


def test_markers_computed_in_python_when_the_table_has_none(fast_and_ref) -> None:
    # an accelerator built before the markers moved to C: native scoring, markers in Python, same logits
    fast, ref = fast_and_ref
    model = _model_json()
    old = Classifier.load(native=True)
    old._native_shape = False
    for text in (MINUTES, "is 1001 prime?", "これは何ですか？"):
        assert old.logits(user(text)) == fast.logits(user(text)) == ref.logits(user(text))
    plain = {name: w for name, w in model["weights"].items() if not name.startswith(SHAPE_PREFIX)}
    no_shape = Classifier(model["classes"], model["bias"], plain, model["temperature"], concepts=model["concepts"],
                          native=True)
    assert not no_shape._native_shape and no_shape._sums(user(MINUTES), None)[3] is None


def test_native_tables_refuse_bad_shape_specs() -> None:
    features = _native()
    steps = ((80, 200), (1,), (0.5,), (3,))
    table = features.Table(1, [], [], 60, (*steps, [(1,), (2,), (4,), (8,), (16,), (32,), (64,), (128,)]))
    assert features.score(table, b"x", "x", None, None, False) == ((0,), 1, None, 0)  # no length: as before
    # "ab 1?" 200 chars (before lower-casing): len80 len200 num1 (1 number in 2 words: nr0.5) endq q
    text = "ab 1?".rjust(200)
    assert features.score(table, text.encode(), text, None, None, False, 200)[4] == (1 + 2 + 4 + 8 + 32 + 64,)
    assert features.score(table, b"", "", None, None, False, 0)[4] == (0,)
    assert features.score(features.Table(1, [], [], 60), b"x", "x", None, None, False, 1)[4] is None
    with pytest.raises(ValueError, match="weight tuples"):
        features.Table(1, [], [], 60, (*steps, [(1,)] * 7))
    with pytest.raises(TypeError, match="tuple of 1 ints"):
        features.Table(1, [], [], 60, (*steps, [(1, 2)] * 8))
    with pytest.raises(ValueError, match="ascending"):
        features.Table(1, [], [], 60, ((200, 80), (1,), (0.5,), (3,), [(1,)] * 8))
    with pytest.raises(ValueError, match="at most"):
        features.Table(1, [], [], 60, (tuple(range(1, 10)), (1,), (0.5,), (3,), [(1,)] * 15))
    with pytest.raises(OverflowError):
        features.Table(1, [], [], 60, (*steps, [(1 << 41,)] * 8))
    with pytest.raises(TypeError, match="shape is"):
        features.Table(1, [], [], 60, steps)
