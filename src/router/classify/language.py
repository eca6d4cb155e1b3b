"""Offline language detection for requests: ISO 639-1 codes, standard library only (the optional C
accelerator ``router.classify._features`` computes the same results faster when it was built).

Two stages, both cheap:

1. Script. Letters are counted per writing system over a bounded prefix. Kana means Japanese
   (Japanese mixes kana into Han text; Chinese has none), Hangul means Korean, Han alone means
   Chinese; Cyrillic, Arabic, Hebrew, Greek, Devanagari and Thai map to their main language
   (with a few letter checks: Ukrainian, Persian). A non-Latin script wins even when it is the
   minority, because pasted code and technical terms add Latin letters to any request.
2. Latin-script text is scored against small lists of function words plus a few telltale
   letters (``ñ``, ``ã``, ``ß``...). Text with no evidence at all (code, numbers) is ``"en"``.

>>> detect_language("Wie kann ich diesen Fehler beheben?")
'de'
>>> detect_language("このコードのバグを直してください")
'ja'
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from bisect import bisect_right
from itertools import compress, repeat
from operator import itemgetter
from types import ModuleType

__all__ = ["DEFAULT_LANGUAGE", "detect_language", "native_allowed", "native_module"]

DEFAULT_LANGUAGE = "en"

_HEAD, _TAIL = 240, 120  # characters read: the question is usually at one end of a paste
_LATIN_CHARS = 160  # function words are dense: a few hundred characters decide
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")
# Code and markup that would otherwise vote for English, each removed only when a cheap substring
# test says it may be present: (trigger substrings, pattern).
_NOISE: tuple[tuple[tuple[str, ...], re.Pattern[str]], ...] = (
    (("```",), re.compile(r"```.*?(?:```|\Z)", re.S)),
    (("`",), re.compile(r"`[^`\n]*`")),
    (("http",), re.compile(r"https?://\S+")),
    (("/", "\\"), re.compile(r"(?<!\S)[^\s/\\]*[/\\]\S*")),
    (("\n ", "\n\t"), re.compile(r"^[ \t]+\S[^\n]*$", re.M)),  # indented lines: code, stack frames
    ((";\n", "{\n", "}\n", "):\n"), re.compile(r"^[^\n]*(?:[;{}]|\):)[ \t]*$", re.M)),  # code-like lines
    (("_",), re.compile(r"(?<!\w)[^\W_]*_\w*")),  # snake_case identifiers
    (("Error", "Exception", "Warning"), re.compile(r"\b[A-Z]\w*(?:Error|Exception|Warning)\b(?::[^.?!\n]*)?")),
)


def _strip_noise(text: str) -> str:
    """(The reference for ``router.classify._features.strip_noise``, which computes the same in C.)"""
    for triggers, rx in _NOISE:
        for t in triggers:
            if t in text:
                text = rx.sub(" ", text)
                break
    return text


_STOPWORDS: dict[str, str] = {
    "en": "the and is are was were be been being to of in that it for on with as this these those you "
    "what how why when where who which can could would should will shall do does did done not no "
    "have has had my your our their me we they them there an at by from or but if about please "
    "thanks thank hey hi hello write explain make need want get got it's i'm don't doesn't can't "
    "what's whats im dont just like some any all more most other than then so up out into over "
    "also very here its his her him she he one two many much way time help tell give show find "
    "use using work works working try tried keep getting does wrong something anyone",
    "de": "der die das und ist nicht ich du sie wir ein eine einen einem einer eines mit auf für von "
    "zu den dem des im auch sich es wie was warum kann können bitte danke hallo mir mich dir dich "
    "wenn aber oder noch nur sind war hat habe haben wird werden diese dieser dieses mein meine "
    "gibt schreib schreibe erkläre erklär welche welcher wo bei nach über unter zwischen durch "
    "ohne gegen um zum zur vom beim ins ob dass weil denn doch schon sehr viel viele immer "
    "heute morgen jetzt hier dort man kein keine keinen etwas alles alle soll sollte muss müssen "
    "möchte will wollen kannst könntest mache macht machen geht gut ja nein wer wieso weshalb "
    "eigentlich bzw mal fehler hilfe",
    "fr": "le la les et est une un des du pour dans pas que qui je tu vous nous il elle ils elles "
    "ce cet cette ces avec sur au aux mais ou où comment pourquoi quoi quel quelle quels quelles "
    "merci bonjour salut mon ma mes ton ta tes son sa ses notre votre leur peux peut pouvez faire "
    "fais fait suis es sommes sont être avoir ai as avons avez ont j'ai c'est qu'est-ce n'est "
    "d'un d'une l'on écris écrivez explique expliquez moi toi lui très aussi si combien "
    "quand donc alors car ni y en ne plus moins bien tout tous toute toutes même entre chez sans "
    "sous depuis pendant avant après encore déjà ici voici voilà jours ça cela ceci",
    "es": "el la los las y es un una unos unas de del que en por para con no se lo le les como "
    "qué cómo cuál cuáles cuánto cuántos cuánta cuántas cuándo dónde quién hola gracias mi mis "
    "tu tus su sus yo usted ustedes nosotros puedes puede puedo está estoy están estás estas "
    "son hay pero muy también esto este esta eso ese esa estos cuando donde escribe escríbeme "
    "explica explícame ayúdame ayuda necesito quiero tengo tiene tienen hace hacer hago si sí "
    "dime dame sobre entre sin hasta desde algo nada todo todos siempre nunca ya aquí porque "
    "mejor otra otro fue ser sale hazme qué tal",
    "pt": "o a as e é um uma uns umas de do da dos das que em no na nos nas por para com não "
    "se como porque qual quais quanto quantos quanta quantas quando onde quem olá oi obrigado "
    "obrigada meu minha meus minhas seu sua você vocês eu ele ela eles elas está estou estão "
    "são há mas muito muita também isso isto esse essa este esta aquele quando escreva escreve "
    "explique explica preciso quero tenho tem têm pode posso podem ao à às pelo pela pelos "
    "pelas me te lhe nós sim ainda já aqui depois antes sobre entre sem até foi ser "
    "fazer faço faz dá deu tá tô né pra pro tudo nada algo dicas ajuda ajude coisa",
    "it": "il lo la gli le e è un una uno di del della dello dei degli delle che in per con non "
    "si come perché quale quali quanto quanti quando dove chi ciao grazie mio mia miei mie tuo "
    "tua suo sua tu io lui lei noi voi loro sono sei siamo siete ma anche questo questa questi "
    "quello quella scrivi spiega puoi può posso voglio ho hai ha abbiamo hanno fare fa faccio "
    "al allo alla ai agli alle dal dalla nel nella sul sulla più molto ancora già qui poi "
    "cosa tempo impiega mi ti ci vi ne",
    "nl": "de het een en is van in dat die niet ik je jij we wij zijn met voor op te aan er maar "
    "ook als wat hoe waarom kun kunt kan bedankt hallo mijn jouw deze dit wordt heb heeft "
    "naar bij uit nog wel geen meer zo dan door over om hebben worden",
    "tr": "ve bir bu da de ne için ile gibi çok daha ama nasıl neden mi mı mu mü ben sen biz "
    "siz var yok olarak olan merhaba teşekkürler lütfen şu bana sana nedir",
    "pl": "i w na nie się że jest to z do jak co dla czy ale ja ty mnie jestem są o po tak "
    "dlaczego proszę dziękuję cześć może jak się mam",
    "sv": "och att det är som en ett på för med jag du inte har till av om hur varför tack hej",
    "id": "dan yang di ini itu dengan untuk tidak ada saya anda apa bagaimana kenapa tolong "
    "terima kasih bisa dari ke",
    "vi": "và là của có không được cho những một các tôi bạn này như thế nào tại sao cảm ơn",
}
# One-letter words are usually variables or maths, except these.
_SINGLE_LETTER = {"é": "pt", "o": "pt", "à": "fr", "è": "it"}

_STOP_WEIGHT: dict[str, dict[str, float]] = {}
for _lang, _words in _STOPWORDS.items():
    for _w in _words.split():
        if len(_w) > 1:
            _STOP_WEIGHT.setdefault(_w, {})[_lang] = 1.0
for _w, _lang in _SINGLE_LETTER.items():
    _STOP_WEIGHT[_w] = {_lang: 1.0}
for _w, _langs in _STOP_WEIGHT.items():
    for _lang in _langs:
        _langs[_lang] = 1.0 / len(_langs)  # shared words ("de", "la", "que") count for less

# Word endings that (almost) only one language has.
_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("ção", "pt"), ("ções", "pt"), ("ão", "pt"), ("ões", "pt"), ("ência", "pt"),
    ("ción", "es"), ("ciones", "es"), ("encia", "es"), ("mente", "es"),
    ("zione", "it"), ("zioni", "it"), ("ggio", "it"),
    ("ung", "de"), ("keit", "de"), ("heit", "de"), ("lich", "de"), ("chen", "de"),
    ("eux", "fr"), ("euse", "fr"), ("aux", "fr"), ("ée", "fr"), ("ées", "fr"),
    ("ing", "en"), ("tion", "en"), ("ly", "en"),
)

_ALL_SUFFIXES = tuple(suffix for suffix, _ in _SUFFIXES)

# Letters that (almost) only one language uses; each occurrence adds this much to its score.
_LETTER_HINTS: dict[str, tuple[str, float]] = {
    "ñ": ("es", 1.0), "¿": ("es", 2.0), "¡": ("es", 2.0),
    "ã": ("pt", 1.5), "õ": ("pt", 1.5), "ç": ("pt", 0.2),
    "ß": ("de", 1.5), "ä": ("de", 0.5), "ö": ("de", 0.5), "ü": ("de", 0.5),
    "è": ("fr", 0.5), "œ": ("fr", 1.5), "û": ("fr", 0.5), "î": ("fr", 0.5),
    "ğ": ("tr", 1.5), "ş": ("tr", 1.5), "ı": ("tr", 1.5),
    "ł": ("pl", 1.5), "ą": ("pl", 1.5), "ę": ("pl", 1.5), "ż": ("pl", 1.5), "ś": ("pl", 1.0),
    "å": ("sv", 1.5),
    "đ": ("vi", 2.0), "ơ": ("vi", 2.0), "ư": ("vi", 2.0), "ạ": ("vi", 2.0), "ả": ("vi", 2.0),
}


_NON_LATIN_RUN = re.compile(
    r"[\u0370-\u06ff\u0750-\u077f\u0900-\u097f\u0e00-\u0e7f\u1100-\u11ff\u3040-\u30ff\u3130-\u318f"
    r"\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\ufb50-\ufdff\ufe70-\ufeff\uff66-\uff9f]+"
)
_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]+")
_LATIN_LETTER = re.compile(r"[a-zA-Z\u00c0-\u024f]+")
# (first code point of a block, script, Latin letters one character is worth when deciding which
# script dominates: a CJK character carries about a word, a Cyrillic letter about a letter)
_BLOCKS: tuple[tuple[int, str, float], ...] = (
    (0x0370, "greek", 1.0), (0x0400, "cyrillic", 1.0), (0x0530, "armenian", 1.0),
    (0x0590, "hebrew", 1.0), (0x0600, "arabic", 1.0), (0x0700, "other", 1.0), (0x0750, "arabic", 1.0),
    (0x0780, "other", 1.0), (0x0900, "devanagari", 1.0), (0x0980, "other", 1.0), (0x0E00, "thai", 1.0),
    (0x0E80, "other", 1.0), (0x1100, "hangul", 3.0), (0x1200, "other", 1.0), (0x3040, "cjk", 3.0),
    (0x3100, "other", 1.0), (0x3130, "hangul", 3.0), (0x3190, "other", 1.0), (0x31F0, "cjk", 3.0),
    (0x3200, "other", 1.0), (0x3400, "cjk", 3.0), (0xA000, "other", 1.0), (0xAC00, "hangul", 3.0),
    (0xD7B0, "other", 1.0), (0xF900, "cjk", 3.0), (0xFB00, "other", 1.0), (0xFB50, "arabic", 1.0),
    (0xFE00, "other", 1.0), (0xFE70, "arabic", 1.0), (0xFF00, "other", 1.0), (0xFF66, "cjk", 3.0),
    (0xFFA0, "other", 1.0),
)
_BLOCK_STARTS = [b[0] for b in _BLOCKS]
_SCRIPT_LANG = {
    "hangul": "ko", "cyrillic": "ru", "arabic": "ar", "hebrew": "he", "greek": "el",
    "devanagari": "hi", "thai": "th", "armenian": "hy",
}


def detect_language(text: str) -> str:
    """The ISO 639-1 code of the main natural language of ``text`` (``"en"`` when unsure).

    >>> detect_language("¿Cómo puedo invertir una lista en Python?")
    'es'
    """
    if len(text) > _HEAD + _TAIL:
        text = text[:_HEAD] + "\n" + text[-_TAIL:]
    cleaned = _strip(text + "\n")
    if len(cleaned.strip()) < 2:
        cleaned = text
    return _detect(cleaned)


def _detect_clean(cleaned: str) -> str:
    """The language of text with code and markup removed: by script, else by Latin-script words.

    (The reference for ``router.classify._features.language``, which computes the same in C.)"""
    if not cleaned.isascii():
        runs = _NON_LATIN_RUN.findall(cleaned)
        if runs:
            counts: dict[str, float] = {}
            for run in runs:
                _, script, weight = _BLOCKS[bisect_right(_BLOCK_STARTS, ord(run[0])) - 1]
                counts[script] = counts.get(script, 0.0) + len(run) * weight
            best = max(counts, key=counts.__getitem__)
            latin = sum(map(len, _LATIN_LETTER.findall(cleaned)))
            # A non-Latin script wins as a minority too: pasted code and tech terms are Latin.
            if best != "other" and (counts[best] * 6 >= latin or counts[best] >= 20):
                return _script_language(best, runs, cleaned)
    return _latin_language(cleaned)


def _script_language(script: str, runs: list[str], text: str) -> str:
    if script == "cjk":
        cjk = "".join(runs)
        kana = sum(map(len, _KANA.findall(cjk)))
        # Japanese text is rarely without kana; a stray katakana loanword in Chinese is.
        return "ja" if kana >= 2 or kana * 10 >= len(cjk) else "zh"
    if script == "cyrillic" and any(c in text for c in "іїєґІЇЄҐ"):
        return "uk"
    if script == "arabic" and any(c in text for c in "پچژگ"):
        return "fa"
    return _SCRIPT_LANG[script]


# Stop-word and suffix evidence is scored in one C-level sum: every word maps to an int holding its
# weight for each language in a 16-bit field (units of 1/60, so shared words split exactly).
_LANGS = tuple(_STOPWORDS)
_UNIT = 60
_PACKED: dict[str, int] = {
    w: sum(round(v * _UNIT) << (16 * _LANGS.index(lang)) for lang, v in langs.items())
    for w, langs in _STOP_WEIGHT.items()
}
# Suffixes by their last two letters (in _SUFFIXES order), so most words need one set look-up.
_SUFFIX_TAILS: dict[str, list[tuple[str, int]]] = {}
for _suffix, _lang in _SUFFIXES:
    _SUFFIX_TAILS.setdefault(_suffix[-2:], []).append((_suffix, round(0.5 * _UNIT) << (16 * _LANGS.index(_lang))))
_LAST_TWO = itemgetter(slice(-2, None))
_HINT_LETTERS = frozenset(_LETTER_HINTS)


# ASCII text (most traffic) is split into words by one C-level translate and split, which gives the
# same words as `_WORD` (letters, joined by an apostrophe); only tokens with an apostrophe use `_WORD`.
_ASCII_WORD_TABLE = str.maketrans({chr(i): (chr(i) if chr(i).isalpha() or chr(i) == "'" else " ") for i in range(128)})


def _ascii_words(lowered: str) -> list[str]:
    words = lowered.translate(_ASCII_WORD_TABLE).split()
    if "'" not in lowered:
        return words
    out: list[str] = []
    for w in words:
        if "'" in w:
            out.extend(_WORD.findall(w))
        else:
            out.append(w)
    return out


def _latin_language(text: str) -> str:
    lowered = text[:_LATIN_CHARS].lower()
    words = _ascii_words(lowered) if lowered.isascii() else _WORD.findall(lowered)
    get = _PACKED.get
    packed = sum(map(get, words, repeat(0)))
    # Only words whose last two letters end some suffix are checked against the suffixes.
    for word in compress(words, map(_SUFFIX_TAILS.__contains__, map(_LAST_TWO, words))):
        if len(word) > 4 and word not in _PACKED:
            for suffix, value in _SUFFIX_TAILS[word[-2:]]:
                if word.endswith(suffix):
                    packed += value
                    break
    scores: dict[str, float] = {}
    if packed:
        for i, lang in enumerate(_LANGS):
            v = (packed >> (16 * i)) & 0xFFFF
            if v:
                scores[lang] = v / _UNIT
    if not lowered.isascii():
        for ch in sorted(_HINT_LETTERS.intersection(lowered)):
            lang, w = _LETTER_HINTS[ch]
            scores[lang] = scores.get(lang, 0.0) + w * min(lowered.count(ch), 5)
    if not scores:
        return DEFAULT_LANGUAGE
    return max(scores, key=lambda k: (scores[k], k == DEFAULT_LANGUAGE))


def native_allowed() -> bool:
    """False when ``ROUTER_CLASSIFIER_NATIVE=0``: classification and language detection then use
    their pure-Python paths even where the C accelerator is built (same results, slower)."""
    return os.environ.get("ROUTER_CLASSIFIER_NATIVE", "1").strip() != "0"


def _load_native() -> ModuleType | None:
    try:  # by name: import-linter's graph holds only Python sources
        return importlib.import_module("router.classify._features") if native_allowed() else None
    except ImportError:  # pragma: no cover - exercised in a subprocess by the tests
        return None


_NATIVE = _load_native()


def native_module() -> ModuleType | None:
    """``router.classify._features``, the C accelerator of classification and language detection, or None
    where it was not built or ``ROUTER_CLASSIFIER_NATIVE=0`` is set. Loaded once, at import."""
    return _NATIVE


def _lexicon(features: ModuleType) -> object:
    """The stop words, suffixes and letter hints as the accelerator's Lexicon."""
    stopwords = {
        w: tuple((packed >> (16 * i)) & 0xFFFF for i in range(len(_LANGS))) for w, packed in _PACKED.items()
    }
    suffixes = [(suffix, _LANGS.index(lang), round(0.5 * _UNIT)) for suffix, lang in _SUFFIXES]
    hints = [(ch, _LANGS.index(lang), w) for ch, (lang, w) in sorted(_LETTER_HINTS.items())]
    return features.Lexicon(_LANGS, _LANGS.index(DEFAULT_LANGUAGE), _UNIT, stopwords, suffixes, hints)


# The two steps of detect_language after clipping: in C when the accelerator is there, else the
# Python references above (the same results).
if _NATIVE is not None:
    _LEXICON = _lexicon(_NATIVE)
    _native_language, _native_strip = _NATIVE.language, _NATIVE.strip_noise
    _strip = _native_strip
    _detect = functools.partial(_native_language, _LEXICON)
else:
    _LEXICON = None
    _strip, _detect = _strip_noise, _detect_clean
