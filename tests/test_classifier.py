"""Tests for router.classify.classifier and router.classify.language (the shipped task model)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
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
from router.classify.language import detect_language

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "data" / "tasks" / "train.jsonl"


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def is_holdout(text: str) -> bool:
    # Same rule as scripts/train_classifier.py: rows the shipped model was never trained on.
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16) % 100 < 20


# --- interface -------------------------------------------------------------------------------


def test_public_interface() -> None:
    assert TASKS == ("coding", "reasoning", "general")
    c = classify(user("hello there"))
    assert isinstance(c, Classification)
    assert c.task in TASKS and 0.0 < c.confidence <= 1.0 and isinstance(c.language, str)
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


def test_held_out_accuracy_floor() -> None:
    rows = [json.loads(line) for line in TRAIN.open(encoding="utf-8")]
    held = [r for r in rows if is_holdout(r["text"])]
    assert 900 <= len(held) <= 1100
    clf = Classifier.load()
    correct = sum(clf.classify(user(r["text"])).task == r["task"] for r in held)
    assert correct / len(held) >= 0.97


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


def test_follow_up_turn_inherits_the_conversation_task() -> None:
    messages = [
        {"role": "user", "content": "A shop sells pens at 3 for $2. How much do 12 pens cost?"},
        {"role": "assistant", "content": "12 pens are 4 groups of 3, so 4 x $2 = $8."},
        {"role": "user", "content": "and 20 pens if the price goes up to 3 for $2.50?"},
    ]
    assert classify(messages).task == "reasoning"


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
    assert DEFAULT_MODEL_PATH.stat().st_size < 3_000_000


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


def _data_texts() -> list[str]:
    """Every text of the data files: a row's `text`, or each string content of a conversation row."""
    texts = []
    for path in sorted((ROOT / "data" / "tasks").glob("*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                if "text" in row:
                    texts.append(row["text"])
                else:
                    texts += [m["content"] for m in row["messages"] if isinstance(m.get("content"), str)]
    return texts


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
    texts = _data_texts()
    assert len(texts) > 5000
    differ = [t for t in texts if fast._sums(user(t), None) != ref._sums(user(t), None)]
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
        features.Table([(b"\x01x", 40_000, 0)], [])
    with pytest.raises(ValueError, match="share"):
        features.Table([(b"\x01x", 1, 1), (b"\x01x", 2, 2)], [])
    table = features.Table([(b"\x01x", 1, 2)], [])
    assert features.score(table, b"x", "x", None, None, False) == (1, 2, 1, 0, 0, 0)
    with pytest.raises(TypeError):
        features.score(table, "x", "x", None, None, False)
    with pytest.raises(TypeError, match="both None"):
        features.score(table, b"x", "x", b"y", None, False)


def test_no_training_row_is_a_near_duplicate_of_an_evaluation_row() -> None:
    # Evaluation figures mean something only if the model never saw the rows or their paraphrases:
    # no project-written training row may be within 0.5 token-Jaccard of a casual_eval*.jsonl row
    # or of a held-out row of train.jsonl (data/tasks/NOTICE.md).
    import re
    from collections import Counter, defaultdict
    from itertools import chain

    def tokens(text: str) -> frozenset[str]:
        return frozenset(re.findall(r"\w+", text.lower()))

    def rows(path: Path) -> list[str]:
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line).get("text", "") for line in fh if line.strip()]

    tasks = ROOT / "data" / "tasks"
    held = [t for t in rows(TRAIN) if is_holdout(t)]
    evaluation = [tokens(t) for t in held + [t for p in sorted(tasks.glob("casual_eval*.jsonl")) for t in rows(p)]]
    index: dict[str, list[int]] = defaultdict(list)
    for i, toks in enumerate(evaluation):
        for tok in toks:
            index[tok].append(i)
    near = []
    for path in sorted(tasks.glob("extra*.jsonl")):
        for text in rows(path):
            toks = tokens(text)
            shared = Counter(chain.from_iterable(index[tok] for tok in toks if tok in index))
            for i, n in shared.items():
                if n / len(toks | evaluation[i]) >= 0.5:
                    near.append((path.name, text[:80]))
                    break
    assert near == []
