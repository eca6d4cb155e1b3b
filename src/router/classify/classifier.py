"""Task classification: what a request is (coding, reasoning, general) and its language.

A multinomial logistic regression over sparse text features, trained by
``scripts/train_classifier.py`` and shipped as ``router/data/task_model.json.gz``. Scoring runs in
the optional C accelerator ``router.classify._features`` when it was built, else in pure Python and the
standard library, with the same results: the model is read once, on the first :func:`classify` call
(importing this module reads nothing), and every request costs a bounded amount of work however
long it is.

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

from router.classify.language import detect_language, native_module

__all__ = [
    "CONTEXT_WEIGHT",
    "DEFAULT_MODEL_PATH",
    "TASKS",
    "Classification",
    "Classifier",
    "classify",
    "detect_language",
    "extract_features",
    "feature_norm",
]

TASKS = ("coding", "reasoning", "general")

DEFAULT_MODEL_PATH = Path(__file__).parent / "data" / "task_model.json.gz"
MODEL_FORMAT = "router-task-classifier/1"
_FIXED = 1000  # weights are scored as integers in units of 1e-3 (exact sums; 16 bits in C)

CONTEXT_WEIGHT = 0.4
# Characters read per request: the head and tail of the last user turn, then context, most recent
# first. These bound the cost of a 100 kB paste to that of a 3 kB one.
_LAST_HEAD, _LAST_TAIL = 1500, 500
_CONTEXT_BUDGET, _CONTEXT_PER_MESSAGE = 1500, 600
_TOOLS_BUDGET = 600
_LANGUAGE_CHARS = 600


@dataclass(frozen=True, slots=True)
class Classification:
    """What a request is: one of :data:`TASKS`, the model's probability for it, and a language code
    (None when the caller asked for no language detection)."""

    task: str
    confidence: float
    language: str | None


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------

# Features are computed on the UTF-8 bytes of the lower-cased text with two C-level translations
# and splits, so a request costs a handful of passes over at most ~2,000 characters and one dict
# look-up per distinct feature; no regex runs on ASCII text (most traffic).
#   words:  ASCII punctuation -> space, digits 1-9 -> "0" (numbers matter by length, not value)
#   symbols: letters, digits and non-ASCII bytes -> space, so runs such as "();", "=>", "```" remain
_WORD_BYTES = bytearray(range(256))
_SYMBOL_BYTES = bytearray(range(256))
for _i in range(256):
    _c = chr(_i)
    if _i < 128 and not _c.isalnum():
        _WORD_BYTES[_i] = 32
    elif _c in "123456789":
        _WORD_BYTES[_i] = 48
    if _i >= 128 or _c.isalnum() or _c.isspace():
        _SYMBOL_BYTES[_i] = 32
_WORD_TABLE, _SYMBOL_TABLE = bytes(_WORD_BYTES), bytes(_SYMBOL_BYTES)
del _WORD_BYTES, _SYMBOL_BYTES, _i, _c
_PAIR_WORDS = 80  # word pairs come from the first 80 words of a text only
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]+")
_OTHER_SYMBOL = re.compile(r"[^\x00-\x7f\w]")  # non-ASCII, not a letter or digit: €, ×, ≤, 。
_MARKERS = frozenset({"__tab", "__err", "__tool"})
_CJK_CHARS = 60  # CJK characters and pairs come from the first 60 CJK characters only



def _text_keys(text: str) -> tuple[set, set]:
    """The distinct features of one piece of text (bounded by the caller), as two sets of keys.

    ``tokens``: words and symbol runs (``bytes``), single symbols, CJK characters and CJK character
    pairs (``str``), and the markers ``"__tab"`` (indented lines) and ``"__err"`` (error text);
    ``pairs``: adjacent words (``tuple`` of two ``bytes``). Key types keep the kinds apart.

    Every ``bytes`` token longer than six also counts once for its stem (:func:`_stem`), so
    inflections (functions, Funktionen, функцию) share weight; the model folds stem weights into
    the words it knows, so only unknown words need their stem computed.
    """
    lowered = text.lower()
    raw = lowered.encode("utf-8", "surrogatepass")
    words = raw.translate(_WORD_TABLE).split()
    tokens = set(words)
    symbols = raw.translate(_SYMBOL_TABLE).split()
    tokens.update(symbols)
    tokens.update(b"".join(symbols).decode())  # each ASCII symbol on its own, as a str
    pairs = set(zip(words[:_PAIR_WORDS], words[1:_PAIR_WORDS], strict=False))
    if len(raw) != len(lowered):  # not ASCII
        # Non-ASCII symbols (€, ×, ≤, 。) on their own; CJK text has no spaces, so its characters and
        # character pairs stand in for words. Letters of alphabets (é, я) are only part of words.
        tokens.update(_OTHER_SYMBOL.findall(lowered))
        budget = _CJK_CHARS
        for match in _CJK.finditer(lowered):  # lazily: stop scanning once the budget is spent
            run = match.group()[:budget]
            tokens.update(run)
            tokens.update(map(str.__add__, run, run[1:]))
            budget -= len(run)
            if budget <= 0:
                break
    # Two shape markers that words miss: indented lines (code, stack frames) and error messages.
    if b"\n  " in raw or b"\n\t" in raw:
        tokens.add("__tab")
    if b"error:" in raw or b"exception" in raw:
        tokens.add("__err")
    return tokens, pairs


def _stem(word: bytes) -> bytes:
    """The first five letters (ASCII) or ten bytes (other scripts) of a token longer than six."""
    return word[:5] if word[0] < 128 else word[:10]


def _decode(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


def _feature_name(key: object) -> str:
    """The name a key has in the model file: ``word``, ``();``, ``word word``, ``c:中``, ``__err``.

    (Stems are named ``stem~``.) The forms can't be confused: words have no symbols, symbol runs no
    letters, only pairs have a space, and ``c:`` and ``__`` start neither.
    """
    if isinstance(key, bytes):
        return _decode(key)
    if isinstance(key, tuple):
        return _decode(key[0]) + " " + _decode(key[1])
    return key if key in _MARKERS else "c:" + key  # type: ignore[operator]  # c:( c:€ c:中 c:中文


def _canonical_name(name: str) -> tuple[bool, bytes]:
    """(is a stem, the feature as ``router.classify._features`` hashes it): a kind tag, then its bytes.

    Tag 1: a word or symbol run (``bytes`` keys); 2: a character, character pair or marker
    (``str`` keys); 3: a word pair, ``a b`` (``tuple`` keys). A stem is its bytes, untagged.
    """
    if name in _MARKERS:
        return False, b"\x02" + name.encode()
    if name.startswith("c:") and len(name) in (3, 4):
        return False, b"\x02" + name[2:].encode("utf-8", "surrogatepass")
    if " " in name:
        return False, b"\x03" + name.encode("utf-8", "surrogateescape")
    if name.endswith("~") and len(name) > 1 and (name[0].isalnum() or not name[0].isascii()):
        return True, name[:-1].encode("utf-8", "surrogateescape")
    return False, b"\x01" + name.encode("utf-8", "surrogateescape")


def _feature_key(name: str) -> tuple[bool, object]:
    """Inverse of the naming: (is a stem, the key :func:`_text_keys` produces)."""
    stem, canonical = _canonical_name(name)
    if stem:
        return True, canonical
    tag, body = canonical[0], canonical[1:]
    if tag == 1:
        return False, body
    if tag == 2:
        return False, body.decode("utf-8", "surrogatepass")
    a, b = body.split(b" ", 1)
    return False, (a, b)


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


_Keys = tuple[set, set]
_NO_KEYS: _Keys = (set(), set())


def _feature_sets(main: str, context: list[str], tools: Sequence | None) -> tuple[_Keys, _Keys | None]:
    """(keys of the last user turn, keys only the context has, or None without context), from
    what :func:`_split` returns."""
    keys = _text_keys(main) if main else _NO_KEYS
    if not context:
        return keys, None
    ctx = _text_keys("\n".join(context))
    ctx[0].difference_update(keys[0])
    ctx[1].difference_update(keys[1])
    if tools:
        ctx[0].add("__tool")
    return keys, ctx


def extract_features(messages: Sequence[Mapping], tools: Sequence | None = None) -> dict[str, float]:
    """Feature name -> value for a conversation: 1.0 from the last user turn, else CONTEXT_WEIGHT.

    Stems (``name~``) count the distinct long tokens that share them and stay out of the norm
    (:func:`feature_norm`).

    >>> sorted(extract_features([{"role": "user", "content": "Hi there, functions!"}]).items())
    [('!', 1.0), (',', 1.0), ('c:!', 1.0), ('c:,', 1.0), ('functions', 1.0), ('funct~', 1.0), ('hi', 1.0), ('hi there', 1.0), ('there', 1.0), ('there functions', 1.0)]
    """
    main, ctx = _feature_sets(*_split(messages, tools), tools)
    feats: dict[str, float] = {}
    for keys, weight in ((ctx, CONTEXT_WEIGHT), (main, 1.0)):
        if keys is None:
            continue
        tokens, pairs = keys
        feats.update(dict.fromkeys(map(_feature_name, tokens), weight))
        feats.update(dict.fromkeys(map(_feature_name, pairs), weight))
    for keys, weight in ((main, 1.0), (ctx, CONTEXT_WEIGHT)):
        for token in keys[0] if keys else ():
            if isinstance(token, bytes) and len(token) > 6:
                name = _decode(_stem(token)) + "~"
                feats[name] = feats.get(name, 0.0) + weight
    return feats


def feature_norm(features: Mapping[str, float]) -> float:
    """The L2 norm the model divides by: over all features except stems, known to it or not."""
    # fsum: exactly rounded, so the norm doesn't depend on the order of the features (set order
    # changes with PYTHONHASHSEED), and a retrained model file is the same bytes.
    return math.sqrt(math.fsum(v * v for name, v in features.items() if not _feature_key(name)[0])) or 1.0


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class Classifier:
    """A trained task model: ``Classifier.load(path).classify(messages, tools)``.

    The file is gzip-compressed JSON written by ``scripts/train_classifier.py``:
    ``{"format", "classes", "bias", "temperature", "weights": {feature: [w per class]}}``.
    """

    __slots__ = ("_bias", "_scale", "_stems", "_table", "_weights", "bias", "classes", "temperature")

    def __init__(
        self,
        classes: Sequence[str],
        bias: Sequence[float],
        weights: Mapping[str, Sequence[float]],
        temperature: float = 1.0,
        *,
        native: bool | None = None,
    ) -> None:
        """`native`: score with the C accelerator (True: required; None: when it was built;
        False: never, the pure-Python reference path)."""
        if len(classes) != 3 or len(bias) != 3:
            raise ValueError("a task model has exactly three classes")
        self.classes = tuple(classes)
        self.bias = tuple(float(b) for b in bias)
        self.temperature = float(temperature)
        self._bias = ((self.bias[1] - self.bias[0]) / self.temperature, (self.bias[2] - self.bias[0]) / self.temperature)
        self._scale = 1.0 / (self.temperature * _FIXED)
        # Softmax only needs the scores of classes 1 and 2 relative to class 0: each feature's two
        # differences, as fixed-point integers (exact sums in any order, so the result doesn't
        # depend on set iteration order, which varies with PYTHONHASHSEED).
        diffs = {name: (round((float(w[1]) - float(w[0])) * _FIXED), round((float(w[2]) - float(w[0])) * _FIXED))
                 for name, w in weights.items()}
        self._weights: dict[object, complex] = {}
        self._stems: dict[bytes, complex] = {}
        self._table = _native_table(diffs) if native is not False else None
        if native and self._table is None:
            raise RuntimeError("router.classify._features, the classifier's C accelerator, is not built")
        if self._table is not None:  # the C table holds everything scoring needs
            return
        # The pure-Python path: both differences ride in one complex number per key, so a single
        # C-level sum(map(dict.get, ...)) scores both. Keys are what _text_keys produces (bytes,
        # str, tuples); stems have their own table.
        for name, (re_, im) in diffs.items():
            stem, key = _feature_key(name)
            (self._stems if stem else self._weights)[key] = complex(re_, im)  # type: ignore[index]
        # Fold each stem into the long words the model knows, so a known word costs one look-up;
        # an unknown long word (the rest) looks its stem up in _stems.
        for key, value in self._weights.items():
            if isinstance(key, bytes) and len(key) > 6:
                self._weights[key] = value + self._stems.get(_stem(key), 0j)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_MODEL_PATH, *, native: bool | None = None) -> Classifier:
        with gzip.open(path, "rb") as fh:
            data = json.loads(fh.read())
        if data.get("format") != MODEL_FORMAT:
            raise ValueError(f"{path}: not a {MODEL_FORMAT} model (format={data.get('format')!r})")
        return cls(data["classes"], data["bias"], data["weights"], data.get("temperature", 1.0), native=native)

    @property
    def native(self) -> bool:
        """True when requests are scored by the C accelerator (``router.classify._features``), False on the
        pure-Python path. Both give the same probabilities."""
        return self._table is not None

    def _sums(self, messages: Sequence[Mapping], tools: Sequence | None) -> tuple[complex, float]:
        """The fixed-point weight sum (class 1 and class 2 against class 0, as one complex number)
        and the squared norm of a conversation's features."""
        main, context = _split(messages, tools)
        if self._table is not None:
            lowered = main.lower()
            raw = lowered.encode("utf-8", "surrogatepass")
            if not context:
                r = _native_score(self._table, raw, lowered, None, None, False)
                return complex(r[0], r[1]), r[2]
            ctx = "\n".join(context).lower()
            r = _native_score(self._table, raw, lowered, ctx.encode("utf-8", "surrogatepass"), ctx, bool(tools))
            return (complex(r[0], r[1]) + CONTEXT_WEIGHT * complex(r[3], r[4]),
                    r[2] + CONTEXT_WEIGHT * CONTEXT_WEIGHT * r[5])
        # The reference path. Features are binary (stems: counts) and L2-normalised over all
        # non-stem features, known or not, so length alone doesn't decide. Key kinds never collide.
        keys, ctx_keys = _feature_sets(main, context, tools)
        weights, stems = self._weights, self._stems
        get, zero = weights.get, repeat(0j)
        tokens, pairs = keys
        s = sum(map(get, tokens, zero)) + sum(map(get, pairs, zero))
        s += sum(map(stems.get, [_stem(t) for t in tokens.difference(weights) if len(t) > 6], zero))
        n = len(tokens) + len(pairs)
        if ctx_keys is not None:
            tokens, pairs = ctx_keys
            c = sum(map(get, tokens, zero)) + sum(map(get, pairs, zero))
            c += sum(map(stems.get, [_stem(t) for t in tokens.difference(weights) if len(t) > 6], zero))
            s += CONTEXT_WEIGHT * c
            n += CONTEXT_WEIGHT * CONTEXT_WEIGHT * (len(tokens) + len(pairs))
        return s, n

    def _probabilities(self, messages: Sequence[Mapping], tools: Sequence | None) -> tuple[float, float, float]:
        s, n = self._sums(messages, tools)
        scale = self._scale / math.sqrt(n) if n else self._scale
        z1 = s.real * scale + self._bias[0]
        z2 = s.imag * scale + self._bias[1]
        top = max(0.0, z1, z2)
        e0, e1, e2 = math.exp(-top), math.exp(z1 - top), math.exp(z2 - top)
        total = e0 + e1 + e2
        return e0 / total, e1 / total, e2 / total

    def probabilities(self, messages: Sequence[Mapping], tools: Sequence | None = None) -> dict[str, float]:
        """Class -> probability for a conversation."""
        return dict(zip(self.classes, self._probabilities(messages, tools), strict=True))

    def classify(self, messages: Sequence[Mapping], tools: Sequence | None = None, *,
                 language: bool = True) -> Classification:
        """The task and its probability; the language too unless `language=False` (then None)."""
        p = self._probabilities(messages, tools)
        k = 0 if p[0] >= p[1] and p[0] >= p[2] else (1 if p[1] >= p[2] else 2)
        return Classification(self.classes[k], round(p[k], 4), _language(messages) if language else None)


