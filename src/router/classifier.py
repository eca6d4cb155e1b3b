"""Task classification: what a request is (coding, reasoning, general) and its language.

A multinomial logistic regression over sparse text features, trained by
``scripts/train_classifier.py`` and shipped as ``router/data/task_model.json.gz``. Scoring is pure
Python and standard library: the model is read once, on the first :func:`classify` call (importing
this module reads nothing), and every request costs a bounded amount of work however long it is.

Features, all binary, from a bounded sample of the conversation (see :func:`extract_features`):

* lower-cased words and word bigrams; CJK text as character unigrams and bigrams;
* a five-letter prefix of long words, so inflected forms (``Funktionen``, ``функцию``) share weight;
* digits collapsed by length (``#``, ``##``...) and single symbols (``{``, ``;``, ``=``, ``$``);
* shape markers over the raw text: fenced code, stack traces, code-like lines, identifiers in
  camelCase or snake_case, call syntax, arithmetic, and ``tools`` being offered.

The last user turn weighs 1.0; the system prompt, earlier turns, tool results and tool definitions
weigh :data:`CONTEXT_WEIGHT`, so an agent conversation with a stack trace and a terse "try again"
still reads as coding.

>>> classify([{"role": "user", "content": "fix this: TypeError: 'NoneType' object is not iterable"}]).task
'coding'
"""

from __future__ import annotations

import gzip
import json
import math
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

from router.language import detect_language

__all__ = [
    "CONTEXT_WEIGHT",
    "DEFAULT_MODEL_PATH",
    "TASKS",
    "Classification",
    "Classifier",
    "classify",
    "detect_language",
    "extract_features",
]

TASKS = ("coding", "reasoning", "general")

DEFAULT_MODEL_PATH = Path(__file__).parent / "data" / "task_model.json.gz"
MODEL_FORMAT = "router-task-classifier/1"
_FIXED = 100_000  # weights are scored as integers in units of 1e-5 (exact up to 2**53)

CONTEXT_WEIGHT = 0.4
# Characters read per request: the head and tail of the last user turn, then context, most recent
# first. These bound the cost of a 100 kB paste to that of a 3 kB one.
_LAST_HEAD, _LAST_TAIL = 1500, 500
_CONTEXT_BUDGET, _CONTEXT_PER_MESSAGE = 1500, 600
_TOOLS_BUDGET = 600
_LANGUAGE_CHARS = 600


@dataclass(frozen=True, slots=True)
class Classification:
    """What a request is: one of :data:`TASKS`, the model's probability for it, and a language code."""

    task: str
    confidence: float
    language: str


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------

# Tokens: letter runs, digit runs and single symbols. ASCII text (most traffic) takes the faster
# pattern; Python's re costs ~20 us per 1,000 characters per pass, so passes are counted.
_ASCII_TOKENS = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")
_TOKENS = re.compile(r"[^\W\d_]+|\d+|[^\w\s]")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]+")
_CJK_CHARS = 400  # each CJK character yields two features; this caps them
_ZERO_DIGITS = str.maketrans("123456789", "000000000")  # fast on ASCII text only
_NONZERO_DIGIT = re.compile(r"[1-9]")
# Shape markers found by substring tests, which cost well under a microsecond each.
_SHAPES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("__fence", ("```",)),
    (
        "__trace",
        (
            "Traceback (most recent", "Error:", "Exception:", "Exception in", "error:", "error[",
            "panicked at", "ERR!", "FATAL", "Segmentation fault", 'File "', "\tat ", "    at ",
            "exit code", "exit status", "Uncaught ", "errno", "stack trace", "Warning:",
        ),
    ),
    ("__codeline", (";\n", "{\n", "}\n", "):\n", "\n    ", "\n\t", "=>", "->", "();", "!=", "==", "&&", "||")),
    ("__path", (".py", ".js", ".ts", ".go", ".rs", ".java", ".cpp", ".yaml", ".yml", ".json", ".sh", ".sql", "~/", "./")),
)


