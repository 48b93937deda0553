"""CMU Sphinx's binary n-gram LMs (`.lm.bin`, "Trie Language Model"), read without pocketsphinx.

pocketsphinx ships such files (its US English LM: model/en-us/en-us.lm.bin, 72,547 words,
2,051,541 word pairs, 1,669,625 triples), and CMU Sphinx publishes them for other languages.
pocketsphinx's only converter to ARPA text (`NGramModel.write(path, "arpa")`) crashes half-way
on its own English LM (cmusphinx/sphinxbase issue 89; pocketsphinx 5.0.4 and 5.1.1 alike), so
asrkd reads the binary itself; `eval.arpa` / export's `arpa` take such a file like an ARPA one
(asrkd.lexicon.arpa_lm), and the lexicon's `sphinx` sources take its word pairs and triples.

Layout (little-endian; sphinxbase's ngram_model_trie.c, lm_trie.c, lm_trie_quant.c):
    "Trie Language Model" (19 bytes), uint8 order, uint32 counts[order]
    if order > 1: int32 (1), then float32[65536] tables: per middle order (2 .. order-1) the
        probabilities and the back-off weights, then the highest order's probabilities
    unigrams: (counts[0] + 1) x {float32 prob, float32 back-off, uint32 first child}
    per order 2 .. order, a bit-packed array of counts[n-1] + 1 records, LSB first, each
        word id (bit_length(counts[0]) bits) | middle orders: back-off index (16),
        probability index (16), first child (bit_length(counts[n]) bits) | highest order:
        probability index (16); byte-rounded, then 8 bytes of slack
    int32 K, then K bytes: the words, NUL-terminated, in id order
The trie runs backwards: a unigram's children are the words that came before it, so the
2-gram record under word w with word id v is the pair (v, w), and a 3-gram record with word id
u under that pair's record is the triple (u, v, w). Scores are in logmath units
(log base 1.0001, pocketsphinx's default; the file does not say): log10 = value * log10(1.0001).
The header's counts are the sizes the arrays were allocated with; the records really written
are the parent level's last child pointer (en-us.lm.bin leaves 6 bigram slots empty).

Checked against pocketsphinx's own scores (NGramModel.prob) on every n-gram of en-us.lm.bin
and of en-us-phone.lm.bin: equal within one logmath unit (docs/benchmarks.md, round 14).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asrkd.data.validate import DataError

HEADER = b"Trie Language Model"
QUANT_BITS = 16  # probability and back-off indices (lm_trie_quant.c)
LOGBASE = 1.0001  # pocketsphinx's -logbase, with which its models are written


def is_sphinx_lm(path: str | Path) -> bool:
    """Whether the file starts like a Sphinx trie LM."""
    try:
        with open(path, "rb") as f:
            return f.read(len(HEADER)) == HEADER
    except OSError:
        return False


@dataclass(frozen=True)
class NGrams:
    """One order n >= 2 of a Sphinx LM: R listed n-grams, in the file's (trie) order.

    ids: (R, n) word ids, first word first (ARPA's order); logprob: (R,) log10 P(last | the
    others); backoff: (R,) log10 b of the n-gram as a context, zeros at the highest order."""

    ids: np.ndarray
    logprob: np.ndarray
    backoff: np.ndarray


@dataclass(frozen=True)
class SphinxLM:
    """A Sphinx LM's n-grams. N words.

    words: N strings, by id. unigram, unigram_backoff: (N,) log10 P(w) and log10 b(w).
    higher: the 2-grams, 3-grams, ... (NGrams), as many as the file's order has.
    """

    order: int
    words: tuple[str, ...]
    unigram: np.ndarray
    unigram_backoff: np.ndarray
    higher: tuple[NGrams, ...]

    @property
    def pairs(self) -> np.ndarray:
        """(P, 2) word ids (previous word, word) of the listed pairs ((0, 2) for a unigram)."""
        return self.higher[0].ids if self.higher else np.zeros((0, 2), dtype=np.int64)

    @property
    def pair_logprob(self) -> np.ndarray:
        """(P,) log10 P(word | previous)."""
        return self.higher[0].logprob if self.higher else np.zeros(0)

    def entries(self, order: int) -> Iterator[tuple[int, tuple[str, ...], float, float]]:
        """(n, words, log10 P, log10 back-off) as an ARPA file lists them, up to `order`."""
        for word, p, b in zip(self.words, self.unigram.tolist(), self.unigram_backoff.tolist()):
            yield 1, (word,), p, b
        words = self.words
        for n, grams in enumerate(self.higher[: max(order - 1, 0)], 2):
            for ids, p, b in zip(
                grams.ids.tolist(), grams.logprob.tolist(), grams.backoff.tolist()
            ):
                yield n, tuple(words[i] for i in ids), p, b


def _bits(max_value: int) -> int:
    return int(max_value).bit_length()


def _packed_bytes(records: int, record_bits: int) -> int:
    """Bytes of a bit-packed array of `records` + 1 records (lm_trie.c's base_size)."""
    return ((1 + records) * record_bits + 7) // 8 + 8


def _read_fields(mem: np.ndarray, offsets: np.ndarray, n_bits: int) -> np.ndarray:
    """The n_bits-wide fields at bit `offsets` (uint64, (R,)) of LSB-first packed bytes
    `mem` (padded by 8 or more bytes): (R,) uint64."""
    if n_bits == 0:
        return np.zeros(len(offsets), dtype=np.uint64)
    first = (offsets >> np.uint64(3)).astype(np.int64)
    value = np.zeros(len(offsets), dtype=np.uint64)
    for k in range((n_bits + 14) // 8):  # the bytes a field spans, whatever its bit offset
        value |= mem[first + k].astype(np.uint64) << np.uint64(8 * k)
    return (value >> (offsets & np.uint64(7))) & np.uint64((1 << n_bits) - 1)


def read_sphinx_lm(path: str | Path, logbase: float = LOGBASE) -> SphinxLM:
    """Every n-gram of a Sphinx trie LM file (module docstring); a file that is not one, or is
    truncated or inconsistent, is a DataError naming it."""
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read the Sphinx LM ({err})") from err
    try:
        return _parse(buf, math.log10(logbase))
    except (ValueError, IndexError) as err:  # numpy reads past the end, a bad count
        raise DataError(f"{path}: not a readable Sphinx trie LM ({err})") from err


def _parse(buf: bytes, to_log10: float) -> SphinxLM:
    if not buf.startswith(HEADER):
        raise ValueError(f"it does not start with {HEADER.decode()!r}")
    pos = len(HEADER)
    order = buf[pos]
    pos += 1
    if not 1 <= order <= 9:
        raise ValueError(f"order {order}")
    counts = [int(c) for c in np.frombuffer(buf, "<u4", order, pos)]
    pos += 4 * order
    table = 1 << QUANT_BITS
    probs, backoffs = [], []  # per order 2 .. order: its quantisation tables
    if order > 1:
        pos += 4  # an int32 left from an older quantisation field
        for n in range(2, order + 1):  # middle orders: probabilities, back-offs; the top: probs
            for kind in (probs, backoffs) if n < order else (probs,):
                kind.append(np.frombuffer(buf, "<f4", table, pos))
                pos += 4 * table
    n_words = counts[0]
    unigram_type = np.dtype([("prob", "<f4"), ("backoff", "<f4"), ("child", "<u4")])
    unigrams = np.frombuffer(buf, unigram_type, n_words + 1, pos)
    pos += unigram_type.itemsize * (n_words + 1)
    word_bits = _bits(n_words)
    # the parent level: each record's n-gram (word ids, last word first: the trie's order) and
    # its first child; its final entry is the end of the last child range
    parent_ids = np.arange(n_words, dtype=np.int64)[:, None]
    children = unigrams["child"].astype(np.int64)
    higher = []
    for n in range(2, order + 1):
        middle = n < order
        child_bits = _bits(counts[n]) if middle else 0
        record_bits = word_bits + (2 * QUANT_BITS + child_bits if middle else QUANT_BITS)
        size = _packed_bytes(counts[n - 1], record_bits)
        if pos + size > len(buf):
            raise ValueError(f"the {n}-gram array ends past the file's end")
        used = int(children[-1])
        if not 0 <= used <= counts[n - 1]:
            raise ValueError(f"{used} {n}-grams written, {counts[n - 1]} allocated")
        spans = np.diff(children)
        if (spans < 0).any():
            raise ValueError(f"the {n - 1}-grams' child pointers go backwards")
        parent_of = np.repeat(np.arange(len(spans)), spans)
        if len(parent_of) != used:
            raise ValueError(f"the {n - 1}-grams' child pointers do not cover the {n}-grams")
        mem = np.frombuffer(buf, np.uint8, size, pos)
        offsets = np.arange(used + 1, dtype=np.uint64) * np.uint64(record_bits)
        word = _read_fields(mem, offsets[:used], word_bits).astype(np.int64)
        if used and word.max() >= n_words:
            raise ValueError(f"a {n}-gram names a word id past the vocabulary")
        prob_at = word_bits + (QUANT_BITS if middle else 0)
        prob = _read_fields(mem, offsets[:used] + np.uint64(prob_at), QUANT_BITS).astype(np.int64)
        backoff = np.zeros(used)
        if middle:
            index = _read_fields(mem, offsets[:used] + np.uint64(word_bits), QUANT_BITS)
            backoff = backoffs[n - 2][index.astype(np.int64)].astype(np.float64) * to_log10
            at = np.uint64(word_bits + 2 * QUANT_BITS)
            next_children = _read_fields(mem, offsets + at, child_bits).astype(np.int64)
        reversed_ids = np.concatenate([parent_ids[parent_of], word[:, None]], axis=1)
        higher.append(
            NGrams(
                ids=np.ascontiguousarray(reversed_ids[:, ::-1]),
                logprob=probs[n - 2][prob].astype(np.float64) * to_log10,
                backoff=backoff,
            )
        )
        if middle:
            parent_ids, children = reversed_ids, next_children
        pos += size
    n_chars = int(np.frombuffer(buf, "<i4", 1, pos)[0])
    pos += 4
    if n_chars < 0 or pos + n_chars > len(buf):
        raise ValueError("the word list ends past the file's end")
    words = buf[pos : pos + n_chars].split(b"\0")
    if words and words[-1] == b"":
        words.pop()
    if len(words) != n_words:
        raise ValueError(f"{len(words)} words listed, the header says {n_words}")
    return SphinxLM(
        order=order,
        words=tuple(w.decode("utf-8", errors="replace") for w in words),
        unigram=unigrams["prob"][:n_words].astype(np.float64) * to_log10,
        unigram_backoff=unigrams["backoff"][:n_words].astype(np.float64) * to_log10,
        higher=tuple(higher),
    )
