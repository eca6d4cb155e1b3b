"""Tests for router.classify (the shipped task model, its C accelerator, language detection)."""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from router.classify.classifier import (
    DEFAULT_MODEL_PATH,
    TASKS,
    Classification,
    Classifier,
    classify,
    extract_features,
)
from router.classify.evaluate import evaluate, load_rows
from router.classify.features import content_text
from router.classify.language import detect_language

ROOT = Path(__file__).resolve().parent.parent
TASKS_DIR = ROOT / "data" / "tasks"
TRAIN = TASKS_DIR / "train.jsonl"


def _check_overlap():  # scripts/check_overlap.py: the evaluation rows, and where the shared dev_real.jsonl is
    spec = importlib.util.spec_from_file_location("check_overlap", ROOT / "scripts" / "check_overlap.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


CHECK_OVERLAP = _check_overlap()
DEV_REAL = CHECK_OVERLAP.DEV_REAL


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def row_text(row: dict) -> str:
    """A row's text: its `text`, or every message's content joined."""
    if "messages" not in row:
        return row["text"]
    return "\n".join(content_text(m.get("content")) for m in row["messages"])


# --- interface -------------------------------------------------------------------------------


def test_public_interface() -> None:
    assert TASKS == ("coding", "reasoning", "general")
    c = classify(user("hello there"))
    assert isinstance(c, Classification)
    assert c.task in TASKS and 0.0 < c.confidence <= 1.0 and isinstance(c.language, str)
    assert {t for t, _ in c.scores} == set(TASKS) and dict(c.scores)[c.task] == pytest.approx(c.confidence, abs=1e-4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.task = "coding"  # type: ignore[misc]
    assert not hasattr(c, "__dict__")  # slots


def test_probabilities_sum_to_one_and_confidence_is_the_top_one() -> None:
    clf = Classifier.load()
    msgs = user("Write a SQL query that lists customers without orders")
    probs = clf.probabilities(msgs)
    assert set(probs) == set(TASKS)
    assert sum(probs.values()) == pytest.approx(1.0)
    c = clf.classify(msgs)
    assert c.task == max(probs, key=probs.__getitem__)
    assert c.confidence == pytest.approx(probs[c.task], abs=1e-4)


# --- accuracy --------------------------------------------------------------------------------


# Floors a little under the figures docs/classifier.md reports: evaluation sets the model never
# trained on (scripts/eval_classifier.py prints every figure).
FLOORS = {"casual_eval.jsonl": 0.98, "casual_eval2.jsonl": 0.96, "casual_eval3.jsonl": 0.92,
          "conversations_eval.jsonl": 0.92, "conversations_eval2.jsonl": 0.83}


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_accuracy_floor_on_evaluation_sets(name: str) -> None:
    assert evaluate(Classifier.load(), load_rows(TASKS_DIR / name)).accuracy >= FLOORS[name]


@pytest.mark.skipif(not DEV_REAL.exists(), reason="the shared dev_real.jsonl is not next to this checkout")
def test_accuracy_floor_on_dev_real() -> None:
    """Issue 12's target on the source-disjoint set: 93 % overall. Per language group the floor is
    the issue's per-group target, 90 %: the English group is 60 rows, one row 1.7 points, so a 93 %
    floor there flips on a single row between retrainings that move nothing else."""
    report = evaluate(Classifier.load(), load_rows(DEV_REAL))
    assert report.accuracy >= 0.93
    assert min(s.accuracy for s in report.groups.values() if s.n) >= 0.90


CODING = [
    "getting this error pls help\nTypeError: Cannot read properties of undefined (reading 'length')",
    "Traceback (most recent call last):\n  File \"run.py\", line 4, in <module>\n    x = int(v)\nValueError: invalid literal for int() with base 10: 'abc'",
    "how do i revert a pushed git commit",
    "write a bash script that backs up my home folder every night",
    "SQL to get the second highest salary from employees",
    "write a regex for a UK postcode",
    "convert this to go: def add(a, b): return a + b",
    "docker says 'no space left on device', how do I clean up",
    "Wie schreibe ich in Python eine Funktion, die eine Liste umdreht?",
    "用Java写一个单例模式",
]
REASONING = [
    "if I drive 180 miles at 60 mph and then 120 miles at 40 mph, what's my average speed?",
    "Prove that the product of two odd numbers is odd.",
    "A is older than B, B is older than C, C is older than D. Who is the second oldest?",
    "what's the probability of drawing two aces in a row from a deck without replacement?",
    "I have $1,000 and it grows 8% a year. How many years until it doubles?",
    "Un tren recorre 300 km en 2 horas y media. ¿Cuál es su velocidad media?",
]
GENERAL = [
    "what is Kubernetes and why do companies use it",
    "hi! how are you today?",
    "write an email to my boss asking for Friday off",
    "what's the capital of Peru",
    "summarize: The museum will close for renovations in May and reopen next spring with a new wing.",
    "give me ideas for a 10 year old's birthday party",
    "what's the difference between a CPU and a GPU",
    "Qu'est-ce que le cloud computing ?",
]


@pytest.mark.parametrize(
    ("task", "text"),
    [("coding", t) for t in CODING] + [("reasoning", t) for t in REASONING] + [("general", t) for t in GENERAL],
)
def test_realistic_examples(task: str, text: str) -> None:
    assert classify(user(text)).task == task


TOOLS = [
    {"type": "function", "function": {"name": "run_shell", "description": "Run a shell command in the repo"}},
    {"type": "function", "function": {"name": "edit_file", "description": "Replace text in a source file"}},
]


def test_agent_conversation_with_tools_and_stack_trace_is_coding() -> None:
    messages = [
        {"role": "system", "content": "You are a coding agent working in a Node.js repository."},
        {"role": "user", "content": "run the tests"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "run_shell", "arguments": '{"cmd": "npm test"}'}}
        ]},
        {"role": "tool", "tool_call_id": "1", "content": "TypeError: Cannot read properties of null (reading 'id')\n"
         "    at getUser (src/users.js:42:17)\n    at processTicksAndRejections (node:internal/process/task_queues:95:5)"},
        {"role": "user", "content": "try again"},
    ]
    assert classify(messages, TOOLS).task == "coding"
    # The context is what makes it coding: the same last turn alone is not.
    assert classify(user("try again")).task != "coding"