def _text_features(text: str) -> set[str]:
    """Binary features of one piece of text (bounded by the caller)."""
    feats = {name for name, marks in _SHAPES if any(map(text.__contains__, marks))}
    # Numbers by length only ("0", "00"...): word problems carry numbers, their values don't matter.
    lowered = text.lower()
    if lowered.isascii():
        words = _ASCII_TOKENS.findall(lowered.translate(_ZERO_DIGITS))
    else:
        words = _TOKENS.findall(_NONZERO_DIGIT.sub("0", lowered))
        budget = _CJK_CHARS
        for run in _CJK.findall(lowered):
            # CJK has no spaces: characters and character bigrams stand in for words.
            run = run[:budget]
            feats.update(run)
            feats.update(map(str.__add__, run, run[1:]))
            budget -= len(run)
            if budget <= 0:
                break
    feats.update(words)
    feats.update(map(" ".join, zip(words, words[1:], strict=False)))
    # A five-letter stem of long words, so inflections (functions, Funktionen, функцию) share weight.
    feats.update([w[:5] + "~" for w in words if len(w) > 6])
    return feats


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping):
                if isinstance(part.get("text"), str):
                    parts.append(part["text"])
                elif part.get("type") in ("image_url", "input_image", "image"):
                    parts.append("[image]")
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return ""


def _message_text(message: Mapping) -> str:
    text = _content_text(message.get("content"))
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            fn = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(fn, Mapping):
                text += f"\n{fn.get('name', '')}({str(fn.get('arguments', ''))[:200]})"
    return text


def _clip(text: str, head: int, tail: int) -> str:
    return text if len(text) <= head + tail else text[:head] + "\n" + text[-tail:]


def _tools_text(tools: Sequence) -> str:
    parts: list[str] = []
    size = 0
    for tool in tools:
        if not isinstance(tool, Mapping):
            continue
        fn = tool.get("function", tool)
        if not isinstance(fn, Mapping):
            continue
        piece = f"{fn.get('name', '')}: {str(fn.get('description', ''))[:200]}"
        parts.append(piece)
        size += len(piece)
        if size > _TOOLS_BUDGET:
            break
    return "\n".join(parts)


