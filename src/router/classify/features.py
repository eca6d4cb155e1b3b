"""The classifier's features: what a request's text turns into before the model weighs it.

This is the pure-Python reference; ``_features.c`` computes the same features and sums (the tests
compare the two on every data text and on random text in many scripts).

Features, all binary, computed on the UTF-8 bytes of the lower-cased text:

* words (runs of ASCII letters and digits and non-ASCII bytes; digits 1-9 read as 0, so numbers
  count by length; a word that glues ASCII to a CJK or other wide script's characters, such as
  ``vue에서`` or ``pythonで``, also counts each of its ASCII runs as a word), symbol runs
  (``();``, ``=>``, fences) and each symbol on its own;
* pairs of adjacent words (from the first :data:`PAIR_WORDS` words);
* CJK text (Han, kana, Hangul) and Thai, which spaces don't split into words: characters and
  character pairs from the first :data:`CJK_HEAD` such characters;
* a stem for every token longer than six bytes (its first five letters, or ten bytes outside
  ASCII), so ``functions``/``Funktionen``/``функцию`` share weight;
* markers: indented lines (``__tab``), error text (``__err``), and tools offered (``__tool``);
* the last user turn's shape (:func:`shape_features`): its length, how many numbers it holds and
  how dense they are, its lines and blank lines, whether it asks a question (``__d:num12``,
  ``__d:endq``...). These are not divided by the text's size: they say what the text is as a whole.

>>> sorted(names(text_keys("Hi there, functions!")))
['!', ',', 'c:!', 'c:,', 'functions', 'funct~', 'hi', 'hi there', 'there', 'there functions']
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "CJK_HEAD",
    "MARKERS",
    "PAIR_WORDS",
    "SHAPE_NAMES",
    "SHAPE_PREFIX",
    "SHAPE_STEPS",
    "SHAPE_VALUE",
    "Keys",
    "announces_new_topic",
    "canonical_name",
    "content_text",
    "feature_key",
    "feature_name",
    "names",
    "shape_features",
    "split_conversation",
    "stem",
    "text_keys",
]

PAIR_WORDS = 80
CJK_HEAD = 150
MARKERS = frozenset({"__tab", "__err", "__tool"})

# Characters read per request: the head and tail of the last user turn, then context, most recent
# first. These bound the cost of a 100 kB paste to that of a 3 kB one.
LAST_HEAD, LAST_TAIL = 1500, 500
CONTEXT_BUDGET, CONTEXT_PER_MESSAGE = 1500, 600
TOOLS_BUDGET = 600

# words: ASCII punctuation -> space, digits 1-9 -> "0"; symbols: letters, digits, non-ASCII -> space.
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
_CJK = re.compile(r"[\u0e00-\u0e7f\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]+")
_OTHER_SYMBOL = re.compile(r"[^\x00-\x7f\w]")  # non-ASCII, not a letter or digit: €, ×, ≤, 。
_ASCII_RUN = re.compile(rb"[a-z0-9]+")  # in a word (ASCII punctuation is gone): its Latin runs
# A character of three or four UTF-8 bytes, but not U+1E00-U+1EFF (Latin Extended Additional:
# Vietnamese "ậ", "ế" are Latin letters, and "lập" is no Latin term glued to another script).
_WIDE = re.compile(rb"[\xe0\xe2-\xff]|\xe1[^\xb8-\xbb]")

Keys = tuple[set, set]
"""(tokens, pairs): ``bytes`` words and symbol runs, ``str`` symbols, CJK characters and pairs and
markers; ``tuple`` word pairs. Key types keep the kinds apart."""


def stem(word: bytes) -> bytes:
    """The first five letters (ASCII) or ten bytes (other scripts) of a token longer than six."""
    return word[:5] if word[0] < 128 else word[:10]


def _cjk_head(lowered: str) -> list[str]:
    """The runs of CJK characters among the first CJK_HEAD CJK characters of the text (the last run
    cut where the budget ends)."""
    out: list[str] = []
    budget = CJK_HEAD
    for match in _CJK.finditer(lowered):  # lazily: stop scanning once the budget is spent
        if budget <= 0:
            break
        run = match.group()[:budget]
        out.append(run)
        budget -= len(run)
    return out


def text_keys(text: str) -> Keys:
    """The distinct features of one piece of text (bounded by the caller)."""
    lowered = text.lower()
    raw = lowered.encode("utf-8", "surrogatepass")
    words = raw.translate(_WORD_TABLE).split()
    tokens: set = set(words)
    symbols = raw.translate(_SYMBOL_TABLE).split()
    tokens.update(symbols)
    tokens.update(b"".join(symbols).decode())  # each ASCII symbol on its own, as a str
    pairs = set(zip(words[:PAIR_WORDS], words[1:PAIR_WORDS], strict=False))
    if len(raw) != len(lowered):  # not ASCII
        # A Latin term glued to a CJK (or other wide script's) particle, "vue에서", "pythonで", also
        # counts as the term: each ASCII run of a word that holds a character of three or more
        # UTF-8 bytes is a word too (not "código": accented Latin letters take two; nor "lập").
        for word in words:
            if _WIDE.search(word) and _ASCII_RUN.search(word):
                tokens.update(_ASCII_RUN.findall(word))
        tokens.update(_OTHER_SYMBOL.findall(lowered))
        for run in _cjk_head(lowered):
            tokens.update(run)
            tokens.update(map(str.__add__, run, run[1:]))
    if b"\n  " in raw or b"\n\t" in raw:
        tokens.add("__tab")
    if b"error:" in raw or b"exception" in raw:
        tokens.add("__err")
    return tokens, pairs


GRAM = 4
"""Characters per n-gram of the last user turn (:func:`char_grams`)."""
DIGITS_TO_ZERO = str.maketrans("123456789", "000000000")
"""The tokenizer's folding of ASCII digits, for ``str.translate`` (words fold the same bytes)."""