def test_tool_protocol_syntax_is_no_evidence_but_its_words_are() -> None:
    from router.classify.features import split_conversation

    messages = [
        {"role": "system", "content": "You are the support assistant of a shoe shop."},
        {"role": "user", "content": "where is my order 55810?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "get_order", "arguments": '{"order_id": "55810"}'}}
        ]},
        {"role": "tool", "tool_call_id": "1", "content": '{"status": "in_transit", "eta": "2025-03-14"}'},
        {"role": "user", "content": "can I change the delivery address?"},
    ]
    tools = [{"type": "function", "function": {"name": "get_order", "description": "Look up an order by id"}}]
    main, context = split_conversation(messages, tools)
    assert main == "can I change the delivery address?"
    # the call reads "get order  order_id  55810": the name as words, the arguments' keys and values
    # kept, no "name(" and no JSON punctuation
    assert "get order" in context and "order_id" in context and "55810" in context
    assert "get_order" not in context and "(" not in context and "{" not in context and '"' not in context
    assert classify(messages, tools).task == "general"


def test_follow_up_turn_inherits_the_conversation_task() -> None:
    messages = [
        {"role": "user", "content": "A shop sells pens at 3 for $2. How much do 12 pens cost?"},
        {"role": "assistant", "content": "12 pens are 4 groups of 3, so 4 x $2 = $8."},
        {"role": "user", "content": "and 20 pens if the price goes up to 3 for $2.50?"},
    ]
    assert classify(messages).task == "reasoning"


