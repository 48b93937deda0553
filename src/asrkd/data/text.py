"""Character tokenizer for CTC: blank, space, apostrophe and a-z.

Index 0 is the CTC blank. Text is normalised before encoding: upper/lower case folded, punctuation
other than the apostrophe removed, runs of whitespace collapsed.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass

BLANK = "<b>"
DEFAULT_SYMBOLS = (BLANK, " ", "'") + tuple("abcdefghijklmnopqrstuvwxyz")

_SPACE_RE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower-case, strip accents, turn hyphens into spaces, drop other punctuation."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = text.replace("\u2019", "'").replace("-", " ")
    text = re.sub(r"[^a-z' \t\n]", "", text)
    return _SPACE_RE.sub(" ", text).strip()


@dataclass(frozen=True)
class Tokenizer:
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS

    def __post_init__(self) -> None:
        if not self.symbols or self.symbols[0] != BLANK:
            raise ValueError(f"symbol 0 must be the CTC blank {BLANK!r}")
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError("duplicate symbols in the vocabulary")

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    @property
    def blank_id(self) -> int:
        return 0

    def _index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.symbols)}

    def oov_chars(self, text: str) -> set[str]:
        """Characters of already-normalised text that the vocabulary lacks."""
        index = self._index()
        return {c for c in text if c not in index}

    def encode(self, text: str) -> list[int]:
        """Normalise and map to ids; characters outside the vocabulary are dropped."""
        index = self._index()
        return [index[c] for c in normalize_text(text) if c in index]

    def decode(self, ids: list[int]) -> str:
        """Ids (already CTC-collapsed, no blanks) back to text."""
        return "".join(self.symbols[i] for i in ids if i != self.blank_id).strip()

    def to_json(self) -> str:
        return json.dumps({"symbols": list(self.symbols)})

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        return cls(symbols=tuple(json.loads(text)["symbols"]))