def char_grams(lowered: str, n: int = GRAM) -> set[str]:
    """The distinct character n-grams of a lower-cased text: its words (split at white space)
    joined by one space, with a space before and after, ASCII digits 1-9 read as 0. They reach
    what words miss: inflections and compounds (``Funktionen``, ``zaproszenia``), words glued
    together, transliterations, and terms never seen whole (``openpyxl`` shares ``pyxl``).

    >>> sorted(char_grams("go 2"))
    [' go ', 'go 0', 'o 0 ']
    """
    s = " " + " ".join(lowered.translate(DIGITS_TO_ZERO).split()) + " "
    return {s[i:i + n] for i in range(len(s) - n + 1)}


# The shape of the last user turn: dense markers that say what the text is as a whole, beside
# what its words say. Named ``__d:...`` (no text produces such a token). Their value in the feature
# vector is SHAPE_VALUE, not 1, and they are not divided by the text's size: a small value makes
# the L2 penalty hold them back, so they correct the words (a pasted document full of numbers is
# not a word problem) without standing in for them. Chosen by source-grouped cross-validation
# (docs/classifier.md).
SHAPE_PREFIX = "__d:"
SHAPE_VALUE = 0.1
_SHAPE_LENGTHS = (80, 200, 500, 1000, 2000)
_SHAPE_NUMBERS = (1, 3, 6, 12, 25)
_SHAPE_DENSITY = (0.05, 0.1, 0.2, 0.4)
_SHAPE_LINES = (3, 6, 12)
# Byte tables for counting runs: a word byte (as in words) or a digit -> "a", anything else -> " ".
# Words are counted as b" a" occurrences (plus one for a leading run), without a list of them;
# numbers, fewer, by splitting.
_RUN_OF_WORDS = bytes(32 if b == 32 else 97 for b in _WORD_TABLE)
_RUN_OF_DIGITS = bytes(97 if 48 <= i <= 57 else 32 for i in range(256))
_LEN_NAMES = tuple(f"{SHAPE_PREFIX}len{t}" for t in _SHAPE_LENGTHS)
_NUM_NAMES = tuple(f"{SHAPE_PREFIX}num{t}" for t in _SHAPE_NUMBERS)
_DENSITY_NAMES = tuple(f"{SHAPE_PREFIX}nr{t}" for t in _SHAPE_DENSITY)
_LINE_NAMES = tuple(f"{SHAPE_PREFIX}lines{t}" for t in _SHAPE_LINES)
_ENDQ, _Q, _PARA = SHAPE_PREFIX + "endq", SHAPE_PREFIX + "q", SHAPE_PREFIX + "para"
SHAPE_STEPS = (_SHAPE_LENGTHS, _SHAPE_NUMBERS, _SHAPE_DENSITY, _SHAPE_LINES)
"""The thresholds of the cumulative markers, as the C accelerator takes them (``_features.Table``)."""
SHAPE_NAMES = (*_LEN_NAMES, *_NUM_NAMES, *_DENSITY_NAMES, *_LINE_NAMES, _ENDQ, _Q, _PARA)
"""Every shape marker, in the order :func:`shape_features` lists them (the C accelerator's bits)."""