def test_a_new_topic_announced_in_the_last_turn_decides_alone() -> None:
    from router.classify.features import announces_new_topic

    assert announces_new_topic("ok thanks. Different question: what's the capital of Chile?")
    assert announces_new_topic("ありがとう。話変わるけど、おすすめの映画ある？")
    assert announces_new_topic("спасибо! кстати, как дела?")
    assert not announces_new_topic("and now in Go?") and not announces_new_topic("try again with a smaller step")
    coding = [{"role": "user", "content": "write a python function that merges two sorted lists"},
              {"role": "assistant", "content": "```python\ndef merge(a, b):\n    return sorted(a + b)\n```"}]
    assert classify([*coding, {"role": "user", "content": "now in Rust?"}]).task == "coding"
    assert classify([*coding, {"role": "user", "content": "btw, any tips for sleeping on a long flight?"}]).task == "general"


def test_content_parts_and_images() -> None:
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "what's wrong with this code?"},
        {"type": "text", "text": "```python\nfor i in range(10)\n    print(i)\n```"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]}]
    assert classify(messages).task == "coding"


def test_last_user_turn_weighs_most() -> None:
    messages = [
        {"role": "user", "content": "write a python function that parses ISO dates"},
        {"role": "assistant", "content": "```python\ndef parse(s): ...\n```"},
        {"role": "user", "content": "thanks! unrelated: can you write a short poem about the sea for my mum?"},
    ]
    assert classify(messages).task == "general"


def test_degenerate_inputs_do_not_crash() -> None:
    for messages in ([], [{"role": "user", "content": ""}], [{"role": "assistant", "content": None}],
                     [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]):
        c = classify(messages)
        assert c.task in TASKS and 0 < c.confidence <= 1


def test_long_inputs_are_bounded() -> None:
    line = "def f(x):\n    return x\n"
    huge = line * 20000  # ~440 kB
    feats = extract_features(user("please review:\n" + huge + "thanks"))
    small = extract_features(user("please review:\n" + line * 2000 + "thanks"))
    assert len(feats) < 2000
    assert classify(user(huge)).task == "coding"
    # Only a head and a tail are read, so growing the middle changes nothing.
    assert feats == small


# --- concepts (router.classify.lexicon) -------------------------------------------------------


def test_every_concept_member_is_a_feature_the_tokenizer_makes() -> None:
    import re

    from router.classify.lexicon import CONCEPTS, validate

    assert validate() == []
    for concept, members in CONCEPTS.items():
        assert concept.startswith("@") and members, concept
        for m in members:
            if m.endswith("~"):  # a stem: five ASCII letters, or ten bytes of another script
                raw = m[:-1].encode()
                assert (raw.isascii() and len(raw) == 5) or (not raw.isascii() and len(raw) == 10), m
            if m.startswith("c:"):
                assert re.fullmatch(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]{1,2}", m[2:]), m


def test_members_with_digits_and_vocabulary_pairs_reach_their_concepts() -> None:
    from router.classify.lexicon import _member_name, validate

    # The tokenizer folds digits to zeros: a member written "esp32" is the feature "esp00" (it
    # never fired while it was kept as written), and validate() catches one that is not folded.
    assert _member_name("esp32") == "esp00"
    assert "@device" in extract_features(user("my esp32 keeps rebooting"))
    assert validate({"@x": ("esp32",)}) == ["@x: 'esp32'"]
    # The long vocabularies (router.classify.terms): single words, word pairs and CJK pairs.
    assert "@mathematics" in extract_features(user("is every subgroup of an abelian group normal"))
    assert "@mathematics" in extract_features(user("what is a prime number"))
    assert "@mathematics" in extract_features(user("矩阵的特征值怎么求"))


def test_concepts_carry_what_one_language_teaches_to_another() -> None:
    from router.classify.lexicon import fold

    feats = extract_features(user("파이썬으로 위상 정렬 구현해줘"))  # "implement topological sort in Python"
    assert {"@implement", "@sort", "@language"} <= set(feats)
    # concepts count their members present and, like stems, stay out of the normalisation
    assert feats["@implement"] == feats["c:구현"]
    # a model's concept weights end up on every member, and nothing else
    clf = Classifier(("a", "b"), (0.0, 0.0), {"@code": (0.0, 2.0), "kod": (0.0, 1.0)},
                     concepts={"@code": ["kod", "c:코드"]}, native=False)
    assert clf.probabilities(user("kod"))["b"] > clf.probabilities(user("코드"))["b"] > 0.5
    assert clf.probabilities(user("hello"))["b"] == 0.5
    assert fold({"@x": (1,), "w": (2,)}, {"@x": ["w", "v"]}) == {"w": (3,), "v": (1,)}
    # a symbol run that starts with @ (a decorator, an e-mail address) is a feature, not a concept
    assert fold({"@": (1,), "@(": (2,)}, {}) == {"@": (1,), "@(": (2,)}
    assert "@" in extract_features(user("@app.route('/')\ndef index(): pass"))


