"""Task classification: what a request is (coding, reasoning, general, or your own tasks) and its
language.

A multinomial logistic regression over sparse text features (:mod:`router.classify.features`),
trained by ``router train`` / ``scripts/train_classifier.py`` and shipped as
``router/classify/data/task_model.json.gz``. Scoring runs in the optional C accelerator
``router.classify._features`` when it was built, else in pure Python and the standard library, with
the same results: the model is read once, on the first :func:`classify` call (importing this module
reads nothing), and every request costs a bounded amount of work however long it is.

A conversation is read as two texts: the last user turn, and the context (system prompt, earlier
turns, tool calls and results, tool definitions). Each is scored and normalised on its own; the
context's scores are added with a weight that is larger when the last turn is short (a follow-up
such as "and now in Go?" inherits the conversation's task; a full new request decides itself).

>>> classify([{"role": "user", "content": "fix this: TypeError: 'NoneType' object is not iterable"}]).task
'coding'
"""

from __future__ import annotations

import gzip
import json
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

from router.classify.features import (
    CJK_HEAD,
    announces_new_topic,
    canonical_name,
    content_text,
    feature_key,
    names,
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
    "TASKS",
    "Classification",
    "Classifier",
    "ConversationWeights",
    "classify",
    "detect_language",
    "extract_features",
    "load_model",
    "row_vector",
]

TASKS = ("coding", "reasoning", "general")  # the shipped model's tasks
MAX_TASKS = 32

DEFAULT_MODEL_PATH = Path(__file__).parent / "data" / "task_model.json.gz"
MODEL_FORMAT = "router-task-classifier/2"
_FIXED = 1000  # weights are scored as integers in units of 1e-3 (exact sums; 16 bits in C)
_WEIGHT_LIMIT = 32.767  # the 16-bit range of a weight difference, in model units
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


@dataclass(frozen=True, slots=True)
class ConversationWeights:
    """How much the context counts beside the last user turn: ``context`` when the last turn has at
    least ``short_turn`` distinct features, ``follow_up`` when it has fewer (a bare "and in Go?"),
    ``switch`` when it opens with a change of topic ("unrelated:", "btw", "話変わるけど";
    :func:`router.classify.features.announces_new_topic`)."""

    context: float = 0.3
    follow_up: float = 0.6
    short_turn: int = 32
    norm: float = 0.5  # the context's sums are divided by (its distinct features) ** norm
    switch: float = 0.0  # the context weight when the last turn announces a new topic

    def weight(self, n_main: int, switch: bool = False) -> float:
        if switch:
            return self.switch
        return self.follow_up if n_main < self.short_turn else self.context

    def to_json(self) -> dict:
        return {"context": self.context, "follow_up": self.follow_up, "short_turn": self.short_turn,
                "norm": self.norm, "switch": self.switch}


DEFAULT_CONVERSATION = ConversationWeights()


def _vector(keys: tuple[set, set]) -> tuple[dict[str, float], int]:
    feats = names(keys)
    add_concepts(feats)
    return feats, len(keys[0]) + len(keys[1])


def extract_features(messages: Sequence[Mapping], tools: Sequence | None = None,
                     weights: ConversationWeights = DEFAULT_CONVERSATION) -> dict[str, float]:
    """Feature name -> value, as the model sees a conversation: the last user turn's features
    divided by the square root of their number (stems, named ``name~``, count the long tokens that
    share them, and concepts, named ``@name``, count their members present: neither adds to that
    number; see :mod:`router.classify.lexicon`), plus the context's, normalised the same way and
    scaled by the context weight.

    >>> sorted((name, round(v, 3)) for name, v in extract_features([{"role": "user", "content": "sunny day"}]).items())
    [('day', 0.577), ('sunny', 0.577), ('sunny day', 0.577)]
    """
    main, context = split_conversation(messages, tools)
    out, n = _vector(text_keys(main)) if main else ({}, 0)
    switch = context is not None and announces_new_topic(main)
    if n:
        scale = 1.0 / math.sqrt(n)
        out = {k: v * scale for k, v in out.items()}
    if context is not None:
        tokens, pairs = text_keys(context)
        if tools:
            tokens.add("__tool")
        ctx, m = _vector((tokens, pairs))
        if m:
            scale = weights.weight(n, switch) / m ** weights.norm
            for k, v in ctx.items():
                out[k] = out.get(k, 0.0) + v * scale
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


