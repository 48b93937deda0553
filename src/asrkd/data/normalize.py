"""English written text -> the student's units, the way LibriSpeech writes its transcripts.

A recogniser trained on written text (Whisper) writes "Mr. Hale paid $5 in 1990, 42% of it";
LibriSpeech, and every asrkd student, spells what is said: "mister hale paid five dollars in
nineteen ninety forty two percent of it". `normalize_english(text)` maps the first onto the
second, in this order:

1. Unicode compatibility forms folded (NFKC), curly quotes made straight, accents of Latin
   letters dropped (café -> cafe).
2. Titles spelled out (Mr. -> mister, Mrs. -> missus, Dr. -> doctor, St. -> saint, ...).
3. Money, percentages and symbols: $5 -> five dollars, $2.50 -> two dollars fifty cents,
   £3 -> three pounds, 42% -> forty two percent, & -> and, + -> plus, = -> equals, @ -> at.
4. Numbers with num2words: ordinals (1st -> first, 22nd -> twenty second), years (four digits
   1100-2099: 1990 -> nineteen ninety, 1850 -> eighteen fifty, 1990s -> nineteen nineties),
   times (3:30 -> three thirty, 3:00 -> three o'clock), decimals (3.5 -> three point five),
   grouped thousands (1,000 -> one thousand), other integers (42 -> forty two,
   123 -> one hundred and twenty three); hyphens of num2words become spaces.
5. Lower case; hyphens and dashes become spaces; other punctuation removed; apostrophes kept
   inside words (it's) and dropped at word edges (quotes).

What is left must be letters a-z, apostrophes and spaces; otherwise (another script, a symbol
this module does not know) the text cannot be mapped and `normalize_english` returns None, so
that the caller drops or flags it rather than training on a silently changed transcript.
"""

from __future__ import annotations

import re
import unicodedata

TITLES = {  # abbreviation (without its dot, lower case) -> spoken form
    "mr": "mister",
    "mrs": "missus",
    "ms": "miss",
    "dr": "doctor",
    "st": "saint",
    "prof": "professor",
    "rev": "reverend",
    "gen": "general",
    "capt": "captain",
    "col": "colonel",
    "lt": "lieutenant",
    "sgt": "sergeant",
    "jr": "junior",
    "sr": "senior",
    "vs": "versus",
    "etc": "et cetera",
}
SYMBOLS = {"%": " percent", "&": " and ", "+": " plus ", "=": " equals ", "@": " at "}
CURRENCIES = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
}
CURRENCIES["€"] = ("euro", "euros", "cent", "cents")

_TITLE_RE = re.compile(r"\b(" + "|".join(TITLES) + r")\.", re.IGNORECASE)
_TITLE_BARE_RE = re.compile(r"\b(mr|mrs|dr)\b", re.IGNORECASE)  # "Mr Hale" (British, no dot)
_MONEY_RE = re.compile(r"([$£€])\s?(\d[\d,]*)(?:\.(\d{1,2}))?\b")
_ORDINAL_RE = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_DECADE_RE = re.compile(r"\b(1[1-9]\d0|20\d0)'?s\b")
_YEAR_RE = re.compile(r"(?<![\d.,])\b(1[1-9]\d\d|20\d\d)\b(?![.,]\d)")
_TIME_RE = re.compile(r"\b(\d{1,2}):(\d\d)\b")
_DECIMAL_RE = re.compile(r"(?<![\d.])(\d+)\.(\d+)\b")
_GROUPED_RE = re.compile(r"\b\d{1,3}(?:,\d{3})+\b")
_INTEGER_RE = re.compile(r"\d+")
_UNITS_RE = re.compile(r"[^a-z' ]")


def _words(number: int | str, to: str = "cardinal") -> str:
    """num2words without hyphens or commas: 'forty two', 'one hundred and twenty three'."""
    try:
        from num2words import num2words
    except ImportError as err:
        raise ImportError("spelling numbers needs num2words: pip install 'asrkd[whisper]'") from err
    try:
        text = num2words(int(number), to=to, lang="en")
    except OverflowError:  # beyond num2words (10^306 and up: a hallucinating teacher)
        text = " ".join(num2words(int(d), lang="en") for d in str(number))  # digit by digit
    return " " + text.replace("-", " ").replace(",", "") + " "


def _money(match: re.Match) -> str:
    one, many, cent, cents = CURRENCIES[match.group(1)]
    whole = int(match.group(2).replace(",", ""))
    text = _words(whole) + (one if whole == 1 else many)
    if match.group(3):
        part = int(match.group(3).ljust(2, "0"))
        if part:
            text += _words(part) + (cent if part == 1 else cents)
    return f" {text} "


def _decade(match: re.Match) -> str:
    words = _words(match.group(1), "year").split()
    last = words[-1]
    words[-1] = last[:-1] + "ies" if last.endswith("y") else last + "s"
    return " " + " ".join(words) + " "


def _time(match: re.Match) -> str:
    hours, minutes = int(match.group(1)), int(match.group(2))
    if minutes == 0:
        return _words(hours) + "o'clock "
    if minutes < 10:
        return _words(hours) + "oh" + _words(minutes)
    return _words(hours) + _words(minutes)


def _decimal(match: re.Match) -> str:
    digits = " ".join(_words(d).strip() for d in match.group(2))
    return _words(match.group(1)) + "point " + digits + " "


def spell_out(text: str) -> str:
    """Steps 1-4: titles, money, symbols and numbers spelled as words (case kept)."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = _TITLE_RE.sub(lambda m: TITLES[m.group(1).lower()], text)
    text = _TITLE_BARE_RE.sub(lambda m: TITLES[m.group(1).lower()], text)
    text = _MONEY_RE.sub(_money, text)
    for symbol, words in SYMBOLS.items():
        text = text.replace(symbol, words)
    text = _ORDINAL_RE.sub(lambda m: _words(m.group(1), "ordinal"), text)
    text = _DECADE_RE.sub(_decade, text)
    text = _YEAR_RE.sub(lambda m: _words(m.group(1), "year"), text)
    text = _TIME_RE.sub(_time, text)
    text = _DECIMAL_RE.sub(_decimal, text)
    text = _GROUPED_RE.sub(lambda m: _words(m.group(0).replace(",", "")), text)
    return _INTEGER_RE.sub(lambda m: _words(m.group(0)), text)


def normalize_english(text: str) -> str | None:
    """Written English -> lower-case words of a-z and ' separated by single spaces, numbers and
    symbols spelled out; None when something is left that those units cannot write."""
    text = spell_out(text).lower()
    text = re.sub(r"[-\u2010-\u2015]", " ", text)  # hyphens and dashes separate words
    text = re.sub(r"[.,;:!?\"()\[\]{}<>«»\u201c\u201d\u2026/\\*_~]", " ", text)
    words = [w.strip("'") for w in text.split()]
    text = " ".join(w for w in words if w)
    if _UNITS_RE.search(text):
        return None
    return text