def test_two_word_concept_members_count_across_languages() -> None:
    # Korean "number of cases" and Vietnamese "percent" are word pairs; a percentage asked in
    # Russian and a fallacy named in Spanish meet the same concepts as the English words.
    assert "@combinatorics" in extract_features(user("남학생 3명을 한 줄로 세우는 경우의 수"))
    assert "@percent" in extract_features(user("giá tăng bao nhiêu phần trăm?"))
    assert "@percent" in extract_features(user("на сколько процентов выросла цена"))
    assert "@argument" in extract_features(user("¿es correcto este razonamiento?"))
    assert "@ui" in extract_features(user("when someone clicks the heart it should turn red"))
    assert "@percent" not in extract_features(user("phần mềm"))  # half a pair is no member



def test_vietnamese_letters_are_latin_and_thai_reads_as_characters() -> None:
    from router.classify.features import names, text_keys

    # "lập trình" has letters of three UTF-8 bytes (U+1E00-U+1EFF) but is no Latin term glued to
    # another script: no "l", "p", "tr", "nh" fragments (they are code words in English text)
    assert sorted(names(text_keys("lập trình"))) == ["lập", "lập trình", "trình"]
    # a Latin term glued to a CJK particle, or to Greek Extended (U+1F00, also lead byte 0xE1), still splits
    assert {"vue", "python", "csv"} <= set(names(text_keys("vue에서 pythonでcsvを")))
    assert "abc" in names(text_keys("abc\u1f00"))
    # Thai has no spaces between words: its characters and pairs are features, like CJK ones
    thai = names(text_keys("ทอยลูกเต๋า"))
    assert {"c:ท", "c:ทอ", "c:ลู"} <= set(thai)


# --- language --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lang", "text"),
    [
        ("en", "Can you help me write a cover letter for a nursing job?"),
        ("zh", "请帮我把这段话翻译成英文，谢谢"),
        ("ja", "明日の天気はどうなりますか？"),
        ("ko", "이 코드에서 버그를 찾아 주세요"),
        ("de", "Kannst du mir bitte erklären, wie eine Wärmepumpe funktioniert?"),
        ("fr", "Pourquoi le ciel est-il bleu pendant la journée ?"),
        ("es", "¿Cuál es la mejor manera de aprender a tocar la guitarra?"),
        ("ru", "Как приготовить настоящий украинский борщ?"),
        ("ar", "ما هي أفضل طريقة لتعلم البرمجة؟"),
        ("pt", "Você pode me ajudar a escrever um e-mail para o meu chefe?"),
        ("it", "Qual è la differenza tra un virus e un batterio?"),
        ("uk", "Привіт, як справи? Що ти робиш сьогодні?"),
    ],
)
def test_detect_language(lang: str, text: str) -> None:
    assert detect_language(text) == lang


def test_language_ignores_pasted_code_and_errors() -> None:
    trace = 'Traceback (most recent call last):\n  File "app.py", line 3, in <module>\n    import numpy\nModuleNotFoundError: No module named \'numpy\''
    assert detect_language("这个报错怎么解决？\n" + trace) == "zh"
    assert detect_language(trace + "\n\nwie behebe ich das?") == "de"
    assert detect_language("SELECT * FROM users WHERE id = 1;") == "en"
    assert detect_language("") == "en"


def test_classify_reports_language_of_the_last_user_turn() -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant. Answer in the user's language."},
        {"role": "user", "content": "Bonjour, peux-tu m'aider à écrire une lettre de motivation ?"},
    ]
    assert classify(messages).language == "fr"
    assert classify(user("파이썬으로 리스트를 정렬하는 방법을 알려주세요")).language == "ko"