def _runs(marked: bytes) -> int:
    """The number of runs of ``a`` in a string of ``a`` and spaces."""
    return marked.count(b" a") + (marked[:1] == b"a")


def shape_features(text: str) -> list[str]:
    """The shape markers of a user turn (as :func:`split_conversation` clips it), cumulative:
    length at least 80/200/500/1000/2000 characters (``len80``...), at least 1/3/6/12/25 numbers
    (``num1``...; a number is a run of digits), numbers per word at least 0.05/0.1/0.2/0.4
    (``nr0.05``...), at least 3/6/12 non-empty lines (``lines3``...), a question mark anywhere
    (``q``) or at the end (``endq``), and a blank line (``para``).

    This is the reference: the C accelerator computes the same markers in its tokenizer's pass
    (``_features.c``, ``shape_mask``); tests compare the two on every data text and random text.

    >>> shape_features("is 1001 prime?")
    ['__d:num1', '__d:nr0.05', '__d:nr0.1', '__d:nr0.2', '__d:endq', '__d:q']
    """
    if not text:
        return []
    out = list(_LEN_NAMES[:bisect_right(_SHAPE_LENGTHS, len(text))])
    raw = text.encode("utf-8", "surrogatepass")
    numbers = len(raw.translate(_RUN_OF_DIGITS).split())
    if numbers:
        out += _NUM_NAMES[:bisect_right(_SHAPE_NUMBERS, numbers)]
        ratio = numbers / _runs(raw.translate(_RUN_OF_WORDS))  # a digit is a word byte: never 0 words
        out += _DENSITY_NAMES[:bisect_right(_SHAPE_DENSITY, ratio)]
    body = text.strip()
    if body.count("\n") >= 2:  # at least 3 lines, maybe non-empty
        lines = sum(1 for line in body.split("\n") if line and not line.isspace())
        out += _LINE_NAMES[:bisect_right(_SHAPE_LINES, lines)]
    if body[-1:] in ("?", "\uff1f"):
        out.append(_ENDQ)
    if "?" in text or "\uff1f" in text:
        out.append(_Q)
    if "\n\n" in body:
        out.append(_PARA)
    return out