# The optional C accelerator (built by setup.py); without it, or with ROUTER_CLASSIFIER_NATIVE=0,
# the pure-Python path gives the same results.
_NativeTable = _native_score = None
if (_features := native_module()) is not None:
    _NativeTable, _native_score = _features.Table, _features.score


def _native_table(diffs: Mapping[str, tuple[int, int]]) -> object | None:
    """The model as a router.classify._features table, built from the feature names (no Python keys), or
    None without the accelerator. Stems are folded into the long words and symbol runs the model
    knows, as the Python path does."""
    if _NativeTable is None:
        return None
    features: dict[bytes, tuple[int, int]] = {}
    stems: dict[bytes, tuple[int, int]] = {}
    for name, d in diffs.items():
        stem, canonical = _canonical_name(name)
        (stems if stem else features)[canonical] = d
    if stems:
        for canonical, (re_, im) in features.items():
            if canonical[0] == 1 and len(canonical) > 7:  # a bytes key longer than six
                s = stems.get(_stem(canonical[1:]))
                if s is not None:
                    features[canonical] = (re_ + s[0], im + s[1])
    try:
        return _NativeTable([(k, re_, im) for k, (re_, im) in features.items()],
                            [(k, re_, im) for k, (re_, im) in stems.items()])
    except (ValueError, OverflowError):  # a fingerprint collision or a huge weight: score in Python
        return None


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


def classify(messages: Sequence[Mapping], tools: Sequence | None = None, *, language: bool = True) -> Classification:
    """Classify an OpenAI-style conversation with the shipped model (loaded on first call).

    `language=False` skips language detection (``.language`` is then None): what the engine
    does when no policy rule reads the language.

    >>> classify([{"role": "user", "content": "A train leaves at 3pm at 60 mph; when does it cover 150 miles?"}]).task
    'reasoning'
    """
    return _default_model().classify(messages, tools, language=language)