# --- loading and determinism -----------------------------------------------------------------


def _run_python(code: str, **env: str) -> str:
    environ = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""), **env}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_does_not_load_the_model() -> None:
    code = f"""
import sys
opened = []
sys.addaudithook(lambda ev, args: opened.append(str(args[0])) if ev == "open" else None)
import router.classify.classifier as c
model = {str(DEFAULT_MODEL_PATH)!r}
print(c._model is None, model in opened, "numpy" in sys.modules)
c.classify([{{"role": "user", "content": "hi"}}])
print(c._model is not None, model in opened)
"""
    assert _run_python(code).splitlines() == ["True False False", "True True"]


def test_deterministic_across_calls_and_processes() -> None:
    msgs = user("my pandas merge returns NaN for every row, why? both frames have an id column")
    first = classify(msgs)
    assert all(classify(msgs) == first for _ in range(3))
    code = (
        "from router.classify.classifier import classify;"
        "c = classify([{'role': 'user', 'content': 'my pandas merge returns NaN for every row, why? both frames have an id column'}]);"
        "print(c.task, repr(c.confidence), c.language)"
    )
    outputs = {_run_python(code, PYTHONHASHSEED=str(seed)) for seed in (1, 2, 3)}
    assert outputs == {f"{first.task} {first.confidence!r} {first.language}"}


def test_load_rejects_a_foreign_file(tmp_path: Path) -> None:
    bad = tmp_path / "m.json.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(json.dumps({"format": "something-else/9"}).encode())
    with pytest.raises(ValueError, match="not a router-task-classifier"):
        Classifier.load(bad)


def test_shipped_model_is_small() -> None:
    assert DEFAULT_MODEL_PATH.stat().st_size < 5_000_000
    assert (DEFAULT_MODEL_PATH.parent / "training_rows.jsonl.gz").stat().st_size < 5_000_000


def test_only_words_have_stems_so_training_names_what_scoring_looks_up() -> None:
    # A long word adds its stem ("router~"); a long symbol run must not: "=====~" names a symbol run
    # ending in "~" (features.canonical_name), so a weight trained under that name was never scored.
    feats = extract_features(user("routers ============ ¿cuántos ______ 12345678"))
    assert feats["route~"] and feats["00000~"] and feats["¿cuántos~"]  # (digits read as 0)
    assert not any(name.endswith("~") and name[0] in "=_" for name in feats), sorted(feats)