class Classifier:
    """A trained task model: ``Classifier.load(path).classify(messages, tools)``.

    The file is gzip-compressed JSON written by :mod:`router.classify.train`: ``{"format",
    "classes", "bias", "temperature", "conversation", "weights": {feature: [w per class]},
    "concepts": {concept: [member features]}}``.
    """

    __slots__ = ("_bias", "_native", "_scale", "_stems", "_table", "_weights", "bias", "classes",
                 "conversation", "temperature", "trained_on")

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
    ) -> None:
        """`native`: score with the C accelerator (True: required; None: when it was built;
        False: never, the pure-Python reference path). `concepts`: the members of each ``@concept``
        feature in `weights` (the model file stores them), folded into the members' weights."""
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
        diffs = {name: tuple([round((x - w[0]) * _FIXED) for x in w[1:]]) for name, w in weights.items()}
        diffs = fold(diffs, concepts or {})
        if diffs and max(max(map(max, diffs.values())), -min(map(min, diffs.values()))) > _WEIGHT_LIMIT * _FIXED:
            raise ValueError(f"a weight difference beyond +-{_WEIGHT_LIMIT} (concepts folded in)")
        self._weights: dict[object, int] = {}
        self._stems: dict[bytes, int] = {}
        self._table = _native_table(diffs, k - 1) if native is not False else None
        self._native = self._table is not None
        if native and self._table is None:
            raise RuntimeError("router.classify._features, the classifier's C accelerator, is not built")
        if self._table is not None:  # the C table holds everything scoring needs
            return
        # The pure-Python path: each key's differences packed in one int (see _FIELD), so a single
        # C-level sum(map(dict.get, ...)) scores all classes. Keys are what text_keys produces
        # (bytes, str, tuples); stems have their own table.
        for name, d in diffs.items():
            is_stem, key = feature_key(name)
            (self._stems if is_stem else self._weights)[key] = _pack(d)  # type: ignore[index]
        # Fold each stem into the long words the model knows, so a known word costs one look-up;
        # an unknown long word looks its stem up in _stems.
        for key, value in self._weights.items():
            if isinstance(key, bytes) and len(key) > 6:
                self._weights[key] = value + self._stems.get(stem(key), 0)

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
        conv = data.get("conversation") or {}
        d = DEFAULT_CONVERSATION
        weights = ConversationWeights(float(conv.get("context", d.context)), float(conv.get("follow_up", d.follow_up)),
                                      int(conv.get("short_turn", d.short_turn)), float(conv.get("norm", d.norm)),
                                      float(conv.get("switch", d.switch)))
        try:
            return cls(data["classes"], data["bias"], data["weights"], data.get("temperature", 1.0), weights,
                       native=native, trained_on=data.get("trained_on"), concepts=data.get("concepts"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: a broken task model ({exc})") from None

    @property
    def native(self) -> bool:
        """True when requests are scored by the C accelerator (``router.classify._features``), False on
        the pure-Python path. Both give the same probabilities."""
        return self._native

    def _sums(self, messages: Sequence[Mapping], tools: Sequence | None
              ) -> tuple[tuple[int, ...], int, tuple[int, ...] | None, int]:
        """The fixed-point weight sums (each class against class 0) and distinct-feature counts of
        the last user turn and of the context (None without context)."""
        return self._split_sums(*split_conversation(messages, tools), tools)

    def _split_sums(self, main: str, context: str | None, tools: Sequence | None
                    ) -> tuple[tuple[int, ...], int, tuple[int, ...] | None, int]:
        if self._table is not None:
            lowered = main.lower()
            if context is None:
                return _native_score(self._table, lowered.encode("utf-8", "surrogatepass"), lowered, None, None, False)
            ctx = context.lower()
            return _native_score(self._table, lowered.encode("utf-8", "surrogatepass"), lowered,
                                 ctx.encode("utf-8", "surrogatepass"), ctx, bool(tools))
        # The reference path. Features are binary (stems: counts), and a text's sums are divided
        # by the square root of its number of distinct non-stem features, known to the model or not.
        width = len(self.classes) - 1
        s, n = self._text_sums(text_keys(main) if main else (set(), set()), width)
        if context is None:
            return s, n, None, 0
        tokens, pairs = text_keys(context)
        if tools:
            tokens.add("__tool")
        c, m = self._text_sums((tokens, pairs), width)
        return s, n, c, m

    def _text_sums(self, keys: tuple[set, set], width: int) -> tuple[tuple[int, ...], int]:
        weights, zero = self._weights, repeat(0)
        tokens, pairs = keys
        total = sum(map(weights.get, tokens, zero)) + sum(map(weights.get, pairs, zero))
        total += sum(map(self._stems.get, [stem(t) for t in tokens.difference(weights)
                                           if isinstance(t, bytes) and len(t) > 6], zero))
        return tuple(_unpack(total, width)), len(tokens) + len(pairs)

    def logits(self, messages: Sequence[Mapping], tools: Sequence | None = None) -> list[float]:
        """Each class's score against class 0 (class 0's is 0), calibrated: softmax gives the
        probabilities."""
        main, context = split_conversation(messages, tools)
        s, n, c, m = self._split_sums(main, context, tools)
        scale = self._scale / math.sqrt(n) if n else self._scale
        z = [0.0] + [v * scale + b for v, b in zip(s, self._bias, strict=True)]
        if c is not None and m:
            g = self.conversation.weight(n, announces_new_topic(main)) * self._scale / m ** self.conversation.norm
            for k, v in enumerate(c, 1):
                z[k] += v * g
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
_NativeTable = _native_score = None
if (_features := native_module()) is not None:
    _NativeTable, _native_score = _features.Table, _features.score


def _native_table(diffs: Mapping[str, tuple[int, ...]], width: int) -> object | None:
    """The model as a router.classify._features table, built from the feature names (no Python keys),
    or None without the accelerator. Stems are folded into the long words and symbol runs the model
    knows, as the Python path does."""
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
    try:
        return _NativeTable(width, [(key, *d) for key, d in features.items()], [(key, *d) for key, d in stems.items()],
                            CJK_HEAD)
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
