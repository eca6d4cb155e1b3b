"""Task classification: what a request is (coding, reasoning, general, or your own tasks) and its
language.

A multinomial logistic regression over sparse text features (:mod:`router.classify.features`),
trained by ``router train`` / ``scripts/train_classifier.py`` and shipped as
``router/classify/data/task_model.json.gz``. Scoring runs in the optional C accelerator
``router.classify._features`` when it was built, else in pure Python and the standard library, with
the same results: the model is read once, on the first :func:`classify` call (importing this module
reads nothing), and every request costs a bounded amount of work however long it is.

A conversation is read as the last user turn and parts (:data:`PARTS`): the whole context as one
text (system prompt, earlier turns, tool calls and results, tool definitions), and the system
prompt, the earlier user turns and the tools offered again on their own. Each is scored and
normalised on its own; the parts' scores are added with weights (:class:`ConversationWeights`)
that are larger when the last turn is short (a follow-up such as "and now in Go?" inherits the
conversation's task; a full new request decides itself).

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

from router.classify.features import (
    _JSON_SYNTAX,
    CJK_HEAD,
    LAST_HEAD,
    LAST_TAIL,
    SHAPE_NAMES,
    SHAPE_PREFIX,
    SHAPE_STEPS,
    SHAPE_VALUE,
    TOOLS_BUDGET,
    _calls_text,
    _clip,
    _message_text,
    _tools_text,
    announces_new_topic,
    canonical_name,
    char_grams,
    content_text,
    feature_key,
    names,
    shape_features,
    split_conversation,
    stem,
    text_keys,
)
from router.classify.language import detect_language, native_module
from router.classify.lexicon import add_concepts, fold

__all__ = [
    "DEFAULT_CONVERSATION",
    "DEFAULT_MODEL_PATH",
    "MODEL_FORMAT",
    "PARTS",
    "TASKS",
    "Classification",
    "Classifier",
    "ConversationWeights",
    "GramModel",
    "classify",
    "conversation_parts",
    "detect_language",
    "extract_features",
    "load_model",
    "row_vector",
]

TASKS = ("coding", "reasoning", "general")  # the shipped model's tasks
MAX_TASKS = 32

DEFAULT_MODEL_PATH = Path(__file__).parent / "data" / "task_model.json.gz"
MODEL_FORMAT = "router-task-classifier/2"
_FIXED = 500  # weights are scored as integers in units of 2e-3 (exact sums; 16 bits in C)
_WEIGHT_LIMIT = 32767 / _FIXED  # the 16-bit range of a weight difference, in model units
_LANGUAGE_CHARS = 600
# The pure-Python path sums each feature's K-1 fixed-point weights as one integer: field k holds
# weight k shifted by k * _FIELD bits. Integer sums are exact and linear, so decoding the total
# gives each class's sum as long as it stays under 2**(_FIELD - 1) (2,000 characters of features
# times 32,767 stay far below 2**39).
_FIELD = 40


@dataclass(frozen=True, slots=True)
class Classification:
    """What a request is: one of the model's tasks, the model's probability for it, a language code
    (None when the caller asked for no language detection), and every task's probability."""

    task: str
    confidence: float
    language: str | None
    scores: tuple[tuple[str, float], ...] = ()


PARTS = ("context", "system", "history", "assistant", "actions", "tools")
_NO_PARTS = (None,) * len(PARTS)
"""What a conversation is read as, besides the last user turn: the whole ``context`` as one text
(system prompt, earlier turns, tool calls and results, tools offered:
:func:`router.classify.features.split_conversation`), and each role on its own: the system prompt,
the earlier user turns, the code in the assistant's answers, the agent's actions (tool calls and
their results) and the tools offered (names and descriptions). Each is scored on its own and
weighted by its kind; a part weighted 0 is not read."""

CONTEXT_PREFIX = "ctx|"
"""With ``ConversationWeights.own``, what names a feature of the context as itself (a word means one
thing in the ask and another in the tools and results around it); no feature name holds ``|``."""

# Characters read from each role's part (most recent messages first; the system prompt from the start).
PART_BUDGET, PART_PER_MESSAGE = 600, 400
_ASSISTANT_SCAN = 3000  # characters of an assistant answer searched for code (head and tail)
_CODE = re.compile(r"```.*?```|`[^`\n]+`", re.S)
_TOOLS_PART = 5  # the part that carries the tools-offered marker (as does the whole context)
_TOOLS_HEADER = "__tools\n"  # what introduces the tools in split_conversation's context