def test_ascii_word_split_matches_the_regex():
    from router.classify import language

    with open(ROOT / "data" / "tasks" / "train.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(line)["text"] for line in fh]
    samples = [t[:160].lower() for t in rows[:1500]] + ["it's don't 'quoted' o'neil'x a''b c3po x_y"]
    for low in samples:
        if low.isascii():
            assert language._ascii_words(low) == language._WORD.findall(low), low


# --- the C accelerator (router.classify._features) ----------------------------------------------------
# It must compute exactly what the pure-Python reference computes. The install command builds
# it (setup.py); these tests fail, rather than skip, when it did not build, so CI always checks
# both paths.


def _native():
    try:
        from router.classify import _features
    except ImportError as exc:  # pragma: no cover - a broken build
        pytest.fail(f"router.classify._features did not build ({exc}): install a C compiler and Python headers, "
                    "then `pip install -e .`")
    return _features


def _data_rows() -> list[dict]:
    rows = []
    for path in sorted(TASKS_DIR.glob("*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            rows += [json.loads(line) for line in fh if line.strip()]
    return rows


def _data_texts() -> list[str]:
    return [row_text(r) for r in _data_rows()]


def _random_texts(count: int, seed: int) -> list[str]:
    """Text in many scripts with the characters the features treat specially: ASCII control and
    separator bytes, digits, symbols, apostrophes, marks inside the CJK blocks, surrogates,
    characters whose lower case is longer (İ) and astral characters."""
    import random

    rng = random.Random(seed)
    ascii_pool = " \n\t\r\x0b\x0c\x1c\x1f\x00\x7fabcXYZ(){};=_-0123456789'\"`/\\:"
    special = "İẞΣ’ßñãçéüöäœıłğş¿¡゙゚\u3097\u3098ーー々〆ⅤⅫ²١٣" + "іїєґپچژگ" + "\ud800\udfff"
    out = []
    for _ in range(count):
        chars = []
        for _ in range(rng.choice([1, 3, 20, 200, 2500])):
            r = rng.random()
            if r < 0.4:
                chars.append(rng.choice(ascii_pool))
            elif r < 0.5:
                chars.append(rng.choice(special))
            elif r < 0.85:
                chars.append(chr(rng.randrange(0x80, 0x10000)))
            else:
                chars.append(chr(rng.randrange(0x10000, 0x110000)))
        out.append("".join(chars))
    return out


@pytest.fixture(scope="module")
def both_models():
    _native()
    return Classifier.load(native=True), Classifier.load(native=False)


def test_native_and_python_scores_agree_on_every_data_text(both_models) -> None:
    fast, ref = both_models
    assert fast.native and not ref.native
    rows = _data_rows()
    assert len(rows) > 10000
    differ = [r for r in rows if fast._sums(r.get("messages") or user(r["text"]), r.get("tools"))
              != ref._sums(r.get("messages") or user(r["text"]), r.get("tools"))]
    assert differ == []


def test_native_and_python_scores_agree_on_conversations_and_random_text(both_models) -> None:
    fast, ref = both_models
    data = _data_texts()
    tools = [{"type": "function", "function": {"name": "run_shell", "description": "run a command"}}]
    differ = []
    for i, text in enumerate(_random_texts(3000, seed=11)):
        conversations = [
            user(text),
            [{"role": "system", "content": data[i % len(data)]}, {"role": "user", "content": text}],
            [{"role": "user", "content": data[-i]}, {"role": "assistant", "content": text},
             {"role": "tool", "content": text[::-1]}, {"role": "user", "content": text[:20]}],
            [{"role": "assistant", "content": text}],  # no user turn at all
        ]
        for messages in conversations:
            for offered in (None, tools):
                if fast._sums(messages, offered) != ref._sums(messages, offered):
                    differ.append((messages, offered))
    assert differ == []
    # and what callers see: the same task, confidence and language
    for text in data[:300]:
        assert fast.classify(user(text)) == ref.classify(user(text))


def test_native_and_python_character_grams_agree(both_models) -> None:
    from router.classify import _features as native
    from router.classify.features import char_grams

    fast, ref = both_models
    assert fast.grams is not None and fast._gram_table is not None and ref._gram_weights is not None
    edges = ["", " ", "\u3000x\u2028y\t\n z\x1c", "1 2 3 x9", "a" * 5000, "\ud800ab", "İstanbul ǅ", "ab  ab"]
    texts = _data_texts()[:3000] + _random_texts(1500, seed=5) + edges
    assert [t for t in texts if fast._gram_sums(t) != ref._gram_sums(t)] == []
    # the C reader normalises as char_grams does: every gram of a text is found, and counted once
    for text in texts[:300] + _random_texts(300, seed=6) + edges:
        low = text.lower()
        grams = char_grams(low)
        if grams:
            table = native.Table(1, [(g.encode("utf-8", "surrogatepass"), 1) for g in grams], [], 150)
            assert native.grams(table, low, 4) == ((len(grams),), len(grams)), text[:60]
    assert char_grams("  ") == set() and char_grams("go 2") == {" go ", "go 0", "o 0 "}


def test_native_and_python_agree_on_vietnamese_and_thai_edges(both_models) -> None:
    fast, ref = both_models
    edges = ["lập trình web", "ệabc xyzế1 ậ", "abc\u1eff1 abc\u1f00 abc\u1dff", "vue에서 pythonでcsv",
             "ทอยลูกเต๋า 2 ลูก python", "สร้างคลาส Employee มีชื่อ", "x\u0e00\u0e7f\u0e80y", "ỹ" * 300,
             "chào bạn, viết hàm kiểm tra số nguyên tố bằng python giúp mình"]
    for text in edges:
        for messages in (user(text), [{"role": "system", "content": text}, {"role": "user", "content": "ok"}]):
            assert fast._sums(messages, None) == ref._sums(messages, None), text


def test_native_and_python_agree_for_a_five_task_model_with_concepts() -> None:
    # Wider table slots (4 weights a feature) and concepts folded in: the same sums both ways.
    _native()
    with gzip.open(DEFAULT_MODEL_PATH, "rb") as fh:
        shipped = json.loads(fh.read())
    weights = {name: [*w, w[0] - w[1], w[2] * 0.5] for name, w in shipped["weights"].items()}
    args = (("a", "b", "c", "d", "e"), (0.1, -0.2, 0.3, 0.0, 0.05), weights, 1.3)
    fast = Classifier(*args, native=True, concepts=shipped["concepts"])
    ref = Classifier(*args, native=False, concepts=shipped["concepts"])
    assert fast.native and not ref.native
    texts = _data_texts()[::7] + _random_texts(500, seed=3)
    tools = [{"type": "function", "function": {"name": "search", "description": "search the web"}}]
    for i, text in enumerate(texts):
        messages = [{"role": "system", "content": texts[i - 1]}, {"role": "user", "content": text}]
        assert fast._sums(messages, tools) == ref._sums(messages, tools), text[:80]
        assert fast.classify(user(text)) == ref.classify(user(text))


def test_native_and_python_agree_with_the_contexts_own_weights_and_concepts() -> None:
    # ConversationWeights.own: a second table (shared + own weights, concepts folded into both)
    # scores every context part; the same sums both ways, and a lone message is untouched by it.
    _native()
    with gzip.open(DEFAULT_MODEL_PATH, "rb") as fh:
        shipped = json.loads(fh.read())
    names = sorted(shipped["weights"])
    # (a quarter of the shared weight: shared + own stays inside the 16-bit range whichever names are taken)
    own = {"ctx|" + name: [v * 0.25 - 0.1 * k for k, v in enumerate(shipped["weights"][name])] for name in names[::3]}
    args = (shipped["classes"], shipped["bias"], {**shipped["weights"], **own}, 1.1)
    fast = Classifier(*args, native=True, concepts=shipped["concepts"])
    ref = Classifier(*args, native=False, concepts=shipped["concepts"])
    plain = Classifier(*args[:2], shipped["weights"], 1.1, native=True, concepts=shipped["concepts"])
    assert fast.native and not ref.native and fast._ctx_table is not fast._table
    texts = _data_texts()[::11]
    tools = [{"type": "function", "function": {"name": "run_query", "description": "run SQL on the warehouse"}}]
    for i, text in enumerate(texts):
        messages = [{"role": "system", "content": texts[i - 1]}, {"role": "user", "content": texts[i - 2][:300]},
                    {"role": "assistant", "content": "ok"}, {"role": "user", "content": text}]
        assert fast._sums(messages, tools) == ref._sums(messages, tools), text[:80]
        assert fast.classify(user(text)) == plain.classify(user(text))
    assert any(fast.logits(m, tools) != plain.logits(m, tools) for m in
               ([{"role": "system", "content": t}, {"role": "user", "content": "go on"}] for t in texts[:20]))


def test_native_and_python_language_detection_agree() -> None:
    _native()
    from router.classify import language

    assert language._LEXICON is not None
    texts = _data_texts()
    samples = texts + [t[:300] for t in texts] + _random_texts(3000, seed=5)
    samples += [t.upper() for t in samples[-3000:]] + [t.title() for t in samples[-3000:]]
    differ = [t for t in samples if language._native_language(language._LEXICON, t) != language._detect_clean(t)]
    assert differ == []


def test_native_noise_strip_matches_the_regexes() -> None:
    # The eight substitutions of language._NOISE, re-written as scans in C: same output on every data
    # text and on random compositions of what the patterns look for (fences, backticks, URLs, paths,
    # indentation, code-like line ends, underscores, exception names, Unicode spaces and letters).
    import random

    features = _native()
    from router.classify.language import _strip_noise

    samples = []
    for text in _data_texts():
        samples += [text, text[:361] + "\n"]
    rng = random.Random(9)
    pieces = ["```", "`", "http", "https://", "http://", "s://", "/", "\\", " ", "\n", "\t", "\n ", "\n\t",
              ";", "{", "}", "):", ";\n", "{\n", "}\n", "):\n", "_", "Error", "Exception", "Warning",
              "TypeError", "ValueError: bad thing.", "xError", ":", ".", "?", "!", "a", "B", "Z", "0",
              "é", "É", "\u00a0", "\u3000", "中", "\r", "\x1c", "_x", "x_", "Err", "(", ")", "\ud800", "😀"]
    samples += ["".join(rng.choice(pieces) for _ in range(rng.randrange(1, 40))) for _ in range(20000)]
    differ = [t for t in samples if features.strip_noise(t) != _strip_noise(t)]
    assert differ == []


def test_without_the_accelerator_the_python_path_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    # A machine without a C compiler: router.classify._features cannot be imported at all.
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "router.classify._features":
            raise ImportError("no C accelerator here")
sys.meta_path.insert(0, Block())
from router.classify.classifier import classify, _default_model
from router.classify import language
c = classify([{"role": "user", "content": "Wie kann ich in Python eine Liste umdrehen? def f(x): return x[::-1]"}])
print(_default_model().native, language._LEXICON is None, c.task, c.language)
"""
    assert _run_python(code) == "False True coding de"
    # asking for the accelerator where it is missing is an error, not a silent slow path
    import router.classify.classifier as rc

    monkeypatch.setattr(rc, "_NativeTable", None)
    with pytest.raises(RuntimeError, match="not built"):
        Classifier.load(native=True)
    assert Classifier.load().native is False


def test_native_tables_refuse_bad_input() -> None:
    features = _native()
    with pytest.raises(OverflowError):
        features.Table(2, [(b"\x01x", 40_000, 0)], [], 60)
    with pytest.raises(ValueError, match="share"):
        features.Table(2, [(b"\x01x", 1, 1), (b"\x01x", 2, 2)], [], 60)
    with pytest.raises(TypeError, match="tuple"):
        features.Table(2, [(b"\x01x", 1)], [], 60)
    with pytest.raises(ValueError, match="width"):
        features.Table(0, [], [], 60)
    table = features.Table(2, [(b"\x01x", 1, 2)], [], 60)
    assert features.score(table, b"x", "x", None, None, False) == ((1, 2), 1, None, 0)
    assert features.score(table, b"x", "x", b"x y", "x y", True) == ((1, 2), 1, (1, 2), 4)  # x, y, "x y", tools
    with pytest.raises(TypeError):
        features.score(table, "x", "x", None, None, False)
    with pytest.raises(TypeError, match="both None"):
        features.score(table, b"x", "x", b"y", None, False)
    wide = features.Table(5, [(b"\x01x", 1, -2, 3, -4, 5)], [(b"abcde", 7, 7, 7, 7, 7)], 60)
    assert features.score(wide, b"x abcdefgh", "x abcdefgh", None, None, False) == ((8, 5, 10, 3, 12), 3, None, 0)


def test_no_training_row_is_a_near_duplicate_of_an_evaluation_row() -> None:
    # Evaluation figures mean something only if the model never saw the rows or their paraphrases:
    # no project-written training row may be within 0.5 token-Jaccard of a row of casual_eval*.jsonl,
    # conversations_eval.jsonl or the shared dev_real.jsonl (data/tasks/NOTICE.md). Offending
    # training rows are dropped (scripts/check_overlap.py --drop), never evaluation rows.
    check = CHECK_OVERLAP
    assert TASKS_DIR / "public_eval.jsonl" in check.evaluation_files()
    index = check.evaluation_index()
    assert len(index.rows) > (2100 if DEV_REAL.exists() else 1450)
    # the check itself: an evaluation row and a light paraphrase of one are caught, in CJK too
    some = load_rows(TASKS_DIR / "casual_eval3.jsonl")
    cjk = next(r["text"] for r in some if r["lang"] == "ja")
    assert index.near(cjk) and index.near(cjk[:-2] + "。") and index.near(some[0]["text"] + " please")
    assert not index.near("an unrelated sentence about gardening in the spring")
    assert [(p.name, n) for p, n, _ in check.near_duplicates(index)] == []
