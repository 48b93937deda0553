"""Character tokenizer for CTC: blank, space, apostrophe and a-z.

Index 0 is the CTC blank. Text is normalised before encoding: upper/lower case folded, punctuation
other than the apostrophe removed, runs of whitespace collapsed.
"""

from __future__ import annotations

import base64
import json
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise

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
        """Either kind of tokenizer from its JSON (files without "kind" are characters)."""
        data = json.loads(text)
        if data.get("kind") == "sentencepiece":
            return SentencePieceTokenizer(symbols=tuple(data["symbols"]), model=data["model"])
        if data.get("kind", "char") == "bpe":
            merges = tuple((a, b) for a, b in data["merges"])
            return BpeTokenizer(symbols=tuple(data["symbols"]), merges=merges)
        return Tokenizer(symbols=tuple(data["symbols"]))


WORD_START = "\u2581"  # "▁": marks a piece that begins a word, as in sentencepiece
BPE_BASE_SYMBOLS = (BLANK, WORD_START, "'") + tuple("abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True)
class BpeTokenizer(Tokenizer):
    """Byte-pair-encoded word pieces for CTC (as icefall's BPE-500 models use).

    A word is spelled as WORD_START and its letters, then merged by `merges` in rank order, so every word
    remains encodable through the single letters while frequent words become one or a few
    symbols; fewer, longer units mean fewer CTC labels per second of audio.
    """

    symbols: tuple[str, ...] = BPE_BASE_SYMBOLS
    merges: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        missing = set(BPE_BASE_SYMBOLS) - set(self.symbols)
        if missing:
            raise ValueError(f"BPE vocabulary lacks base symbols {sorted(missing)}")
        known = set(self.symbols)
        for a, b in self.merges:
            if a not in known or b not in known or a + b not in known:
                raise ValueError(f"BPE merge {a!r} + {b!r} names a symbol outside the vocabulary")
        # Lookup tables derived from the fields (frozen dataclass: set once, not compared).
        object.__setattr__(self, "_ranks", {pair: i for i, pair in enumerate(self.merges)})
        object.__setattr__(self, "_index_table", super()._index())
        object.__setattr__(self, "_word_pieces", {})

    def _pieces(self, word: str) -> list[str]:
        cache = self._word_pieces  # type: ignore[attr-defined]
        if word not in cache:
            cache[word] = apply_merges([WORD_START, *word], self._ranks)  # type: ignore[attr-defined]
        return cache[word]

    def _index(self) -> dict[str, int]:
        return self._index_table  # type: ignore[attr-defined]

    def encode(self, text: str) -> list[int]:
        index = self._index()
        ids = []
        for word in normalize_text(text).split():
            ids.extend(index[p] for p in self._pieces(word) if p in index)
        return ids

    def decode(self, ids: list[int]) -> str:
        text = "".join(self.symbols[i] for i in ids if i != self.blank_id)
        return text.replace(WORD_START, " ").strip()

    def to_json(self) -> str:
        return json.dumps(
            {"kind": "bpe", "symbols": list(self.symbols), "merges": [list(m) for m in self.merges]}
        )


def apply_merges(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Merge the adjacent pair of lowest rank until no pair has a rank (standard BPE)."""
    while len(pieces) > 1:
        pairs = [(ranks.get(p, len(ranks)), i) for i, p in enumerate(pairwise(pieces))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def word_counts(texts: Iterable[str]) -> Counter[str]:
    """How often each word of the normalised texts occurs."""
    return Counter(w for t in texts for w in normalize_text(t).split())


def train_bpe(texts: Iterable[str], vocab_size: int) -> BpeTokenizer:
    """The hand-written trainer of models made before sentencepiece (train_sentencepiece); kept
    so their tests and files keep their meaning. Learn merges on the words of `texts` until the vocabulary (blank included) has
    `vocab_size` symbols or no pair occurs twice. Deterministic: ties go to the pair that sorts
    first. Pair counts are updated only for the words a merge touches."""
    if vocab_size < len(BPE_BASE_SYMBOLS):
        raise ValueError(f"BPE vocabulary must hold at least {len(BPE_BASE_SYMBOLS)} symbols")
    counts = word_counts(texts)
    vocab = sorted(counts)
    words = [[WORD_START, *w] for w in vocab]
    freqs = [counts[w] for w in vocab]
    pair_counts: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, pieces in enumerate(words):
        for pair in pairwise(pieces):
            pair_counts[pair] += freqs[i]
            where[pair].add(i)
    symbols, merges = list(BPE_BASE_SYMBOLS), []
    while len(symbols) < vocab_size and pair_counts:
        best = min(pair_counts, key=lambda p: (-pair_counts[p], p))
        if pair_counts[best] < 2:
            break
        merges.append(best)
        symbols.append(best[0] + best[1])
        for i in sorted(where.pop(best)):
            old = words[i]
            for pair in pairwise(old):
                pair_counts[pair] -= freqs[i]
                if pair_counts[pair] <= 0:
                    del pair_counts[pair]
            words[i] = apply_merges(list(old), {best: 0})
            for pair in pairwise(words[i]):
                pair_counts[pair] += freqs[i]
                where[pair].add(i)
    return BpeTokenizer(symbols=tuple(symbols), merges=tuple(merges))


# sentencepiece ids: the CTC blank first (a user-defined symbol, as icefall's bpe.model has it),
# then <unk>; no <s>/</s>. asrkd's vocabulary is the model's pieces in id order, so a piece's id
# is its CTC output index and sherpa-onnx's tokens.txt/bpe.model pair needs no mapping.
SPM_BLANK = "<blk>"
SPM_UNK = "<unk>"


@dataclass(frozen=True)
class SentencePieceTokenizer(BpeTokenizer):
    """Word pieces learnt and applied by sentencepiece (model_type bpe), as icefall and
    sherpa-onnx use them. `model` is the serialized sentencepiece model (base64), so a model
    file rebuilds its tokenizer alone and `asrkd export --target sherpa-onnx` writes it as
    bpe.model. A BpeTokenizer subclass: the lexicon decoder treats it as word pieces.
    Symbol 0 is asrkd's BLANK (sentencepiece's <blk>)."""

    model: str = ""

    def __post_init__(self) -> None:
        Tokenizer.__post_init__(self)
        import sentencepiece as spm

        proc = spm.SentencePieceProcessor()
        proc.LoadFromSerializedProto(base64.b64decode(self.model))
        pieces = [proc.IdToPiece(i) for i in range(proc.GetPieceSize())]
        if pieces[0] != SPM_BLANK or [BLANK, *pieces[1:]] != list(self.symbols):
            raise ValueError("symbols do not match the sentencepiece model's pieces")
        object.__setattr__(self, "_proc", proc)
        object.__setattr__(self, "_index_table", {s: i for i, s in enumerate(self.symbols)})
        object.__setattr__(self, "_unk", proc.unk_id())

    def encode(self, text: str) -> list[int]:
        """Normalise, then sentencepiece ids; pieces it cannot spell (<unk>) are dropped."""
        ids = self._proc.EncodeAsIds(normalize_text(text))  # type: ignore[attr-defined]
        return [i for i in ids if i != self._unk and i != self.blank_id]  # type: ignore[attr-defined]

    def decode(self, ids: list[int]) -> str:
        keep = [i for i in ids if i != self.blank_id and i != self._unk]  # type: ignore[attr-defined]
        return "".join(self.symbols[i] for i in keep).replace(WORD_START, " ").strip()

    def to_json(self) -> str:
        return json.dumps(
            {"kind": "sentencepiece", "symbols": list(self.symbols), "model": self.model}
        )


def train_sentencepiece(texts: Iterable[str], vocab_size: int) -> SentencePieceTokenizer:
    """Word pieces (sentencepiece, model_type bpe) learnt on the normalised `texts`, with
    `vocab_size` symbols (blank included) at most: fewer when the text has too few distinct
    pieces. Deterministic (one thread; sentencepiece does not sample in BPE training)."""
    import io

    import sentencepiece as spm

    lines = [t for t in (normalize_text(x) for x in texts) if t]
    if not lines:
        raise ValueError("no text to learn word pieces from")
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=out,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=1.0,
        user_defined_symbols=[SPM_BLANK],
        unk_id=1,
        bos_id=-1,
        eos_id=-1,
        normalization_rule_name="identity",
        num_threads=1,
        minloglevel=2,
    )
    proc = spm.SentencePieceProcessor()
    proc.LoadFromSerializedProto(out.getvalue())
    pieces = [proc.IdToPiece(i) for i in range(proc.GetPieceSize())]
    model = base64.b64encode(out.getvalue()).decode("ascii")
    return SentencePieceTokenizer(symbols=(BLANK, *pieces[1:]), model=model)