def _split(messages: Sequence[Mapping], tools: Sequence | None) -> tuple[str, list[str]]:
    """The last user turn (clipped) and the context pieces (clipped, most recent first)."""
    last = len(messages) - 1
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if isinstance(m, Mapping) and m.get("role", "user") == "user":
            last = i
            break
    main = _clip(_message_text(messages[last]), _LAST_HEAD, _LAST_TAIL) if last >= 0 else ""
    context: list[str] = []
    budget = _CONTEXT_BUDGET
    for i in range(len(messages) - 1, -1, -1):
        if i == last or budget <= 0 or not isinstance(messages[i], Mapping):
            continue
        text = _message_text(messages[i])
        if not text:
            continue
        share = min(budget, _CONTEXT_PER_MESSAGE)
        text = _clip(text, share * 2 // 3, share // 3)
        context.append(text)
        budget -= len(text)
    if tools:
        context.append("__tools\n" + _tools_text(tools)[:_TOOLS_BUDGET])
    return main, context


def _feature_sets(messages: Sequence[Mapping], tools: Sequence | None) -> tuple[set[str], set[str]]:
    """(features of the last user turn, features only the context has)."""
    main, context = _split(messages, tools)
    feats = _text_features(main) if main else set()
    if not context:
        return feats, set()
    ctx = _text_features("\n".join(context))
    ctx.difference_update(feats)
    if tools:
        ctx.add("__tools")
    return feats, ctx


def extract_features(messages: Sequence[Mapping], tools: Sequence | None = None) -> dict[str, float]:
    """Feature name -> weight for a conversation: 1.0 from the last user turn, else CONTEXT_WEIGHT.

    >>> sorted(extract_features([{"role": "user", "content": "hi there"}]).items())
    [('hi', 1.0), ('hi there', 1.0), ('there', 1.0)]
    """
    main, ctx = _feature_sets(messages, tools)
    feats = dict.fromkeys(main, 1.0)
    feats.update(dict.fromkeys(ctx, CONTEXT_WEIGHT))
    return feats


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class Classifier:
    """A trained task model: ``Classifier.load(path).classify(messages, tools)``.

    The file is gzip-compressed JSON written by ``scripts/train_classifier.py``:
    ``{"format", "classes", "bias", "temperature", "weights": {feature: [w per class]}}``.
    """

    __slots__ = ("_weights", "bias", "classes", "temperature")

    def __init__(
        self,
        classes: Sequence[str],
        bias: Sequence[float],
        weights: Mapping[str, Sequence[float]],
        temperature: float = 1.0,
    ) -> None:
        if len(classes) != 3 or len(bias) != 3:
            raise ValueError("a task model has exactly three classes")
        self.classes = tuple(classes)
        self.bias = tuple(float(b) for b in bias)
        self.temperature = float(temperature)
        # Softmax only needs the scores of classes 1 and 2 relative to class 0. Both differences ride
        # in one complex number per feature, so a single C-level sum(map(dict.get, ...)) scores both.
        # The parts are fixed-point integers (exact in floats), so the sum is exact in any order and
        # the result doesn't depend on set iteration order (which varies with PYTHONHASHSEED).
        self._weights = {
            f: complex(round((float(w[1]) - float(w[0])) * _FIXED), round((float(w[2]) - float(w[0])) * _FIXED))
            for f, w in weights.items()
        }

    @classmethod
    def load(cls, path: str | Path = DEFAULT_MODEL_PATH) -> Classifier:
        with gzip.open(path, "rb") as fh:
            data = json.loads(fh.read())
        if data.get("format") != MODEL_FORMAT:
            raise ValueError(f"{path}: not a {MODEL_FORMAT} model (format={data.get('format')!r})")
        return cls(data["classes"], data["bias"], data["weights"], data.get("temperature", 1.0))

    def _probabilities(self, main: set[str], ctx: set[str]) -> tuple[float, float, float]:
        # Features are L2-normalised (over all of them, known or not) so length doesn't matter.
        norm = math.sqrt(len(main) + CONTEXT_WEIGHT * CONTEXT_WEIGHT * len(ctx)) or 1.0
        scale = 1.0 / (norm * self.temperature * _FIXED)
        b0, b1, b2 = self.bias
        get = self._weights.get
        s = sum(map(get, main, repeat(0j)))
        if ctx:
            s += CONTEXT_WEIGHT * sum(map(get, ctx, repeat(0j)))
        z1 = s.real * scale + (b1 - b0) / self.temperature
        z2 = s.imag * scale + (b2 - b0) / self.temperature
        top = max(0.0, z1, z2)
        e0, e1, e2 = math.exp(-top), math.exp(z1 - top), math.exp(z2 - top)
        total = e0 + e1 + e2
        return e0 / total, e1 / total, e2 / total

    def probabilities(self, messages: Sequence[Mapping], tools: Sequence | None = None) -> dict[str, float]:
        """Class -> probability for a conversation."""
        return dict(zip(self.classes, self._probabilities(*_feature_sets(messages, tools)), strict=True))

    def classify(self, messages: Sequence[Mapping], tools: Sequence | None = None) -> Classification:
        p = self._probabilities(*_feature_sets(messages, tools))
        k = 0 if p[0] >= p[1] and p[0] >= p[2] else (1 if p[1] >= p[2] else 2)
        return Classification(self.classes[k], round(p[k], 4), _language(messages))


def _language(messages: Sequence[Mapping]) -> str:
    """Language of the last user turn; of all user turns when it has almost no words."""
    user = [m for m in messages if isinstance(m, Mapping) and m.get("role", "user") == "user"]
    if not user:
        return detect_language("")
    text = _content_text(user[-1].get("content"))[:_LANGUAGE_CHARS]
    if len(text.strip()) < 12 and len(user) > 1:
        text = "\n".join(_content_text(m.get("content"))[:200] for m in user[-4:])
    return detect_language(text)


_model: Classifier | None = None
_model_lock = threading.Lock()


def _default_model() -> Classifier:
    global _model
    if _model is None:
        with _model_lock:
            if _model is None:
                _model = Classifier.load(DEFAULT_MODEL_PATH)
    return _model


def classify(messages: Sequence[Mapping], tools: Sequence | None = None) -> Classification:
    """Classify an OpenAI-style conversation with the shipped model (loaded on first call).

    >>> classify([{"role": "user", "content": "A train leaves at 3pm at 60 mph; when does it cover 150 miles?"}]).task
    'reasoning'
    """
    return _default_model().classify(messages, tools)