def _decode(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


def feature_name(key: object) -> str:
    """The name a key has in the model file: ``word``, ``();``, ``word word``, ``c:中``, ``__err``.

    (Stems are named ``stem~``.) The forms can't be confused: words have no symbols, symbol runs no
    letters, only pairs have a space, and ``c:`` and ``__`` start neither.
    """
    if isinstance(key, bytes):
        return _decode(key)
    if isinstance(key, tuple):
        return _decode(key[0]) + " " + _decode(key[1])
    return key if key in MARKERS else "c:" + key  # type: ignore[operator]  # c:( c:€ c:中 c:中文


_ALNUM = [chr(b).isalnum() for b in range(128)]


def names(keys: Keys) -> dict[str, float]:
    """Feature name -> value of one text's keys: 1.0 each; a stem counts the long tokens sharing it."""
    tokens, pairs = keys
    out = dict.fromkeys(map(feature_name, tokens), 1.0)
    out.update(dict.fromkeys(map(feature_name, pairs), 1.0))
    for token in tokens:
        # a stem of a word (its first byte a letter, a digit or not ASCII); a symbol run's would be
        # named like a symbol run ending in "~" (canonical_name), which scoring never looks up as a stem
        if isinstance(token, bytes) and len(token) > 6 and (token[0] >= 128 or _ALNUM[token[0]]):
            name = _decode(stem(token)) + "~"
            out[name] = out.get(name, 0.0) + 1.0
    return out


def canonical_name(name: str) -> tuple[bool, bytes]:
    """(is a stem, the feature as ``router.classify._features`` hashes it): a kind tag, then its bytes.

    Tag 1: a word or symbol run (``bytes`` keys); 2: a character, character pair or marker
    (``str`` keys); 3: a word pair, ``a b`` (``tuple`` keys). A stem is its bytes, untagged.
    """
    if name in MARKERS:
        return False, b"\x02" + name.encode()
    if name.startswith("c:") and len(name) in (3, 4):
        return False, b"\x02" + name[2:].encode("utf-8", "surrogatepass")
    if " " in name:
        return False, b"\x03" + name.encode("utf-8", "surrogateescape")
    if name.endswith("~") and len(name) > 1 and (name[0].isalnum() or not name[0].isascii()):
        return True, name[:-1].encode("utf-8", "surrogateescape")
    return False, b"\x01" + name.encode("utf-8", "surrogateescape")


def feature_key(name: str) -> tuple[bool, object]:
    """Inverse of the naming: (is a stem, the key :func:`text_keys` produces)."""
    is_stem, canonical = canonical_name(name)
    if is_stem:
        return True, canonical
    tag, body = canonical[0], canonical[1:]
    if tag == 1:
        return False, body
    if tag == 2:
        return False, body.decode("utf-8", "surrogatepass")
    a, b = body.split(b" ", 1)
    return False, (a, b)


# ---------------------------------------------------------------------------------------------
# Conversations: the last user turn, and the rest as context
# ---------------------------------------------------------------------------------------------


def content_text(content: object) -> str:
    """The text of a message's ``content``: a string, or the text parts of a list (images: ``[image]``)."""
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


# JSON's own punctuation in tool calls and tool results is the protocol, not evidence of the task:
# a travel agent's flight offers are JSON as much as a coding agent's are. Its keys and values stay.
_JSON_SYNTAX = str.maketrans(dict.fromkeys('{}[]":,', " "))


def _tool_name(name: object) -> str:
    """A tool's name as words: ``get_order`` -> ``get order``. A call's ``name(...)`` and the ``_``
    of an identifier are the protocol's syntax, not evidence of code (a booking agent calls
    ``search_flights`` as a coding agent calls ``run_tests``); the words stay."""
    return str(name).replace("_", " ").replace("-", " ").replace(".", " ")


def _message_text(message: Mapping) -> str:
    text = content_text(message.get("content"))
    calls = _calls_text(message)
    return f"{text}\n{calls}" if calls else text


def _calls_text(message: Mapping) -> str:
    """A message's tool calls, a line each: the name's words and the arguments, no JSON syntax."""
    calls = message.get("tool_calls")
    out = []
    if isinstance(calls, list):
        for call in calls:
            fn = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(fn, Mapping):
                out.append(f"{_tool_name(fn.get('name', ''))} {str(fn.get('arguments', ''))[:200].translate(_JSON_SYNTAX)}")
    return "\n".join(out)


def _clip(text: str, head: int, tail: int) -> str:
    return text if len(text) <= head + tail else text[:head] + "\n" + text[-tail:]


def _tools_text(tools: Iterable) -> str:
    parts: list[str] = []
    size = 0
    for tool in tools:
        if not isinstance(tool, Mapping):
            continue
        fn = tool.get("function", tool)
        if not isinstance(fn, Mapping):
            continue
        piece = f"{_tool_name(fn.get('name', ''))} - {str(fn.get('description', ''))[:200]}"
        parts.append(piece)
        size += len(piece)
        if size > TOOLS_BUDGET:
            break
    return "\n".join(parts)


# Openings that announce a change of topic: the last turn then decides alone. Read from its first
# 200 characters, lower-cased. "anyway" only at the start of a clause ("ok anyway, ..."): inside
# one it belongs to the same topic ("I tried it anyway and it still fails"). Not "ちなみに" or
# "對了"-like asides, which usually ask more about the same thing ("ちなみにGoだと？").
# Three patterns, so a turn costs a few microseconds: words of alphabetic scripts (tried only at
# the start of a word), "anyway" (only when it occurs at all) and CJK openings (only in a turn
# that is not all ASCII).
_NEW_TOPIC_WORDS = re.compile(
    r"\b(?:unrelated|different (?:question|topic|thing|subject)|switching (?:gears|topics?)|"
    r"change of (?:topic|subject)|on (?:another|a different|an unrelated) note|btw\b|by the way\b|"
    r"another (?:question|thing|topic)|separate (?:question|thing|topic)|new (?:question|topic)|off[- ]topic|"
    r"changing the (?:subject|topic)|something completely different|totally different (?:question|topic)|"
    r"otra cosa|otra pregunta|otro tema|cambiando de tema|cambio de tema|por cierto|"
    r"outra coisa|outra pergunta|outro assunto|mudando de assunto|por falar nisso|"
    r"autre chose|autre question|autre sujet|changement de sujet|changeons de sujet|rien à voir|au fait|"
    r"andere frage|anderes thema|themawechsel|übrigens|"
    r"cambio argomento|cambiando discorso|altra domanda|un'altra cosa|tra l'altro|"
    r"другой вопрос|другая тема|кстати|не по теме|сменим тему|к другому вопросу|"
    r"inne pytanie|zmieniając temat|przy okazji|"
    r"başka bir soru|konu değişikliği|bu arada|alakasız|"
    r"andere vraag|ander onderwerp|trouwens|"
    r"câu hỏi khác|chuyển chủ đề|nhân tiện|pertanyaan lain|ganti topik|ngomong-ngomong|"
    r"दूसरा सवाल|سؤال آخر|بالمناسبة)",
)
_NEW_TOPIC_ANYWAY = re.compile(r"(?:^|[.!?;:,]\s*|\b(?:ok|okay|well|so)\s+)anyway\b")
_NEW_TOPIC_CJK = re.compile(
    r"話(?:は)?変わ|関係ない(?:けど|んだけど|話)|別の質問|別件|それはそうと|ところで|"
    r"另外|换个话题|換個話題|题外话|題外話|顺便问|順便問|说点别的|另一个问题|"
    r"다른 질문|그건 그렇고|그나저나|딴 얘기|다른 얘기|얘기 바꿔|주제를 바꿔|별개로",
)


def announces_new_topic(turn: str) -> bool:
    """Whether a user turn opens with a change of topic ("unrelated question:", "btw", "話変わるけど").

    >>> announces_new_topic("thanks! unrelated: write me a haiku"), announces_new_topic("and in Go?")
    (True, False)
    """
    text = turn[:200].lower()
    return (_NEW_TOPIC_WORDS.search(text) is not None
            or ("anyway" in text and _NEW_TOPIC_ANYWAY.search(text) is not None)
            or (not text.isascii() and _NEW_TOPIC_CJK.search(text) is not None))


def split_conversation(messages: Sequence[Mapping], tools: Sequence | None) -> tuple[str, str | None]:
    """(the last user turn, clipped; the context, clipped, or None when there is none).

    The context is the system prompt, earlier turns, assistant tool calls and tool results (most
    recent first, up to CONTEXT_BUDGET characters) and the names and descriptions of the tools.
    """
    last = len(messages) - 1
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if isinstance(m, Mapping) and m.get("role", "user") == "user":
            last = i
            break
    main = ""
    if last >= 0 and isinstance(messages[last], Mapping):
        main = _clip(_message_text(messages[last]), LAST_HEAD, LAST_TAIL)
    context: list[str] = []
    budget = CONTEXT_BUDGET
    for i in range(len(messages) - 1, -1, -1):
        if i == last or budget <= 0 or not isinstance(messages[i], Mapping):
            continue
        text = _message_text(messages[i])
        if not text:
            continue
        share = min(budget, CONTEXT_PER_MESSAGE)
        text = _clip(text, share * 2 // 3, share // 3)
        if messages[i].get("role") in ("tool", "function") and text.lstrip()[:1] in ("{", "["):
            text = text.translate(_JSON_SYNTAX)
        context.append(text)
        budget -= len(text)
    if tools:
        context.append("__tools\n" + _tools_text(tools)[:TOOLS_BUDGET])
    return main, ("\n".join(context) if context else None)