@dataclass(frozen=True, slots=True)
class ConversationWeights:
    """How much each part of a conversation counts beside the last user turn.

    Each part (:data:`PARTS`) is scored on its own, its sums divided by its distinct-feature count
    to the power ``norm``, and added with weight ``gate x part weight``. The gate is ``context``
    when the last turn has at least ``short_turn`` distinct features and rises linearly to
    ``follow_up`` as it has fewer (``ramp``; a bare "go on" or "and in Go?" is almost all
    context), or, with ``ramp`` off (model files written before it), is ``follow_up`` below
    ``short_turn``; it is ``switch`` when the turn opens with a change of topic ("unrelated:",
    "btw", "話変わるけど"; :func:`router.classify.features.announces_new_topic`). The part weights:
    ``combined`` for the whole context as one text, then ``system``, ``history``, ``assistant``,
    ``actions`` and ``tools`` for each role again on its own (the system prompt and the tools
    offered say what kind of agent it is, beyond what its tools returned)."""

    context: float = 0.25
    follow_up: float = 1.0
    short_turn: int = 32
    norm: float = 0.5  # each part's sums are divided by (its distinct features) ** norm
    switch: float = 0.0  # the gate when the last turn announces a new topic
    combined: float = 1.0
    system: float = 0.5
    history: float = 0.25
    assistant: float = 0.0
    actions: float = 0.0
    tools: float = 0.5
    ramp: bool = True  # the gate falls linearly from follow_up (no features) to context (short_turn)
    own: bool = False  # the context's features also under their own names (CONTEXT_PREFIX + name)

    def weight(self, n_main: int, switch: bool = False) -> float:
        """The gate: how much the context as a whole counts."""
        if switch:
            return self.switch
        if self.ramp:
            return self.context + (self.follow_up - self.context) * max(0.0, 1.0 - n_main / self.short_turn)
        return self.follow_up if n_main < self.short_turn else self.context

    def parts(self) -> tuple[float, ...]:
        """Each part's weight, in the order of :data:`PARTS`."""
        return (self.combined, self.system, self.history, self.assistant, self.actions, self.tools)

    def part_weights(self, n_main: int, switch: bool = False) -> tuple[float, ...]:
        g = self.weight(n_main, switch)
        return tuple(g * w for w in self.parts())

    def to_json(self) -> dict:
        return {"context": self.context, "follow_up": self.follow_up, "short_turn": self.short_turn, "ramp": self.ramp,
                "norm": self.norm, "switch": self.switch, "combined": self.combined, "system": self.system,
                "history": self.history, "assistant": self.assistant, "actions": self.actions, "tools": self.tools,
                "own": self.own}

    @classmethod
    def from_json(cls, data: Mapping | None) -> ConversationWeights:
        """From a model file's ``conversation``. A file written before the parts existed (no
        ``combined`` key) used the whole context alone: its gates, and no role parts."""
        data = dict(data or {})
        if "combined" not in data:
            data.update(combined=1.0, system=0.0, history=0.0, assistant=0.0, actions=0.0, tools=0.0)
        data.setdefault("ramp", False)  # files written before the ramp: a step at short_turn
        data.setdefault("own", False)  # files written before the context had its own names
        d = cls()
        return cls(**{name: type(getattr(d, name))(data.get(name, getattr(d, name))) for name in d.to_json()})


DEFAULT_CONVERSATION = ConversationWeights()


def _last_user(messages: Sequence[Mapping]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if isinstance(m, Mapping) and m.get("role", "user") == "user":
            return i
    return len(messages) - 1


def conversation_parts(messages: Sequence[Mapping], tools: Sequence | None,
                       weights: ConversationWeights = DEFAULT_CONVERSATION) -> tuple[str, tuple[str | None, ...]]:
    """(the last user turn, clipped; each part of :data:`PARTS`, clipped, or None when absent or
    weighted 0 in ``weights``).

    The whole context is :func:`router.classify.features.split_conversation`'s. In each role's part,
    most recent messages first, each message at most PART_PER_MESSAGE characters
    (its head and tail) and each part at most PART_BUDGET; the system prompt from its start. The
    assistant part is the code in the answers (fenced blocks and inline code), not their prose:
    an answer full of numbers is what was asked, not what kind of ask it was. JSON's punctuation in
    tool calls and results is dropped (the protocol is no evidence of the task), and a tool call
    reads as its name's words and its arguments. The tools part is their names and descriptions
    (an empty string when ``tools`` has none that can be read).

    >>> conversation_parts([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], None)
    ('hi', ('be brief', 'be brief', None, None, None, None))
    """
    if not tools and len(messages) == 1:   # the common request, one user message: what the rest would give
        m = messages[0]
        if type(m) is dict and type(text := m.get("content")) is str and m.get("role", "user") == "user" \
                and not m.get("tool_calls"):
            return _clip(text, LAST_HEAD, LAST_TAIL), _NO_PARTS
    main, combined = split_conversation(messages, tools)
    tools_text = None
    if tools and weights.tools:
        # the whole context ends with the tools' text (split_conversation): don't build it twice
        tools_text = (combined.rpartition(_TOOLS_HEADER)[2] if combined and _TOOLS_HEADER in combined
                      else _tools_text(tools)[:TOOLS_BUDGET])
    if not weights.combined:
        combined = None
    if not (weights.system or weights.history or weights.assistant or weights.actions):
        return main, (combined, None, None, None, None, tools_text)
    last = _last_user(messages)
    parts: list[list[str]] = [[], [], [], []]
    budget = [PART_BUDGET if w else 0 for w in (weights.system, weights.history, weights.assistant, weights.actions)]
    pieces: list[tuple[int, str]] = []
    systems: list[str] = []
    for i in range(len(messages) - 1, -1, -1):  # most recent first
        m = messages[i]
        if i == last or not isinstance(m, dict | Mapping):
            continue
        role = m.get("role", "user")
        if role in ("system", "developer"):
            if budget[0]:
                systems.append(content_text(m.get("content")))
        elif role in ("tool", "function"):
            if budget[3]:
                text = content_text(m.get("content"))
                pieces.append((3, text.translate(_JSON_SYNTAX) if text.lstrip()[:1] in ("{", "[") else text))
        elif role == "assistant":
            if budget[2] and isinstance(content := m.get("content"), str | list) and "`" in (
                    answer := _clip(content_text(content), _ASSISTANT_SCAN * 2 // 3, _ASSISTANT_SCAN // 3)):
                pieces.append((2, "\n".join(_CODE.findall(answer))))
            if budget[3]:
                pieces.append((3, _calls_text(m)))
        elif budget[1]:
            pieces.append((1, _message_text(m)))
    # the system prompt from its start, the other parts most recent first
    for k, text in [(0, t) for t in reversed(systems)] + pieces:
        if not text or budget[k] <= 0:
            continue
        share = min(budget[k], PART_PER_MESSAGE)
        text = _clip(text, share * 2 // 3, share // 3)
        parts[k].append(text)
        budget[k] -= len(text)
    return main, (combined, *("\n".join(p) if p else None for p in parts), tools_text)


def _part_keys(text: str, tools: bool) -> tuple[set, set]:
    tokens, pairs = text_keys(text)
    if tools:
        tokens.add("__tool")
    return tokens, pairs


def _vector(keys: tuple[set, set]) -> tuple[dict[str, float], int]:
    feats = names(keys)
    add_concepts(feats)
    return feats, len(keys[0]) + len(keys[1])


def extract_features(messages: Sequence[Mapping], tools: Sequence | None = None,
                     weights: ConversationWeights = DEFAULT_CONVERSATION) -> dict[str, float]:
    """Feature name -> value, as the model sees a conversation: the last user turn's features
    divided by the square root of their number (stems, named ``name~``, count the long tokens that
    share them, and concepts, named ``@name``, count their members present: neither adds to that
    number; see :mod:`router.classify.lexicon`), plus each part of the context's, normalised the
    same way and scaled by its weight.

    >>> sorted((name, round(v, 3)) for name, v in extract_features([{"role": "user", "content": "sunny day"}]).items())
    [('day', 0.577), ('sunny', 0.577), ('sunny day', 0.577)]
    """
    main, parts = conversation_parts(messages, tools, weights)
    out, n = _vector(text_keys(main)) if main else ({}, 0)
    if n:
        scale = 1.0 / math.sqrt(n)
        out = {k: v * scale for k, v in out.items()}
    out.update(dict.fromkeys(shape_features(main), SHAPE_VALUE))  # not size-normalised (features.py)
    if any(p is not None for p in parts):
        gates = weights.part_weights(n, announces_new_topic(main))
        for k, (text, g) in enumerate(zip(parts, gates, strict=True)):
            if text is None or not g:
                continue
            ctx, m = _vector(_part_keys(text, bool(tools) and k in (0, _TOOLS_PART)))
            if m:
                scale = g / m ** weights.norm
                for name, v in ctx.items():
                    out[name] = out.get(name, 0.0) + v * scale
                    if weights.own:
                        own = CONTEXT_PREFIX + name
                        out[own] = out.get(own, 0.0) + v * scale
    return out


def row_vector(row: Mapping, weights: ConversationWeights = DEFAULT_CONVERSATION) -> dict[str, float]:
    """The feature vector of a labelled row (``text``, or ``messages`` and ``tools``)."""
    messages = row.get("messages") or [{"role": "user", "content": row.get("text", "")}]
    return extract_features(messages, row.get("tools"), weights)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def _pack(values: Sequence[int]) -> int:
    return sum(v << (_FIELD * k) for k, v in enumerate(values))


def _unpack(total: int, count: int) -> list[int]:
    out = []
    half, mask = 1 << (_FIELD - 1), (1 << _FIELD) - 1
    for _ in range(count):
        v = ((total + half) & mask) - half
        out.append(v)
        total = (total - v) >> _FIELD
    return out


def _differences(weights: Mapping[str, Sequence[float]]) -> dict[str, tuple[int, ...]]:
    """Each feature's K-1 differences to the first class, as fixed-point integers."""
    return {name: tuple([round((x - w[0]) * _FIXED) for x in w[1:]]) for name, w in weights.items()}


def _check_range(diffs: Mapping[str, tuple[int, ...]], what: str) -> None:
    """ValueError when a difference is past the 16-bit range the C table stores."""
    if diffs and max(max(map(max, diffs.values())), -min(map(min, diffs.values()))) > _WEIGHT_LIMIT * _FIXED:
        raise ValueError(f"a weight difference beyond +-{_WEIGHT_LIMIT} {what}")


@dataclass(frozen=True)
class GramModel:
    """The second model of a model file (``"grams"``): weights over the last user turn's character
    ``n``-grams (:func:`router.classify.features.char_grams`), each row's grams valued one over the
    square root of their number, and a bias; its logits are added to the word model's times
    ``weight`` before the temperature."""

    n: int
    weight: float
    bias: tuple[float, ...]
    weights: Mapping[str, Sequence[float]]

    def to_json(self) -> dict:
        return {"n": self.n, "weight": self.weight, "bias": list(self.bias),
                "weights": {g: list(w) for g, w in self.weights.items()}}

    @classmethod
    def from_json(cls, data: Mapping) -> GramModel:
        n, weight = int(data["n"]), float(data["weight"])
        if not 1 <= n <= 16 or not weight >= 0:
            raise ValueError("grams: n is 1 to 16 and weight at least 0")
        return cls(n, weight, tuple(float(b) for b in data["bias"]), dict(data["weights"]))


class Classifier:
    """A trained task model: ``Classifier.load(path).classify(messages, tools)``.

    The file is gzip-compressed JSON written by :mod:`router.classify.train`: ``{"format",
    "classes", "bias", "temperature", "conversation", "weights": {feature: [w per class]},
    "concepts": {concept: [member features]}, "grams": {"n", "weight", "bias", "weights": {n-gram:
    [w per class]}}}`` (``grams``, the character n-gram model, since 2026-12-05; files without it
    score with the word model alone).
    """

    __slots__ = ("_bias", "_ctx_stems", "_ctx_table", "_ctx_weights", "_gram_bias", "_gram_scale", "_gram_table",
                 "_gram_weights", "_native", "_native_shape", "_scale", "_shape", "_stems", "_table", "_weights", "bias",
                 "classes", "conversation", "grams", "temperature", "trained_on")

    def __init__(
        self,
        classes: Sequence[str],
        bias: Sequence[float],
        weights: Mapping[str, Sequence[float]],
        temperature: float = 1.0,
        conversation: ConversationWeights = DEFAULT_CONVERSATION,
        *,
        native: bool | None = None,
        trained_on: Mapping | None = None,
        concepts: Mapping[str, Sequence[str]] | None = None,
        grams: GramModel | None = None,
    ) -> None:
        """`native`: score with the C accelerator (True: required; None: when it was built;
        False: never, the pure-Python reference path). `concepts`: the members of each ``@concept``
        feature in `weights` (the model file stores them), folded into the members' weights.
        `grams`: the character n-gram model beside the word model (see :class:`GramModel`)."""
        k = len(classes)
        if not 2 <= k <= MAX_TASKS or len(set(classes)) != k or len(bias) != k:
            raise ValueError(f"a task model has 2 to {MAX_TASKS} distinct classes and one bias per class")
        if not all(isinstance(c, str) and c for c in classes):
            raise ValueError("task names must be non-empty strings")
        self.classes = tuple(classes)
        self.bias = tuple(float(b) for b in bias)
        self.temperature = float(temperature)
        if not self.temperature > 0:
            raise ValueError("temperature must be positive")
        self.conversation = conversation
        self.trained_on = dict(trained_on or {})
        t = self.temperature
        self._bias = tuple((b - self.bias[0]) / t for b in self.bias[1:])
        self._scale = 1.0 / (t * _FIXED)
        # Softmax only needs each class's score relative to class 0: each feature's K-1 differences,
        # as fixed-point integers (exact sums in any order, so the result doesn't depend on set
        # iteration order, which varies with PYTHONHASHSEED).
        if any(len(w) != k for w in weights.values()):
            raise ValueError(f"every feature needs {k} weights, one per class")
        raw = _differences({name: w for name, w in weights.items() if not name.startswith(SHAPE_PREFIX)})
        # The context's own weights (ConversationWeights.own): a word of the context scores its
        # shared weight plus its own, so the context gets a table of those sums.
        own = {name[len(CONTEXT_PREFIX):]: raw.pop(name) for name in [n for n in raw if n.startswith(CONTEXT_PREFIX)]}
        diffs = fold(raw, concepts or {})
        ctx = diffs
        if own:
            merged = dict(raw)
            for name, d in own.items():
                old = merged.get(name)
                merged[name] = d if old is None else tuple(a + b for a, b in zip(old, d, strict=True))
            ctx = fold(merged, concepts or {})
        # The last user turn's shape markers (features.shape_features), at their training value
        # SHAPE_VALUE and outside the size normalisation, as fixed-point differences: the C table
        # computes and sums them in its tokenizer's pass; the Python path packs each marker's K-1
        # differences in one int.
        shape = {name: [round((x - w[0]) * SHAPE_VALUE * _FIXED) for x in w[1:]]
                 for name, w in weights.items() if name.startswith(SHAPE_PREFIX)}
        self._shape = {name: _pack(d) for name, d in shape.items()}
        for table in (diffs, ctx) if own else (diffs,):
            _check_range(table, "(concepts folded in)")
        self._weights, self._stems = self._ctx_weights, self._ctx_stems = {}, {}
        self._table = self._ctx_table = _native_table(diffs, k - 1, shape) if native is not False else None
        if own and self._table is not None:
            self._ctx_table = _native_table(ctx, k - 1)
            if self._ctx_table is None:  # (a fingerprint collision) both tables in Python, then
                self._table = None
        self._native = self._table is not None
        self._set_grams(grams, k)
        # (an accelerator built before it computed the markers: they are computed in Python)
        self._native_shape = self._native and bool(shape) and _native_has_shape
        if native and self._table is None:
            raise RuntimeError("router.classify._features, the classifier's C accelerator, is not built")
        if self._table is not None:  # the C table holds everything scoring needs
            return
        # The pure-Python path: each key's differences packed in one int (see _FIELD), so a single
        # C-level sum(map(dict.get, ...)) scores all classes. Keys are what text_keys produces
        # (bytes, str, tuples); stems have their own table.
        self._weights, self._stems = _python_tables(diffs)
        self._ctx_weights, self._ctx_stems = _python_tables(ctx) if own else (self._weights, self._stems)

    def _set_grams(self, grams: GramModel | None, k: int) -> None:
        """The n-gram model's tables: fixed-point differences like the word model's, in a C table of
        their own (keyed by each gram's UTF-8) when the accelerator serves, else a Python dict."""
        # (kept without its weights: the tables below hold them)
        self.grams = None if grams is None else GramModel(grams.n, grams.weight, grams.bias, {})
        self._gram_table = self._gram_weights = None
        self._gram_bias, self._gram_scale = (0.0,) * (k - 1), 0.0
        if grams is None:
            return
        if len(grams.bias) != k or any(len(w) != k for w in grams.weights.values()):
            raise ValueError(f"grams: every n-gram and the bias need {k} weights, one per class")
        diffs = _differences(grams.weights)
        _check_range(diffs, "(grams)")
        t = self.temperature
        self._gram_bias = tuple(grams.weight * (b - grams.bias[0]) / t for b in grams.bias[1:])
        self._gram_scale = grams.weight / (t * _FIXED)
        if self._native and _native_grams is not None:
            try:
                self._gram_table = _NativeTable(k - 1, [(g.encode("utf-8", "surrogatepass"), *d)
                                                        for g, d in diffs.items()], [], CJK_HEAD)
                return
            except (ValueError, OverflowError):  # a fingerprint collision: these in Python
                pass
        self._gram_weights = {g: _pack(d) for g, d in diffs.items()}

    def _gram_sums(self, main: str) -> tuple[tuple[int, ...], int]:
        """The n-gram model's fixed-point sums (each class against class 0) and distinct n-grams
        of the last user turn."""
        n = self.grams.n  # type: ignore[union-attr]
        if self._gram_table is not None:
            return _native_grams(self._gram_table, main.lower(), n)
        grams = char_grams(main.lower(), n)
        return tuple(_unpack(sum(map(self._gram_weights.get, grams, repeat(0))), len(self.classes) - 1)), len(grams)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_MODEL_PATH, *, native: bool | None = None) -> Classifier:
        """Read a model file; ValueError (naming the file) when it is not one."""
        try:
            with gzip.open(path, "rb") as fh:
                data = json.loads(fh.read())
        except (OSError, EOFError, ValueError) as exc:
            raise ValueError(f"{path}: not a gzip-compressed JSON task model ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise ValueError(f"{path}: not a {MODEL_FORMAT} model (format={found!r}); "
                             "train one with `router train`")
        weights = ConversationWeights.from_json(data.get("conversation"))
        try:
            grams = GramModel.from_json(data["grams"]) if data.get("grams") else None
            return cls(data["classes"], data["bias"], data["weights"], data.get("temperature", 1.0), weights,
                       native=native, trained_on=data.get("trained_on"), concepts=data.get("concepts"), grams=grams)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: a broken task model ({exc})") from None

    @property
    def native(self) -> bool:
        """True when requests are scored by the C accelerator (``router.classify._features``), False on
        the pure-Python path. Both give the same probabilities."""
        return self._native

    def _sums(self, messages: Sequence[Mapping], tools: Sequence | None) -> _Sums:
        """The fixed-point weight sums (each class against class 0) and distinct-feature count of
        the last user turn, (sums, count) of each part of the context (None where absent), and
        the sums of the last user turn's shape markers' weights (None when the model has none)."""
        return self._split_sums(*conversation_parts(messages, tools, self.conversation), bool(tools))

    def _split_sums(self, main: str, parts: tuple[str | None, ...], tools: bool) -> _Sums:
        marked = (tools, False, False, False, False, tools)  # the tools-offered marker goes with these
        if self._table is not None:
            table = self._table
            own = self._ctx_table is not table  # the context has its own table: every part from it
            lowered = main.lower()
            raw = lowered.encode("utf-8", "surrogatepass")
            second = _pair(None if own else parts[0])
            if self._native_shape:  # the markers come from the same pass (features.shape_features' meaning)
                s, n, c, m, shape = _native_score(table, raw, lowered, *second, marked[0], len(main))
            else:
                s, n, c, m = _native_score(table, raw, lowered, *second, marked[0])
                shape = self._shape_sums(main)
            if parts is _NO_PARTS:   # a lone user message
                return s, n, _NO_PARTS, shape
            out: list = [None] * len(parts)
            out[0] = None if c is None else (c, m)
            pairs: tuple = ((1, 5), (2, 3), (4, None))
            if own:
                table, pairs = self._ctx_table, ((1, 0), (2, 5), (3, 4))
            for a, b in pairs:  # two texts a call: the marker goes with the second
                second = None if b is None else parts[b]
                if parts[a] is None and second is None:
                    continue
                first = (parts[a] or "").lower()
                c1, m1, c2, m2 = _native_score(table, first.encode("utf-8", "surrogatepass"), first, *_pair(second),
                                               b is not None and marked[b])
                if parts[a] is not None:
                    out[a] = (c1, m1)
                if c2 is not None:
                    out[b] = (c2, m2)
            return s, n, tuple(out), shape
        # The reference path. Features are binary (stems: counts), and a text's sums are divided
        # by the square root of its number of distinct non-stem features, known to the model or not.
        width = len(self.classes) - 1
        s, n = self._text_sums(text_keys(main) if main else (set(), set()), width, self._weights, self._stems)
        return s, n, tuple(None if text is None else self._text_sums(_part_keys(text, marked[k]), width,
                                                                     self._ctx_weights, self._ctx_stems)
                           for k, text in enumerate(parts)), self._shape_sums(main)

    def _shape_sums(self, main: str) -> tuple[int, ...] | None:
        """The reference: the fixed-point sums of the last user turn's shape markers' weights."""
        if not self._shape:
            return None
        return tuple(_unpack(sum(map(self._shape.get, shape_features(main), repeat(0))), len(self.classes) - 1))

    @staticmethod
    def _text_sums(keys: tuple[set, set], width: int, weights: dict, stems: dict) -> tuple[tuple[int, ...], int]:
        zero = repeat(0)
        tokens, pairs = keys
        total = sum(map(weights.get, tokens, zero)) + sum(map(weights.get, pairs, zero))
        total += sum(map(stems.get, [stem(t) for t in tokens.difference(weights)
                                     if isinstance(t, bytes) and len(t) > 6], zero))
        return tuple(_unpack(total, width)), len(tokens) + len(pairs)

    def logits(self, messages: Sequence[Mapping], tools: Sequence | None = None) -> list[float]:
        """Each class's score against class 0 (class 0's is 0), calibrated: softmax gives the
        probabilities."""
        main, parts = conversation_parts(messages, tools, self.conversation)
        s, n, part_sums, shape = self._split_sums(main, parts, bool(tools))
        scale = self._scale / math.sqrt(n) if n else self._scale
        z = [0.0] + [v * scale + b for v, b in zip(s, self._bias, strict=True)]
        if shape is not None:  # the shape markers: not size-normalised
            for k, v in enumerate(shape, 1):
                z[k] += v * self._scale
        if part_sums is not _NO_PARTS and any(p is not None for p in part_sums):
            conv = self.conversation
            for ps, g in zip(part_sums, conv.part_weights(n, announces_new_topic(main)), strict=True):
                if ps is None or not ps[1] or not g:
                    continue
                c, m = ps
                f = g * self._scale / m ** conv.norm
                for k, v in enumerate(c, 1):
                    z[k] += v * f
        if self.grams is not None:  # the character n-gram model, times its weight
            gs, gn = self._gram_sums(main)
            f = self._gram_scale / math.sqrt(gn) if gn else 0.0
            for k, (v, b) in enumerate(zip(gs, self._gram_bias, strict=True), 1):
                z[k] += v * f + b
        return z

    def _probabilities(self, messages: Sequence[Mapping], tools: Sequence | None) -> list[float]:
        z = self.logits(messages, tools)
        top = max(z)
        e = [math.exp(v - top) for v in z]
        total = sum(e)
        return [v / total for v in e]

    def probabilities(self, messages: Sequence[Mapping], tools: Sequence | None = None) -> dict[str, float]:
        """Task -> probability for a conversation (they sum to 1)."""
        return dict(zip(self.classes, self._probabilities(messages, tools), strict=True))

    def classify(self, messages: Sequence[Mapping], tools: Sequence | None = None, *,
                 language: bool = True) -> Classification:
        """The task and its probability; the language too unless `language=False` (then None)."""
        p = self._probabilities(messages, tools)
        k = max(range(len(p)), key=p.__getitem__)  # the first of equals
        return Classification(self.classes[k], round(p[k], 4), _language(messages) if language else None,
                              tuple(zip(self.classes, p, strict=True)))


# The optional C accelerator (built by setup.py); without it, or with ROUTER_CLASSIFIER_NATIVE=0,
# the pure-Python path gives the same results.
_NativeTable = _native_score = _native_grams = None
if (_features := native_module()) is not None:
    _NativeTable, _native_score = _features.Table, _features.score
    _native_grams = getattr(_features, "grams", None)  # (a build of 2026-12-05 or later)
_native_has_shape = hasattr(_features, "shape")  # the shape markers in C (a build of 2026-12-04 or later)

_Sums = tuple[tuple[int, ...], int, tuple[tuple[tuple[int, ...], int] | None, ...], tuple[int, ...] | None]


def _pair(text: str | None) -> tuple[bytes | None, str | None]:
    if text is None:
        return None, None
    low = text.lower()
    return low.encode("utf-8", "surrogatepass"), low


def _python_tables(diffs: Mapping[str, tuple[int, ...]]) -> tuple[dict, dict]:
    """The pure-Python path's tables: key -> packed differences (see _FIELD), for words and for stems.
    Keys are what text_keys produces (bytes, str, tuples). Each stem is folded into the long words
    the model knows, so a known word costs one look-up; an unknown long word looks its stem up."""
    weights: dict[object, int] = {}
    stems: dict[object, int] = {}
    for name, d in diffs.items():
        is_stem, key = feature_key(name)
        (stems if is_stem else weights)[key] = _pack(d)
    for key, value in weights.items():
        if isinstance(key, bytes) and len(key) > 6:
            weights[key] = value + stems.get(stem(key), 0)
    return weights, stems


def _native_table(diffs: Mapping[str, tuple[int, ...]], width: int,
                  shape: Mapping[str, Sequence[int]] | None = None) -> object | None:
    """The model as a router.classify._features table, built from the feature names (no Python keys),
    or None without the accelerator. Stems are folded into the long words and symbol runs the model
    knows, as the Python path does. `shape`: the shape markers' fixed-point differences (those the
    model has; features.SHAPE_NAMES lists them all), computed and summed in C."""
    if _NativeTable is None:
        return None
    features: dict[bytes, tuple[int, ...]] = {}
    stems: dict[bytes, tuple[int, ...]] = {}
    for name, d in diffs.items():
        is_stem, canonical = canonical_name(name)
        (stems if is_stem else features)[canonical] = d
    if stems:
        for canonical, d in features.items():
            if canonical[0] == 1 and len(canonical) > 7:  # a bytes key longer than six
                s = stems.get(stem(canonical[1:]))
                if s is not None:
                    features[canonical] = tuple(a + b for a, b in zip(d, s, strict=True))
    spec = None
    if shape and _native_has_shape:
        zero = (0,) * width
        spec = (*SHAPE_STEPS, [tuple(shape.get(name, zero)) for name in SHAPE_NAMES])
    try:
        return _NativeTable(width, [(key, *d) for key, d in features.items()], [(key, *d) for key, d in stems.items()],
                            CJK_HEAD, *(() if spec is None else (spec,)))
    except (ValueError, OverflowError):  # a fingerprint collision or a huge weight: score in Python
        return None


def _language(messages: Sequence[Mapping]) -> str:
    """Language of the last user turn; of all user turns when it has almost no words."""
    user = [m for m in messages if isinstance(m, Mapping) and m.get("role", "user") == "user"]
    if not user:
        return detect_language("")
    text = content_text(user[-1].get("content"))[:_LANGUAGE_CHARS]
    if len(text.strip()) < 12 and len(user) > 1:
        text = "\n".join(content_text(m.get("content"))[:200] for m in user[-4:])
    return detect_language(text)


_model: Classifier | None = None
_model_lock = threading.Lock()
_loaded: dict[tuple[str, int, int], Classifier] = {}


def load_model(path: str | Path) -> Classifier:
    """A model file, loaded once per process while the file stays the same (a policy reload that
    names the same file doesn't load it again; a retrained file is read anew).

    >>> load_model(DEFAULT_MODEL_PATH) is load_model(DEFAULT_MODEL_PATH)
    True
    """
    resolved = Path(path).resolve()
    st = resolved.stat()
    key = (str(resolved), st.st_mtime_ns, st.st_size)
    with _model_lock:
        model = _loaded.get(key)
        if model is None:
            if resolved == DEFAULT_MODEL_PATH.resolve() and _model is not None:
                model = _model
            else:
                model = Classifier.load(resolved)
            for old in [k for k in _loaded if k[0] == key[0]]:
                del _loaded[old]
            _loaded[key] = model
    return model


def _default_model() -> Classifier:
    global _model
    if _model is None:
        with _model_lock:
            if _model is None:
                _model = Classifier.load(DEFAULT_MODEL_PATH)
    return _model


def classify(messages: Sequence[Mapping], tools: Sequence | None = None, *, language: bool = True) -> Classification:
    """Classify an OpenAI-style conversation with the shipped model (loaded on first call).

    `language=False` skips language detection (``.language`` is then None): what the engine
    does when no policy rule reads the language.

    >>> classify([{"role": "user", "content": "A train leaves at 3pm at 60 mph; when does it cover 150 miles?"}]).task
    'reasoning'
    """
    return _default_model().classify(messages, tools, language=language)
